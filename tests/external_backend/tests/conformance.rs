//! The whole conformance suite against a backend from another crate: a few lines.

use std::sync::Arc;

use external_backend::CountingBackend;
use leases::backend::Backend;

#[tokio::test(start_paused = true)]
async fn counting_backend_conforms() {
    leases::testing::conformance(|| Arc::new(CountingBackend::new()) as Arc<dyn Backend>).await;
}

/// The kit can fail: a backend that grants a key to everyone who asks is caught.
#[tokio::test(start_paused = true)]
#[should_panic(expected = "conformance cases failed")]
async fn a_backend_that_double_grants_is_caught() {
    leases::testing::conformance(|| Arc::new(GrantsEveryone::default()) as Arc<dyn Backend>).await;
}

/// Grants every acquire, with growing tokens, and otherwise behaves.
#[derive(Default)]
struct GrantsEveryone {
    inner: CountingBackend,
    next: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl Backend for GrantsEveryone {
    async fn acquire(
        &self,
        key: &leases::Key,
        ttl: std::time::Duration,
        metadata: &[u8],
    ) -> Result<leases::backend::AcquireOutcome, leases::BackendError> {
        // Keep the inner store's view too, so that renewals of the first grant work.
        let _ = self.inner.acquire(key, ttl, metadata).await?;
        let token = 1 << 40 | self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(leases::backend::AcquireOutcome::Granted { token })
    }
    async fn renew(
        &self,
        key: &leases::Key,
        token: u64,
        ttl: std::time::Duration,
    ) -> Result<leases::backend::RenewOutcome, leases::BackendError> {
        let _ = (key, token, ttl);
        Ok(leases::backend::RenewOutcome::Renewed)
    }
    async fn release(&self, key: &leases::Key, token: u64) -> Result<bool, leases::BackendError> {
        let _ = (key, token);
        Ok(true)
    }
    async fn revoke(&self, key: &leases::Key) -> Result<Option<u64>, leases::BackendError> {
        self.inner.revoke(key).await
    }
    async fn info(
        &self,
        key: &leases::Key,
    ) -> Result<Option<leases::LeaseInfo>, leases::BackendError> {
        self.inner.info(key).await
    }
    fn subscribe_freed(&self) -> leases::backend::FreedKeys {
        self.inner.subscribe_freed()
    }
}
