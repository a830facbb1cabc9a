//! An adversarial review of renewal groups (`src/manager/group.rs`): each test is a
//! finding (failed before its fix) or a probe that held. Paused time, the memory backend
//! behind a scripted wrapper.
//!
//! A test that could hang on a bug (a group task that spins on paused time never lets the
//! clock move) runs its runtime on a thread of its own and is waited for on the real
//! clock, so that it fails instead of hanging.

#[macro_use]
#[path = "support/forward.rs"]
mod forward;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend, MemoryBackend, RenewOutcome};
use leases::{BackendError, CancelReason, Key, LeaseManager, LossCause};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(1);

/// How a scripted group call answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GroupCall {
    /// As the memory backend does.
    Normal,
    /// It panics.
    Panic,
    /// One answer too many (the first lease's answer given twice, at the front).
    OneTooMany,
    /// One answer too few (the last lease's dropped).
    OneTooFew,
}

/// The memory backend, with: acquires of some keys that take `slow_acquire` (the
/// backend's acquire itself runs after the pause), single renewals of some keys that
/// never answer, and group calls scripted by [`GroupCall`].
struct Scripted {
    inner: MemoryBackend,
    slow: Mutex<HashSet<Key>>,
    slow_acquire: Duration,
    hang_renew: Mutex<HashSet<Key>>,
    many: Mutex<GroupCall>,
    group_calls: AtomicUsize,
    renews: AtomicUsize,
    /// How long a group call waits before the memory backend answers it.
    group_delay: Mutex<Duration>,
}

impl Scripted {
    fn new(slow_acquire: Duration) -> Arc<Scripted> {
        Arc::new(Scripted {
            inner: MemoryBackend::new(),
            slow: Mutex::new(HashSet::new()),
            slow_acquire,
            hang_renew: Mutex::new(HashSet::new()),
            many: Mutex::new(GroupCall::Normal),
            group_calls: AtomicUsize::new(0),
            renews: AtomicUsize::new(0),
            group_delay: Mutex::new(Duration::ZERO),
        })
    }

    fn set_many(&self, many: GroupCall) {
        *self.many.lock().unwrap() = many;
    }
}

forward_backend! {
    Scripted => inner;
    forward: release, revoke, info, subscribe_freed;
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        if self.slow.lock().unwrap().contains(key) {
            tokio::time::sleep(self.slow_acquire).await;
        }
        self.inner.acquire(key, ttl, metadata).await
    }
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.renews.fetch_add(1, Ordering::SeqCst);
        if self.hang_renew.lock().unwrap().contains(key) {
            std::future::pending::<()>().await;
        }
        self.inner.renew(key, token, ttl).await
    }
    async fn renew_many(
        &self,
        leases: &[(Key, u64)],
        ttl: Duration,
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        self.group_calls.fetch_add(1, Ordering::SeqCst);
        let many = *self.many.lock().unwrap();
        if many == GroupCall::Panic {
            panic!("scripted group call panic");
        }
        let delay = *self.group_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let mut answers = self.inner.renew_many(leases, ttl).await;
        match many {
            GroupCall::Normal | GroupCall::Panic => {}
            GroupCall::OneTooMany => {
                let first = answers[0].clone();
                answers.insert(0, first);
            }
            GroupCall::OneTooFew => {
                answers.pop();
            }
        }
        answers
    }
}

async fn manager(backend: Arc<dyn Backend>) -> LeaseManager {
    LeaseManager::builder()
        .min_ttl(TTL)
        .backend(backend)
        .start()
        .await
        .unwrap()
}

fn k(name: &str) -> Key {
    Key::system(["groups_review", name])
}

/// Runs `test` on a paused current-thread runtime of its own thread, failing if it has
/// not finished after `real` seconds of the real clock (a group task spinning on paused
/// time stops the clock: the test would hang).
fn on_paused_time<F>(real: u64, test: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(test());
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(real)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the test failed"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the test did not finish within {real} s of real time: something spins")
        }
    }
}

/// Finding 1. After a group call panicked, the group renews its leases one by one
/// (`one_by_one`). A lease that joins meanwhile with a deadline *before* every unanswered
/// member's (its acquire started before their last confirmed renewal: a slow acquire)
/// made the loop wake at that deadline, find nothing to do (it looked at joined leases
/// only when an unanswered member's deadline had passed), and sleep until the same
/// instant again, already past: a busy loop until the first unanswered deadline. On
/// paused time the clock never moves again: everything hangs.
#[test]
fn a_lease_joining_one_by_one_renewals_with_an_earlier_deadline_does_not_spin() {
    on_paused_time(30, || async {
        let b = Scripted::new(Duration::from_millis(400));
        let m = manager(b.clone()).await;
        let margin = m.safety_margin(TTL);
        let t0 = Instant::now();
        // `c` at 0: the round at TTL/3 renews it (deadline TTL/3 + TTL - margin).
        let (c, c_ctx) = m.acquire_lease(k("c"), TTL).await.unwrap();
        // `b`'s acquire starts at 300 ms, before that round, and takes 400 ms: its
        // deadline (300 ms + TTL - margin) is earlier than `c`'s after the round.
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.slow.lock().unwrap().insert(k("b"));
        let m2 = m.clone();
        let acquiring = tokio::spawn(async move { m2.acquire_lease(k("b"), TTL).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(b.group_calls.load(Ordering::SeqCst), 1);
        assert!(!c_ctx.is_cancelled());
        // The next round (at 2 TTL/3) panics; `c`'s renewal alone then never answers.
        b.set_many(GroupCall::Panic);
        b.hang_renew.lock().unwrap().insert(k("c"));
        let (bl, b_ctx) = acquiring.await.unwrap().unwrap();
        assert!(Instant::now() - t0 >= Duration::from_millis(700));
        // `b` ends at its own deadline, `c` at its own.
        assert_eq!(
            b_ctx.cancelled().await,
            CancelReason::Lost(LossCause::DeadlineExceeded)
        );
        let b_lost = Instant::now() - t0;
        let b_deadline = Duration::from_millis(300) + TTL - margin;
        assert!(
            b_lost >= b_deadline && b_lost <= b_deadline + Duration::from_millis(5),
            "{b_lost:?}"
        );
        assert_eq!(
            c_ctx.cancelled().await,
            CancelReason::Lost(LossCause::DeadlineExceeded)
        );
        let c_lost = Instant::now() - t0;
        let c_deadline = TTL / 3 + TTL - margin;
        assert!(
            c_lost >= c_deadline && c_lost <= c_deadline + Duration::from_millis(5),
            "{c_lost:?}"
        );
        drop((bl, c));
        drop(m);
    });
}

/// Held: a group call whose answers do not match its leases in number (an external
/// backend's bug) panics nothing and confirms nothing (no answer is applied to a lease
/// it may not be for): the round is retried, and the leases live on once the backend
/// answers right, or end at their own deadlines if it never does.
#[tokio::test(start_paused = true)]
async fn a_group_call_with_too_many_or_too_few_answers_confirms_nothing() {
    for wrong in [GroupCall::OneTooMany, GroupCall::OneTooFew] {
        let b = Scripted::new(Duration::ZERO);
        let m = manager(b.clone()).await;
        let margin = m.safety_margin(TTL);
        let t0 = Instant::now();
        let (x, x_ctx) = m.acquire_lease(k("x"), TTL).await.unwrap();
        let (y, y_ctx) = m.acquire_lease(k("y"), TTL).await.unwrap();
        b.set_many(wrong);
        // Wrong answers only: nothing is confirmed, so both end at the deadlines their
        // acquires earned, though the store renewed them.
        assert_eq!(
            x_ctx.cancelled().await,
            CancelReason::Lost(LossCause::DeadlineExceeded)
        );
        let lost = Instant::now() - t0;
        assert!(lost <= TTL - margin + Duration::from_millis(2), "{lost:?}");
        assert!(y_ctx.is_cancelled());
        assert!(b.group_calls.load(Ordering::SeqCst) >= 2);
        drop((x, y));
        // Wrong for one round, then right: the retry renews them.
        b.set_many(wrong);
        let (x, x_ctx) = m.acquire_lease(k("x2"), TTL).await.unwrap();
        let (y, y_ctx) = m.acquire_lease(k("y2"), TTL).await.unwrap();
        tokio::time::sleep(TTL / 3 + Duration::from_millis(1)).await;
        b.set_many(GroupCall::Normal);
        tokio::time::sleep(TTL * 3).await;
        assert!(!x_ctx.is_cancelled(), "{:?}", x_ctx.reason());
        assert!(!y_ctx.is_cancelled(), "{:?}", y_ctx.reason());
        x.release().await.unwrap();
        y.release().await.unwrap();
    }
}

/// Held: a group call that panics is replaced by renewals one by one; a lease whose own
/// renewal never answers ends at its own deadline, and the others are renewed.
#[tokio::test(start_paused = true)]
async fn a_group_call_failing_for_one_lease_renews_the_others() {
    let b = Scripted::new(Duration::ZERO);
    let m = manager(b.clone()).await;
    let margin = m.safety_margin(TTL);
    let t0 = Instant::now();
    let (x, x_ctx) = m.acquire_lease(k("x"), TTL).await.unwrap();
    let (y, y_ctx) = m.acquire_lease(k("y"), TTL).await.unwrap();
    // Every group call now panics; single renewals of `x` never answer: `x` ends at
    // its deadline, `y` is renewed one by one.
    b.set_many(GroupCall::Panic);
    b.hang_renew.lock().unwrap().insert(k("x"));
    assert_eq!(
        x_ctx.cancelled().await,
        CancelReason::Lost(LossCause::DeadlineExceeded)
    );
    let lost = Instant::now() - t0;
    assert!(lost <= TTL - margin + Duration::from_millis(2), "{lost:?}");
    tokio::time::sleep(TTL * 3).await;
    assert!(!y_ctx.is_cancelled(), "{:?}", y_ctx.reason());
    assert!(b.renews.load(Ordering::SeqCst) >= 2);
    drop(x);
    y.release().await.unwrap();
}

/// Held: the manager shut down while a group call is in flight. Its holders are told
/// `Shutdown` and the keys given back at once; the call's late confirmation moves no
/// deadline of an ended context and revives nothing (the key stays free).
#[tokio::test(start_paused = true)]
async fn a_shutdown_mid_round_is_not_undone_by_the_rounds_answer() {
    let b = Scripted::new(Duration::ZERO);
    let m = manager(b.clone()).await;
    let (x, x_ctx) = m.acquire_lease(k("x"), TTL).await.unwrap();
    *b.group_delay.lock().unwrap() = Duration::from_millis(100);
    tokio::time::sleep(TTL / 3 + Duration::from_millis(50)).await;
    assert_eq!(b.group_calls.load(Ordering::SeqCst), 1);
    m.shutdown().await;
    assert_eq!(x_ctx.reason(), Some(CancelReason::Shutdown));
    assert!(b.info(&k("x")).await.unwrap().is_none());
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(x_ctx.reason(), Some(CancelReason::Shutdown));
    assert!(b.info(&k("x")).await.unwrap().is_none());
    // No later round: the group stopped with its last member.
    assert_eq!(b.group_calls.load(Ordering::SeqCst), 1);
    drop(x);
}

/// Held (review of the binary heap in `one_by_one`, rev3): every group call panics, so
/// a group of leases with many different deadlines (acquired 50 ms apart) is renewed one
/// by one; the renewals of every other lease never answer. Each hung lease must end at
/// its own deadline (not later, as a missed heap entry would make it, nor at another's),
/// a lease that joins meanwhile with an earlier deadline than all of them (a slow
/// acquire that started first) at its own, and every lease whose renewal answers lives on.
#[test]
fn one_by_one_renewals_end_each_hung_lease_at_its_own_deadline() {
    on_paused_time(30, || async {
        let b = Scripted::new(Duration::from_millis(400));
        let m = manager(b.clone()).await;
        let margin = m.safety_margin(TTL);
        let t0 = Instant::now();
        b.set_many(GroupCall::Panic);
        // Started first, joins at 400 ms (inside the one-by-one renewals that start at
        // the first round, 10 ms + TTL/3) with the earliest deadline of all.
        b.slow.lock().unwrap().insert(k("heap-late"));
        b.hang_renew.lock().unwrap().insert(k("heap-late"));
        let m2 = m.clone();
        let late = tokio::spawn(async move { m2.acquire_lease(k("heap-late"), TTL).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut held = Vec::new();
        for i in 0..7u64 {
            let key = k(&format!("heap-{i}"));
            if i % 2 == 1 {
                b.hang_renew.lock().unwrap().insert(key.clone());
            }
            let at = Instant::now() - t0;
            let (lease, ctx) = m.acquire_lease(key, TTL).await.unwrap();
            held.push((i, at, lease, ctx));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut ends = Vec::new();
        for (i, at, _, ctx) in &held {
            if i % 2 == 1 {
                let ctx = ctx.clone();
                let (i, at) = (*i, *at);
                ends.push(tokio::spawn(async move {
                    let reason = ctx.cancelled().await;
                    (i, at, Instant::now() - t0, reason)
                }));
            }
        }
        let (late_lease, late_ctx) = late.await.unwrap().unwrap();
        assert_eq!(
            late_ctx.cancelled().await,
            CancelReason::Lost(LossCause::DeadlineExceeded)
        );
        let late_lost = Instant::now() - t0;
        let late_deadline = TTL - margin;
        assert!(
            late_lost >= late_deadline && late_lost <= late_deadline + Duration::from_millis(5),
            "the late joiner ended at {late_lost:?}, its deadline {late_deadline:?}"
        );
        for end in ends {
            let (i, at, lost, reason) = end.await.unwrap();
            assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
            let deadline = at + TTL - margin;
            assert!(
                lost >= deadline && lost <= deadline + Duration::from_millis(5),
                "lease {i} ended at {lost:?}, its deadline {deadline:?}"
            );
        }
        tokio::time::sleep(TTL * 2).await;
        for (i, _, _, ctx) in &held {
            if i % 2 == 0 {
                assert!(!ctx.is_cancelled(), "lease {i}: {:?}", ctx.reason());
            }
        }
        assert!(b.group_calls.load(Ordering::SeqCst) >= 2);
        drop((held, late_lease));
        drop(m);
    });
}
