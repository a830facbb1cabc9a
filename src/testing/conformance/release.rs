//! Releasing: the key is free at once (and a dropped `Lease` is released); a lease
//! already lost is `NotHeld`.

use super::env::{leaser, Env};
use crate::backend::RenewFault;
use crate::{AcquireOptions, CancelReason, LeaseError, Leaser, LossCause};

/// A released key can be acquired again at once, with a larger token.
pub async fn release_and_reacquire(env: &dyn Env) {
    let m = env.manager().await;
    let other = env.manager().await;
    let key = env.key("release");
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    let t1 = lease.token();
    assert_eq!(ctx.token(), t1);
    lease.release().await.unwrap();
    assert_eq!(ctx.reason(), Some(CancelReason::Released));
    assert_eq!(ctx.cancelled().await, CancelReason::Released);
    // Free at once, for this manager and for another.
    let (lease, _ctx) = leaser(&other)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    assert!(lease.token() > t1);
    lease.release().await.unwrap();
    let (lease, _ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    lease.release().await.unwrap();
    m.shutdown().await;
    other.shutdown().await;
}

/// Dropping a `Lease` releases it.
pub async fn drop_releases(env: &dyn Env) {
    let m = env.manager().await;
    let key = env.key("drop");
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    drop(lease);
    assert_eq!(ctx.cancelled().await, CancelReason::Released);
    // Well before the TTL could have run out, the key is free.
    let opts = AcquireOptions::new(env.ttl()).wait(env.ttl() / 2);
    let (lease, _) = leaser(&m).acquire_lease_with(key, opts).await.unwrap();
    lease.release().await.unwrap();
    m.shutdown().await;
}

/// Releasing a lease that was already lost is `NotHeld`.
pub async fn release_after_loss_is_not_held(env: &dyn Env) {
    let (m, faults) = env.faulty_manager().await;
    let key = env.key("lost-release");
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    faults.fail_renewals(&key, RenewFault::Refuse);
    assert_eq!(
        ctx.cancelled().await,
        CancelReason::Lost(LossCause::RenewalRefused)
    );
    assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    m.shutdown().await;
}
