//! Groups, keep-alives and single renewals: one etcd lease per (backend, TTL) carries
//! every key this backend acquires with that TTL (group rounds, which renew many leases
//! without a read per key, are in `rounds.rs`). A single renewal reads its key (gone or another
//! token: lost; marked: revoked), then makes sure the group's etcd lease was kept alive
//! by a keep-alive sent no earlier than the renewal's start plus TTL minus the etcd TTL
//! (renewals queued behind a keep-alive in flight share the next one), and a keep-alive
//! counts only when the Raft term it was answered in is still the cluster's. Before
//! every keep-alive, the group's keys whose holders can no longer be live are deleted.
//! See "TTLs" and "Keys nobody holds" in the module docs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::encoding::{decode, encode};
use super::state::{until, Group, GroupSlot, Held, Inner};
use super::wire::{compare_create, compare_mod, delete_op, op, pb, token_of};
use crate::backend::RenewOutcome;
use crate::error::{BackendError, BackendErrorKind};
use crate::key::Key;

impl Group {
    /// Does the etcd lease surely live until `start + ttl`?
    fn covers(&self, start: Instant, ttl: Duration) -> bool {
        self.confirmed + self.etcd_ttl >= start + ttl
    }
}

impl Inner {
    /// The slot of the group of this TTL, made empty when there is none yet.
    fn slot(&self, ttl: Duration) -> Arc<GroupSlot> {
        crate::sync::lock(&self.groups)
            .entry(ttl.as_nanos())
            .or_insert_with(|| {
                Arc::new(GroupSlot {
                    state: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    /// One keep-alive of an etcd lease, confirmed: its TTL in seconds, 0 (or less) when
    /// it is gone.
    ///
    /// etcd 3.4 lets a leader that was cut off (or frozen) and has not yet stepped down
    /// answer keep-alives from its own, no longer authoritative, lease table, while the
    /// real leader lets the lease run out. So a keep-alive counts only if a linearizable
    /// read made *after* its answer (which only the current leader can serve) sees the
    /// same Raft term as the answer: one leader per term, and that leader was still
    /// leading after it renewed the lease.
    async fn keep_alive(&self, id: i64) -> Result<i64, BackendError> {
        let (ttl, term) = self.keep_alive_once(id).await?;
        if ttl <= 0 {
            return Ok(ttl);
        }
        let req = pb::RangeRequest {
            key: self.prefix.clone(),
            count_only: true,
            ..Default::default()
        };
        let now = self.range("leader check", req).await?;
        let current = now.header.map(|h| h.raft_term).unwrap_or(0);
        if current != term || term == 0 {
            return Err(BackendError::new(
                BackendErrorKind::Unavailable,
                format!(
                    "etcd keep-alive answered in Raft term {term}, but the cluster is in term \
                     {current}: not counted"
                ),
            ));
        }
        Ok(ttl)
    }

    /// Grants a group's etcd lease.
    async fn grant(&self, ttl: Duration) -> Result<Group, BackendError> {
        if self.max_term.load(Ordering::Relaxed) == 0 {
            // Learn the cluster's term first: a group granted in an unknown term would
            // make every key on it look older than any leader change.
            self.check_read().await?;
        }
        let term = self.max_term.load(Ordering::Relaxed);
        let sent = Instant::now();
        let (id, granted) = self.grant_lease("lease grant", ttl).await?;
        // Granted after `id`, so it lives at least as long from `sent`.
        let (marker, _) = self.grant_lease("marker lease grant", ttl).await?;
        Ok(Group {
            id,
            marker,
            etcd_ttl: granted,
            confirmed: sent,
            term,
        })
    }

    /// Keeps a group's etcd lease alive, after deleting the keys on it whose holders
    /// can no longer be live. `Ok(false)`: the etcd lease is gone.
    async fn keep_group_alive(&self, group: &mut Group) -> Result<bool, BackendError> {
        let now = Instant::now();
        let stale: Vec<(Vec<u8>, [u8; 16])> = crate::sync::lock(&self.held)
            .iter()
            .flat_map(|(k, list)| {
                list.iter()
                    .filter(|h| h.lease == group.id && h.live_until <= now)
                    .map(|h| (k.clone(), h.nonce))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (key, nonce) in stale {
            self.delete_if_ours(&key, &nonce).await?;
            self.forget(&key, |h| h.nonce == nonce);
        }
        let sent = Instant::now();
        // The marker first, so that etcd expires it no later than the etcd lease (see
        // "Keys deleted by hand" in the module docs). A marker gone (revoked by hand)
        // ends the group, as its etcd lease gone does.
        let (marker_ttl, _) = self.keep_alive_once(group.marker).await?;
        if marker_ttl <= 0 {
            return Ok(false);
        }
        let ttl = self.keep_alive(group.id).await?;
        if ttl <= 0 {
            return Ok(false);
        }
        group.confirmed = sent;
        group.etcd_ttl = Duration::from_secs(u64::try_from(ttl.min(marker_ttl)).unwrap_or(0));
        Ok(true)
    }

    /// Deletes `key` if the acquire named by `nonce` wrote it.
    async fn delete_if_ours(&self, key: &[u8], nonce: &[u8; 16]) -> Result<(), BackendError> {
        let Some(kv) = self.get("cleanup read", key).await? else {
            return Ok(());
        };
        if decode(&kv.value).is_some_and(|v| &v.nonce == nonce) {
            // Nobody holds it: its grant record goes with it.
            let req = pb::TxnRequest {
                compare: vec![compare_create(key, kv.create_revision)],
                success: vec![delete_op(key), delete_op(&self.record_key(key))],
                failure: vec![],
            };
            self.txn("cleanup delete", req).await?;
            tracing::debug!(key = %String::from_utf8_lossy(key), "deleted a lease key nobody holds any more");
        }
        Ok(())
    }

    /// The group's etcd lease for an acquire started at `start`, granted or kept alive
    /// so that it lives until `start + ttl`.
    pub(super) async fn group_for(
        &self,
        ttl: Duration,
        start: Instant,
    ) -> Result<Group, BackendError> {
        let slot = self.slot(ttl);
        let mut state = slot.state.lock().await;
        if let Some(group) = state.as_mut() {
            if group.covers(start, ttl) {
                return Ok(*group);
            }
            let mut g = *group;
            if self.keep_group_alive(&mut g).await? && g.covers(start, ttl) {
                *group = g;
                return Ok(g);
            }
            let dead = group.id;
            *state = None;
            self.forget_lease(dead);
        }
        let group = self.grant(ttl).await?;
        *state = Some(group);
        Ok(group)
    }

    /// Drops the group whose etcd lease is `id` (it is gone).
    pub(super) async fn drop_group(&self, ttl: Duration, id: i64) {
        let slot = self.slot(ttl);
        let mut state = slot.state.lock().await;
        if state.as_ref().is_some_and(|g| g.id == id) {
            *state = None;
        }
        self.forget_lease(id);
    }

    /// Makes sure the etcd lease `id` of a key renewed with `ttl` lives until `start +
    /// ttl`. `Ok(false)`: it is gone.
    pub(super) async fn confirm_alive(
        &self,
        id: i64,
        ttl: Duration,
        start: Instant,
    ) -> Result<bool, BackendError> {
        let slot = self.slot(ttl);
        let mut state = slot.state.lock().await;
        match state.as_mut() {
            Some(group) if group.id == id => {
                if group.covers(start, ttl) {
                    return Ok(true);
                }
                let mut g = *group;
                if self.keep_group_alive(&mut g).await? {
                    *group = g;
                    Ok(g.covers(start, ttl))
                } else {
                    *state = None;
                    drop(state);
                    self.forget_lease(id);
                    Ok(false)
                }
            }
            _ => {
                // Not this TTL's current group (the key was acquired with another TTL,
                // or its group was replaced): keep its etcd lease alive directly.
                drop(state);
                let sent = Instant::now();
                let secs = self.keep_alive(id).await?;
                let covers = secs > 0
                    && sent + Duration::from_secs(u64::try_from(secs).unwrap_or(0)) >= start + ttl;
                Ok(covers)
            }
        }
    }

    /// Renews the lease on `key` held with `token`: see the module docs.
    pub(super) async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let start = Instant::now();
        until(start, ttl)?;
        let ek = self.etcd_key(key);
        let kv = self.get("renew read", &ek).await?;
        let Some(kv) = kv.filter(|kv| token_of(kv) == token) else {
            self.forget(&ek, |h| h.token == Some(token));
            return Ok(RenewOutcome::Lost);
        };
        if decode(&kv.value).is_some_and(|v| v.revoked) {
            return Ok(RenewOutcome::Revoked);
        }
        let nonce = decode(&kv.value).map(|v| v.nonce).unwrap_or_default();
        if self.moved(&ek, token, &nonce) {
            // Re-attached through another backend instance since (see `adopt`): this
            // one no longer holds it, and must not renew or clean it up.
            self.forget(&ek, |h| h.token == Some(token));
            return Ok(RenewOutcome::Lost);
        }
        if !self.confirm_alive(kv.lease, ttl, start).await? {
            self.forget(&ek, |h| h.token == Some(token));
            return Ok(RenewOutcome::Lost);
        }
        // The cleanup before a keep-alive may have deleted it (its holder's time ran
        // out before this renewal): then it is lost, whatever the read said.
        let mut known = false;
        let mut stale = false;
        self.update_held(&ek, &nonce, |h| {
            known = true;
            stale = h.live_until <= start;
            if !stale {
                // Never earlier than a renewal that started later and was confirmed
                // first (a group round and this renewal may overlap): the cleanup
                // must not delete the key before its holder's deadline.
                h.live_until = h.live_until.max(start + ttl);
                h.checked = kv.mod_revision;
            }
        });
        if stale {
            return Ok(RenewOutcome::Lost);
        }
        if !known {
            return self.adopt(&ek, token, &kv, start + ttl).await;
        }
        Ok(RenewOutcome::Renewed)
    }

    /// Whether the lease `(key, token)` was held here under another nonce than the one
    /// its value now carries: another instance has re-attached it since.
    fn moved(&self, key: &[u8], token: u64, nonce: &[u8; 16]) -> bool {
        crate::sync::lock(&self.held).get(key).is_some_and(|list| {
            list.iter()
                .any(|h| h.token == Some(token) && &h.nonce != nonce)
        })
    }

    /// Makes a lease acquired through another backend instance sharing the cluster
    /// (a lease re-attached here: `AcquireOptions::resume`) this instance's own: its
    /// value gets a nonce of ours, by compare-and-set on the revision just read (the
    /// token, its create revision, does not change), and it is remembered, so that a
    /// later failure is cleaned up here. The instance that held it before no longer
    /// matches it: its cleanup (a delete by nonce) cannot delete the key under its new
    /// holder, and its renewals find it moved. A value changed since the read (a revoke,
    /// another re-attach) is not adopted: the lease counts as lost here.
    async fn adopt(
        &self,
        ek: &[u8],
        token: u64,
        kv: &pb::KeyValue,
        live_until: Instant,
    ) -> Result<RenewOutcome, BackendError> {
        let Some(v) = decode(&kv.value) else {
            return Ok(RenewOutcome::Lost);
        };
        let nonce = self.nonce();
        let value = encode(v.revoked, v.ttl, v.acquired_at, &nonce, &v.metadata);
        let req = pb::TxnRequest {
            compare: vec![compare_mod(ek, kv.mod_revision)],
            success: vec![op(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: ek.to_vec(),
                value,
                lease: 0,
                ignore_lease: true,
            }))],
            failure: vec![],
        };
        let resp = self.txn("renew adopt", req).await?;
        if !resp.succeeded {
            return Ok(RenewOutcome::Lost);
        }
        // The put's revision is the value's new mod revision.
        let checked = resp.header.map(|h| h.revision).unwrap_or(0);
        self.remember(
            ek,
            Held {
                nonce,
                token: Some(token),
                lease: kv.lease,
                live_until,
                checked,
            },
        );
        Ok(RenewOutcome::Renewed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_only_what_was_confirmed() {
        let now = Instant::now();
        let g = Group {
            id: 1,
            marker: 2,
            etcd_ttl: Duration::from_secs(2),
            confirmed: now,
            term: 1,
        };
        assert!(g.covers(now, Duration::from_secs(2)));
        assert!(!g.covers(now + Duration::from_millis(1), Duration::from_secs(2)));
        assert!(g.covers(
            now + Duration::from_millis(500),
            Duration::from_millis(1500)
        ));
    }
}
