//! `AcquireOptions::resume` at the manager, which the service's re-attaching builds on:
//! a lease moves between managers of a shared store with its token, never revived once
//! it has ended, and never resumed from a store that dies with its process.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, MemoryBackend};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager};

use crate::support::shared_store::SharedStore;

const TTL: Duration = Duration::from_secs(10);

async fn manager(store: &Arc<dyn Backend>) -> LeaseManager {
    LeaseManager::builder()
        .backend(store.clone())
        .start()
        .await
        .unwrap()
}

/// Another manager of a shared store resumes a live lease: same token, renewed by it from
/// then on, for many TTLs after the first manager stopped renewing.
#[tokio::test(start_paused = true)]
async fn another_manager_resumes_a_live_lease() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (manager(&store).await, manager(&store).await);
    let key = Key::system(["resume", "live"]);
    // Held as the lease server holds its clients' leases: its manager's shutdown then
    // leaves the lease in the store instead of releasing it.
    let kept = AcquireOptions::new(TTL).keep_until_released();
    let (lease, _ctx) = a.acquire_lease_with(key.clone(), kept).await.unwrap();
    let token = lease.token();
    let options = AcquireOptions::new(TTL).resume(token).keep_until_released();
    let (again, ctx) = b.acquire_lease_with(key.clone(), options).await.unwrap();
    assert_eq!(again.token(), token, "a resumed lease keeps its token");
    // The first manager goes away without releasing (as a server does).
    a.shutdown().await;
    drop(lease);
    tokio::time::sleep(TTL * 5).await;
    assert_eq!(ctx.reason(), None);
    let info = store.info(&key).await.unwrap().expect("still held");
    assert_eq!(info.token, token);
    again.release().await.unwrap();
    assert!(store.info(&key).await.unwrap().is_none());
}

/// A lease that expired, was released or is revoked is never resumed.
#[tokio::test(start_paused = true)]
async fn an_ended_lease_is_never_resumed() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let b = manager(&store).await;
    let key = Key::system(["resume", "ended"]);
    let resume = |token| AcquireOptions::new(TTL).resume(token);
    // Expired: granted in the store directly, never renewed.
    let leases::backend::AcquireOutcome::Granted { token } =
        store.acquire(&key, TTL, b"").await.unwrap()
    else {
        panic!("free key");
    };
    tokio::time::sleep(TTL + Duration::from_millis(1)).await;
    let err = b.acquire_lease_with(key.clone(), resume(token)).await;
    assert!(matches!(err, Err(LeaseError::NotHeld)), "{err:?}");
    // Released.
    let leases::backend::AcquireOutcome::Granted { token } =
        store.acquire(&key, TTL, b"").await.unwrap()
    else {
        panic!("free key");
    };
    assert!(store.release(&key, token).await.unwrap());
    let err = b.acquire_lease_with(key.clone(), resume(token)).await;
    assert!(matches!(err, Err(LeaseError::NotHeld)), "{err:?}");
    // Revoked.
    let leases::backend::AcquireOutcome::Granted { token } =
        store.acquire(&key, TTL, b"").await.unwrap()
    else {
        panic!("free key");
    };
    store.revoke(&key).await.unwrap();
    let err = b.acquire_lease_with(key.clone(), resume(token)).await;
    assert!(matches!(err, Err(LeaseError::NotHeld)), "{err:?}");
    // None of these took the key: the revoked lease still holds it.
    assert_eq!(
        store.info(&key).await.unwrap().map(|i| i.token),
        Some(token)
    );
}

/// The memory backend shares no lease between processes: another manager's resume is
/// refused, even of a live lease, and the lease is untouched.
#[tokio::test(start_paused = true)]
async fn a_memory_lease_is_not_resumed_elsewhere() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let (a, b) = (manager(&store).await, manager(&store).await);
    let key = Key::system(["resume", "memory"]);
    let (lease, ctx) = a.acquire_lease(key.clone(), TTL).await.unwrap();
    let options = AcquireOptions::new(TTL).resume(lease.token());
    let err = b.acquire_lease_with(key.clone(), options).await;
    assert!(matches!(err, Err(LeaseError::NotHeld)), "{err:?}");
    assert_eq!(ctx.reason(), None);
    lease.release().await.unwrap();
    assert_eq!(ctx.reason(), Some(CancelReason::Released));
}
