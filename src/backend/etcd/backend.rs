//! [`EtcdBackend`]: its construction, and the [`Backend`] operations (acquires and
//! renewals are in `acquire.rs` and `groups.rs`; release, revoke and the reads here).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::encoding::{decode, encode};
use super::options::{config_error, EtcdOptions};
use super::state::Inner;
use super::watch::Watch;
use super::wire::{compare_create, compare_mod, delete_op, op, pb, prefix_end, token_of};
use crate::backend::{AcquireOutcome, Backend, FreedKeys, LeaseInfo, RenewOutcome};
use crate::error::{BackendError, BackendErrorKind, LeaseError};
use crate::key::Key;

/// etcd's default limit of operations in one transaction.
const MAX_TXN_OPS: usize = 128;

/// Leases in an etcd cluster (feature `etcd`). See the module docs of
/// `leases::backend` and the crate README for how leases map onto etcd.
///
/// Connections are made lazily; [`EtcdBackend::connect`] checks the cluster up front.
pub struct EtcdBackend {
    inner: Arc<Inner>,
    watch: Watch,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.inner.prefix))
            .finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// A backend for this cluster. Connections are made lazily (at the first
    /// operation); must be called within a tokio runtime. Fails with
    /// [`LeaseError::InvalidConfig`] for bad options.
    pub fn new(options: EtcdOptions) -> Result<EtcdBackend, LeaseError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(config_error(
                "EtcdBackend::new must be called within a tokio runtime",
            ));
        }
        let channels = options.channels()?;
        Ok(EtcdBackend {
            inner: Arc::new(Inner::new(options, channels)),
            watch: Watch::new(),
        })
    }

    /// [`new`](Self::new), then a check that the cluster answers (a linearizable read,
    /// so a quorum must be up), within the request timeout.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdBackend, LeaseError> {
        let backend = EtcdBackend::new(options)?;
        backend.check().await?;
        Ok(backend)
    }
}

impl Inner {
    /// Time left on a held key's lease, for `LeaseInfo` and `Held`: at most its TTL,
    /// never zero (etcd answers whole seconds, rounded down).
    async fn expires_in(&self, kv: &pb::KeyValue, ttl: Duration) -> Result<Duration, BackendError> {
        let secs = self.time_to_live(kv.lease).await?;
        let left = Duration::from_secs(u64::try_from(secs.max(0)).unwrap_or(0) + 1);
        Ok(left.min(ttl).max(Duration::from_millis(1)))
    }

    async fn info_of(
        &self,
        key: Key,
        kv: &pb::KeyValue,
    ) -> Result<Option<LeaseInfo>, BackendError> {
        let Some(v) = decode(&kv.value) else {
            return Ok(None);
        };
        Ok(Some(LeaseInfo {
            key,
            token: token_of(kv),
            ttl: v.ttl,
            expires_in: self.expires_in(kv, v.ttl).await?,
            metadata: v.metadata,
            revoked: v.revoked,
            acquired_at: Some(v.acquired_at),
        }))
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        self.inner.acquire(key, ttl, metadata).await
    }

    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.inner.renew(key, token, ttl).await
    }

    async fn renew_many(
        &self,
        leases: &[(Key, u64)],
        ttl: Duration,
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        self.inner.renew_many(leases, ttl).await
    }

    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        let inner = &self.inner;
        let ek = inner.etcd_key(key);
        let Ok(revision) = i64::try_from(token) else {
            return Ok(false);
        };
        // A release ends the holder knowingly: the grant record goes with the key.
        let record = inner.record_key(&ek);
        let req = pb::TxnRequest {
            compare: vec![compare_create(&ek, revision)],
            success: vec![delete_op(&ek), delete_op(&record)],
            failure: vec![],
        };
        let resp = inner.txn("release", req).await?;
        if !resp.succeeded {
            // The key vanished (its etcd lease ended early, say) and nobody took it
            // since: its grant record, written by the same transaction as the key (so
            // with the token as its mod revision), goes too, so that nobody waits for
            // this holder, who has let go.
            let req = pb::TxnRequest {
                compare: vec![compare_create(&ek, 0), compare_mod(&record, revision)],
                success: vec![delete_op(&record)],
                failure: vec![],
            };
            inner.txn("release record", req).await?;
        }
        inner.forget(&ek, |h| h.token == Some(token));
        Ok(resp.succeeded)
    }

    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        let inner = &self.inner;
        let ek = inner.etcd_key(key);
        for _ in 0..5 {
            let Some(kv) = inner.get("revoke read", &ek).await? else {
                return Ok(None);
            };
            let Some(v) = decode(&kv.value) else {
                return Ok(None);
            };
            if v.revoked {
                return Ok(Some(token_of(&kv)));
            }
            let value = encode(true, v.ttl, v.acquired_at, &v.nonce, &v.metadata);
            let req = pb::TxnRequest {
                compare: vec![compare_mod(&ek, kv.mod_revision)],
                success: vec![op(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: ek.clone(),
                    value,
                    lease: 0,
                    ignore_lease: true,
                }))],
                failure: vec![],
            };
            if inner.txn("revoke", req).await?.succeeded {
                return Ok(Some(token_of(&kv)));
            }
            // Changed since we read it: look again.
        }
        Err(BackendError::new(
            BackendErrorKind::Failed,
            "etcd revoke: the key kept changing",
        ))
    }

    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        let inner = &self.inner;
        let Some(kv) = inner.get("lease info", &inner.etcd_key(key)).await? else {
            return Ok(None);
        };
        inner.info_of(key.clone(), &kv).await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, BackendError> {
        let inner = &self.inner;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut start = inner.prefix.clone();
        start.extend_from_slice(prefix.as_bytes());
        let end = if prefix.is_empty() {
            let mut p = inner.prefix.clone();
            p.push(b'/');
            start = p.clone();
            prefix_end(&p)
        } else {
            prefix_end(&start)
        };
        let req = pb::RangeRequest {
            key: start,
            range_end: end,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let kvs = inner.range("list", req).await?.kvs;
        let mut leases = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let Some(key) = inner.key_of(&kv.key) else {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "list: skipped an etcd key that is not a lease key");
                continue;
            };
            if let Some(info) = inner.info_of(key, &kv).await? {
                leases.push(info);
            }
        }
        Ok(leases)
    }

    async fn free_among(&self, keys: &[Key]) -> Result<Vec<bool>, BackendError> {
        let inner = &self.inner;
        let mut free = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|k| {
                    op(pb::request_op::Request::RequestRange(pb::RangeRequest {
                        key: inner.etcd_key(k),
                        count_only: true,
                        ..Default::default()
                    }))
                })
                .collect();
            let req = pb::TxnRequest {
                compare: vec![],
                success: ops,
                failure: vec![],
            };
            let resp = inner.txn("free keys", req).await?;
            for r in &resp.responses {
                let held = match &r.response {
                    Some(pb::response_op::Response::ResponseRange(range)) => range.count > 0,
                    _ => true,
                };
                free.push(!held);
            }
        }
        if free.len() != keys.len() {
            return Err(BackendError::new(
                BackendErrorKind::Failed,
                "etcd free keys: answers do not match the keys",
            ));
        }
        Ok(free)
    }

    /// A linearizable read of the prefix (a quorum must answer), within the request
    /// timeout.
    async fn check(&self) -> Result<(), BackendError> {
        self.inner.check_read().await
    }

    fn shared(&self) -> bool {
        true
    }

    fn subscribe_freed(&self) -> FreedKeys {
        self.watch.subscribe(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_absurd_ttl_is_an_error_before_any_io() {
        // Nothing listens on port 1: an error other than the TTL's would be Unavailable.
        let b = EtcdBackend::new(EtcdOptions::new(["http://127.0.0.1:1"])).unwrap();
        let k = Key::system(["x"]);
        let e = b.acquire(&k, Duration::MAX, b"").await.unwrap_err();
        assert_eq!(e.kind(), BackendErrorKind::Failed, "{e}");
        let e = b.renew(&k, 1, Duration::MAX).await.unwrap_err();
        assert_eq!(e.kind(), BackendErrorKind::Failed, "{e}");
    }

    #[tokio::test]
    async fn bad_options_are_config_errors() {
        for opts in [
            EtcdOptions::new(Vec::<String>::new()),
            EtcdOptions::new(["127.0.0.1:2379"]),
            EtcdOptions::new(["https://127.0.0.1:2379"]),
            EtcdOptions::new(["http://127.0.0.1:2379"]).prefix(""),
            EtcdOptions::new(["http://127.0.0.1:2379"]).prefix("/x/"),
            EtcdOptions::new(["http://127.0.0.1:2379"]).request_timeout(Duration::ZERO),
        ] {
            assert!(matches!(
                EtcdBackend::new(opts),
                Err(LeaseError::InvalidConfig(_))
            ));
        }
    }
}
