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
//! That is why `Supervisor` below overrides `handle_supervisor_evt`: it tells the
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

use std::sync::OnceLock;
use std::time::Duration;

use leases::actors::ManagerMessage;
use leases::backend::{FaultyBackend, MemoryBackend, RenewFault};
use leases::{AcquireOptions, CancelReason, Key, Lease, LeaseContext, LeaseManager, LossCause};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// Short, so that the story takes a couple of seconds; real leases use 5 s or more.
const TTL: Duration = Duration::from_millis(300);
/// How often a worker does a unit of work.
const TICK: Duration = Duration::from_millis(100);
/// How long the story lets a worker work before the next twist.
const WORK: Duration = Duration::from_millis(250);
/// The supervisor's backoff before a restart (times the number of restarts so far).
const BACKOFF: Duration = Duration::from_millis(100);
/// The supervisor gives up after this many restarts.
const MAX_RESTARTS: u32 = 3;
/// The longest any single step of the story may take before the example fails.
const STEP: Duration = Duration::from_secs(3);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Prints one timeline line: seconds since start, who, what.
fn say(who: &str, what: impl AsRef<str>) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("[{t:4.2}s] {who:<10} {}", what.as_ref());
}

/// What the actors tell `main`, which drives the story and checks it.
enum Event {
    /// The supervisor started the manager in its tree.
    ManagerStarted(LeaseManager),
    /// Worker `n` holds the lease with `token` and has done its first unit of work.
    Working { n: u32, token: u64 },
    /// Worker `n`'s lease ended with `reason`.
    LeaseEnded {
        n: u32,
        token: u64,
        reason: CancelReason,
    },
    /// The supervisor saw the manager exit (`failed`: with an error rather than a stop).
    ManagerExited { failed: bool },
    /// The supervisor stopped, after `restarts` worker restarts.
    SupervisorStopped { restarts: u32 },
}

type Events = mpsc::UnboundedSender<Event>;

// ---------------------------------------------------------------------------------
// The worker: holds the lease for as long as it lives.
// ---------------------------------------------------------------------------------

struct Worker;

struct WorkerArgs {
    n: u32,
    key: Key,
    manager: ActorRef<ManagerMessage>,
    events: Events,
}

struct WorkerState {
    n: u32,
    events: Events,
    /// Kept, not used: dropping a `Lease` releases it.
    _lease: Lease,
    ctx: LeaseContext,
    ticks: u32,
}

enum WorkerMsg {
    /// Time for a unit of work.
    Tick,
    /// The lease ended (sent by `LeaseContext::forward_to`).
    LeaseEnded(CancelReason),
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let who = format!("worker {}", args.n);
        // If the key is still taken (a lost lease expiring in the backend), wait a bit.
        let options = AcquireOptions::new(TTL).wait(Duration::from_secs(1));
        // Bounded: a manager that never answers must not hang the worker's start.
        let reply = timeout(STEP, async {
            ractor::call!(args.manager, ManagerMessage::acquire, args.key, options)
        })
        .await
        .map_err(|_| "the lease manager did not answer in time")?
        .map_err(|e| format!("the lease manager is gone: {e}"))?;
        // Failing here fails the spawn: the supervisor sees the error from spawn_linked.
        let (lease, ctx) = reply?;
        say(&who, format!("acquired the lease, token {}", ctx.token()));
        // From now on, the end of the lease is a message in our mailbox.
        ctx.forward_to(myself.clone(), WorkerMsg::LeaseEnded);
        Ok(WorkerState {
            n: args.n,
            events: args.events,
            _lease: lease,
            ctx,
            ticks: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        _state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        // The interval task ends by itself once this actor has stopped.
        myself.send_interval(TICK, || WorkerMsg::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        let who = format!("worker {}", state.n);
        match msg {
            WorkerMsg::Tick => {
                // Check right before each side effect: the context may have ended (at
                // its local deadline, say) before the LeaseEnded message is handled.
                if state.ctx.check().is_err() {
                    return Ok(());
                }
                state.ticks += 1;
                say(&who, format!("works under token {}", state.ctx.token()));
                if state.ticks == 1 {
                    let _ = state.events.send(Event::Working {
                        n: state.n,
                        token: state.ctx.token(),
                    });
                }
            }
            WorkerMsg::LeaseEnded(reason) => {
                say(&who, format!("told the lease ended: {reason}"));
                let _ = state.events.send(Event::LeaseEnded {
                    n: state.n,
                    token: state.ctx.token(),
                    reason: reason.clone(),
                });
                // Stop being the holder now; the supervisor decides what comes next.
                // A loss is a failure (ActorFailed); anything else is a normal stop.
                if let CancelReason::Lost(cause) = reason {
                    return Err(format!("lease lost: {cause}").into());
                }
                myself.stop(Some(format!("lease ended: {reason}")));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The supervisor: owns the lease manager and the worker; restarts the worker.
// ---------------------------------------------------------------------------------

struct Supervisor;

struct SupervisorArgs {
    key: Key,
    backend: std::sync::Arc<FaultyBackend>,
    events: Events,
}

struct SupervisorState {
    key: Key,
    events: Events,
    manager: LeaseManager,
    manager_gone: bool,
    /// The live worker, if any.
    worker: Option<ActorCell>,
    workers_started: u32,
    /// Workers started again after an exit.
    restarts: u32,
    /// A restart is planned (a `StartWorker` is on its way, after the backoff).
    restart_planned: bool,
}

enum SupervisorMsg {
    /// Start the next worker (sent after a backoff).
    StartWorker,
}

const SUP: &str = "supervisor";

impl Supervisor {
    async fn start_worker(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.restart_planned = false;
        // Decided now, not when the restart was planned: the manager may have stopped
        // during the backoff.
        if state.manager_gone || !state.manager.is_running() {
            say(SUP, "the lease manager is gone: no worker to start");
            return Ok(());
        }
        if state.workers_started > 0 {
            state.restarts += 1;
        }
        state.workers_started += 1;
        let n = state.workers_started;
        say(SUP, format!("starts worker {n}"));
        let args = WorkerArgs {
            n,
            key: state.key.clone(),
            manager: state.manager.actor(),
            events: state.events.clone(),
        };
        match Actor::spawn_linked(None, Worker, args, myself.get_cell()).await {
            Ok((worker, _join)) => state.worker = Some(worker.get_cell()),
            // A worker that could not start is an exit like any other.
            Err(e) => Self::worker_exited(myself, state, &format!("failed to start: {e}")),
        }
        Ok(())
    }

    fn worker_exited(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState, how: &str) {
        state.worker = None;
        say(SUP, format!("sees worker {} {how}", state.workers_started));
        if state.manager_gone {
            say(SUP, "the manager is gone too: stops");
            myself.stop(Some("the lease manager stopped".into()));
        } else if state.restarts >= MAX_RESTARTS {
            say(SUP, format!("gives up after {MAX_RESTARTS} restarts"));
            myself.stop(Some("too many restarts".into()));
        } else {
            // The worker's stop alone does not say whether the manager is going away
            // (a `Shutdown` end arrives before the manager's exit, or after it), so
            // plan the restart and look at the manager again when it is due.
            state.restart_planned = true;
            let backoff = BACKOFF * (state.restarts + 1);
            say(
                SUP,
                format!("plans a restart in {} ms", backoff.as_millis()),
            );
            myself.send_after(backoff, || SupervisorMsg::StartWorker);
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        // The manager's actor becomes our linked child: we get its exit as an event.
        let manager = LeaseManager::builder()
            .min_ttl(TTL)
            .backend(args.backend)
            .supervised_by(myself.get_cell())
            .start()
            .await?;
        say(SUP, "started the lease manager as its child");
        let _ = args.events.send(Event::ManagerStarted(manager.clone()));
        Ok(SupervisorState {
            key: args.key,
            events: args.events,
            manager,
            manager_gone: false,
            worker: None,
            workers_started: 0,
            restarts: 0,
            restart_planned: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        Self::start_worker(&myself, state).await
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartWorker => Self::start_worker(&myself, state).await,
        }
    }

    /// Overrides ractor's default, which would stop this actor (and so kill the lease
    /// manager and the worker) at the first exit of any child.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (child, how, failed) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let why = reason.unwrap_or_else(|| "no reason".into());
                (cell, format!("stop ({why})"), false)
            }
            SupervisionEvent::ActorFailed(cell, error) => (cell, format!("fail ({error})"), true),
            _ => return Ok(()),
        };
        if child.get_id() == state.manager.actor().get_id() {
            // Not restarted: see the top of this file.
            say(SUP, format!("sees the lease manager {how}"));
            say(SUP, "does not restart the manager");
            state.manager_gone = true;
            let _ = state.events.send(Event::ManagerExited { failed });
            if state.worker.is_none() {
                if state.restart_planned {
                    say(SUP, "drops the planned restart");
                }
                say(SUP, "no worker left: stops");
                myself.stop(Some("the lease manager stopped".into()));
            }
            // Else the worker's lease has ended (Shutdown or Lost(ManagerFailed)), so it
            // is about to exit, and worker_exited stops us then.
        } else if state.worker.as_ref().map(|w| w.get_id()) == Some(child.get_id()) {
            Self::worker_exited(&myself, state, &how);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        say(SUP, format!("stopped after {} restarts", state.restarts));
        let _ = state.events.send(Event::SupervisorStopped {
            restarts: state.restarts,
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The story, and its checks.
// ---------------------------------------------------------------------------------

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
