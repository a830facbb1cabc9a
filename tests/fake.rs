//! FakeLeaser: the leaser users test their own code against.

use std::sync::Arc;
use std::time::Duration;

use leases::{AcquireOptions, CancelReason, FakeLeaser, Key, Lease, LeaseError, Leaser, LossCause};

const TTL: Duration = Duration::from_secs(5);

#[tokio::test]
async fn acquire_conflict_release() {
    let fake = FakeLeaser::new();
    let leaser: Arc<dyn Leaser> = Arc::new(fake.clone());
    let key = Key::module("echo", ["cron"]);
    let (lease, ctx) = leaser.acquire_lease(key.clone(), TTL).await.unwrap();
    assert_eq!(fake.holder(&key), Some(lease.token()));
    assert!(matches!(
        leaser.acquire_lease(key.clone(), TTL).await,
        Err(LeaseError::Conflict)
    ));
    let first = lease.token();
    lease.release().await.unwrap();
    assert_eq!(ctx.reason(), Some(CancelReason::Released));
    assert_eq!(fake.holder(&key), None);
    let (lease, _) = leaser.acquire_lease(key.clone(), TTL).await.unwrap();
    assert!(lease.token() > first);
    drop(lease);
    assert!(fake.held_keys().is_empty(), "drop releases");
}

#[tokio::test]
async fn loss_injection_ends_the_context_and_frees_the_key() {
    let fake = FakeLeaser::new();
    let key = Key::system(["job"]);
    let (lease, ctx) = fake.acquire_lease(key.clone(), TTL).await.unwrap();
    assert!(!fake.lose(&Key::system(["other"])));
    assert!(fake.lose(&key));
    assert_eq!(
        ctx.cancelled().await,
        CancelReason::Lost(LossCause::Injected)
    );
    assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    // The key is free for the next holder, and the stale release did not touch it.
    let (_again, ctx2) = fake.acquire_lease(key.clone(), TTL).await.unwrap();
    assert!(!ctx2.is_cancelled());
    assert!(fake.revoke(&key));
    assert_eq!(ctx2.reason(), Some(CancelReason::Revoked));
}

#[tokio::test]
async fn validates_like_the_real_manager() {
    let fake = FakeLeaser::new();
    let key = Key::system(["v"]);
    assert!(matches!(
        fake.acquire_lease(key.clone(), Duration::from_secs(1))
            .await,
        Err(LeaseError::TtlTooShort { .. })
    ));
    assert!(matches!(
        fake.acquire_lease(key.clone(), Duration::MAX).await,
        Err(LeaseError::TtlTooLong { .. })
    ));
    let lenient = FakeLeaser::with_min_ttl(Duration::from_millis(1));
    let opts = AcquireOptions::new(Duration::from_millis(1)).metadata(b"me".to_vec());
    let (_l, _) = lenient.acquire_lease_with(key.clone(), opts).await.unwrap();
    assert_eq!(lenient.metadata(&key), Some(b"me".to_vec()));
}

#[tokio::test(start_paused = true)]
async fn waiting_acquire_wakes_on_release_or_times_out() {
    let fake = FakeLeaser::new();
    let key = Key::system(["w"]);
    let (lease, _) = fake.acquire_lease(key.clone(), TTL).await.unwrap();
    let f = fake.clone();
    let k = key.clone();
    let waiter = tokio::spawn(async move {
        f.acquire_lease_with(k, AcquireOptions::new(TTL).wait(TTL))
            .await
            .map(|(l, _)| l.token())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    lease.release().await.unwrap();
    assert!(waiter.await.unwrap().is_ok());
    let (_held, _) = fake.acquire_lease(key.clone(), TTL).await.unwrap();
    let err = fake
        .acquire_lease_with(key, AcquireOptions::new(TTL).wait(TTL))
        .await;
    assert!(matches!(err, Err(LeaseError::WaitTimedOut { waited }) if waited == TTL));
}

/// What a user's unit test looks like: code under test takes a `dyn Leaser` and must
/// stop when its lease is lost.
async fn worker(leaser: Arc<dyn Leaser>, key: Key) -> Result<u32, LeaseError> {
    let (lease, ctx): (Lease, _) = leaser.acquire_lease(key, TTL).await?;
    let mut done = 0;
    while !ctx.is_cancelled() {
        done += 1;
        tokio::task::yield_now().await;
    }
    drop(lease);
    Ok(done)
}

#[tokio::test]
async fn users_can_test_their_loss_handling() {
    let fake = FakeLeaser::new();
    let key = Key::system(["worker"]);
    let task = tokio::spawn(worker(Arc::new(fake.clone()), key.clone()));
    while fake.holder(&key).is_none() {
        tokio::task::yield_now().await;
    }
    fake.lose(&key);
    assert!(task.await.unwrap().unwrap() > 0);
}

/// With `keep_lost_keys`, a lost key stays taken until it would have expired, as the
/// real manager keeps it: a unit test sees no takeover that production would not show.
#[tokio::test(start_paused = true)]
async fn a_lost_key_can_be_kept_until_it_expires() {
    let fake = FakeLeaser::new().keep_lost_keys();
    let key = Key::system(["kept"]);
    let (lease, ctx) = fake.acquire_lease(key.clone(), TTL).await.unwrap();
    let lost_at = tokio::time::Instant::now();
    assert!(fake.lose(&key));
    assert_eq!(ctx.reason(), Some(CancelReason::Lost(LossCause::Injected)));
    // Still taken by the lost lease; its release frees nothing.
    assert!(matches!(
        fake.acquire_lease(key.clone(), TTL).await,
        Err(LeaseError::Conflict)
    ));
    assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    assert_eq!(fake.held_keys(), vec![key.clone()]);
    // A waiter gets it when it expires, one TTL after the loss, and not before.
    let (next, _) = fake
        .acquire_lease_with(key.clone(), AcquireOptions::new(TTL).wait(TTL * 3))
        .await
        .unwrap();
    assert_eq!(tokio::time::Instant::now() - lost_at, TTL);
    assert!(next.token() > ctx.token());
    // Revocation frees at once in both modes, as in the manager.
    assert!(fake.revoke(&key));
    assert!(fake.holder(&key).is_none());
}
