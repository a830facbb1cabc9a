//! A memory store that says it outlives its servers ([`Backend::shared`]), as PostgreSQL
//! and etcd do: several lease servers in one test process on one store, where a lease
//! can be re-attached through another server, on the memory backend's speed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::backend::{AcquireOutcome, Backend, FreedKeys, LeaseInfo, MemoryBackend, RenewOutcome};
use leases::{BackendError, Key};

/// A [`MemoryBackend`] shared by every clone, with `shared()` true.
#[derive(Clone, Default)]
pub struct SharedStore {
    inner: Arc<MemoryBackend>,
    /// How long a renewal's answer takes after the renewal took effect.
    renew_answer_delay: Duration,
}

impl SharedStore {
    /// The same store, reached through a slow link: each renewal answers `delay`
    /// after it took effect (a database that commits, then answers late).
    #[allow(dead_code)]
    pub fn answering_renewals_after(&self, delay: Duration) -> SharedStore {
        SharedStore {
            inner: self.inner.clone(),
            renew_answer_delay: delay,
        }
    }
}

#[async_trait]
impl Backend for SharedStore {
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
        let outcome = self.inner.renew(key, token, ttl).await;
        if !self.renew_answer_delay.is_zero() {
            tokio::time::sleep(self.renew_answer_delay).await;
        }
        outcome
    }
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        self.inner.release(key, token).await
    }
    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        self.inner.revoke(key).await
    }
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        self.inner.info(key).await
    }
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, BackendError> {
        self.inner.list(prefix, limit).await
    }
    fn subscribe_freed(&self) -> FreedKeys {
        self.inner.subscribe_freed()
    }
    fn shared(&self) -> bool {
        true
    }
}
