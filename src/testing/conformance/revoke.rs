//! Revoking: a holder here is told at once and the key freed; a holder elsewhere learns
//! at its next renewal; a failed revoke still frees our own holder.

use super::env::{free_now, leaser, Env};
use crate::{AcquireOptions, CancelReason, LeaseError, Leaser};

/// Revoking a lease held here tells its holder `Revoked` and frees the key at once.
pub async fn revoke(env: &dyn Env) {
    let m = env.manager().await;
    let key = env.key("revoke");
    assert!(!m.revoke(&key).await.unwrap(), "nothing to revoke yet");
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    assert!(m.revoke(&key).await.unwrap());
    assert_eq!(ctx.reason(), Some(CancelReason::Revoked));
    // A locally held key is free once revoke returns.
    let (new, _) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    assert!(new.token() > lease.token());
    // Stale release after revoke: an error, and the newer holder is untouched.
    assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    let info = m.lease_info(&key).await.unwrap().unwrap();
    assert_eq!(info.token, new.token());
    new.release().await.unwrap();
    m.shutdown().await;
}

/// A lease revoked from another manager is told at its next renewal and then given back; until then the key stays taken.
pub async fn revoke_from_another_manager(env: &dyn Env) {
    let holder = env.manager().await;
    let operator = env.manager().await;
    let key = env.key("revoke-remote");
    let (lease, ctx) = leaser(&holder)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    assert!(operator.revoke(&key).await.unwrap());
    // The key is not handed out while the holder may still act...
    if !ctx.is_cancelled() {
        assert!(matches!(
            leaser(&operator)
                .acquire_lease(key.clone(), env.ttl())
                .await,
            Err(LeaseError::Conflict)
        ));
    }
    // ...the holder learns at its next renewal...
    assert_eq!(ctx.cancelled().await, CancelReason::Revoked);
    // ...and then the key is free for others.
    let opts = AcquireOptions::new(env.ttl()).wait(env.ttl() * 2);
    let (new, _) = leaser(&operator)
        .acquire_lease_with(key.clone(), opts)
        .await
        .unwrap();
    assert!(new.token() > lease.token());
    assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    assert_eq!(
        operator.lease_info(&key).await.unwrap().unwrap().token,
        new.token()
    );
    new.release().await.unwrap();
    holder.shutdown().await;
    operator.shutdown().await;
}

/// A revoke whose backend call fails after the local holder was told `Revoked`: the
/// holder's own lease is still given back (compare-and-set on its token), so the key
/// is not left taken by nobody until it expires.
pub async fn failed_revoke_still_frees_a_local_holder(env: &dyn Env) {
    let (m, faults) = env.faulty_manager().await;
    let other = env.manager().await;
    let key = env.key("failed-revoke");
    let (_lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    faults.fail_revokes(true);
    assert!(m.revoke(&key).await.unwrap());
    assert_eq!(ctx.reason(), Some(CancelReason::Revoked));
    assert!(
        free_now(env, &other, &key).await,
        "the revoked key stayed taken"
    );
    // With no local holder, a failing revoke is an error.
    let (_l2, ctx2) = leaser(&other)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    assert!(matches!(m.revoke(&key).await, Err(LeaseError::Backend(_))));
    assert!(!ctx2.is_cancelled());
    m.shutdown().await;
    other.shutdown().await;
}
