//! The supervisor: owns the lease manager (a linked child) and the worker; restarts the
//! worker after a backoff, and stops when the manager is gone. Why it overrides
//! ractor's `handle_supervisor_evt`: see the top of `main.rs`.

use std::time::Duration;

use leases::backend::FaultyBackend;
use leases::{Key, LeaseManager};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::events::{say, Event, Events, TTL};
use crate::worker::{Worker, WorkerArgs};

/// The supervisor's backoff before a restart (times the number of restarts so far).
const BACKOFF: Duration = Duration::from_millis(100);
/// The supervisor gives up after this many restarts.
const MAX_RESTARTS: u32 = 3;

pub struct Supervisor;

pub struct SupervisorArgs {
    pub key: Key,
    pub backend: std::sync::Arc<FaultyBackend>,
    pub events: Events,
}

pub struct SupervisorState {
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

pub enum SupervisorMsg {
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
            // Not restarted: see the top of main.rs.
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
