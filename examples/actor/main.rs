//! Leases in a ractor application: a worker actor that holds a lease, under a supervisor
//! that restarts it, with the lease manager in the same supervision tree.
//!
//!     cargo run --example actor
//!
//! The three ractor-facing pieces of `leases` (see `leases::actors`), in use:
//! - `LeaseManager::builder().supervised_by(cell)` spawns the manager's own actor as a
//!   linked child of our `Supervisor`, so it sits in our supervision tree;
//! - `ractor::call!(manager.actor(), ManagerMessage::acquire, key, options)` acquires
//!   from inside an actor (the `Worker`'s `pre_start`);
//! - `LeaseContext::forward_to` turns "the lease ended" into an ordinary message in the
//!   worker's mailbox (`WorkerMsg::LeaseEnded(reason)`).
//!
//! The story, printed as a timeline: worker 1 acquires and works; an operator revokes
//! its lease, so it is told `revoked` and stops; the supervisor restarts it, and worker 2
//! acquires with a larger fencing token; worker 2's renewals are refused (injected with
//! `FaultyBackend`), so it is told `lost` and fails; worker 3 acquires with a larger
//! token still; then the manager shuts down: worker 3 is told `shutdown`, the supervisor
//! sees the manager (its child) terminate, does not restart anything, and stops. The
//! example checks these outcomes itself and exits non-zero if one is wrong.
//!
//! # What ractor's supervision does by default, and why we override it
//!
//! When a linked child exits, its supervisor gets a `SupervisionEvent`
//! (`ActorTerminated` if the child stopped, `ActorFailed` if it returned an error or
//! panicked). ractor's default `handle_supervisor_evt` answers *any* such event by
//! stopping the supervisor itself. And an actor that stops takes its children down with
//! it (they are killed). So with the default, the first time a worker lost its lease,
//! our supervisor would stop, and with it the lease manager and every other worker.
//! That is why `Supervisor` (supervisor.rs) overrides `handle_supervisor_evt`: it tells the
//! manager apart from workers (by comparing the child's id with
//! `manager.actor().get_id()`), restarts a worker after a short backoff (unless the
//! manager has gone meanwhile), and gives up after a few restarts.
//!
//! # When the lease manager exits
//!
//! The manager's actor is a child like any other, so its exit is a supervision event
//! too:
//! - after `LeaseManager::shutdown()` (or when the last `LeaseManager` handle is
//!   dropped) it stops normally (`ActorTerminated`, reason "shutdown"). Every lease it
//!   held has been released and every `LeaseContext` has ended with
//!   `CancelReason::Shutdown`;
//! - if it fails (a panic), or is killed (for example because *its* supervisor stopped),
//!   its lease table is dropped and every context ends with
//!   `CancelReason::Lost(LossCause::ManagerFailed)`; the leases are not released, so
//!   the keys stay taken until their TTL runs out in the backend.
//!
//! Either way no lease of that manager is held any more, and a new acquire through it
//! fails with `ManagerStopped`. Restarting "the manager" is not a matter of respawning
//! one actor: the `LeaseManager` handles that other code holds still point at the old
//! one. So this supervisor does not restart it; it lets its workers end and stops
//! itself, leaving the decision to whoever supervises it (here, `main`).
//!
//! # How a worker should react when its lease ends
//!
//! Stop acting as the holder at once, and exit: stop normally (`Released`, `Revoked`,
//! `Shutdown`) or fail (`Lost`), so that the supervisor sees which it was. Do not
//! re-acquire in place: the supervisor knows whether the manager is still there, how
//! often this has happened and how long to back off, so the restart decision is its to
//! make. A fresh worker acquires afresh and gets a new, larger fencing token.
//!
//! The pieces: `events.rs` (what the actors tell `main`, the printed timeline),
//! `worker.rs`, `supervisor.rs`, and here the story and its checks.

mod events;
mod supervisor;
mod worker;

use std::time::Duration;

use leases::backend::{FaultyBackend, MemoryBackend, RenewFault};
use leases::{CancelReason, Key, LossCause};
use ractor::Actor;
use tokio::sync::mpsc;
use tokio::time::timeout;

use events::{say, Error, Event, STEP};
use supervisor::{Supervisor, SupervisorArgs};

/// How long the story lets a worker work before the next twist.
const WORK: Duration = Duration::from_millis(250);

/// The next event, or an error if none comes within [`STEP`].
async fn next(
    events: &mut mpsc::UnboundedReceiver<Event>,
    waiting_for: &str,
) -> Result<Event, Error> {
    match timeout(STEP, events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(format!("every actor is gone while waiting for {waiting_for}").into()),
        Err(_) => Err(format!("timed out waiting for {waiting_for}").into()),
    }
}

/// Waits until worker `n` works; returns its token.
async fn working(events: &mut mpsc::UnboundedReceiver<Event>, n: u32) -> Result<u64, Error> {
    match next(events, &format!("worker {n} to work")).await? {
        Event::Working { n: m, token } if m == n => Ok(token),
        _ => Err(format!("expected worker {n} to work, got another event").into()),
    }
}

/// Waits until worker `n` is told its lease ended; returns the reason.
async fn ended(
    events: &mut mpsc::UnboundedReceiver<Event>,
    n: u32,
    token: u64,
) -> Result<CancelReason, Error> {
    loop {
        match next(events, &format!("worker {n}'s lease to end")).await? {
            // A worker's first tick may come after its lease has already ended.
            Event::Working { n: m, .. } if m == n => continue,
            Event::LeaseEnded {
                n: m,
                token: t,
                reason,
            } if m == n => {
                assert_eq!(t, token, "worker {n} is told about its own lease");
                return Ok(reason);
            }
            _ => return Err(format!("expected worker {n}'s lease to end").into()),
        }
    }
}

async fn story() -> Result<(), Error> {
    let key = Key::system(["jobs", "compaction"]);
    let faulty = std::sync::Arc::new(FaultyBackend::new(
        std::sync::Arc::new(MemoryBackend::new()),
    ));
    let (tx, mut events) = mpsc::unbounded_channel();
    say("main", "starts the supervisor");
    let (_supervisor, supervisor_done) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            key: key.clone(),
            backend: faulty.clone(),
            events: tx,
        },
    )
    .await?;
    let manager = match next(&mut events, "the manager").await? {
        Event::ManagerStarted(manager) => manager,
        _ => return Err("expected the manager first".into()),
    };

    // 1. Worker 1 works; an operator revokes its lease; it stops; it is restarted.
    let t1 = working(&mut events, 1).await?;
    tokio::time::sleep(WORK).await;
    say("main", "revokes the lease (as an operator would)");
    assert!(manager.revoke(&key).await?, "someone held the key");
    let reason = ended(&mut events, 1, t1).await?;
    assert_eq!(reason, CancelReason::Revoked, "worker 1's end");

    // 2. Worker 2, with a larger token; its renewals are refused; it fails.
    let t2 = working(&mut events, 2).await?;
    assert!(t2 > t1, "fencing tokens grow: {t2} > {t1}");
    tokio::time::sleep(WORK).await;
    say("main", "makes the backend refuse renewals");
    faulty.fail_renewals(&key, RenewFault::Refuse);
    let reason = ended(&mut events, 2, t2).await?;
    // Refused at its next renewal; on a machine too loaded to renew in time, the local
    // deadline may come first. Both are a loss, and a loss is what the worker must see.
    assert!(
        matches!(
            reason,
            CancelReason::Lost(LossCause::RenewalRefused | LossCause::DeadlineExceeded)
        ),
        "worker 2's end: {reason}"
    );
    say("main", "heals the backend");
    faulty.heal_renewals(&key);

    // 3. Worker 3, with a larger token still; then the manager shuts down.
    let t3 = working(&mut events, 3).await?;
    assert!(t3 > t2, "fencing tokens grow: {t3} > {t2}");
    tokio::time::sleep(WORK).await;
    say("main", "shuts the lease manager down");
    timeout(STEP, manager.shutdown())
        .await
        .map_err(|_| "the manager did not shut down in time")?;
    // Worker 3's end and the manager's exit may arrive in either order.
    let (mut reason3, mut manager_exit, mut restarts) = (None, None, None);
    while restarts.is_none() {
        match next(&mut events, "the supervisor to stop").await? {
            Event::Working { n: 3, .. } => {}
            Event::LeaseEnded {
                n: 3,
                token,
                reason,
            } => {
                assert_eq!(token, t3);
                reason3 = Some(reason);
            }
            Event::ManagerExited { failed } => manager_exit = Some(failed),
            Event::SupervisorStopped { restarts: r } => restarts = Some(r),
            _ => return Err("unexpected event after shutdown".into()),
        }
    }
    assert_eq!(reason3, Some(CancelReason::Shutdown), "worker 3's end");
    assert_eq!(manager_exit, Some(false), "the manager stopped, not failed");
    assert_eq!(
        restarts,
        Some(2),
        "two restarts: after revoke and after loss"
    );
    timeout(STEP, supervisor_done)
        .await
        .map_err(|_| "the supervisor did not finish in time")??;
    say("main", "done: tokens grew, every end was the expected one");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The whole story is bounded, so that the example can never hang in CI.
    timeout(Duration::from_secs(20), story())
        .await
        .map_err(|_| "the story did not finish within 20 s")?
}
