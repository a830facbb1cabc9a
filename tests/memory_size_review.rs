//! Adversarial review of the per-lease memory cuts (6d012e7, 8314fa2, 9f715bb): the
//! lease table's boxed waiter queues and pid-keyed renewer map, and the memory
//! backend's `u64`-nanosecond entries and side map of metadata. Deterministic: paused
//! tokio time (or clocks set up explicitly), no wall-clock sleeps.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{
    AcquireOutcome, Backend, FaultyBackend, MemoryBackend, RenewFault, RenewOutcome,
};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, LossCause};

const TTL: Duration = Duration::from_secs(10);
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

fn granted(o: AcquireOutcome) -> u64 {
    match o {
        AcquireOutcome::Granted { token } => token,
        held => panic!("expected a grant, got {held:?}"),
    }
}

fn is_held(o: &AcquireOutcome) -> bool {
    matches!(o, AcquireOutcome::Held { .. })
}

/// Advances paused time by `total` in steps the timer wheel is happy with.
async fn advance_long(total: Duration) {
    let step = 50 * YEAR;
    let mut left = total;
    while left > step {
        tokio::time::advance(step).await;
        left -= step;
    }
    tokio::time::advance(left).await;
}

// ---------------------------------------------------------------------------------
// Memory backend: clocks and boundaries
// ---------------------------------------------------------------------------------

/// A fresh current-thread runtime whose clock is paused.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A `MemoryBackend` made on one tokio clock and used on another that reads earlier
/// (here: made in a paused runtime that had run on 1000 virtual hours, then used in a
/// fresh paused runtime, as a backend in a `static` shared by paused tests is). Before
/// the change every instant was compared with every other, so a lease lasted its TTL on
/// the clock that used it. With instants stored as nanoseconds after the backend's
/// creation, saturated at 0, every instant before that creation is 0: `expires_at`
/// (`at(now + TTL)` = 0) is never `> now` (0), so a granted lease is free at once.
#[test]
fn a_backend_made_on_a_later_clock_still_excludes() {
    let paused = paused_runtime;
    let backend = paused().block_on(async {
        tokio::time::advance(Duration::from_secs(1000 * 3600)).await;
        Arc::new(MemoryBackend::new())
    });
    paused().block_on(async move {
        let k = Key::system(["review", "mem", "clock"]);
        let t1 = granted(backend.acquire(&k, TTL, b"").await.unwrap());
        let second = backend.acquire(&k, TTL, b"").await.unwrap();
        assert!(
            is_held(&second),
            "guarantee 1: the key of a lease granted a moment ago (token {t1}, TTL {TTL:?}) \
             was granted again: {second:?}"
        );
        assert!(
            backend.info(&k).await.unwrap().is_some(),
            "a live lease shows"
        );
        assert_eq!(
            backend.renew(&k, t1, TTL).await.unwrap(),
            RenewOutcome::Renewed,
            "a live lease renews"
        );
    });
}

/// The same through two managers sharing the backend (two "processes" on one store):
/// the second manager is granted the key while the first one's holder is live, and both
/// contexts are live at once.
#[test]
fn two_managers_on_a_backend_made_on_a_later_clock() {
    let paused = paused_runtime;
    let backend: Arc<dyn Backend> = paused().block_on(async {
        tokio::time::advance(Duration::from_secs(1000 * 3600)).await;
        Arc::new(MemoryBackend::new())
    });
    paused().block_on(async move {
        let m1 = LeaseManager::builder()
            .backend(backend.clone())
            .start()
            .await
            .unwrap();
        let m2 = LeaseManager::builder()
            .backend(backend)
            .start()
            .await
            .unwrap();
        let k = Key::system(["review", "mem", "clock2"]);
        let (l1, c1) = m1.acquire_lease(k.clone(), TTL).await.unwrap();
        let second = m2.acquire_lease(k.clone(), TTL).await;
        let both_live = match &second {
            Ok((_, c2)) => c1.reason().is_none() && c2.reason().is_none(),
            Err(_) => false,
        };
        assert!(
            matches!(second, Err(LeaseError::Conflict)),
            "guarantee 1: manager 2 acquired a key manager 1 holds (token {}): {:?} \
             (both contexts live: {both_live})",
            l1.token(),
            second.as_ref().map(|(l, _)| l.token())
        );
        drop(second);
        drop(l1);
        m1.shutdown().await;
        m2.shutdown().await;
    });
}

/// A backend alive for longer than its clock range (paused time can get there in one
/// test). Failed against 9f715bb: `State::at(now)` saturated at `u64::MAX`, and so did
/// every new `expires_at`, so every lease was expired the moment it was granted. Now an
/// expiry beyond the range (about 292 years from the backend's start) is refused with
/// an error: never two grants.
#[tokio::test(start_paused = true)]
async fn leases_still_exclude_after_585_years_of_uptime() {
    let b = MemoryBackend::new();
    advance_long(585 * YEAR).await;
    let k = Key::system(["review", "mem", "uptime"]);
    match b.acquire(&k, TTL, b"").await {
        Err(e) => assert!(e.to_string().contains("clock range"), "{e}"),
        Ok(first) => {
            let t1 = granted(first);
            let second = b.acquire(&k, TTL, b"").await.unwrap();
            assert!(
                is_held(&second),
                "guarantee 1: after 585 years of uptime a fresh lease (token {t1}) is free at once: {second:?}"
            );
        }
    }
    // Nor does a renewal or a group renewal there panic or grant.
    assert!(b.renew(&k, 1, TTL).await.is_err());
    assert!(b.renew_many(&[(k.clone(), 1)], TTL).await[0].is_err());
}

/// A TTL longer than the backend's clock range, straight on the `Backend` trait (only
/// the manager bounds TTLs to a day). Failed against 9f715bb: the entry's TTL and expiry
/// were saturated at ~584.5 years, so `info` reported a TTL that was not granted. Now it
/// is refused with an error, or granted and reported as granted.
#[tokio::test(start_paused = true)]
async fn a_ttl_beyond_584_years_is_reported_as_granted() {
    let b = MemoryBackend::new();
    let k = Key::system(["review", "mem", "longttl"]);
    for ttl in [200 * YEAR, 600 * YEAR] {
        match b.acquire(&k, ttl, b"").await {
            Err(e) => assert!(e.to_string().contains("clock range"), "{ttl:?}: {e}"),
            Ok(o) => {
                let token = granted(o);
                let info = b.info(&k).await.unwrap().unwrap();
                assert_eq!(info.ttl, ttl, "the TTL granted");
                assert_eq!(info.expires_in, ttl, "the time left");
                assert!(b.release(&k, token).await.unwrap());
            }
        }
    }
}

/// (expected to hold) Expiry at the exact nanosecond: live at TTL - 1ns (held, 1ns
/// left, renewable), free at TTL (not released, not renewed, not revoked, regranted
/// with a larger token).
#[tokio::test(start_paused = true)]
async fn expiry_at_the_exact_nanosecond() {
    let b = MemoryBackend::new();
    let k = Key::system(["review", "mem", "edge"]);
    let t1 = granted(b.acquire(&k, TTL, b"m").await.unwrap());
    tokio::time::advance(TTL - Duration::from_nanos(1)).await;
    assert_eq!(
        b.acquire(&k, TTL, b"").await.unwrap(),
        AcquireOutcome::Held {
            expires_in: Duration::from_nanos(1)
        }
    );
    assert_eq!(
        b.info(&k).await.unwrap().unwrap().expires_in,
        Duration::from_nanos(1)
    );
    assert_eq!(
        b.free_among(std::slice::from_ref(&k)).await.unwrap(),
        vec![false]
    );
    tokio::time::advance(Duration::from_nanos(1)).await;
    assert!(b.info(&k).await.unwrap().is_none(), "expired at TTL");
    assert!(b.list("", 10).await.unwrap().is_empty());
    assert_eq!(
        b.free_among(std::slice::from_ref(&k)).await.unwrap(),
        vec![true]
    );
    assert_eq!(b.renew(&k, t1, TTL).await.unwrap(), RenewOutcome::Lost);
    assert_eq!(b.revoke(&k).await.unwrap(), None);
    assert!(!b.release(&k, t1).await.unwrap());
    let t2 = granted(b.acquire(&k, TTL, b"").await.unwrap());
    assert!(t2 > t1, "guarantee 2");
    let info = b.info(&k).await.unwrap().unwrap();
    assert_eq!((info.token, info.metadata.len()), (t2, 0));
}

/// (expected to hold) Renewing with another TTL moves both the expiry and the TTL
/// shown; a renewal just before expiry counts from the renewal.
#[tokio::test(start_paused = true)]
async fn renewal_with_another_ttl_counts_from_the_renewal() {
    let b = MemoryBackend::new();
    let k = Key::system(["review", "mem", "renew"]);
    let t = granted(b.acquire(&k, TTL, b"").await.unwrap());
    tokio::time::advance(TTL - Duration::from_nanos(1)).await;
    assert_eq!(
        b.renew_many(&[(k.clone(), t)], TTL / 10).await[0]
            .as_ref()
            .unwrap(),
        &RenewOutcome::Renewed
    );
    let info = b.info(&k).await.unwrap().unwrap();
    assert_eq!((info.ttl, info.expires_in), (TTL / 10, TTL / 10));
    tokio::time::advance(TTL / 10).await;
    assert!(
        b.info(&k).await.unwrap().is_none(),
        "the shorter TTL ran out"
    );
    assert_eq!(b.renew(&k, t, TTL).await.unwrap(), RenewOutcome::Lost);
    // Duration::MAX is an error, not a panic, and changes nothing.
    let t2 = granted(b.acquire(&k, TTL, b"").await.unwrap());
    assert!(b.renew(&k, t2, Duration::MAX).await.is_err());
    assert!(b.acquire(&k, Duration::MAX, b"").await.is_err());
    assert_eq!(b.info(&k).await.unwrap().unwrap().ttl, TTL);
}

/// (expected to hold) A backend made before `tokio::time::pause` (on the running
/// clock), used after it.
#[tokio::test]
async fn a_backend_made_before_the_pause() {
    let b = MemoryBackend::new();
    tokio::time::pause();
    let k = Key::system(["review", "mem", "pause"]);
    let t = granted(b.acquire(&k, TTL, b"").await.unwrap());
    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    assert!(is_held(&b.acquire(&k, TTL, b"").await.unwrap()));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(granted(b.acquire(&k, TTL, b"").await.unwrap()) > t);
}

/// (expected to hold) Metadata belongs to exactly one lease: an acquire refused
/// (`Held`) does not replace it; a revoked-then-released lease's is gone; an expired
/// lease's is not shown, and a successor without metadata shows none.
#[tokio::test(start_paused = true)]
async fn metadata_never_outlives_its_lease() {
    let b = MemoryBackend::new();
    let k = Key::system(["review", "mem", "meta"]);
    let t1 = granted(b.acquire(&k, TTL, b"first").await.unwrap());
    assert!(is_held(&b.acquire(&k, TTL, b"intruder").await.unwrap()));
    assert_eq!(b.info(&k).await.unwrap().unwrap().metadata, b"first");
    assert_eq!(b.revoke(&k).await.unwrap(), Some(t1));
    assert_eq!(b.info(&k).await.unwrap().unwrap().metadata, b"first");
    assert!(b.release(&k, t1).await.unwrap());
    assert!(b.info(&k).await.unwrap().is_none());
    let t2 = granted(b.acquire(&k, TTL, b"").await.unwrap());
    let info = b.info(&k).await.unwrap().unwrap();
    assert_eq!(
        (info.token, info.metadata.len(), info.revoked),
        (t2, 0, false)
    );
    // A release with a stale token leaves the current lease's metadata alone.
    assert!(b.release(&k, t2).await.unwrap());
    let t3 = granted(b.acquire(&k, TTL, b"third").await.unwrap());
    assert!(!b.release(&k, t2).await.unwrap());
    assert_eq!(b.info(&k).await.unwrap().unwrap().metadata, b"third");
    // Expired, then taken over with no metadata.
    tokio::time::advance(TTL).await;
    assert!(b.list("/", 10).await.unwrap().is_empty());
    assert!(!b.release(&k, t3).await.unwrap(), "expired: not released");
    let t4 = granted(b.acquire(&k, TTL, b"").await.unwrap());
    let listed = b.list("", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].token, listed[0].metadata.len()), (t4, 0));
    // A failed acquire (tokens exhausted) leaves nothing behind.
    let k2 = Key::system(["review", "mem", "meta2"]);
    let b = MemoryBackend::with_token_floor(u64::MAX - 1);
    let last = granted(b.acquire(&k2, TTL, b"last").await.unwrap());
    assert_eq!(last, u64::MAX);
    tokio::time::advance(TTL).await;
    assert!(b.acquire(&k2, TTL, b"next").await.is_err());
    assert!(b.info(&k2).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------------
// Lease table: renewer exits and waiters, through a manager
// ---------------------------------------------------------------------------------

/// A manager on a memory backend whose renewals can be made to fail.
async fn faulty_manager() -> (Arc<FaultyBackend>, LeaseManager) {
    let faulty = Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new())));
    let manager = LeaseManager::builder()
        .backend(faulty.clone())
        .start()
        .await
        .unwrap();
    (faulty, manager)
}

/// (expected to hold) A holder's renewer fails (renewal refused): that holder's context
/// ends `Lost`, the key is left to expire, and the next holder (granted with a wait,
/// with a larger token) is not touched by anything of the first: it lives through
/// several renewals, and a revoke of it then ends only it.
#[tokio::test(start_paused = true)]
async fn a_failed_renewer_ends_only_its_own_holder() {
    let (faulty, manager) = faulty_manager().await;
    let k = Key::system(["review", "mem", "renewer"]);
    let (l1, c1) = manager.acquire_lease(k.clone(), TTL).await.unwrap();
    faulty.fail_renewals(&k, RenewFault::Refuse);
    assert_eq!(
        c1.cancelled().await,
        CancelReason::Lost(LossCause::RenewalRefused)
    );
    faulty.heal_renewals(&k);
    let (l2, c2) = manager
        .acquire_lease_with(k.clone(), AcquireOptions::new(TTL).wait(3 * TTL))
        .await
        .unwrap();
    assert!(l2.token() > l1.token(), "guarantee 2");
    assert!(
        c1.deadline().unwrap() <= c2.deadline().unwrap(),
        "the first context ended first"
    );
    // The stale lease's release is NotHeld and ends nobody.
    assert!(matches!(l1.release().await, Err(LeaseError::NotHeld)));
    tokio::time::sleep(3 * TTL).await;
    assert_eq!(c2.reason(), None, "guarantee 4: the newer holder lives on");
    assert!(manager.revoke(&k).await.unwrap());
    assert_eq!(c2.reason(), Some(CancelReason::Revoked));
    drop(l2);
    manager.shutdown().await;
}

/// (expected to hold) A kept holder (`keep_until_released`) whose renewer fails keeps
/// the key until it lets go; a waiter gets it only after; the kept holder's late
/// release is `NotHeld` and does not touch the waiter's lease.
#[tokio::test(start_paused = true)]
async fn a_kept_holders_renewer_exit_does_not_reach_the_next_holder() {
    let (faulty, manager) = faulty_manager().await;
    let k = Key::system(["review", "mem", "kept"]);
    let (kept, kc) = manager
        .acquire_lease_with(k.clone(), AcquireOptions::new(TTL).keep_until_released())
        .await
        .unwrap();
    faulty.fail_renewals(&k, RenewFault::Refuse);
    assert!(matches!(kc.cancelled().await, CancelReason::Lost(_)));
    faulty.heal_renewals(&k);
    let waiter = {
        let (manager, k) = (manager.clone(), k.clone());
        tokio::spawn(async move {
            manager
                .acquire_lease_with(k, AcquireOptions::new(TTL).wait(10 * TTL))
                .await
        })
    };
    tokio::time::sleep(2 * TTL).await;
    assert!(!waiter.is_finished(), "the kept holder has not let go");
    assert!(matches!(kept.release().await, Err(LeaseError::NotHeld)));
    let (next, nc) = waiter.await.unwrap().unwrap();
    tokio::time::sleep(3 * TTL).await;
    assert_eq!(nc.reason(), None, "guarantee 4");
    assert!(next.release().await.is_ok());
    manager.shutdown().await;
}

/// (expected to hold) Waiters in odd orders: the first gives up mid-wait (its future
/// dropped), the second's wait runs out, the third is served when the holder releases;
/// a fourth queued behind the third is answered `ManagerStopped` at shutdown, and the
/// slot empties and refills its queue without losing anyone.
#[tokio::test(start_paused = true)]
async fn waiters_who_leave_time_out_or_stay() {
    let manager = LeaseManager::start().await.unwrap();
    let k = Key::system(["review", "mem", "waiters"]);
    let (holder, hc) = manager.acquire_lease(k.clone(), TTL).await.unwrap();
    let wait = |w: Duration| {
        let (manager, k) = (manager.clone(), k.clone());
        tokio::spawn(async move {
            manager
                .acquire_lease_with(k, AcquireOptions::new(TTL).wait(w))
                .await
        })
    };
    let gone = wait(100 * TTL);
    let short = wait(TTL);
    let stays = wait(100 * TTL);
    tokio::time::sleep(Duration::from_millis(10)).await;
    gone.abort();
    tokio::time::sleep(2 * TTL).await;
    assert!(matches!(
        short.await.unwrap(),
        Err(LeaseError::WaitTimedOut { .. })
    ));
    assert_eq!(hc.reason(), None);
    holder.release().await.unwrap();
    let (l3, c3) = stays.await.unwrap().unwrap();
    // The queue went empty (dropped) and fills again.
    let late = wait(100 * TTL);
    tokio::time::sleep(TTL).await;
    assert!(!late.is_finished());
    assert_eq!(c3.reason(), None);
    manager.shutdown().await;
    assert!(matches!(
        late.await.unwrap(),
        Err(LeaseError::ManagerStopped)
    ));
    assert_eq!(c3.reason(), Some(CancelReason::Shutdown));
    drop(l3);
}
