//! The conformance suite at the level of the [`Leaser`] trait: what any leaser must do,
//! whatever is behind it (a [`LeaseManager`](crate::LeaseManager) on a backend, or a
//! [`ClientLeaser`](crate::ClientLeaser) talking to a lease service).
//!
//! The backend suite ([`conformance`](mod@super::conformance)) proves a storage backend
//! under the manager, with faults injected into the backend; this suite proves the
//! guarantees as a holder sees them through the trait, so it runs unchanged against a
//! leaser across a network. Each case takes a [`LeaserEnv`]; run them all with
//! [`leaser_conformance_tests!`](crate::leaser_conformance_tests).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{AcquireOptions, CancelReason, Key, LeaseError, LeaseInfo, Leaser, MAX_METADATA_LEN};

/// What the leaser suite needs of an environment.
#[async_trait]
pub trait LeaserEnv: Send + Sync {
    /// A new, independent leaser on the shared store (another process, as it were).
    async fn leaser(&self) -> Arc<dyn Leaser>;
    /// Revokes `key` the way an operator would; `true` if there was a lease.
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError>;
    /// The current lease on `key`, if any.
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError>;
    /// A TTL the leasers accept (their minimum).
    fn ttl(&self) -> Duration;
    /// A key unique to this test run.
    fn key(&self, name: &str) -> Key;
}

/// Sleeps `n` TTLs.
async fn ttls(env: &dyn LeaserEnv, n: f64) {
    tokio::time::sleep(env.ttl().mul_f64(n)).await;
}

/// Polls `acquire` until it is granted or `within` passes.
async fn acquire_within(
    l: &dyn Leaser,
    key: &Key,
    ttl: Duration,
    within: Duration,
) -> Option<(crate::Lease, crate::LeaseContext)> {
    let until = tokio::time::Instant::now() + within;
    loop {
        match l.acquire_lease(key.clone(), ttl).await {
            Ok(got) => return Some(got),
            Err(LeaseError::Conflict) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(ttl / 20).await;
            }
            Err(LeaseError::Conflict) => return None,
            Err(e) => panic!("acquire {key}: {e}"),
        }
    }
}

/// A held key is `Conflict` for everyone else, and for its own holder's leaser.
pub async fn conflict(env: &dyn LeaserEnv) {
    let (a, b) = (env.leaser().await, env.leaser().await);
    let k = env.key("conflict");
    let (lease, ctx) = a.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    for l in [&a, &b] {
        assert!(matches!(
            l.acquire_lease(k.clone(), env.ttl()).await,
            Err(LeaseError::Conflict)
        ));
    }
    assert!(!ctx.is_cancelled());
    lease.release().await.unwrap();
}

/// Release ends the holder's context with `Released` and frees the key at once; the
/// next holder's token is larger.
pub async fn release_and_reacquire(env: &dyn LeaserEnv) {
    let (a, b) = (env.leaser().await, env.leaser().await);
    let k = env.key("release");
    let (lease, ctx) = a.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    let first = lease.token();
    assert_eq!(ctx.token(), first);
    lease.release().await.unwrap();
    assert_eq!(ctx.reason(), Some(CancelReason::Released));
    let (lease, _ctx) = b.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    assert!(lease.token() > first, "{} after {first}", lease.token());
    lease.release().await.unwrap();
}

/// Renewal keeps a lease for many TTLs; nobody else gets it meanwhile.
pub async fn renewal_keeps_the_lease(env: &dyn LeaserEnv) {
    let (a, b) = (env.leaser().await, env.leaser().await);
    let k = env.key("renewal");
    let (lease, ctx) = a.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    for _ in 0..6 {
        ttls(env, 0.5).await;
        assert!(!ctx.is_cancelled(), "{:?}", ctx.reason());
        assert!(matches!(
            b.acquire_lease(k.clone(), env.ttl()).await,
            Err(LeaseError::Conflict)
        ));
    }
    lease.release().await.unwrap();
}

/// Dropping the lease releases it: the key is free again well within a TTL.
pub async fn drop_releases(env: &dyn LeaserEnv) {
    let (a, b) = (env.leaser().await, env.leaser().await);
    let k = env.key("drop");
    let (lease, ctx) = a.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    drop(lease);
    let got = acquire_within(b.as_ref(), &k, env.ttl(), env.ttl() / 2).await;
    assert!(
        got.is_some(),
        "a dropped lease was not released within TTL/2"
    );
    assert!(ctx.is_cancelled());
}

/// Tokens of one key only grow, across leasers.
pub async fn tokens_grow(env: &dyn LeaserEnv) {
    let leasers = [env.leaser().await, env.leaser().await];
    let k = env.key("tokens");
    let mut last = 0;
    for i in 0..6 {
        let (lease, _ctx) = leasers[i % 2]
            .acquire_lease(k.clone(), env.ttl())
            .await
            .unwrap();
        assert!(lease.token() > last, "{} after {last}", lease.token());
        last = lease.token();
        lease.release().await.unwrap();
    }
}

/// A revoke ends the holder's context with `Revoked` and frees the key.
pub async fn revoke(env: &dyn LeaserEnv) {
    let (a, b) = (env.leaser().await, env.leaser().await);
    let k = env.key("revoke");
    let (lease, ctx) = a.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    assert!(env.revoke(&k).await.unwrap());
    let reason = tokio::time::timeout(env.ttl() * 2, ctx.cancelled())
        .await
        .expect("the holder is told of the revoke");
    assert_eq!(reason, CancelReason::Revoked);
    let got = acquire_within(b.as_ref(), &k, env.ttl(), env.ttl() * 2).await;
    let (next, _) = got.expect("a revoked key becomes free");
    assert!(next.token() > lease.token());
    assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    next.release().await.unwrap();
    assert!(!env.revoke(&env.key("revoke-nothing")).await.unwrap());
}

/// A waiter gets the key when its holder releases it.
pub async fn wait_for_release(env: &dyn LeaserEnv) {
    let (a, b) = (env.leaser().await, env.leaser().await);
    let k = env.key("wait");
    let (lease, _ctx) = a.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    let first = lease.token();
    let waiter = {
        let (b, k, ttl) = (b.clone(), k.clone(), env.ttl());
        tokio::spawn(async move {
            b.acquire_lease_with(k, AcquireOptions::new(ttl).wait(ttl * 10))
                .await
        })
    };
    ttls(env, 0.5).await;
    assert!(!waiter.is_finished());
    lease.release().await.unwrap();
    let (next, ctx) = tokio::time::timeout(env.ttl() * 5, waiter)
        .await
        .expect("the waiter is served")
        .unwrap()
        .unwrap();
    assert!(next.token() > first);
    assert!(!ctx.is_cancelled());
    next.release().await.unwrap();
}

/// A wait that runs out is `WaitTimedOut`, and the holder keeps its lease.
pub async fn wait_times_out(env: &dyn LeaserEnv) {
    let (a, b) = (env.leaser().await, env.leaser().await);
    let k = env.key("wait-out");
    let (lease, ctx) = a.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    let got = b
        .acquire_lease_with(
            k.clone(),
            AcquireOptions::new(env.ttl()).wait(env.ttl() / 2),
        )
        .await;
    assert!(
        matches!(got, Err(LeaseError::WaitTimedOut { .. })),
        "{got:?}"
    );
    assert!(!ctx.is_cancelled());
    lease.release().await.unwrap();
}

/// Metadata and token are visible to anyone; a released key shows no lease.
pub async fn metadata_and_info(env: &dyn LeaserEnv) {
    let a = env.leaser().await;
    let k = env.key("info");
    let (lease, _ctx) = a
        .acquire_lease_with(
            k.clone(),
            AcquireOptions::new(env.ttl()).metadata(b"host-a".to_vec()),
        )
        .await
        .unwrap();
    let info = env.info(&k).await.unwrap().expect("a held key has info");
    assert_eq!(info.key, k);
    assert_eq!(info.token, lease.token());
    assert_eq!(info.metadata, b"host-a");
    assert!(!info.revoked);
    assert!(info.expires_in <= env.ttl());
    lease.release().await.unwrap();
    assert!(env.info(&k).await.unwrap().is_none());
}

/// Input a user can get wrong is a typed error.
pub async fn bad_input(env: &dyn LeaserEnv) {
    let a = env.leaser().await;
    let k = env.key("bad");
    assert!(matches!(
        a.acquire_lease(k.clone(), env.ttl() / 2).await,
        Err(LeaseError::TtlTooShort { .. })
    ));
    assert!(matches!(
        a.acquire_lease(k.clone(), Duration::from_secs(365 * 24 * 3600))
            .await,
        Err(LeaseError::TtlTooLong { .. })
    ));
    assert!(matches!(
        a.acquire_lease_with(
            k.clone(),
            AcquireOptions::new(env.ttl()).metadata(vec![0; MAX_METADATA_LEN + 1])
        )
        .await,
        Err(LeaseError::MetadataTooLarge { .. })
    ));
    // Nothing was taken.
    let (lease, _ctx) = a.acquire_lease(k, env.ttl()).await.unwrap();
    lease.release().await.unwrap();
}

/// Of many leasers racing for one key, exactly one wins.
pub async fn race_for_one_key(env: &dyn LeaserEnv) {
    let k = env.key("race");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let l = env.leaser().await;
        let (k, ttl) = (k.clone(), env.ttl());
        tasks.push(tokio::spawn(async move {
            let got = l.acquire_lease(k, ttl).await;
            (l, got)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (l, got) = t.await.unwrap();
        match got {
            Ok(held) => winners.push((l, held)),
            Err(LeaseError::Conflict) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners.len(), 1);
    for (_l, (lease, _ctx)) in winners {
        lease.release().await.unwrap();
    }
}

/// Many keys held at once each get their own token and stay live.
pub async fn many_keys(env: &dyn LeaserEnv) {
    let a = env.leaser().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (a, k, ttl) = (a.clone(), env.key(&format!("many/{i}")), env.ttl());
        tasks.push(tokio::spawn(async move { a.acquire_lease(k, ttl).await }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap().unwrap());
    }
    let mut tokens: Vec<u64> = held.iter().map(|(l, _)| l.token()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 50);
    ttls(env, 2.0).await;
    assert!(held.iter().all(|(_, ctx)| !ctx.is_cancelled()));
    for (lease, ctx) in held {
        lease.release().await.unwrap();
        assert_eq!(ctx.reason(), Some(CancelReason::Released));
    }
}

/// The context's deadline is never later than the lease's expiry as the store sees it.
pub async fn deadline_before_expiry(env: &dyn LeaserEnv) {
    let a = env.leaser().await;
    let k = env.key("deadline");
    let (lease, ctx) = a.acquire_lease(k.clone(), env.ttl()).await.unwrap();
    for _ in 0..4 {
        // The deadline first: a renewal after this read only moves the store's expiry
        // later, so the expiry read next bounds this deadline.
        let deadline = ctx.deadline().expect("a held lease has a deadline");
        let info = env.info(&k).await.unwrap().expect("held");
        let after = tokio::time::Instant::now().into_std();
        assert!(
            deadline <= after + info.expires_in,
            "the holder's deadline is past the store's expiry"
        );
        ttls(env, 0.3).await;
    }
    lease.release().await.unwrap();
}

/// Every case of this suite, by name (for [`leaser_conformance_tests!`](crate::leaser_conformance_tests)).
#[doc(hidden)]
#[macro_export]
macro_rules! __leaser_cases {
    ($mac:ident ! ( $($args:tt)* )) => {
        $crate::$mac!($($args)* ; conflict, release_and_reacquire, renewal_keeps_the_lease,
            drop_releases, tokens_grow, revoke, wait_for_release, wait_times_out,
            metadata_and_info, bad_input, race_for_one_key, many_keys, deadline_before_expiry);
    };
}

/// One test per case of the leaser suite: `leaser_conformance_tests!(make_env,
/// #[tokio::test])`, where `make_env(case_name)` is an async fn returning a
/// [`LeaserEnv`].
#[macro_export]
macro_rules! leaser_conformance_tests {
    ($make:expr, #[$attr:meta]) => {
        $crate::__leaser_cases!(__leaser_conformance_tests!($make, #[$attr]));
    };
}

/// Expands [`leaser_conformance_tests!`] for each case.
#[doc(hidden)]
#[macro_export]
macro_rules! __leaser_conformance_tests {
    ($make:expr, #[$attr:meta] ; $($case:ident),*) => {
        $(
            #[$attr]
            async fn $case() {
                let env = ($make)(stringify!($case)).await;
                $crate::testing::leaser::$case(&env).await;
            }
        )*
    };
}
