//! A backend of our own, written against the public `Backend` trait only: it keeps its
//! leases in a `MemoryBackend` and counts the calls it forwards. It does not offer the
//! inline capability, so the manager drives it through tasks, as it would a database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leases::backend::{AcquireOutcome, Backend, FreedKeys, MemoryBackend, RenewOutcome};
use leases::{BackendError, Key, LeaseInfo};

/// A counting backend over the in-memory one.
#[derive(Debug, Default)]
pub struct CountingBackend {
    inner: MemoryBackend,
    calls: AtomicU64,
}

impl CountingBackend {
    /// A new, empty backend.
    pub fn new() -> CountingBackend {
        CountingBackend::default()
    }

    /// How many calls it has served.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Backend for CountingBackend {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        self.count();
        self.inner.acquire(key, ttl, metadata).await
    }

    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.count();
        self.inner.renew(key, token, ttl).await
    }

    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        self.count();
        self.inner.release(key, token).await
    }

    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        self.count();
        self.inner.revoke(key).await
    }

    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        self.count();
        self.inner.info(key).await
    }

    fn subscribe_freed(&self) -> FreedKeys {
        self.inner.subscribe_freed()
    }
}
