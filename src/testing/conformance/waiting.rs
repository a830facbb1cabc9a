//! Waiting for a held key: woken by the release, timed out when the wait runs out, and
//! served first come, first served.

use super::env::{leaser, ttls, Env};
use crate::{AcquireOptions, LeaseError, Leaser};

/// A waiting acquire is granted as soon as the holder releases.
pub async fn wait_for_release(env: &dyn Env) {
    let m = env.manager().await;
    let other = env.manager().await;
    let key = env.key("wait");
    let (lease, _) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    let l = leaser(&other);
    let k = key.clone();
    let ttl = env.ttl();
    let waiter = tokio::spawn(async move {
        l.acquire_lease_with(k, AcquireOptions::new(ttl).wait(ttl * 4))
            .await
    });
    ttls(env, 1.5).await;
    assert!(!waiter.is_finished());
    let released_at = tokio::time::Instant::now();
    lease.release().await.unwrap();
    let (got, ctx) = waiter.await.unwrap().unwrap();
    // Woken by the release, not by a poll or the timeout.
    assert!(
        released_at.elapsed() < env.ttl() / 2,
        "{:?}",
        released_at.elapsed()
    );
    assert!(got.token() > 0 && !ctx.is_cancelled());
    got.release().await.unwrap();
    m.shutdown().await;
    other.shutdown().await;
}

/// A wait that runs out is `Conflict`.
pub async fn wait_times_out(env: &dyn Env) {
    let m = env.manager().await;
    let key = env.key("wait-timeout");
    let (lease, _) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let opts = AcquireOptions::new(env.ttl()).wait(env.ttl());
    let err = leaser(&m)
        .acquire_lease_with(key.clone(), opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LeaseError::WaitTimedOut { waited } if waited == env.ttl()),
        "{err:?}"
    );
    assert!(started.elapsed() >= env.ttl());
    lease.release().await.unwrap();
    m.shutdown().await;
}

/// Waiters of one manager are served in the order they came.
pub async fn waiters_first_come_first_served(env: &dyn Env) {
    let m = env.manager().await;
    let key = env.key("fifo");
    let (lease, _) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..4 {
        let l = leaser(&m);
        let k = key.clone();
        let ttl = env.ttl();
        let tx = tx.clone();
        tokio::spawn(async move {
            let (lease, _) = l
                .acquire_lease_with(k, AcquireOptions::new(ttl).wait(ttl * 20))
                .await
                .unwrap();
            tx.send(i).unwrap();
            lease.release().await.unwrap();
        });
        // Queue them in a known order.
        tokio::time::sleep(env.ttl() / 10).await;
    }
    lease.release().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, [0, 1, 2, 3]);
    m.shutdown().await;
}
