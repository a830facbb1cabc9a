//! Behaviour of the in-process manager beyond the conformance suite: the local
//! deadline, faults, panics, embedding in a ractor tree. All on paused time.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, FaultyBackend, MemoryBackend, RenewFault};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, LossCause, MIN_TTL};
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(1);

struct Rig {
    memory: Arc<MemoryBackend>,
    faults: Arc<FaultyBackend>,
    manager: LeaseManager,
}

async fn rig() -> Rig {
    rig_with(|b| b).await
}

async fn rig_with(
    f: impl FnOnce(leases::LeaseManagerBuilder) -> leases::LeaseManagerBuilder,
) -> Rig {
    let memory = Arc::new(MemoryBackend::new());
    let inner: Arc<dyn Backend> = memory.clone();
    let faults = Arc::new(FaultyBackend::new(inner));
    let builder = LeaseManager::builder().min_ttl(TTL).backend(faults.clone());
    let manager = f(builder).start().await.unwrap();
    Rig {
        memory,
        faults,
        manager,
    }
}

#[tokio::test(start_paused = true)]
async fn loss_is_told_at_the_local_deadline_before_the_backend_expiry() {
    let r = rig().await;
    let key = Key::system(["deadline"]);
    let (_lease, ctx) = r.manager.acquire_lease(key.clone(), TTL).await.unwrap();
    // Two good renewals, then the backend hangs.
    tokio::time::sleep(TTL * 2 / 3 + Duration::from_millis(10)).await;
    let renewed = r.memory.info(&key).await.unwrap().unwrap();
    assert!(renewed.expires_in > TTL * 9 / 10, "{renewed:?}");
    r.faults.fail_renewals(&key, RenewFault::Stall);
    let before = Instant::now();
    let reason = ctx.cancelled().await;
    let margin = r.manager.safety_margin(TTL);
    assert_eq!(margin, TTL / 5);
    assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
    // The deadline is the last confirmed renewal + TTL - margin...
    let lost_after = Instant::now() - before;
    let expected = renewed.expires_in - margin;
    assert!(lost_after >= expected && lost_after <= expected + Duration::from_millis(2));
    // ...so at that moment the backend still holds the lease for about one margin
    // (timers tick in whole milliseconds).
    let info = r.memory.info(&key).await.unwrap().unwrap();
    assert!(
        info.expires_in <= margin && info.expires_in + Duration::from_millis(2) >= margin,
        "{info:?}"
    );
    // Nobody can take it until then; afterwards they can.
    let other = LeaseManager::builder()
        .min_ttl(TTL)
        .backend(r.memory.clone())
        .start()
        .await
        .unwrap();
    assert!(matches!(
        other.acquire_lease(key.clone(), TTL).await,
        Err(LeaseError::Conflict)
    ));
    tokio::time::sleep(info.expires_in).await;
    other.acquire_lease(key, TTL).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_custom_safety_margin_moves_the_deadline() {
    let r = rig_with(|b| b.safety_margin(Duration::from_millis(300))).await;
    let key = Key::system(["margin"]);
    let t0 = Instant::now();
    let (_lease, ctx) = r.manager.acquire_lease(key.clone(), TTL).await.unwrap();
    r.faults.fail_renewals(&key, RenewFault::Stall);
    ctx.cancelled().await;
    assert_eq!(Instant::now() - t0, Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn renewal_keeps_a_healthy_lease_for_many_ttls() {
    let r = rig().await;
    let key = Key::system(["healthy"]);
    let (lease, ctx) = r.manager.acquire_lease(key.clone(), TTL).await.unwrap();
    for _ in 0..50 {
        tokio::time::sleep(TTL).await;
        assert!(!ctx.is_cancelled());
        let info = r.memory.info(&key).await.unwrap().unwrap();
        assert!(info.expires_in > TTL / 2, "renewed every TTL/3: {info:?}");
    }
    lease.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transient_renewal_failures_are_retried() {
    let r = rig().await;
    let key = Key::system(["transient"]);
    let (lease, ctx) = r.manager.acquire_lease(key.clone(), TTL).await.unwrap();
    r.faults.fail_renewals(&key, RenewFault::Fail);
    tokio::time::sleep(TTL / 2).await;
    r.faults.heal_renewals(&key);
    tokio::time::sleep(TTL * 5).await;
    assert!(!ctx.is_cancelled(), "{:?}", ctx.reason());
    lease.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_backend_outage_loses_leases_and_the_manager_recovers() {
    let r = rig().await;
    let a = Key::system(["outage", "a"]);
    let (_lease, ctx) = r.manager.acquire_lease(a.clone(), TTL).await.unwrap();
    r.faults.set_down(true);
    let err = r
        .manager
        .acquire_lease(Key::system(["outage", "b"]), TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::Backend(_)), "{err:?}");
    assert_eq!(
        ctx.cancelled().await,
        CancelReason::Lost(LossCause::DeadlineExceeded)
    );
    r.faults.set_down(false);
    // Once the old lease has expired on the backend, the same manager serves again.
    let opts = AcquireOptions::new(TTL).wait(TTL);
    let (lease, ctx) = r.manager.acquire_lease_with(a, opts).await.unwrap();
    tokio::time::sleep(TTL * 3).await;
    assert!(!ctx.is_cancelled());
    lease.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_renewer_loses_only_its_lease() {
    let r = rig().await;
    let bad = Key::system(["panic", "bad"]);
    let good = Key::system(["panic", "good"]);
    let (_b, bad_ctx) = r.manager.acquire_lease(bad.clone(), TTL).await.unwrap();
    let (g, good_ctx) = r.manager.acquire_lease(good.clone(), TTL).await.unwrap();
    r.faults.fail_renewals(&bad, RenewFault::Panic);
    match bad_ctx.cancelled().await {
        CancelReason::Lost(LossCause::RenewerFailed(why)) => {
            assert!(why.contains("injected renewal panic"), "{why}")
        }
        other => panic!("unexpected {other:?}"),
    }
    tokio::time::sleep(TTL * 3).await;
    assert!(!good_ctx.is_cancelled());
    assert!(r.manager.is_running());
    // The supervisor still serves, and the broken key frees once it expires.
    let opts = AcquireOptions::new(TTL).wait(TTL * 2);
    r.faults.heal_renewals(&bad);
    let (again, _) = r.manager.acquire_lease_with(bad, opts).await.unwrap();
    again.release().await.unwrap();
    g.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_default_minimum_ttl_is_five_seconds() {
    let m = LeaseManager::start().await.unwrap();
    let err = m
        .acquire_lease(Key::system(["min"]), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::TtlTooShort { min, .. } if min == MIN_TTL));
    assert_eq!(MIN_TTL, Duration::from_secs(5));
    m.acquire_lease(Key::system(["min"]), MIN_TTL)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn bad_configuration_is_an_error() {
    for builder in [
        LeaseManager::builder().min_ttl(Duration::ZERO),
        LeaseManager::builder().safety_margin(MIN_TTL),
        LeaseManager::builder().safety_margin(Duration::ZERO),
        LeaseManager::builder().min_ttl(Duration::MAX),
    ] {
        assert!(matches!(
            builder.start().await,
            Err(LeaseError::InvalidConfig(_))
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_shuts_down() {
    let r = rig().await;
    let (_lease, ctx) = r
        .manager
        .acquire_lease(Key::system(["dropped"]), TTL)
        .await
        .unwrap();
    let actor = r.manager.actor();
    let copy = r.manager.clone();
    drop(r.manager);
    tokio::time::sleep(TTL).await;
    assert!(!ctx.is_cancelled(), "a clone is still alive");
    drop(copy);
    assert_eq!(ctx.cancelled().await, CancelReason::Shutdown);
    actor.get_cell().wait(None).await.unwrap();
    assert_eq!(actor.get_status(), ActorStatus::Stopped);
    assert!(r.memory.is_empty(), "shutdown released the lease");
}

#[tokio::test(start_paused = true)]
async fn no_actor_is_left_after_shutdown() {
    let r = rig().await;
    let mut held = Vec::new();
    for i in 0..20 {
        held.push(
            r.manager
                .acquire_lease(Key::system(["actors", &i.to_string()]), TTL)
                .await
                .unwrap(),
        );
    }
    let children = r.manager.actor().get_cell().get_children();
    assert_eq!(children.len(), 20);
    r.manager.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(r.manager.actor().get_status(), ActorStatus::Stopped);
    for c in children {
        assert_eq!(c.get_status(), ActorStatus::Stopped);
    }
}

/// A renewal actor that ends without its lease's say-so (stopped or killed by someone
/// else, or failed: the supervisor then learns its final state, or only its id) ends
/// its own holder's context, and nobody else's; the key is free again.
#[tokio::test(start_paused = true)]
async fn a_renewer_ended_from_outside_ends_only_its_holder() {
    for how in ["stop", "kill", "failed"] {
        let r = rig().await;
        let (l1, ctx1) = r
            .manager
            .acquire_lease(Key::system(["outside", "one"]), TTL)
            .await
            .unwrap();
        let children = r.manager.actor().get_cell().get_children();
        assert_eq!(children.len(), 1);
        let (_l2, ctx2) = r
            .manager
            .acquire_lease(Key::system(["outside", "two"]), TTL)
            .await
            .unwrap();
        match how {
            "stop" => children[0].stop(Some("stopped from outside".into())),
            "kill" => children[0].kill(),
            // A failure (as a panic in the renewer's own code would be): the event
            // names only the actor.
            _ => children[0].notify_supervisor(SupervisionEvent::ActorFailed(
                children[0].clone(),
                From::from("failed from outside"),
            )),
        }
        let ended = tokio::time::timeout(TTL, ctx1.cancelled()).await;
        match ended.expect("the holder is told at once") {
            CancelReason::Lost(LossCause::RenewerFailed(why)) => {
                let want = match how {
                    "stop" => "stopped from outside",
                    "kill" => "killed",
                    _ => "failed from outside",
                };
                assert!(why.contains(want), "{why}");
            }
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(TTL * 2).await;
        assert!(!ctx2.is_cancelled(), "the other lease lives");
        assert!(matches!(l1.release().await, Err(LeaseError::NotHeld)));
        // Its key is free again (given back, or expired).
        let opts = AcquireOptions::new(TTL).wait(TTL * 2);
        let (again, _) = r
            .manager
            .acquire_lease_with(Key::system(["outside", "one"]), opts)
            .await
            .unwrap();
        again.release().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_does_not_leak_the_lease() {
    let r = rig().await;
    let key = Key::system(["gave-up"]);
    let (lease, _) = r.manager.acquire_lease(key.clone(), TTL).await.unwrap();
    let opts = AcquireOptions::new(TTL).wait(TTL * 10);
    // The caller stops waiting long before the key frees.
    let gave_up = tokio::time::timeout(TTL, r.manager.acquire_lease_with(key.clone(), opts)).await;
    assert!(gave_up.is_err());
    lease.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Nobody holds it: the abandoned waiter was skipped.
    assert_eq!(r.manager.lease_info(&key).await.unwrap(), None);
    r.manager.acquire_lease(key, TTL).await.unwrap();
}

// --- embedding in a ractor application -------------------------------------------

enum ParentMsg {
    Lost(u64, CancelReason),
}

struct Parent;

struct ParentState {
    events: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Actor for Parent {
    type Msg = ParentMsg;
    type State = ParentState;
    type Arguments = tokio::sync::mpsc::UnboundedSender<String>;

    async fn pre_start(
        &self,
        _: ActorRef<ParentMsg>,
        events: Self::Arguments,
    ) -> Result<ParentState, ActorProcessingErr> {
        Ok(ParentState { events })
    }

    async fn handle(
        &self,
        _: ActorRef<ParentMsg>,
        ParentMsg::Lost(token, reason): ParentMsg,
        state: &mut ParentState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.events.send(format!("lost {token}: {reason}"));
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<ParentMsg>,
        event: SupervisionEvent,
        state: &mut ParentState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(..) = event {
            let _ = state.events.send("child terminated".into());
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_manager_lives_in_a_callers_supervision_tree() {
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (parent, _join) = Actor::spawn(None, Parent, tx).await.unwrap();
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let faults = Arc::new(FaultyBackend::new(memory));
    let m = LeaseManager::builder()
        .min_ttl(TTL)
        .backend(faults.clone())
        .supervised_by(parent.get_cell())
        .start()
        .await
        .unwrap();
    assert_eq!(parent.get_children().len(), 1);

    // A lost lease arrives at the actor as a message.
    let key = Key::system(["tree"]);
    let (lease, ctx) = m.acquire_lease(key.clone(), TTL).await.unwrap();
    let token = lease.token();
    ctx.forward_to(parent.clone(), move |reason| ParentMsg::Lost(token, reason));
    faults.fail_renewals(&key, RenewFault::Refuse);
    assert_eq!(
        events.recv().await.unwrap(),
        format!("lost {token}: lost: the backend refused the renewal")
    );

    // Actors can talk to the manager directly.
    let key2 = Key::system(["tree", "direct"]);
    let got = ractor::call!(
        m.actor(),
        leases::ManagerMessage::acquire,
        key2.clone(),
        AcquireOptions::new(TTL)
    )
    .unwrap();
    let (lease2, _ctx2) = got.unwrap();
    assert!(
        ractor::call!(m.actor(), leases::ManagerMessage::revoke, key2)
            .unwrap()
            .unwrap()
    );
    drop(lease2);

    m.shutdown().await;
    assert_eq!(events.recv().await.unwrap(), "child terminated");
    parent.stop(None);
}

/// `run_until_cancelled`: work runs while the lease is held and is dropped the moment
/// it ends, with the reason.
#[tokio::test(start_paused = true)]
async fn work_runs_until_the_lease_ends() {
    let r = rig().await;
    let key = Key::system(["run-until"]);
    let (_lease, ctx) = r.manager.acquire_lease(key.clone(), TTL).await.unwrap();
    assert_eq!(ctx.run_until_cancelled(async { 42 }).await, Ok(42));
    let m = r.manager.clone();
    let k = key.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        m.revoke(&k).await.unwrap();
    });
    let started = Instant::now();
    let forever = ctx.run_until_cancelled(std::future::pending::<()>()).await;
    assert_eq!(
        forever,
        Err(leases::LeaseEnded {
            reason: CancelReason::Revoked
        })
    );
    assert_eq!(Instant::now() - started, Duration::from_secs(3));
    r.manager.shutdown().await;
}

/// `cancellation_token`: existing code that takes a tokio-util token stops with the
/// lease; cancelling the token does not end the lease.
#[tokio::test(start_paused = true)]
async fn a_cancellation_token_follows_the_lease() {
    let r = rig().await;
    let (lease, ctx) = r
        .manager
        .acquire_lease(Key::system(["token"]), TTL)
        .await
        .unwrap();
    let token = ctx.cancellation_token();
    let child = token.child_token();
    tokio::time::sleep(TTL * 3).await;
    assert!(!token.is_cancelled() && !child.is_cancelled());
    // Cancelling a token is the token's business only.
    let other = ctx.cancellation_token();
    other.cancel();
    tokio::time::sleep(TTL).await;
    assert!(!ctx.is_cancelled());
    lease.release().await.unwrap();
    tokio::time::timeout(TTL, child.cancelled()).await.unwrap();
    assert!(token.is_cancelled());
    // A token made after the end is cancelled already.
    assert!(ctx.cancellation_token().is_cancelled());
    r.manager.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn lease_info_says_when_the_lease_was_granted() {
    let r = rig().await;
    let key = Key::system(["acquired-at"]);
    let before = std::time::SystemTime::now();
    let (_lease, _ctx) = r.manager.acquire_lease(key.clone(), TTL).await.unwrap();
    let info = r.manager.lease_info(&key).await.unwrap().unwrap();
    let at = info.acquired_at.expect("the memory backend records it");
    assert!(at >= before && at <= std::time::SystemTime::now());
    r.manager.shutdown().await;
}

/// `acquire_any`: whichever key is free, spreading successive callers over the keys,
/// waiting for any of them when asked.
#[tokio::test(start_paused = true)]
async fn acquire_any_takes_a_free_key() {
    let r = rig().await;
    let keys: Vec<Key> = (0..3)
        .map(|i| Key::system(["any", &i.to_string()]))
        .collect();
    // Successive calls start at successive keys.
    let mut got = Vec::new();
    for _ in 0..3 {
        let (i, lease, _ctx) = r
            .manager
            .acquire_any(&keys, AcquireOptions::new(TTL))
            .await
            .unwrap();
        got.push(i);
        lease.release().await.unwrap();
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2], "callers spread over the keys");
    // With 0 and 2 held, it is 1.
    let (_l0, _) = r.manager.acquire_lease(keys[0].clone(), TTL).await.unwrap();
    let (l2, _) = r.manager.acquire_lease(keys[2].clone(), TTL).await.unwrap();
    let (i, l1, _) = r
        .manager
        .acquire_any(&keys, AcquireOptions::new(TTL))
        .await
        .unwrap();
    assert_eq!(i, 1);
    // All held: Conflict at once, or a wait that ends when one is released.
    assert!(matches!(
        r.manager.acquire_any(&keys, AcquireOptions::new(TTL)).await,
        Err(LeaseError::Conflict)
    ));
    assert!(matches!(
        r.manager
            .acquire_any(&keys, AcquireOptions::new(TTL).wait(TTL))
            .await,
        Err(LeaseError::WaitTimedOut { .. })
    ));
    let m = r.manager.clone();
    tokio::spawn(async move {
        tokio::time::sleep(TTL * 2).await;
        l2.release().await.unwrap();
    });
    let started = Instant::now();
    let (i, _l, _) = m
        .acquire_any(&keys, AcquireOptions::new(TTL).wait(TTL * 10))
        .await
        .unwrap();
    assert_eq!(i, 2);
    assert_eq!(Instant::now() - started, TTL * 2, "woken by the release");
    drop(l1);
    assert!(matches!(
        r.manager.acquire_any(&[], AcquireOptions::new(TTL)).await,
        Err(LeaseError::InvalidConfig(_))
    ));
    r.manager.shutdown().await;
}

/// `hold`: the lease and its context as one value; holding the context holds the
/// lease, and dropping it releases the lease.
#[tokio::test(start_paused = true)]
async fn a_held_lease_lives_as_long_as_its_context_is_held() {
    let r = rig().await;
    let key = Key::system(["held"]);
    let held = r.manager.hold(key.clone(), TTL).await.unwrap();
    tokio::time::sleep(TTL * 5).await;
    assert!(!held.is_cancelled(), "{:?}", held.reason());
    assert_eq!(held.key(), &key);
    let ctx = held.context();
    assert!(matches!(
        r.manager.acquire_lease(key.clone(), TTL).await,
        Err(LeaseError::Conflict)
    ));
    drop(held);
    tokio::time::sleep(TTL / 10).await;
    assert_eq!(ctx.reason(), Some(CancelReason::Released));
    let again = r.manager.hold(key.clone(), TTL).await.unwrap();
    assert!(again.token() > ctx.token());
    again.release().await.unwrap();
    r.manager.shutdown().await;
}
