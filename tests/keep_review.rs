//! Adversarial review of `AcquireOptions::keep_until_released` (47d8548): holders that
//! keep their key until they let go of it, in one manager, on paused tokio time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::backend::{AcquireOutcome, Backend, FreedKeys, LeaseInfo, MemoryBackend, RenewOutcome};
use leases::{AcquireOptions, BackendError, CancelReason, Key, LeaseManager};

/// A store whose revokes take a while to arrive (a slow database).
struct SlowRevoke(MemoryBackend, Duration);

#[async_trait]
impl Backend for SlowRevoke {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        self.0.acquire(key, ttl, metadata).await
    }
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.0.renew(key, token, ttl).await
    }
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        self.0.release(key, token).await
    }
    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        tokio::time::sleep(self.1).await;
        self.0.revoke(key).await
    }
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        self.0.info(key).await
    }
    fn subscribe_freed(&self) -> FreedKeys {
        self.0.subscribe_freed()
    }
}

/// For an ordinary holder the manager keeps the key's slot busy until a revoke has
/// reached the store, "so that nobody here is granted the key before the revoke reached
/// the backend (where it could mark the new lease revoked)" (io.rs). For a holder that
/// keeps its key, `on_revoke` does not: the holder hears `Revoked`, lets go at once,
/// the next caller of this manager is granted the key, and then the slow revoke lands
/// on the *new* lease, which is ended `Revoked` by a revoke that was aimed at (and
/// answered for) its predecessor.
#[tokio::test(start_paused = true)]
async fn a_revoke_of_a_kept_holder_does_not_hit_the_next_holder() {
    let manager = LeaseManager::builder()
        .backend(Arc::new(SlowRevoke(
            MemoryBackend::new(),
            Duration::from_millis(500),
        )))
        .start()
        .await
        .unwrap();
    let key = Key::system(["review", "keep", "revoke"]);
    let ttl = Duration::from_secs(9);
    let options = AcquireOptions::new(ttl).keep_until_released();
    let (kept, kept_ctx) = manager
        .acquire_lease_with(key.clone(), options)
        .await
        .unwrap();
    let revoke = {
        let (manager, key) = (manager.clone(), key.clone());
        tokio::spawn(async move { manager.revoke(&key).await })
    };
    assert_eq!(kept_ctx.cancelled().await, CancelReason::Revoked);
    // The holder has stopped and lets go.
    let kept_token = kept.token();
    let _ = kept.release().await;
    // The next caller, after the holder let go (and before the revoke reached the store).
    let (next, next_ctx) = manager
        .acquire_lease(key.clone(), ttl)
        .await
        .expect("the key is free once its kept holder let go");
    assert!(revoke.await.unwrap().unwrap());
    // Two renewals of the new lease.
    tokio::time::sleep(ttl * 2 / 3 + Duration::from_millis(100)).await;
    assert_eq!(
        next_ctx.reason(),
        None,
        "guarantee 4 (every end has a true reason): a revoke aimed at the kept holder (token {}) ended the next holder (token {}), \
         granted after the first had let go: the slot was not kept busy until the revoke \
         reached the store",
        kept_token,
        next.token()
    );
    drop(next);
    manager.shutdown().await;
}
