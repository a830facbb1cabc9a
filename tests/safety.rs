//! Regression tests for safety defects that need a hand-made backend or a broken
//! manager, on the memory backend and paused time. (The defects that any backend can
//! show are conformance cases; the PostgreSQL ones are in `pg_safety.rs`.)

#[macro_use]
#[path = "support/forward.rs"]
mod forward;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend, MemoryBackend};
use leases::{AcquireOptions, BackendError, CancelReason, Key, LeaseError, LeaseManager, Leaser};

const TTL: Duration = Duration::from_secs(1);

/// The one hand-made backend of these tests: a memory backend that counts acquires,
/// and can be told to answer every acquire with "held, expires now", or to take
/// `release_delay` over every release (a slow database).
#[derive(Default)]
struct Counting {
    inner: Arc<MemoryBackend>,
    acquires: AtomicUsize,
    expires_now: bool,
    release_delay: Duration,
}

impl Counting {
    fn new(expires_now: bool) -> Arc<Counting> {
        Arc::new(Counting {
            expires_now,
            ..Counting::default()
        })
    }

    /// A manager whose releases take `delay`, with this shutdown timeout; and the
    /// store behind it, to look at directly.
    async fn slow_releases(
        delay: Duration,
        shutdown_timeout: Duration,
    ) -> (Arc<MemoryBackend>, LeaseManager) {
        let backend = Arc::new(Counting {
            release_delay: delay,
            ..Counting::default()
        });
        let m = LeaseManager::builder()
            .backend(backend.clone())
            .shutdown_timeout(shutdown_timeout)
            .start()
            .await
            .unwrap();
        (backend.inner.clone(), m)
    }

    fn acquires(&self) -> usize {
        self.acquires.load(Ordering::SeqCst)
    }
}

forward_backend! {
    Counting => inner;
    forward: renew, revoke, info, subscribe_freed;
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        let n = self.acquires.fetch_add(1, Ordering::SeqCst);
        if self.expires_now {
            // A safety net so that the regression (a tight loop that never yields to
            // the timer) fails instead of hanging the test.
            assert!(n < 100_000, "tight retry loop: {n} acquires");
            tokio::task::yield_now().await;
            return Ok(AcquireOutcome::Held {
                expires_in: Duration::ZERO,
            });
        }
        self.inner.acquire(key, ttl, metadata).await
    }
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        tokio::time::sleep(self.release_delay).await;
        self.inner.release(key, token).await
    }
}

async fn manager_on(backend: Arc<dyn Backend>) -> LeaseManager {
    LeaseManager::builder()
        .min_ttl(TTL)
        .backend(backend)
        .start()
        .await
        .unwrap()
}

/// Two managers on one memory store.
async fn two_managers() -> (LeaseManager, LeaseManager) {
    let memory = Arc::new(MemoryBackend::new());
    (manager_on(memory.clone()).await, manager_on(memory).await)
}

/// Shuts `manager` down while `waiter`, a wait of an hour through it, is under way: the
/// wait ends with `ManagerStopped` at once.
async fn shutdown_ends_the_wait<T: std::fmt::Debug>(
    manager: LeaseManager,
    waiter: tokio::task::JoinHandle<Result<T, LeaseError>>,
) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    manager.shutdown().await;
    let r = tokio::time::timeout(Duration::from_secs(2), waiter).await;
    assert!(
        matches!(r, Ok(Ok(Err(LeaseError::ManagerStopped)))),
        "{r:?}"
    );
}

/// An attempt kept trying the backend after its caller had given up, until the wait it
/// asked for ran out (a round trip per holder expiry, and a busy slot).
#[tokio::test(start_paused = true)]
async fn an_attempt_stops_when_its_caller_gives_up() {
    let backend = Counting::new(false);
    let holder = manager_on(backend.clone()).await;
    let waiter = manager_on(backend.clone()).await;
    let key = Key::system(["gave-up"]);
    let (_lease, _ctx) = holder.acquire_lease(key.clone(), TTL).await.unwrap();
    let opts = AcquireOptions::new(TTL).wait(Duration::from_secs(600));
    let gave_up = tokio::time::timeout(TTL / 2, waiter.acquire_lease_with(key.clone(), opts)).await;
    assert!(
        gave_up.is_err(),
        "the holder renews, so the wait cannot succeed"
    );
    let before = backend.acquires();
    // The holder keeps renewing; an attempt still running would retry at each of its
    // old expiries (about 60 times in a minute).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = backend.acquires();
    assert!(
        after - before <= 1,
        "{} acquires after the caller gave up",
        after - before
    );
    holder.shutdown().await;
    waiter.shutdown().await;
}

/// "Held, expires now" (a lease expiring between two statements) turned a waiting
/// attempt into a tight loop of round trips.
#[tokio::test(start_paused = true)]
async fn held_expiring_now_does_not_spin() {
    let backend = Counting::new(true);
    let m = manager_on(backend.clone()).await;
    let key = Key::system(["spin"]);
    let opts = AcquireOptions::new(TTL).wait(Duration::from_secs(1));
    let result = m.acquire_lease_with(key, opts).await;
    assert!(
        matches!(result, Err(LeaseError::WaitTimedOut { .. })),
        "{result:?}"
    );
    // One try per 10 ms floor in one second, give or take the first and last.
    let n = backend.acquires();
    assert!(n <= 110, "{n} acquires in one second of waiting");
    m.shutdown().await;
}

/// A supervisor that dies (killed, or a panic) leaves its renewal actors behind; they
/// must not keep renewing leases whose holders were told `ManagerFailed`, or the keys
/// would stay taken by nobody for as long as the process lives.
#[tokio::test(start_paused = true)]
async fn renewers_stop_when_their_supervisor_dies() {
    let (m, other) = two_managers().await;
    let key = Key::system(["orphan"]);
    let (_lease, ctx) = m.acquire_lease(key.clone(), TTL).await.unwrap();
    tokio::time::sleep(TTL / 10).await;
    m.actor().kill();
    tokio::time::sleep(TTL / 10).await;
    assert!(ctx.is_cancelled(), "the holder is told: {:?}", ctx.reason());
    assert!(!matches!(ctx.reason(), Some(CancelReason::Released)));
    // Within a TTL (no renewal after the death), the key is free for others.
    tokio::time::sleep(TTL + TTL / 10).await;
    let (l, _) = other
        .acquire_lease(key.clone(), TTL)
        .await
        .expect("the dead manager's key was kept alive by an orphaned renewer");
    l.release().await.unwrap();
    other.shutdown().await;
}

/// Found by the review of the manager reshape: the handle must reject bad options itself. After shutdown, an
/// acquire with a TTL below the minimum used to fail with `TtlTooShort`; now it fails
/// with `ManagerStopped` (the options are never looked at).
#[tokio::test(start_paused = true)]
async fn bad_options_are_rejected_as_bad_even_after_shutdown() {
    let m = LeaseManager::start().await.unwrap();
    m.shutdown().await;
    let r = Leaser::acquire_lease(&m, Key::system(["a"]), Duration::from_millis(1)).await;
    assert!(
        matches!(r, Err(LeaseError::TtlTooShort { .. })),
        "expected TtlTooShort, got {r:?}"
    );
}

/// Found by the same review: while the supervisor is busy shutting down (its mailbox blocked on slow
/// releases, up to the shutdown timeout), a bad acquire used to be answered at once by
/// the handle; now it queues behind the shutdown and comes back `ManagerStopped`.
#[tokio::test(start_paused = true)]
async fn bad_options_are_answered_without_waiting_for_the_mailbox() {
    let (_mem, m) = Counting::slow_releases(Duration::from_secs(60), Duration::from_secs(10)).await;
    let (_lease, _ctx) = Leaser::acquire_lease(&m, Key::system(["held"]), Duration::from_secs(30))
        .await
        .unwrap();
    let m2 = m.clone();
    let shutdown = tokio::spawn(async move { m2.shutdown().await });
    // Let the supervisor enter its shutdown handler.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = tokio::time::Instant::now();
    let r = Leaser::acquire_lease_with(
        &m,
        Key::system(["b"]),
        AcquireOptions::new(Duration::from_millis(1)),
    )
    .await;
    let waited = t0.elapsed();
    shutdown.await.unwrap();
    assert!(
        matches!(r, Err(LeaseError::TtlTooShort { .. })) && waited < Duration::from_secs(1),
        "expected an immediate TtlTooShort, got {r:?} after {waited:?}"
    );
}

/// Found by the same review: a shutdown whose releases outlast the shutdown timeout used to let them
/// run on (the key was freed as soon as the slow backend answered); now the JoinSet
/// aborts them, so the key stays taken by nobody for the rest of its TTL.
#[tokio::test(start_paused = true)]
async fn a_slow_release_at_shutdown_still_frees_the_key() {
    let (mem, m) = Counting::slow_releases(Duration::from_secs(3), Duration::from_secs(1)).await;
    let key = Key::system(["slow"]);
    let (lease, _ctx) = Leaser::acquire_lease(&m, key.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    m.shutdown().await;
    drop(lease);
    // The release answers 3 s after it started; the lease would expire at 30 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let info = mem.info(&key).await.unwrap();
    assert!(
        info.is_none(),
        "the key is still taken by nobody 5 s after shutdown: {info:?}"
    );
    // Another manager on the same store can take it.
    let other = LeaseManager::builder()
        .backend(mem.clone())
        .start()
        .await
        .unwrap();
    let r = Leaser::acquire_lease(&other, key.clone(), Duration::from_secs(30)).await;
    assert!(r.is_ok(), "another manager could not take the key: {r:?}");
}

/// Found by the review of the first-hour helpers: a waiter whose attempt was running
/// (the key held elsewhere) was not ended by `shutdown`; it waited out its whole wait.
#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_waiter_whose_attempt_is_running() {
    let (a, b) = two_managers().await;
    let key = Key::system(["shutdown-waiter"]);
    let (_held, _ctx) = b.acquire_lease(key.clone(), TTL).await.unwrap();
    let (a2, k2) = (a.clone(), key.clone());
    let task = tokio::spawn(async move {
        a2.acquire_lease_with(k2, AcquireOptions::new(TTL).wait(Duration::from_secs(3600)))
            .await
            .map(|_| ())
    });
    shutdown_ends_the_wait(a, task).await;
    b.shutdown().await;
}

/// The same for `acquire_any`: its wait ends when its manager stops.
#[tokio::test(start_paused = true)]
async fn shutdown_ends_an_acquire_any_wait() {
    let (a, b) = two_managers().await;
    let keys: Vec<Key> = (0..2)
        .map(|i| Key::system(["shutdown-any", &i.to_string()]))
        .collect();
    let (_h0, _c0) = b.acquire_lease(keys[0].clone(), TTL).await.unwrap();
    let (_h1, _c1) = b.acquire_lease(keys[1].clone(), TTL).await.unwrap();
    let (a2, k2) = (a.clone(), keys.clone());
    let task = tokio::spawn(async move {
        a2.acquire_any(
            &k2,
            AcquireOptions::new(TTL).wait(Duration::from_secs(3600)),
        )
        .await
        .map(|(i, _, _)| i)
    });
    shutdown_ends_the_wait(a, task).await;
    b.shutdown().await;
}
