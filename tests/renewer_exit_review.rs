//! Review probes of "a renewer ends its lease by stopping, and the supervisor reads the
//! lease from the stop event's final state" (no map from renewal actors to leases):
//! many leases lost at once, a loss racing a release, a lost lease re-attached with the
//! same token in the same manager, keeping holders, two managers. Each asks for the four
//! guarantees (one holder at a time, growing tokens, loss told at once, a stale exit
//! never ends a newer holder) and that the slow fallback (a scan of every holder, which
//! logs "a renewal actor failed") never runs on these ordinary paths.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, FaultyBackend, MemoryBackend, RenewFault};
use leases::{
    AcquireOptions, CancelReason, Key, Lease, LeaseContext, LeaseError, LeaseManager, LossCause,
};

#[path = "support/log_capture.rs"]
mod log_capture;
use log_capture::Recorder;

const TTL: Duration = Duration::from_secs(1);

/// A recorder of this thread's log events, recording until the guard is dropped.
fn recording() -> (Recorder, tracing::subscriber::DefaultGuard) {
    let log = Recorder::default();
    let guard = tracing::subscriber::set_default(log.clone());
    (log, guard)
}

/// The newer holder lives through several renewals (five TTLs), is released, and
/// nothing needed the scan.
async fn lives_on(lease: Lease, ctx: &LeaseContext, log: &Recorder, case: &str) {
    tokio::time::sleep(TTL * 5).await;
    assert!(!ctx.is_cancelled(), "{case}: {:?}", ctx.reason());
    lease.release().await.unwrap();
    assert_eq!(fallbacks(log), 0, "{case}");
}

/// How many times the supervisor fell back to scanning its holders.
fn fallbacks(log: &Recorder) -> usize {
    log.count("a renewal actor failed")
}

struct Rig {
    faults: Arc<FaultyBackend>,
    manager: LeaseManager,
}

async fn rig_on(memory: &Arc<MemoryBackend>) -> Rig {
    let inner: Arc<dyn Backend> = memory.clone();
    let faults = Arc::new(FaultyBackend::new(inner));
    let manager = LeaseManager::builder()
        .min_ttl(TTL)
        .backend(faults.clone())
        .start()
        .await
        .unwrap();
    Rig { faults, manager }
}

async fn rig() -> Rig {
    rig_on(&Arc::new(MemoryBackend::new())).await
}

fn key(i: usize) -> Key {
    Key::system(["exit", &i.to_string()])
}

/// Many leases refused at once: every holder is told its own loss, the others live,
/// every key is free again afterwards with a larger token, and no exit needed the
/// fallback scan (each renewer stopped and named its lease).
#[tokio::test(start_paused = true)]
async fn many_leases_lost_at_once_each_end_their_own_holder_without_the_scan() {
    let (log, _guard) = recording();
    let r = rig().await;
    const N: usize = 64;
    let mut held = Vec::new();
    for i in 0..N {
        held.push(r.manager.acquire_lease(key(i), TTL).await.unwrap());
    }
    let (keeper, keeper_ctx) = r.manager.acquire_lease(key(N), TTL).await.unwrap();
    for i in (0..N).step_by(2) {
        r.faults.fail_renewals(&key(i), RenewFault::Refuse);
    }
    for i in (1..N).step_by(2) {
        r.faults.fail_renewals(&key(i), RenewFault::Stall);
    }
    for (i, (_, ctx)) in held.iter().enumerate() {
        let want = if i % 2 == 0 {
            LossCause::RenewalRefused
        } else {
            LossCause::DeadlineExceeded
        };
        let reason = tokio::time::timeout(TTL * 2, ctx.cancelled())
            .await
            .expect("told within the TTL");
        assert_eq!(reason, CancelReason::Lost(want), "key {i}");
    }
    tokio::time::sleep(TTL * 3).await;
    assert!(!keeper_ctx.is_cancelled(), "the healthy lease lives");
    assert_eq!(
        fallbacks(&log),
        0,
        "no exit needed the scan of every holder"
    );
    for (i, (lease, ctx)) in held.into_iter().enumerate() {
        let old = ctx.token();
        assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
        r.faults.heal_renewals(&key(i));
        let opts = AcquireOptions::new(TTL).wait(TTL * 2);
        let (again, actx) = r.manager.acquire_lease_with(key(i), opts).await.unwrap();
        assert!(actx.token() > old, "key {i}: tokens only grow");
        again.release().await.unwrap();
    }
    keeper.release().await.unwrap();
    assert_eq!(fallbacks(&log), 0);
}

/// A renewal that panics: the renewer stops (it no longer fails), its holder is told
/// with the panic, and the supervisor needed no scan; the other lease lives.
#[tokio::test(start_paused = true)]
async fn a_panicking_renewal_is_told_without_the_scan() {
    let (log, _guard) = recording();
    let r = rig().await;
    let (_bad, bad_ctx) = r.manager.acquire_lease(key(0), TTL).await.unwrap();
    let (good, good_ctx) = r.manager.acquire_lease(key(1), TTL).await.unwrap();
    r.faults.fail_renewals(&key(0), RenewFault::Panic);
    match tokio::time::timeout(TTL, bad_ctx.cancelled())
        .await
        .unwrap()
    {
        CancelReason::Lost(LossCause::RenewerFailed(why)) => {
            assert!(why.contains("panicked"), "{why}")
        }
        other => panic!("unexpected {other:?}"),
    }
    tokio::time::sleep(TTL * 3).await;
    assert!(!good_ctx.is_cancelled());
    assert_eq!(fallbacks(&log), 0);
    good.release().await.unwrap();
}

/// A lease lost at its local deadline (renewals hang), then asked for again with its
/// token (`resume`) in the same manager: the memory store is not shared, so a resume
/// here is refused (`Conflict` while the ended holder is still in the table, `NotHeld`
/// once it is gone), never granted as a second holder of the same (key, token); the old
/// handle's release is `NotHeld`, and the next holder (larger token) lives.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_asked_for_again_with_its_token_is_refused_and_the_key_frees() {
    let (log, _guard) = recording();
    let r = rig().await;
    let k = key(0);
    let (old, old_ctx) = r.manager.acquire_lease(k.clone(), TTL).await.unwrap();
    let token = old_ctx.token();
    r.faults.fail_renewals(&k, RenewFault::Stall);
    assert_eq!(
        old_ctx.cancelled().await,
        CancelReason::Lost(LossCause::DeadlineExceeded)
    );
    r.faults.heal_renewals(&k);
    for _ in 0..2 {
        let opts = AcquireOptions::new(TTL).resume(token);
        let resumed = r.manager.acquire_lease_with(k.clone(), opts).await;
        assert!(
            matches!(resumed, Err(LeaseError::Conflict | LeaseError::NotHeld)),
            "{resumed:?}"
        );
        tokio::time::sleep(TTL / 10).await;
    }
    assert!(matches!(old.release().await, Err(LeaseError::NotHeld)));
    let opts = AcquireOptions::new(TTL).wait(TTL * 2);
    let (new, new_ctx) = r.manager.acquire_lease_with(k.clone(), opts).await.unwrap();
    assert!(new_ctx.token() > token);
    lives_on(new, &new_ctx, &log, "").await;
}

/// A release sent while the renewer is stopping with a loss (the group told it before
/// the supervisor handled the release): the release answers `NotHeld` or `Ok`, never
/// panics, and the next holder (larger token) is not ended by the old renewer's exit.
#[tokio::test(start_paused = true)]
async fn a_release_racing_a_loss_never_ends_the_next_holder() {
    for fault in [RenewFault::Refuse, RenewFault::Stall, RenewFault::Panic] {
        let (log, _guard) = recording();
        let r = rig().await;
        let k = key(0);
        let (old, old_ctx) = r.manager.acquire_lease(k.clone(), TTL).await.unwrap();
        r.faults.fail_renewals(&k, fault);
        // Wait for the loss, then release at once, before the supervisor may have
        // handled the renewer's exit.
        old_ctx.cancelled().await;
        let released = old.release().await;
        assert!(
            matches!(released, Err(LeaseError::NotHeld) | Ok(())),
            "{fault:?}: {released:?}"
        );
        r.faults.heal_renewals(&k);
        let opts = AcquireOptions::new(TTL).wait(TTL * 3);
        let (next, next_ctx) = r.manager.acquire_lease_with(k.clone(), opts).await.unwrap();
        assert!(next_ctx.token() > old_ctx.token(), "{fault:?}");
        lives_on(next, &next_ctx, &log, &format!("{fault:?}")).await;
    }
}

/// A keeping holder (`keep_until_released`) whose renewal is refused or revoked: its
/// context ends at once, the key stays claimed here until it lets go (nobody else
/// here is granted it meanwhile), and after its release the next holder gets a larger
/// token and lives.
#[tokio::test(start_paused = true)]
async fn a_keeping_holder_whose_renewal_ends_keeps_the_key_until_it_lets_go() {
    for how in ["refuse", "revoke", "panic"] {
        let (log, _guard) = recording();
        let r = rig().await;
        let k = key(0);
        let opts = AcquireOptions::new(TTL).keep_until_released();
        let (kept, kept_ctx) = r.manager.acquire_lease_with(k.clone(), opts).await.unwrap();
        match how {
            "refuse" => r.faults.fail_renewals(&k, RenewFault::Refuse),
            "panic" => r.faults.fail_renewals(&k, RenewFault::Panic),
            _ => assert!(r.manager.revoke(&k).await.unwrap()),
        }
        let reason = tokio::time::timeout(TTL * 2, kept_ctx.cancelled())
            .await
            .expect("told at once");
        match how {
            "refuse" => assert_eq!(reason, CancelReason::Lost(LossCause::RenewalRefused)),
            "panic" => assert!(
                matches!(&reason, CancelReason::Lost(LossCause::RenewerFailed(_))),
                "{reason:?}"
            ),
            _ => assert_eq!(reason, CancelReason::Revoked),
        }
        r.faults.heal_renewals(&k);
        // Claimed here until it lets go, however long.
        let waited = r
            .manager
            .acquire_lease_with(k.clone(), AcquireOptions::new(TTL).wait(TTL * 3))
            .await;
        assert!(waited.is_err(), "{how}: granted while kept: {waited:?}");
        let _ = kept.release().await;
        let opts = AcquireOptions::new(TTL).wait(TTL * 3);
        let (next, next_ctx) = r.manager.acquire_lease_with(k.clone(), opts).await.unwrap();
        assert!(next_ctx.token() > kept_ctx.token(), "{how}");
        lives_on(next, &next_ctx, &log, how).await;
    }
}

/// Two managers on one store: one's lease is lost (refused) and the key goes to the
/// other once expired; the first's renewer exit and late release never end the second's
/// holder, and tokens grow across managers.
#[tokio::test(start_paused = true)]
async fn a_loss_in_one_manager_never_ends_a_holder_in_another() {
    let (log, _guard) = recording();
    let memory = Arc::new(MemoryBackend::new());
    let a = rig_on(&memory).await;
    let b = rig_on(&memory).await;
    let k = key(0);
    let (la, ca) = a.manager.acquire_lease(k.clone(), TTL).await.unwrap();
    a.faults.fail_renewals(&k, RenewFault::Refuse);
    // Refused: the store has it as gone, but `a` was told first.
    let waiting = {
        let m = b.manager.clone();
        let k = k.clone();
        tokio::spawn(async move {
            m.acquire_lease_with(k, AcquireOptions::new(TTL).wait(TTL * 3))
                .await
        })
    };
    assert_eq!(
        ca.cancelled().await,
        CancelReason::Lost(LossCause::RenewalRefused)
    );
    let (lb, cb) = waiting.await.unwrap().unwrap();
    assert!(
        ca.is_cancelled(),
        "the first holder was told before the second was granted"
    );
    assert!(cb.token() > ca.token());
    assert!(matches!(la.release().await, Err(LeaseError::NotHeld)));
    lives_on(lb, &cb, &log, "").await;
}

/// Shutdown while leases are being lost: no panic, every context ends, nothing needs
/// the scan.
#[tokio::test(start_paused = true)]
async fn shutdown_while_leases_are_lost_ends_every_holder() {
    let (log, _guard) = recording();
    let r = rig().await;
    let mut held = Vec::new();
    for i in 0..16 {
        held.push(r.manager.acquire_lease(key(i), TTL).await.unwrap());
    }
    for i in 0..8 {
        r.faults.fail_renewals(&key(i), RenewFault::Refuse);
    }
    // Shut down right when the refusals arrive (the first group renewal, at TTL/3).
    tokio::time::sleep(TTL / 3).await;
    r.manager.shutdown().await;
    for (i, (_, ctx)) in held.iter().enumerate() {
        let reason = tokio::time::timeout(TTL, ctx.cancelled())
            .await
            .expect("every context ends");
        assert!(
            matches!(
                reason,
                CancelReason::Shutdown | CancelReason::Lost(LossCause::RenewalRefused)
            ),
            "key {i}: {reason:?}"
        );
    }
    assert_eq!(fallbacks(&log), 0);
}

/// The recorder does see the fallback: a failure event (which names only the actor)
/// is looked up among the holders and logged, so the `fallbacks() == 0` checks above
/// can fail. The failed renewer's holder ends, the other lives.
#[tokio::test(start_paused = true)]
async fn the_fallback_scan_is_seen_when_a_renewer_fails() {
    use ractor::SupervisionEvent;
    let (log, _guard) = recording();
    let r = rig().await;
    let (_l1, c1) = r.manager.acquire_lease(key(0), TTL).await.unwrap();
    let children = r.manager.actor().get_cell().get_children();
    assert_eq!(children.len(), 1);
    let (l2, c2) = r.manager.acquire_lease(key(1), TTL).await.unwrap();
    children[0].notify_supervisor(SupervisionEvent::ActorFailed(
        children[0].clone(),
        From::from("failed from outside"),
    ));
    assert!(matches!(
        tokio::time::timeout(TTL, c1.cancelled()).await.unwrap(),
        CancelReason::Lost(LossCause::RenewerFailed(_))
    ));
    assert_eq!(fallbacks(&log), 1);
    tokio::time::sleep(TTL * 3).await;
    assert!(!c2.is_cancelled());
    l2.release().await.unwrap();
}

/// A keeping holder whose renewer is stopped from outside: told at once, the key stays
/// claimed here until it lets go, then the next holder gets a larger token and lives.
#[tokio::test(start_paused = true)]
async fn a_keeping_holders_renewer_stopped_from_outside_ends_only_it() {
    for how in ["stop", "kill"] {
        let r = rig().await;
        let k = key(0);
        let opts = AcquireOptions::new(TTL).keep_until_released();
        let (kept, kept_ctx) = r.manager.acquire_lease_with(k.clone(), opts).await.unwrap();
        let children = r.manager.actor().get_cell().get_children();
        let (other, other_ctx) = r.manager.acquire_lease(key(1), TTL).await.unwrap();
        match how {
            "stop" => children[0].stop(Some("stopped from outside".into())),
            _ => children[0].kill(),
        }
        let reason = tokio::time::timeout(TTL, kept_ctx.cancelled())
            .await
            .expect("told at once");
        assert!(
            matches!(reason, CancelReason::Lost(LossCause::RenewerFailed(_))),
            "{how}: {reason:?}"
        );
        let waited = r
            .manager
            .acquire_lease_with(k.clone(), AcquireOptions::new(TTL).wait(TTL * 3))
            .await;
        assert!(waited.is_err(), "{how}: granted while kept: {waited:?}");
        let _ = kept.release().await;
        let opts = AcquireOptions::new(TTL).wait(TTL * 3);
        let (next, next_ctx) = r.manager.acquire_lease_with(k.clone(), opts).await.unwrap();
        assert!(next_ctx.token() > kept_ctx.token());
        tokio::time::sleep(TTL * 4).await;
        assert!(!next_ctx.is_cancelled(), "{how}: {:?}", next_ctx.reason());
        assert!(!other_ctx.is_cancelled(), "{how}");
        next.release().await.unwrap();
        other.release().await.unwrap();
    }
}

/// The memory backend at exact expiry boundaries: held up to the last nanosecond of
/// its TTL, free at the TTL (the next grant's token is larger), a renewal at the TTL
/// refused.
#[tokio::test(start_paused = true)]
async fn the_memory_backend_expires_exactly_at_the_ttl() {
    use leases::backend::{AcquireOutcome, RenewOutcome};
    let b = MemoryBackend::new();
    let k = key(0);
    let AcquireOutcome::Granted { token } = b.acquire(&k, TTL, b"").await.unwrap() else {
        panic!("granted")
    };
    tokio::time::advance(TTL - Duration::from_nanos(1)).await;
    assert_eq!(
        b.acquire(&k, TTL, b"").await.unwrap(),
        AcquireOutcome::Held {
            expires_in: Duration::from_nanos(1)
        }
    );
    tokio::time::advance(Duration::from_nanos(1)).await;
    assert_eq!(b.renew(&k, token, TTL).await.unwrap(), RenewOutcome::Lost);
    match b.acquire(&k, TTL, b"").await.unwrap() {
        AcquireOutcome::Granted { token: t } => assert!(t > token),
        other => panic!("{other:?}"),
    }
}

/// The memory backend used on a tokio clock far behind the one it was made on (its
/// expiries are negative there): still one holder at a time, exact times left, a
/// larger token after expiry, and renewals that keep the lease.
#[test]
fn the_memory_backend_on_a_clock_behind_its_start_keeps_one_holder() {
    use leases::backend::{AcquireOutcome, RenewOutcome};
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let ahead = paused();
    let b = ahead.block_on(async {
        tokio::time::advance(Duration::from_secs(100_000)).await;
        MemoryBackend::new()
    });
    let behind = paused();
    behind.block_on(async {
        let k = key(0);
        let AcquireOutcome::Granted { token } = b.acquire(&k, TTL, b"").await.unwrap() else {
            panic!("granted")
        };
        assert_eq!(
            b.acquire(&k, TTL, b"").await.unwrap(),
            AcquireOutcome::Held { expires_in: TTL }
        );
        tokio::time::advance(TTL / 2).await;
        assert_eq!(
            b.renew(&k, token, TTL).await.unwrap(),
            RenewOutcome::Renewed
        );
        tokio::time::advance(TTL * 3 / 4).await;
        assert_eq!(
            b.acquire(&k, TTL, b"").await.unwrap(),
            AcquireOutcome::Held {
                expires_in: TTL / 4
            }
        );
        let info = b.info(&k).await.unwrap().unwrap();
        assert_eq!((info.token, info.expires_in), (token, TTL / 4));
        tokio::time::advance(TTL / 4).await;
        match b.acquire(&k, TTL, b"").await.unwrap() {
            AcquireOutcome::Granted { token: t } => assert!(t > token),
            other => panic!("{other:?}"),
        }
    });
}
