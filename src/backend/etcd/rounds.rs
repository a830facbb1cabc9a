//! Group rounds ([`Backend::renew_many`](crate::backend::Backend::renew_many)): a
//! manager's leases of one TTL renewed together, with requests that do not grow with
//! the number of leases held, and no read per key.
//!
//! A round, started at `start`:
//! 1. **One scan of the lease keys**, keys only (no values), in pages of [`PAGE`]
//!    keys: the first page a linearizable read made after `start`, whose answer names
//!    the cluster's revision `R`; the next pages read *at* `R`, so that the scan is one
//!    snapshot of every lease key at `R`, as a linearizable read of each key would
//!    have been (but at one instant). For each lease of the round it shows the key
//!    gone (deleted by anyone, however: **lost**), created again (its create revision,
//!    the token, is another: **lost**), or its value's mod revision.
//! 2. A value is read only when its mod revision is not the one this backend last saw
//!    carry its value (acquire, adopt, an earlier renewal: `Held::checked`): each
//!    write of a key has its own mod revision, so an unchanged mod revision is an
//!    unchanged value. The changed ones (a revoke: **revoked**; a re-attach through
//!    another instance, whose nonce is not ours: **lost**) are read at `R` too, up to
//!    128 in one transaction: a request per 128 *changed* keys, none in a quiet round.
//! 3. The keep-alive of each etcd lease the keys ride on (normally one: the group's),
//!    shared and confirmed by the Raft term check exactly as for a single renewal
//!    (`confirm_alive` in `groups.rs`): sent after `start`, so the etcd lease lives at
//!    least until `start + TTL`.
//! 4. The leases still remembered and not stale (the cleanup before a keep-alive may
//!    have deleted a key whose holder's time ran out) are **renewed**.
//!
//! A round of at most 128 remembered leases skips the scan and reads their keys (with
//! their values) in one read-only transaction, a linearizable read after `start`, then
//! goes on at step 3: one request, whatever else the prefix holds (a scan would read
//! every key under the prefix, held by anyone).
//!
//! So each lease's answer is what [`renew`](Inner::renew) would have answered with its
//! key read at `R` (after `start`) and the same keep-alive: the same guarantees. A key
//! deleted after the scan is found at the next round; until then nobody can be granted
//! it while its etcd lease lives (see "Keys deleted by hand" in the module docs).
//! Leases this backend does not remember under that token (re-attached here: they must
//! be adopted) are renewed one by one with [`renew`](Inner::renew).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::encoding::decode;
use super::state::{until, Held, Inner};
use super::wire::{op, pb, prefix_end, token_of};
use crate::backend::RenewOutcome;
use crate::error::{BackendError, BackendErrorKind};
use crate::key::Key;

/// Keys per page of a round's scan (about 100 bytes each in the answer).
const PAGE: i64 = 10_000;

/// etcd's default limit of operations in one transaction.
const MAX_TXN_OPS: usize = 128;

type Answer = Result<RenewOutcome, BackendError>;

impl Inner {
    /// Renews every lease of `leases` (all of TTL `ttl`): see the module docs above.
    pub(super) async fn renew_many(&self, leases: &[(Key, u64)], ttl: Duration) -> Vec<Answer> {
        let start = Instant::now();
        if let Err(e) = until(start, ttl) {
            return leases.iter().map(|_| Err(e.clone())).collect();
        }
        let mut answers: Vec<Option<Answer>> = vec![None; leases.len()];
        let eks: Vec<Vec<u8>> = leases.iter().map(|(k, _)| self.etcd_key(k)).collect();
        // What this backend remembers of each lease (by key and token).
        let known: Vec<Option<Held>> = {
            let held = crate::sync::lock(&self.held);
            eks.iter()
                .zip(leases)
                .map(|(ek, (_, token))| {
                    held.get(ek)
                        .and_then(|list| list.iter().find(|h| h.token == Some(*token)))
                        .cloned()
                })
                .collect()
        };
        // The remembered leases by key (one key may have several: an old token and a
        // new grant).
        let mut wanted: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, h) in known.iter().enumerate() {
            if h.is_some() {
                wanted.entry(&eks[i]).or_default().push(i);
            }
        }
        // The remembered leases found ours and unchanged: index, the etcd lease their
        // key rides on, and the mod revision their value was seen ours at.
        let mut ok: Vec<(usize, i64, i64)> = Vec::new();
        let remembered: usize = wanted.values().map(Vec::len).sum();
        if remembered > 0 {
            // The leases whose values must be read, and the revision to read them at (0:
            // now, linearizable).
            let mut changed: Vec<usize> = Vec::new();
            let mut revision = 0;
            if remembered <= MAX_TXN_OPS {
                // Few leases: their keys read in one transaction cost less than a scan of
                // a prefix that others may fill.
                changed = wanted.values().flatten().copied().collect();
            } else {
                let found = match self.scan(&wanted).await {
                    Ok((r, found)) => {
                        revision = r;
                        found
                    }
                    Err(e) => {
                        for i in wanted.values().flatten() {
                            answers[*i] = Some(Err(e.clone()));
                        }
                        HashMap::new()
                    }
                };
                for (i, ek) in wanted.values().flatten().map(|&i| (i, &eks[i])) {
                    if answers[i].is_some() {
                        continue;
                    }
                    let token = leases[i].1;
                    match found.get(ek) {
                        Some(kv) if token_of(kv) == token => {
                            if known[i]
                                .as_ref()
                                .is_some_and(|h| h.checked == kv.mod_revision)
                            {
                                ok.push((i, kv.lease, kv.mod_revision));
                            } else {
                                changed.push(i);
                            }
                        }
                        // Gone, or another grant of the key: this lease is over.
                        _ => {
                            self.forget(ek, |h| h.token == Some(token));
                            answers[i] = Some(Ok(RenewOutcome::Lost));
                        }
                    }
                }
            }
            if !changed.is_empty() {
                match self.values_at(revision, &changed, &eks).await {
                    Ok(values) => {
                        for (i, kv) in changed.into_iter().zip(values) {
                            let token = leases[i].1;
                            let held = known[i].as_ref();
                            let value = kv
                                .as_ref()
                                .filter(|kv| token_of(kv) == token)
                                .and_then(|kv| decode(&kv.value).map(|v| (kv, v)));
                            match value {
                                Some((_, v)) if v.revoked => {
                                    answers[i] = Some(Ok(RenewOutcome::Revoked));
                                }
                                Some((kv, v)) if held.is_some_and(|h| h.nonce == v.nonce) => {
                                    ok.push((i, kv.lease, kv.mod_revision));
                                }
                                // Gone, another grant, or re-attached through another
                                // instance (see `adopt` in `groups.rs`): not ours here.
                                _ => {
                                    self.forget(&eks[i], |h| h.token == Some(token));
                                    answers[i] = Some(Ok(RenewOutcome::Lost));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        for i in changed {
                            answers[i] = Some(Err(e.clone()));
                        }
                    }
                }
            }
        }
        // The keep-alive of each etcd lease the keys ride on (normally the group's).
        let mut by_lease: HashMap<i64, Vec<(usize, i64)>> = HashMap::new();
        for (i, lease, checked) in ok {
            by_lease.entry(lease).or_default().push((i, checked));
        }
        for (lease, members) in by_lease {
            let alive = self.confirm_alive(lease, ttl, start).await;
            for (i, checked) in members {
                let token = leases[i].1;
                let answer = match &alive {
                    Err(e) => Err(e.clone()),
                    Ok(false) => {
                        self.forget(&eks[i], |h| h.token == Some(token));
                        Ok(RenewOutcome::Lost)
                    }
                    Ok(true) => Ok(self.renewed(&eks[i], token, start, ttl, checked)),
                };
                answers[i] = Some(answer);
            }
        }
        // Leases not remembered here under their token: re-attached here, to adopt.
        let singles = known
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_none())
            .map(|(i, _)| async move { (i, self.renew(&leases[i].0, leases[i].1, ttl).await) });
        for (i, answer) in futures_util::future::join_all(singles).await {
            answers[i] = Some(answer);
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(BackendError::new(
                        BackendErrorKind::Failed,
                        "etcd group renewal: a lease was left without an answer",
                    ))
                })
            })
            .collect()
    }

    /// Records a confirmed renewal of `(key, token)`, started at `start`: renewed, unless
    /// the lease was forgotten meanwhile (released, its etcd lease gone) or its holder's
    /// time had run out before `start` (the cleanup may have deleted its key).
    fn renewed(
        &self,
        ek: &[u8],
        token: u64,
        start: Instant,
        ttl: Duration,
        checked: i64,
    ) -> RenewOutcome {
        let mut outcome = RenewOutcome::Lost;
        if let Some(list) = crate::sync::lock(&self.held).get_mut(ek) {
            if let Some(h) = list.iter_mut().find(|h| h.token == Some(token)) {
                if h.live_until > start {
                    // Never earlier than a renewal that started later and was
                    // confirmed first (a re-attach here while this round ran): its
                    // holder's deadline counts from that start, and the cleanup must
                    // not delete the key before it.
                    h.live_until = h.live_until.max(start + ttl);
                    h.checked = checked;
                    outcome = RenewOutcome::Renewed;
                }
            }
        }
        outcome
    }

    /// A snapshot of every lease key, keys only, in pages: the first a linearizable read,
    /// the next at its revision. The revision, and the keys of `wanted` that exist.
    async fn scan(
        &self,
        wanted: &HashMap<&[u8], Vec<usize>>,
    ) -> Result<(i64, HashMap<Vec<u8>, pb::KeyValue>), BackendError> {
        let mut from = self.prefix.clone();
        from.push(b'/');
        let end = prefix_end(&from);
        let mut revision = 0;
        let mut found = HashMap::new();
        loop {
            let req = pb::RangeRequest {
                key: from,
                range_end: end.clone(),
                limit: PAGE,
                revision,
                keys_only: true,
                ..Default::default()
            };
            let resp = self.range("renew scan", req).await?;
            if revision == 0 {
                revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                if revision <= 0 {
                    return Err(BackendError::new(
                        BackendErrorKind::Failed,
                        "etcd renew scan: no revision in the answer",
                    ));
                }
            }
            let Some(last) = resp.kvs.last().map(|kv| kv.key.clone()) else {
                break;
            };
            for kv in resp.kvs {
                if wanted.contains_key(kv.key.as_slice()) {
                    found.insert(kv.key.clone(), kv);
                }
            }
            if !resp.more {
                break;
            }
            from = last;
            from.push(0);
        }
        Ok((revision, found))
    }

    /// The values of the keys of leases `which` at `revision`, in that order (`None`:
    /// gone), up to [`MAX_TXN_OPS`] in one transaction.
    async fn values_at(
        &self,
        revision: i64,
        which: &[usize],
        eks: &[Vec<u8>],
    ) -> Result<Vec<Option<pb::KeyValue>>, BackendError> {
        let mut values = Vec::with_capacity(which.len());
        for chunk in which.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|&i| {
                    op(pb::request_op::Request::RequestRange(pb::RangeRequest {
                        key: eks[i].clone(),
                        revision,
                        ..Default::default()
                    }))
                })
                .collect();
            let req = pb::TxnRequest {
                compare: vec![],
                success: ops,
                failure: vec![],
            };
            let resp = self.txn("renew values", req).await?;
            if resp.responses.len() != chunk.len() {
                return Err(BackendError::new(
                    BackendErrorKind::Failed,
                    "etcd renew values: answers do not match the keys",
                ));
            }
            for r in resp.responses {
                values.push(match r.response {
                    Some(pb::response_op::Response::ResponseRange(range)) => {
                        range.kvs.into_iter().next()
                    }
                    _ => None,
                });
            }
        }
        Ok(values)
    }
}
