//! Shutdown: every context ends, waiters fail, keys are released (a grant made during
//! shutdown included), and later calls are refused.

use super::env::{free_now, leaser, ttls, Env};
use crate::{AcquireOptions, CancelReason, Key, LeaseError, Leaser};

/// Shutdown ends every context with `Shutdown`, fails waiters, releases the keys, and refuses later calls.
pub async fn shutdown_ends_everything(env: &dyn Env) {
    let m = env.manager().await;
    let other = env.manager().await;
    let keys: Vec<Key> = (0..5).map(|i| env.key(&format!("shutdown-{i}"))).collect();
    let mut held = Vec::new();
    for k in &keys {
        held.push(
            leaser(&m)
                .acquire_lease(k.clone(), env.ttl())
                .await
                .unwrap(),
        );
    }
    let l = leaser(&m);
    let k0 = keys[0].clone();
    let ttl = env.ttl();
    let waiter = tokio::spawn(async move {
        l.acquire_lease_with(k0, AcquireOptions::new(ttl).wait(ttl * 10))
            .await
    });
    tokio::time::sleep(env.ttl() / 10).await;
    m.shutdown().await;
    assert!(!m.is_running());
    for (_, ctx) in &held {
        assert_eq!(ctx.reason(), Some(CancelReason::Shutdown));
    }
    assert!(matches!(
        waiter.await.unwrap(),
        Err(LeaseError::ManagerStopped)
    ));
    assert!(matches!(
        leaser(&m).acquire_lease(keys[1].clone(), env.ttl()).await,
        Err(LeaseError::ManagerStopped)
    ));
    assert!(matches!(
        m.revoke(&keys[1]).await,
        Err(LeaseError::ManagerStopped)
    ));
    assert!(matches!(
        m.lease_info(&keys[1]).await,
        Err(LeaseError::ManagerStopped)
    ));
    // Shutdown released the keys: another manager gets them at once.
    for k in &keys {
        let (l, _) = leaser(&other)
            .acquire_lease(k.clone(), env.ttl())
            .await
            .unwrap();
        l.release().await.unwrap();
    }
    // Releasing after shutdown is an error, not a panic: the lease is not held any
    // more (shutdown ended it), as `Lease::release` promises.
    for (lease, _) in held {
        assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    }
    m.shutdown().await; // twice is fine
    other.shutdown().await;
}

/// Defect: a waiter's attempt granted while `shutdown` waited on releases reported to
/// an actor that was stopping; the grant was dropped and the key stayed leased by
/// nobody for a whole TTL. Now the lost report gives the key back.
pub async fn grant_during_shutdown_is_given_back(env: &dyn Env) {
    let (a, faults) = env.faulty_manager().await;
    let b = env.manager().await;
    let watcher = env.manager().await;
    let wanted = env.key("shutdown-grant-wanted");
    let slow = env.key("shutdown-grant-slow");
    let ttl = env.ttl();
    let (b_lease, _b_ctx) = leaser(&b).acquire_lease(wanted.clone(), ttl).await.unwrap();
    let (_a_lease, _a_ctx) = leaser(&a).acquire_lease(slow.clone(), ttl).await.unwrap();
    // A waits for `wanted` (an attempt task waiting on the backend).
    let l = leaser(&a);
    let k = wanted.clone();
    let waiter = tokio::spawn(async move {
        l.acquire_lease_with(k, AcquireOptions::new(ttl).wait(ttl * 20))
            .await
    });
    ttls(env, 0.1).await;
    // A's shutdown hangs on releasing `slow`...
    faults.stall_releases(true);
    let a2 = a.clone();
    let shutdown = tokio::spawn(async move { a2.shutdown().await });
    ttls(env, 0.1).await;
    faults.stall_releases(false);
    // ...while B frees `wanted`, which A's waiting attempt is then granted.
    b_lease.release().await.unwrap();
    shutdown.await.unwrap();
    assert!(matches!(
        waiter.await.unwrap(),
        Err(LeaseError::ManagerStopped)
    ));
    // The grant nobody took was given back: the key is free long before a TTL.
    ttls(env, 0.2).await;
    assert!(
        free_now(env, &watcher, &wanted).await,
        "the key granted during shutdown was leaked"
    );
    b.shutdown().await;
    watcher.shutdown().await;
}
