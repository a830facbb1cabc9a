//! Renewal groups (a manager's leases of one TTL, renewed by one backend call every
//! TTL/3): what groups make possible to get wrong. All on paused time, on the memory
//! backend behind a wrapper that records each group call and can slow it down or fail
//! it, or behind `FaultyBackend`.

#[macro_use]
#[path = "support/forward.rs"]
mod forward;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leases::backend::{Backend, FaultyBackend, MemoryBackend, RenewFault, RenewOutcome};
use leases::{BackendError, BackendErrorKind, CancelReason, Key, LeaseManager, LossCause};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(1);

/// One group call as the backend saw it: when it started, its TTL, its leases.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    ttl: Duration,
    leases: Vec<(Key, u64)>,
}

/// The memory backend, with its group calls recorded, optionally delayed (the answer
/// is computed after the delay, so it reflects what happened meanwhile) or failed.
struct Recording {
    inner: MemoryBackend,
    calls: Mutex<Vec<Call>>,
    delay: Mutex<Duration>,
    fail: AtomicBool,
    /// A group call that includes this key never answers.
    hang: Mutex<Option<Key>>,
}

impl Recording {
    fn new() -> Arc<Recording> {
        Arc::new(Recording {
            inner: MemoryBackend::new(),
            calls: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            fail: AtomicBool::new(false),
            hang: Mutex::new(None),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }
}

forward_backend! {
    Recording => inner;
    forward: acquire, release, revoke, info, subscribe_freed;
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            let e = BackendError::new(BackendErrorKind::Unavailable, "injected failure");
            return Err(e);
        }
        self.inner.renew(key, token, ttl).await
    }
    async fn renew_many(
        &self,
        leases: &[(Key, u64)],
        ttl: Duration,
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            ttl,
            leases: leases.to_vec(),
        });
        let hang = self.hang.lock().unwrap().clone();
        if hang.is_some_and(|h| leases.iter().any(|(k, _)| *k == h)) {
            std::future::pending::<()>().await;
        }
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if self.fail.load(Ordering::SeqCst) {
            let e = BackendError::new(BackendErrorKind::Unavailable, "injected group failure");
            return leases.iter().map(|_| Err(e.clone())).collect();
        }
        self.inner.renew_many(leases, ttl).await
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
    Key::system(["groups", name])
}

fn contains(call: &Call, key: &Key, token: u64) -> bool {
    call.leases.iter().any(|(k, t)| k == key && *t == token)
}

#[tokio::test(start_paused = true)]
async fn a_revoke_of_one_lease_in_a_group_being_renewed() {
    let b = Recording::new();
    let m = manager(b.clone()).await;
    let (_a, a_ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    let (bl, b_ctx) = m.acquire_lease(k("b"), TTL).await.unwrap();
    // The group call (at TTL/3) takes 60 ms (a call is given up after TTL/10); an
    // operator revokes `a` from another manager 30 ms into it.
    b.set_delay(Duration::from_millis(60));
    tokio::time::sleep(TTL / 3 + Duration::from_millis(30)).await;
    assert_eq!(b.calls().len(), 1, "one call for the whole group");
    assert_eq!(b.calls()[0].leases.len(), 2);
    let operator = manager(b.clone()).await;
    assert!(operator.revoke(&k("a")).await.unwrap());
    // The call's answer says `a` was revoked: its holder is told so, and the key is
    // given back; `b` is renewed by the same call.
    assert_eq!(a_ctx.cancelled().await, CancelReason::Revoked);
    let told = Instant::now();
    let first = b.calls()[0].at;
    assert!(
        told - first <= Duration::from_millis(61),
        "{:?}",
        told - first
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(b.info(&k("a")).await.unwrap().is_none(), "given back");
    assert!(!b_ctx.is_cancelled());
    let info = b.info(&k("b")).await.unwrap().unwrap();
    assert!(
        info.expires_in > TTL * 9 / 10,
        "renewed by the call: {info:?}"
    );
    // Later rounds renew `b` alone, and keep it.
    b.set_delay(Duration::ZERO);
    tokio::time::sleep(TTL * 3).await;
    assert!(!b_ctx.is_cancelled());
    let later: Vec<_> = b.calls().into_iter().skip(1).collect();
    assert!(!later.is_empty());
    assert!(later
        .iter()
        .all(|c| c.leases.len() == 1 && c.leases[0].0 == k("b")));
    bl.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn our_own_revoke_mid_call_is_not_undone_nor_applied_to_the_next_lease_of_the_key() {
    let b = Recording::new();
    let m = manager(b.clone()).await;
    let (a1, a1_ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    let (_b, b_ctx) = m.acquire_lease(k("b"), TTL).await.unwrap();
    let t1 = a1.token();
    b.set_delay(Duration::from_millis(60));
    tokio::time::sleep(TTL / 3 + Duration::from_millis(20)).await;
    assert!(contains(&b.calls()[0], &k("a"), t1));
    // Revoked here while the call that includes it runs, then taken again at once.
    assert!(m.revoke(&k("a")).await.unwrap());
    assert_eq!(a1_ctx.reason(), Some(CancelReason::Revoked));
    let (a2, a2_ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    assert!(a2.token() > t1);
    // The call's answer about the old lease (refused now) touches neither lease.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a1_ctx.reason(), Some(CancelReason::Revoked));
    assert!(!a2_ctx.is_cancelled());
    b.set_delay(Duration::ZERO);
    tokio::time::sleep(TTL * 3).await;
    assert!(!a2_ctx.is_cancelled(), "{:?}", a2_ctx.reason());
    assert!(!b_ctx.is_cancelled());
    // The old lease was never asked for again after the call that was running.
    assert!(b.calls().iter().skip(1).all(|c| !contains(c, &k("a"), t1)));
    assert_eq!(b.info(&k("a")).await.unwrap().unwrap().token, a2.token());
    a2.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_group_renewal_that_fails_while_one_of_its_leases_is_being_released() {
    let b = Recording::new();
    let m = manager(b.clone()).await;
    let (a, a_ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    let (bl, b_ctx) = m.acquire_lease(k("b"), TTL).await.unwrap();
    let ta = a.token();
    // The round at TTL/3 takes 60 ms and fails; `a` is released 30 ms into it.
    b.set_delay(Duration::from_millis(60));
    b.fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(TTL / 3 + Duration::from_millis(30)).await;
    assert_eq!(b.calls().len(), 1);
    let released_at = Instant::now();
    a.release().await.unwrap();
    assert_eq!(a_ctx.reason(), Some(CancelReason::Released));
    assert!(b.info(&k("a")).await.unwrap().is_none());
    // The failure is retried (after TTL/10) for `b` alone, and then heals.
    tokio::time::sleep(Duration::from_millis(60)).await;
    b.fail.store(false, Ordering::SeqCst);
    b.set_delay(Duration::ZERO);
    tokio::time::sleep(TTL * 3).await;
    assert!(!b_ctx.is_cancelled(), "{:?}", b_ctx.reason());
    assert_eq!(a_ctx.reason(), Some(CancelReason::Released));
    let calls = b.calls();
    let retry = &calls[1];
    assert!(retry.at - calls[0].at >= TTL / 10 + Duration::from_millis(60));
    assert!(
        retry.at - calls[0].at <= TTL / 3,
        "a retry, not the next round"
    );
    for c in calls.iter().filter(|c| c.at > released_at) {
        assert!(
            !contains(c, &k("a"), ta),
            "a released lease is renewed: {c:?}"
        );
    }
    assert!(b.info(&k("a")).await.unwrap().is_none(), "never revived");
    bl.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lease_acquired_just_after_a_group_round_keeps_its_lease_through_the_next() {
    let b = Recording::new();
    let m = manager(b.clone()).await;
    let (a, a_ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    tokio::time::sleep(TTL / 3 + Duration::from_millis(1)).await;
    assert_eq!(b.calls().len(), 1, "the round has just run");
    let acquired = Instant::now();
    let (late, late_ctx) = m.acquire_lease(k("late"), TTL).await.unwrap();
    let tl = late.token();
    tokio::time::sleep(TTL * 3).await;
    assert!(!late_ctx.is_cancelled(), "{:?}", late_ctx.reason());
    assert!(!a_ctx.is_cancelled());
    // Renewed by the very next round, within TTL/3 of its acquire.
    let first = b
        .calls()
        .into_iter()
        .find(|c| contains(c, &k("late"), tl))
        .expect("renewed");
    assert!(first.at > acquired && first.at - acquired <= TTL / 3);
    assert!(
        contains(&first, &k("a"), a.token()),
        "in the same call as `a`"
    );
    late.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hung_group_call_ends_the_member_whose_deadline_comes_first_and_no_other() {
    let b = Recording::new();
    let m = manager(b.clone()).await;
    let margin = m.safety_margin(TTL);
    let t0 = Instant::now();
    let (a, a_ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (bl, b_ctx) = m.acquire_lease(k("b"), TTL).await.unwrap();
    // Every group call that includes `a` hangs: so does the call at TTL/3 with both.
    *b.hang.lock().unwrap() = Some(k("a"));
    assert_eq!(
        a_ctx.cancelled().await,
        CancelReason::Lost(LossCause::DeadlineExceeded)
    );
    // `a` is told at its own deadline, earned by its acquire...
    let lost = Instant::now() - t0;
    assert!(lost >= TTL - margin && lost <= TTL - margin + Duration::from_millis(2));
    // ...while `b`, whose deadline is later, is renewed by the retry without `a`.
    assert!(!b_ctx.is_cancelled());
    tokio::time::sleep(TTL * 4).await;
    assert!(!b_ctx.is_cancelled(), "{:?}", b_ctx.reason());
    assert!(b.info(&k("b")).await.unwrap().unwrap().expires_in > TTL / 2);
    let calls = b.calls();
    assert!(calls.len() >= 2 && contains(&calls[0], &k("a"), a.token()));
    assert!(calls[1..]
        .iter()
        .all(|c| c.leases == vec![(k("b"), bl.token())]));
    bl.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn two_ttls_make_two_groups() {
    let b = Recording::new();
    let m = manager(b.clone()).await;
    let long = TTL * 3;
    let (s1, s1_ctx) = m.acquire_lease(k("short1"), TTL).await.unwrap();
    let (s2, s2_ctx) = m.acquire_lease(k("short2"), TTL).await.unwrap();
    let (l1, l1_ctx) = m.acquire_lease(k("long1"), long).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6) + Duration::from_millis(50)).await;
    for ctx in [&s1_ctx, &s2_ctx, &l1_ctx] {
        assert!(!ctx.is_cancelled());
    }
    let calls = b.calls();
    let short: Vec<_> = calls.iter().filter(|c| c.ttl == TTL).collect();
    let longs: Vec<_> = calls.iter().filter(|c| c.ttl == long).collect();
    assert_eq!(short.len() + longs.len(), calls.len());
    // One call per group per TTL/3.
    assert_eq!(short.len(), 18, "{short:?}");
    assert_eq!(longs.len(), 6, "{longs:?}");
    assert!(short.iter().all(|c| c.leases.len() == 2
        && contains(c, &k("short1"), s1.token())
        && contains(c, &k("short2"), s2.token())));
    assert!(longs
        .iter()
        .all(|c| c.leases == vec![(k("long1"), l1.token())]));
    for lease in [s1, s2, l1] {
        lease.release().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_group_of_one_ttl_stops_when_its_leases_are_gone_and_a_new_one_starts() {
    let b = Recording::new();
    let m = manager(b.clone()).await;
    let (a, _ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    tokio::time::sleep(TTL).await;
    a.release().await.unwrap();
    let n = b.calls().len();
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(b.calls().len(), n, "no calls for an empty group");
    let (a, ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    tokio::time::sleep(TTL * 2).await;
    assert!(!ctx.is_cancelled());
    assert!(b.calls().len() >= n + 5);
    a.release().await.unwrap();
}

/// The tasks alive on this runtime.
fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Leases acquired and released one at a time share one group: they do not start a
/// group (a task, a channel, a timer) each, left to linger until its round. (Before,
/// a group whose only lease was released ended once that lease was pruned at its next
/// round, TTL/3 later, and the next lease started a new one: 1,000 such pairs in a
/// TTL/3 left about 1,000 group tasks alive, and the PostgreSQL pairs benchmark lost
/// about 15 % to it.) A group left idle for its linger time ends once the manager next
/// hands out a lease of any TTL.
#[tokio::test(start_paused = true)]
async fn leases_acquired_one_at_a_time_share_one_group_and_an_idle_group_ends() {
    let m = manager(Arc::new(MemoryBackend::new())).await;
    let before = tasks();
    let mut most = 0;
    for i in 0..1000 {
        let (lease, _ctx) = m.acquire_lease(k("one-at-a-time"), TTL).await.unwrap();
        lease.release().await.unwrap();
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        most = most.max(tasks());
    }
    assert!(
        most <= before + 8,
        "{} tasks alive at most for one lease at a time ({before} before)",
        most
    );
    // Idle past the linger time (30 s): only the manager and the idle group run.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(tasks(), before + 1, "the manager and its idle group");
    // A lease of another TTL looks the groups over: its group and its renewer run, the
    // idle group has ended.
    let (other, _ctx) = m.acquire_lease(k("other"), TTL * 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        tasks(),
        before + 2,
        "the idle group of TTL {TTL:?} should have ended"
    );
    other.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_hung_lease_does_not_take_the_renewal_of_a_lease_with_the_same_deadline() {
    // The model test's case: two leases acquired at the same instant, so with one
    // deadline, and the renewals of one stall on `FaultyBackend`, which answers that
    // key's renewal in a group call with an error: the healthy one is confirmed by the
    // call, the stalled one ends at its deadline.
    let memory = Arc::new(MemoryBackend::new());
    let faults = Arc::new(FaultyBackend::new(memory.clone()));
    let m = manager(faults.clone()).await;
    let t0 = Instant::now();
    let (_a, a_ctx) = m.acquire_lease(k("a"), TTL).await.unwrap();
    let (bl, b_ctx) = m.acquire_lease(k("b"), TTL).await.unwrap();
    faults.fail_renewals(&k("a"), RenewFault::Stall);
    assert_eq!(
        a_ctx.cancelled().await,
        CancelReason::Lost(LossCause::DeadlineExceeded)
    );
    assert!(Instant::now() - t0 <= TTL - m.safety_margin(TTL) + Duration::from_millis(2));
    assert!(!b_ctx.is_cancelled(), "{:?}", b_ctx.reason());
    // Confirmed at TTL/3.
    let info = memory.info(&k("b")).await.unwrap().unwrap();
    assert!(info.expires_in >= TTL / 2, "{info:?}");
    tokio::time::sleep(TTL * 4).await;
    assert!(!b_ctx.is_cancelled(), "{:?}", b_ctx.reason());
    bl.release().await.unwrap();
}
