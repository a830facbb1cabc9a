//! One holder at a time, each with a larger token: conflicts in one manager and across
//! managers, tokens that grow, a race that exactly one wins, many keys held at once.

use super::env::{leaser, ttls, Env};
use crate::{AcquireOptions, CancelReason, LeaseError, Leaser};

/// A held key is `Conflict` for everyone else, in the same manager and in another.
pub async fn conflict(env: &dyn Env) {
    let m = env.manager().await;
    let other = env.manager().await;
    let key = env.key("conflict");
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    assert_eq!(lease.key(), &key);
    for l in [leaser(&m), leaser(&other)] {
        let err = l.acquire_lease(key.clone(), env.ttl()).await.unwrap_err();
        assert!(matches!(err, LeaseError::Conflict), "{err:?}");
        assert_eq!(err.to_string(), "lease already held");
    }
    // Held across several renewals.
    ttls(env, 2.5).await;
    assert!(!ctx.is_cancelled(), "{:?}", ctx.reason());
    assert!(matches!(
        leaser(&other).acquire_lease(key.clone(), env.ttl()).await,
        Err(LeaseError::Conflict)
    ));
    lease.release().await.unwrap();
    m.shutdown().await;
    other.shutdown().await;
}

/// Tokens grow with every grant of a key, across managers.
pub async fn tokens_grow(env: &dyn Env) {
    let managers = [env.manager().await, env.manager().await];
    let key = env.key("tokens");
    let mut last = 0;
    for i in 0..10 {
        let (lease, _) = leaser(&managers[i % 2])
            .acquire_lease(key.clone(), env.ttl())
            .await
            .unwrap();
        assert!(lease.token() > last, "{} after {last}", lease.token());
        last = lease.token();
        if i % 3 == 0 {
            drop(lease);
            // Dropping releases in the background; wait for the key.
            let opts = AcquireOptions::new(env.ttl()).wait(env.ttl() * 2);
            let (lease, _) = leaser(&managers[i % 2])
                .acquire_lease_with(key.clone(), opts)
                .await
                .unwrap();
            assert!(lease.token() > last);
            last = lease.token();
            lease.release().await.unwrap();
        } else {
            lease.release().await.unwrap();
        }
    }
    for m in managers {
        m.shutdown().await;
    }
}

/// Many managers racing for one key: exactly one wins.
pub async fn race_for_one_key(env: &dyn Env) {
    let managers = [env.manager().await, env.manager().await];
    let key = env.key("race");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let l = leaser(&managers[i % 2]);
        let k = key.clone();
        let ttl = env.ttl();
        tasks.push(tokio::spawn(async move { l.acquire_lease(k, ttl).await }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(won) => winners.push(won),
            Err(LeaseError::Conflict) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of 100 racers wins");
    for (lease, _) in winners {
        lease.release().await.unwrap();
    }
    for m in managers {
        m.shutdown().await;
    }
}

/// Many keys held at once each get their own token and stay live.
pub async fn many_keys(env: &dyn Env) {
    let m = env.manager().await;
    let l = leaser(&m);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let l = l.clone();
        let k = env.key(&format!("many/{i}"));
        let ttl = env.ttl();
        tasks.push(tokio::spawn(async move { l.acquire_lease(k, ttl).await }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap().unwrap());
    }
    let mut tokens: Vec<u64> = held.iter().map(|(l, _)| l.token()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 200);
    ttls(env, 2.0).await;
    let ended: Vec<_> = held
        .iter()
        .filter_map(|(l, ctx)| ctx.reason().map(|r| (l.key().to_string(), l.token(), r)))
        .collect();
    assert!(ended.is_empty(), "leases ended while held: {ended:?}");
    for (lease, ctx) in held {
        lease.release().await.unwrap();
        assert_eq!(ctx.reason(), Some(CancelReason::Released));
    }
    m.shutdown().await;
}
