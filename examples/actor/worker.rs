//! The worker: holds the lease for as long as it lives, works under it, and exits when
//! it ends (stopping normally, or failing on a loss).

use std::time::Duration;

use leases::actors::ManagerMessage;
use leases::{AcquireOptions, CancelReason, Key, Lease, LeaseContext};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::timeout;

use crate::events::{say, Event, Events, STEP, TTL};

/// How often a worker does a unit of work.
const TICK: Duration = Duration::from_millis(100);

pub struct Worker;

pub struct WorkerArgs {
    pub n: u32,
    pub key: Key,
    pub manager: ActorRef<ManagerMessage>,
    pub events: Events,
}

pub struct WorkerState {
    n: u32,
    events: Events,
    /// Kept, not used: dropping a `Lease` releases it.
    _lease: Lease,
    ctx: LeaseContext,
    ticks: u32,
}

pub enum WorkerMsg {
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
