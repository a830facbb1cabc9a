//! The conformance suite: every behaviour a [`Backend`] must show under the lease
//! manager, written once and run against every backend (memory, PostgreSQL, and any
//! backend written in another crate).
//!
//! Each case takes an [`Env`] that makes managers sharing one backend. Cases sleep with
//! `tokio::time::sleep`, so they run instantly on paused time (the memory backend) and
//! in real time against a database. Two ways to run it:
//! - [`conformance`](super::conformance()) runs every case, one after the other, each on
//!   a fresh backend from your maker, and panics listing the cases that failed;
//! - [`conformance_tests!`](crate::conformance_tests) generates one `#[test]` per case
//!   (run in parallel, reported one by one), from an async maker of an [`Env`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{AcquireFault, Backend, FaultyBackend, RenewFault};
use crate::{
    AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, Leaser, LossCause, MAX_KEY_LEN,
    MAX_METADATA_LEN,
};

/// What the suite needs from a backend under test.
#[async_trait]
pub trait Env: Send + Sync {
    /// A new manager on the shared backend.
    async fn manager(&self) -> LeaseManager;
    /// A new manager whose backend (the shared one, wrapped) injects faults.
    async fn faulty_manager(&self) -> (LeaseManager, Arc<FaultyBackend>);
    /// A TTL the managers accept (their minimum).
    fn ttl(&self) -> Duration;
    /// A key unique to this test run.
    fn key(&self, name: &str) -> Key;
}

/// A manager on `inner` wrapped in a fault injector, accepting TTLs down to `ttl`: how
/// every `Env::faulty_manager` is built.
pub async fn faulty_manager_on(
    inner: Arc<dyn Backend>,
    ttl: Duration,
) -> (LeaseManager, Arc<FaultyBackend>) {
    let faulty = Arc::new(FaultyBackend::new(inner));
    let m = LeaseManager::builder()
        .min_ttl(ttl)
        .shutdown_timeout(ttl / 2)
        .backend(faulty.clone())
        .start()
        .await
        .unwrap();
    (m, faulty)
}

fn leaser(m: &LeaseManager) -> Arc<dyn Leaser> {
    Arc::new(m.clone())
}

/// Sleeps `n` TTLs.
async fn ttls(env: &dyn Env, n: f64) {
    tokio::time::sleep(env.ttl().mul_f64(n)).await;
}

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

/// A lease whose renewals stop is told at its local deadline, before anyone else is granted the key after it expires.
pub async fn expiry_and_takeover(env: &dyn Env) {
    let (m, faults) = env.faulty_manager().await;
    let other = env.manager().await;
    let key = env.key("takeover");
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    let watcher = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let reason = ctx.cancelled().await;
            (reason, tokio::time::Instant::now())
        })
    };
    faults.fail_renewals(&key, RenewFault::Stall);
    let opts = AcquireOptions::new(env.ttl()).wait(env.ttl() * 4);
    let (new, _) = leaser(&other)
        .acquire_lease_with(key.clone(), opts)
        .await
        .unwrap();
    let taken_at = tokio::time::Instant::now();
    assert!(new.token() > lease.token());
    // The old holder was told first, at its local deadline.
    let (reason, lost_at) = watcher.await.unwrap();
    assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
    assert!(
        lost_at < taken_at,
        "told at {lost_at:?}, taken over at {taken_at:?}"
    );
    assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    new.release().await.unwrap();
    m.shutdown().await;
    other.shutdown().await;
}

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

/// Metadata and the token are visible through `lease_info`.
pub async fn metadata_and_info(env: &dyn Env) {
    let m = env.manager().await;
    let key = env.key("metadata");
    assert_eq!(m.lease_info(&key).await.unwrap(), None);
    let meta = "host-1 'quoted' \"double\" \u{0} ünïcødé 🚀"
        .as_bytes()
        .to_vec();
    let opts = AcquireOptions::new(env.ttl()).metadata(meta.clone());
    let (lease, _) = leaser(&m)
        .acquire_lease_with(key.clone(), opts)
        .await
        .unwrap();
    let info = m.lease_info(&key).await.unwrap().unwrap();
    assert_eq!(info.key, key);
    assert_eq!(info.token, lease.token());
    assert_eq!(info.metadata, meta);
    assert_eq!(info.ttl, env.ttl());
    assert!(info.expires_in <= env.ttl() && !info.expires_in.is_zero());
    assert!(!info.revoked);
    // A backend that records the grant's time records a plausible one.
    if let Some(at) = info.acquired_at {
        let skew = match std::time::SystemTime::now().duration_since(at) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(skew < Duration::from_secs(60), "acquired_at {at:?}");
    }
    lease.release().await.unwrap();
    assert_eq!(m.lease_info(&key).await.unwrap(), None);
    m.shutdown().await;
}

/// Bad input (TTL bounds, oversized keys and metadata) is a typed error, never a panic.
pub async fn bad_input(env: &dyn Env) {
    let m = env.manager().await;
    let l = leaser(&m);
    let key = env.key("bad-input");
    let short = env.ttl() - Duration::from_millis(1);
    assert!(matches!(
        l.acquire_lease(key.clone(), short).await,
        Err(LeaseError::TtlTooShort { ttl, min }) if ttl == short && min == env.ttl()
    ));
    assert!(matches!(
        l.acquire_lease(key.clone(), Duration::MAX).await,
        Err(LeaseError::TtlTooLong { .. })
    ));
    let big = AcquireOptions::new(env.ttl()).metadata(vec![0u8; MAX_METADATA_LEN + 1]);
    assert!(matches!(
        l.acquire_lease_with(key.clone(), big).await,
        Err(LeaseError::MetadataTooLarge { .. })
    ));
    let long = Key::system(["x".repeat(MAX_KEY_LEN)]);
    assert!(matches!(
        l.acquire_lease(long.clone(), env.ttl()).await,
        Err(LeaseError::InvalidKey(_))
    ));
    assert!(matches!(
        m.lease_info(&long).await,
        Err(LeaseError::InvalidKey(_))
    ));
    // Odd characters in keys are fine.
    let odd = Key::system([
        env.key("odd").to_string(),
        "'; DROP TABLE leases; --".into(),
        "\"\\%/\u{0}\u{202e}🚀".into(),
    ]);
    assert!(odd.check_len().is_ok());
    let (lease, _) = l.acquire_lease(odd.clone(), env.ttl()).await.unwrap();
    assert_eq!(
        m.lease_info(&odd).await.unwrap().unwrap().token,
        lease.token()
    );
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
    assert!(held.iter().all(|(_, ctx)| !ctx.is_cancelled()));
    for (lease, ctx) in held {
        lease.release().await.unwrap();
        assert_eq!(ctx.reason(), Some(CancelReason::Released));
    }
    m.shutdown().await;
}

/// Is `key` free for a newcomer right now? (Takes it and gives it back.)
async fn free_now(env: &dyn Env, m: &LeaseManager, key: &Key) -> bool {
    match leaser(m).acquire_lease(key.clone(), env.ttl()).await {
        Ok((lease, _ctx)) => {
            lease.release().await.unwrap();
            true
        }
        Err(LeaseError::Conflict) => false,
        Err(e) => panic!("acquire {key}: {e}"),
    }
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

/// Defect: a panic inside `Backend::acquire` killed the attempt task, left the key's
/// slot busy (every later acquire of the key was `Conflict`) and told the caller
/// `ManagerStopped` though the manager ran.
pub async fn panicking_acquire_frees_the_key(env: &dyn Env) {
    let (m, faults) = env.faulty_manager().await;
    let key = env.key("panicking-acquire");
    faults.fail_acquires(&key, AcquireFault::Panic);
    for wait in [None, Some(env.ttl())] {
        let mut opts = AcquireOptions::new(env.ttl());
        if let Some(w) = wait {
            opts = opts.wait(w);
        }
        match leaser(&m).acquire_lease_with(key.clone(), opts).await {
            Err(LeaseError::Backend(e)) => assert!(e.message().contains("panicked"), "{e}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert!(m.is_running());
    }
    faults.heal_acquires(&key);
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    assert!(!ctx.is_cancelled());
    lease.release().await.unwrap();
    m.shutdown().await;
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

/// An acquire whose answer is lost after the backend granted it (a phantom grant)
/// reports an error, and the phantom holds the key for at most one TTL: bounded, and
/// never a second holder.
pub async fn lost_acquire_answer_is_bounded(env: &dyn Env) {
    let (m, faults) = env.faulty_manager().await;
    let other = env.manager().await;
    let key = env.key("lost-answer");
    faults.fail_acquires(&key, AcquireFault::LoseAnswer);
    assert!(matches!(
        leaser(&m).acquire_lease(key.clone(), env.ttl()).await,
        Err(LeaseError::Backend(_))
    ));
    faults.heal_acquires(&key);
    // The backend granted it to nobody; it is taken until it expires...
    let info = other
        .lease_info(&key)
        .await
        .unwrap()
        .expect("a phantom grant");
    assert!(info.expires_in <= env.ttl());
    // ...and free after one TTL.
    ttls(env, 1.05).await;
    assert!(free_now(env, &other, &key).await);
    m.shutdown().await;
    other.shutdown().await;
}

/// `list` (an optional capability: a backend without it answers `Unsupported`, and the
/// case ends there) shows exactly the live leases under a prefix, ordered by key string,
/// with their tokens, metadata and revocation, up to the limit; no character of the
/// prefix is special (`_` and `%` match only themselves).
pub async fn list_live_leases(env: &dyn Env) {
    let m = env.manager().await;
    let other = env.manager().await;
    let base = env.key("list");
    let key = |name: &str| {
        let mut segments = base.segments().to_vec();
        segments.push(name.to_owned());
        Key::from_segments(segments).expect("a key under the case's key")
    };
    let prefix = format!("{base}/");
    match m.list(&prefix, 100).await {
        Ok(none) => assert!(none.is_empty(), "nothing held yet: {none:?}"),
        Err(LeaseError::Backend(e)) if e.kind() == crate::BackendErrorKind::Unsupported => {
            m.shutdown().await;
            other.shutdown().await;
            return;
        }
        Err(e) => panic!("list: {e}"),
    }
    let opts = |meta: &str| AcquireOptions::new(env.ttl()).metadata(meta.as_bytes().to_vec());
    let mut held = Vec::new();
    // `a%b` is `a%25b` in string form: '%' sorts before '_', '_' before 'b'.
    for (name, manager) in [("b", &m), ("a_1", &other), ("ab1", &m), ("a%b", &other)] {
        let (lease, ctx) = leaser(manager)
            .acquire_lease_with(key(name), opts(&format!("holder of {name}")))
            .await
            .unwrap();
        held.push((name, lease, ctx));
    }
    // Released: no longer listed.
    let (gone, _) = leaser(&m)
        .acquire_lease(key("gone"), env.ttl())
        .await
        .unwrap();
    gone.release().await.unwrap();
    // Outside the prefix (a sibling whose name extends the case's last segment).
    let outside = Key::from_segments({
        let mut segments = base.segments().to_vec();
        if let Some(last) = segments.last_mut() {
            last.push_str("-outside");
        }
        segments
    })
    .unwrap();
    let (_outside, _) = leaser(&m).acquire_lease(outside, env.ttl()).await.unwrap();

    let names = |list: &[crate::LeaseInfo]| -> Vec<String> {
        list.iter()
            .map(|i| i.key.segments().last().cloned().unwrap_or_default())
            .collect()
    };
    let all = other.list(&prefix, 100).await.unwrap();
    assert_eq!(names(&all), ["a%b", "a_1", "ab1", "b"]);
    for info in &all {
        let (name, lease, _) = held
            .iter()
            .find(|(_, lease, _)| lease.key() == &info.key)
            .expect("a listed key is one of ours");
        assert_eq!(info.token, lease.token());
        assert_eq!(info.metadata, format!("holder of {name}").into_bytes());
        assert_eq!(info.ttl, env.ttl());
        assert!(!info.expires_in.is_zero() && info.expires_in <= env.ttl());
        assert!(!info.revoked);
    }
    assert_eq!(names(&m.list(&prefix, 2).await.unwrap()), ["a%b", "a_1"]);
    assert_eq!(
        names(&m.list(&format!("{base}/a_"), 100).await.unwrap()),
        ["a_1"]
    );
    assert_eq!(
        names(&m.list(&format!("{base}/a%"), 100).await.unwrap()),
        ["a%b"]
    );
    assert!(m.list(&format!("{base}/z"), 100).await.unwrap().is_empty());
    assert!(m.list(&prefix, 0).await.unwrap().is_empty());
    // Revoked (by a manager that does not hold it): listed, marked revoked, until the
    // holder gives it back.
    assert!(other.revoke(&key("b")).await.unwrap());
    let b = m.list(&format!("{base}/b"), 100).await.unwrap();
    if let [b] = b.as_slice() {
        assert!(b.revoked, "{b:?}");
    }
    for (_, lease, _) in held {
        let _ = lease.release().await;
    }
    assert!(m.list(&prefix, 100).await.unwrap().is_empty());
    m.shutdown().await;
    other.shutdown().await;
}

/// One conformance case.
pub type Case =
    for<'a> fn(&'a dyn Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

// Every case, by name (the list itself is in `__conformance_cases!`, once).
crate::__conformance_cases!(__conformance_const!());

/// The names of every case, for macros that make one test per case. Calls
/// `$callback!($($args)* ; case, case, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { $($args)* ;
            conflict, release_and_reacquire, tokens_grow, revoke, revoke_from_another_manager,
            drop_releases, wait_for_release, wait_times_out, waiters_first_come_first_served,
            expiry_and_takeover, shutdown_ends_everything, metadata_and_info, bad_input,
            release_after_loss_is_not_held, race_for_one_key, many_keys,
            grant_during_shutdown_is_given_back, panicking_acquire_frees_the_key,
            failed_revoke_still_frees_a_local_holder, lost_acquire_answer_is_bounded,
            list_live_leases
        }
    };
}

/// Defines [`CASES`] from the case list.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_const {
    (; $($case:ident),*) => {
        /// Every case, by name.
        pub const CASES: &[(&str, Case)] = &[
            $((stringify!($case), |env| Box::pin($case(env)))),*
        ];
    };
}
