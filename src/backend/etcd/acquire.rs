//! Acquires: one transaction that creates the key on its group's etcd lease, with its
//! grant record, if the key does not exist and its grant record is as last seen; else
//! reads both. An acquire recognises its own earlier try by the nonce in the value,
//! looks again shortly at a key whose etcd lease is about to run out, and, when it finds
//! the key gone without a release after a leader change, starts or reports the wait
//! for its last holder (see "Keys that vanish early: grant records" in the module docs).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::calls::status_error;
use super::encoding::{decode, decode_record, encode, encode_record};
use super::state::{until, Held, Inner};
use super::wire::{compare_create, compare_mod, op, pb, range_kv, range_req, token_of};
use crate::backend::AcquireOutcome;
use crate::error::{BackendError, BackendErrorKind};
use crate::key::Key;

/// How long an acquire keeps looking at a key whose etcd lease has under a second left.
const IMMINENT_EXPIRY_POLL: Duration = Duration::from_millis(1600);

/// What a grant record found with its key gone says.
enum RecordState {
    /// The key may be granted now.
    Free,
    /// Its last holder may still be live: start the wait (that holder's TTL).
    Stale(Duration),
    /// A wait is running: until this etcd lease (of the holder's TTL) ends.
    Waiting(i64),
}

impl Inner {
    /// Acquires `key` for `ttl` with this metadata: see the module docs.
    pub(super) async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        let start = Instant::now();
        until(start, ttl)?;
        let ek = self.etcd_key(key);
        let nonce = self.nonce();
        let value = encode(false, ttl, SystemTime::now(), &nonce, metadata);
        let record = self.record_key(&ek);
        // The grant record's mod revision the transaction expects (0: none).
        let mut record_seen = 0;
        let mut lease_retries = 0;
        let mut started_wait = false;
        loop {
            let group = self.group_for(ttl, start).await?;
            let lease = group.id;
            // Remembered before the transaction is sent: if its answer is lost (or this
            // future dropped), the key is deleted before the group's next keep-alive
            // after one TTL.
            self.remember(
                &ek,
                Held {
                    nonce,
                    token: None,
                    lease,
                    live_until: start + ttl,
                    checked: 0,
                },
            );
            let put = op(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: ek.clone(),
                value: value.clone(),
                lease,
                ignore_lease: false,
            }));
            let put_record = op(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: record.clone(),
                value: encode_record(1, ttl, group.term, lease, group.marker),
                lease: 0,
                ignore_lease: false,
            }));
            let req = pb::TxnRequest {
                compare: vec![compare_create(&ek, 0), compare_mod(&record, record_seen)],
                success: vec![put, put_record],
                failure: vec![
                    op(pb::request_op::Request::RequestRange(range_req(ek.clone()))),
                    op(pb::request_op::Request::RequestRange(range_req(
                        record.clone(),
                    ))),
                ],
            };
            let resp = match self.txn_status("acquire", req).await? {
                Ok(resp) => resp,
                Err(status) => {
                    // The group's etcd lease is gone: grant another and try again.
                    self.forget(&ek, |h| h.nonce == nonce);
                    self.drop_group(ttl, lease).await;
                    lease_retries += 1;
                    if lease_retries > 2 {
                        return Err(status_error("acquire", status));
                    }
                    continue;
                }
            };
            if resp.succeeded {
                let token = resp
                    .header
                    .as_ref()
                    .and_then(|h| u64::try_from(h.revision).ok())
                    .filter(|t| *t > 0)
                    .ok_or_else(|| {
                        BackendError::new(
                            BackendErrorKind::Failed,
                            "etcd acquire: no revision in the answer",
                        )
                    })?;
                // The transaction created the key: its mod revision is the token.
                self.update_held(&ek, &nonce, |h| {
                    h.token = Some(token);
                    h.checked = i64::try_from(token).unwrap_or(0);
                });
                return Ok(AcquireOutcome::Granted { token });
            }
            let term_now = self.saw(resp.header.as_ref());
            let Some(kv) = range_kv(&resp, 0).cloned() else {
                self.forget(&ek, |h| h.nonce == nonce);
                // The key is gone; its grant record is not what we expected.
                let Some(f) = range_kv(&resp, 1).cloned() else {
                    // Deleted between the compare and the read: try again.
                    record_seen = 0;
                    continue;
                };
                let mut state = Inner::record_state(&f, ttl, term_now);
                if let RecordState::Free = state {
                    state = self.deleted_by_hand(&f).await?;
                }
                match state {
                    RecordState::Free => {
                        record_seen = f.mod_revision;
                        continue;
                    }
                    RecordState::Stale(held_ttl) => {
                        if started_wait {
                            // Our wait lost a race and the record changed again.
                            return Ok(AcquireOutcome::Held {
                                expires_in: held_ttl,
                            });
                        }
                        started_wait = true;
                        self.start_wait(&ek, &record, &f, held_ttl, term_now)
                            .await?;
                        continue;
                    }
                    RecordState::Waiting(wait) => {
                        let secs = self.time_to_live(wait).await?;
                        let left = Duration::from_secs(u64::try_from(secs.max(0)).unwrap_or(0) + 1);
                        return Ok(AcquireOutcome::Held { expires_in: left });
                    }
                }
            };
            let current = decode(&kv.value);
            if current.as_ref().is_some_and(|v| v.nonce == nonce) {
                // Our own earlier try (whose answer was lost) created it.
                let token = token_of(&kv);
                self.update_held(&ek, &nonce, |h| {
                    h.token = Some(token);
                    h.lease = kv.lease;
                });
                return Ok(AcquireOutcome::Granted { token });
            }
            self.forget(&ek, |h| h.nonce == nonce);
            let held_ttl = current.map(|v| v.ttl).unwrap_or(ttl);
            let secs = self.time_to_live(kv.lease).await?;
            if secs <= 0 && start.elapsed() < IMMINENT_EXPIRY_POLL {
                // Under a second left (or expired and waiting for etcd's sweep): look
                // again shortly rather than answer "held" for a key about to be free.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let left = Duration::from_secs(u64::try_from(secs.max(0)).unwrap_or(0) + 1);
            return Ok(AcquireOutcome::Held {
                expires_in: left.min(held_ttl),
            });
        }
    }

    /// For a key found gone while its grant record `f` is still there (its last holder
    /// never released it): may it be granted now, must a wait start, or is one running?
    ///
    /// A key vanishes without a release when its etcd lease ends: normally etcd expiring
    /// it, after its holder's deadline. But an etcd without the fix for etcd issue
    /// #15247 lets a leader that was frozen or cut off, and deposed meanwhile, revoke
    /// leases early when it resumes, and the key's holder may still be live: until at
    /// most its TTL after the key vanished (its last confirmed renewal started before
    /// that). Such a leader can only revoke etcd leases granted before the leader change,
    /// so when the cluster's term is now higher than the term the holder's etcd lease
    /// was granted in, the key is granted only a holder's TTL after it was first seen
    /// gone, not before (as Kubernetes' leader election waits a lease duration after it
    /// last saw the record change).
    fn record_state(f: &pb::KeyValue, ttl: Duration, term_now: u64) -> RecordState {
        match decode_record(&f.value) {
            Some(r) if r.kind == 2 => RecordState::Waiting(r.lease),
            Some(r) if r.term != 0 && r.term >= term_now => RecordState::Free,
            Some(r) => RecordState::Stale(r.ttl),
            None => RecordState::Stale(ttl),
        }
    }

    /// For a key found gone while its grant record `f` is still there and says it may be
    /// granted now: was it deleted *by hand* (an operator's `etcdctl del`, another
    /// program) while the etcd lease it rode on still lives? Nobody who knows its holder
    /// let go deletes a key without its grant record (a release, the cleanup of keys
    /// nobody holds), and etcd deletes it with its etcd lease; so a key gone while that
    /// etcd lease lives may have a live holder, who learns at its next renewal round:
    /// then its holder's TTL is waited out as after an early revoke. One look at the
    /// etcd lease's time left, only for a key gone with its grant record left behind.
    ///
    /// The same holds for a key gone *with* its etcd lease while the group's marker
    /// lives: etcd expires the marker no later than the etcd lease (it is kept alive
    /// just before it), so a marker alive means the etcd lease did not expire: it was
    /// revoked by hand (`etcdctl lease revoke`), and its holder may be live until its
    /// group's next round. One more look, only when the etcd lease is gone.
    async fn deleted_by_hand(&self, f: &pb::KeyValue) -> Result<RecordState, BackendError> {
        let Some(record) = decode_record(&f.value).filter(|r| r.kind == 1) else {
            return Ok(RecordState::Free);
        };
        if record.lease == 0 {
            return Ok(RecordState::Free);
        }
        // -1: gone (the key went with it); 0 or more: it lives (0: under a second left).
        if self.time_to_live(record.lease).await? >= 0 {
            tracing::debug!(
                key = %String::from_utf8_lossy(&f.key),
                "a lease key deleted while its etcd lease lives: waiting out its holder's TTL"
            );
            return Ok(RecordState::Stale(record.ttl));
        }
        if record.marker != 0 && self.time_to_live(record.marker).await? >= 0 {
            tracing::debug!(
                key = %String::from_utf8_lossy(&f.key),
                "a lease key gone with an etcd lease revoked while its group lives: \
                 waiting out its holder's TTL"
            );
            return Ok(RecordState::Stale(record.ttl));
        }
        Ok(RecordState::Free)
    }

    /// Starts the wait for a key found gone with its stale grant record `f` (see
    /// [`record_state`](Self::record_state)), in etcd so that every backend (every
    /// process, however late it looks) sees the same wait: the record is rewritten as a
    /// *wait* on an etcd lease of the holder's TTL granted now, after the key was seen
    /// gone, and never kept alive. When etcd expires it the record is gone and the key
    /// free. Such an etcd lease cannot be revoked early (a stale leader revokes only
    /// etcd leases kept alive through another leader, whose table it has not seen): its
    /// leader's expiry is its grant plus its TTL, and a leader change only extends it.
    async fn start_wait(
        &self,
        ek: &[u8],
        record: &[u8],
        f: &pb::KeyValue,
        held_ttl: Duration,
        term_now: u64,
    ) -> Result<(), BackendError> {
        let (wait, _) = self.grant_lease("wait grant", held_ttl).await?;
        let req = pb::TxnRequest {
            compare: vec![compare_create(ek, 0), compare_mod(record, f.mod_revision)],
            success: vec![op(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: record.to_vec(),
                value: encode_record(2, held_ttl, term_now, wait, 0),
                lease: wait,
                ignore_lease: false,
            }))],
            failure: vec![],
        };
        // If it failed, someone else changed the record first: the caller looks again.
        self.txn("wait start", req).await?;
        tracing::debug!(
            key = %String::from_utf8_lossy(ek),
            wait = ?held_ttl,
            "key gone without a release after a leader change: waiting out its last holder's TTL"
        );
        Ok(())
    }
}
