//! Adversarial review of `AcquireOptions::keep_until_released` (47d8548): holders that
//! keep their key until they let go of it, in one manager, on paused tokio time.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, MemoryBackend};
use leases::{AcquireOptions, CancelReason, Key, LeaseManager};
use support::slowed::{Op, Slowed};

/// A store whose revokes take `delay` to arrive (a slow database).
fn slow_revokes(delay: Duration) -> Slowed {
    Slowed::new(move |op, _| (op == Op::Revoke).then_some(delay))
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
        .backend(Arc::new(slow_revokes(Duration::from_millis(500))))
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
    // The next caller, after the holder let go (and before the revoke reached the
    // store): it waits, since the key is not this manager's to grant until the revoke
    // has landed.
    let (next, next_ctx) = manager
        .acquire_lease_with(key.clone(), AcquireOptions::new(ttl).wait(ttl))
        .await
        .expect("the key is granted once its kept holder let go and the revoke landed");
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

/// (passes) A waiter queued behind a kept holder: a revoke ends the holder's context
/// but the waiter is not granted the key while the holder still holds its `Lease`; it
/// is granted as soon as the holder lets go.
#[tokio::test(start_paused = true)]
async fn a_waiter_behind_a_revoked_kept_holder_waits_for_its_release() {
    let manager = LeaseManager::start().await.unwrap();
    let key = Key::system(["review", "keep", "waiter"]);
    let ttl = Duration::from_secs(9);
    let (kept, ctx) = manager
        .acquire_lease_with(key.clone(), AcquireOptions::new(ttl).keep_until_released())
        .await
        .unwrap();
    let waiter = {
        let (manager, key) = (manager.clone(), key.clone());
        tokio::spawn(async move {
            let options = AcquireOptions::new(ttl).wait(Duration::from_secs(600));
            let got = manager.acquire_lease_with(key, options).await;
            (tokio::time::Instant::now(), got)
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(manager.revoke(&key).await.unwrap());
    assert_eq!(ctx.reason(), Some(CancelReason::Revoked));
    // Well past the TTL: the holder has not let go, so nobody here has the key.
    tokio::time::sleep(ttl * 3).await;
    assert!(
        !waiter.is_finished(),
        "guarantee 1: the waiter was answered while the kept holder still held its Lease"
    );
    let let_go = tokio::time::Instant::now();
    drop(kept);
    let (at, got) = waiter.await.unwrap();
    let (lease, _ctx) = got.expect("granted once the kept holder let go");
    assert!(
        at - let_go < Duration::from_secs(1),
        "liveness: the waiter was granted {:?} after the kept holder let go",
        at - let_go
    );
    drop(lease);
    manager.shutdown().await;
}

/// (passes) A kept holder at manager shutdown: its context ends `Shutdown`, nothing is
/// given back, and the key is free on the store one TTL after its last renewal at the
/// latest (not kept forever), and not before its holder's deadline.
#[tokio::test(start_paused = true)]
async fn a_kept_holder_at_shutdown_leaves_its_key_to_expire() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let manager = LeaseManager::builder()
        .backend(store.clone())
        .start()
        .await
        .unwrap();
    let key = Key::system(["review", "keep", "shutdown"]);
    let ttl = Duration::from_secs(9);
    let (kept, ctx) = manager
        .acquire_lease_with(key.clone(), AcquireOptions::new(ttl).keep_until_released())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deadline = tokio::time::Instant::from_std(ctx.deadline().unwrap());
    manager.shutdown().await;
    assert_eq!(ctx.reason(), Some(CancelReason::Shutdown));
    let stopped = tokio::time::Instant::now();
    drop(kept);
    let other = LeaseManager::builder()
        .backend(store)
        .start()
        .await
        .unwrap();
    let options = AcquireOptions::new(ttl).wait(ttl * 10);
    let (_lease, _ctx) = other.acquire_lease_with(key, options).await.unwrap();
    let at = tokio::time::Instant::now();
    assert!(
        at >= deadline,
        "guarantee 1: the kept key was granted {:?} before its holder's deadline",
        deadline - at
    );
    assert!(
        at - stopped <= ttl + Duration::from_secs(1),
        "liveness: the kept key came back {:?} after shutdown (TTL {ttl:?})",
        at - stopped
    );
    other.shutdown().await;
}
