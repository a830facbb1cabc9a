//! The supervisor actor: the single owner of the lease table.
//!
//! Every request that changes who holds what goes through its mailbox, so its state
//! needs no locks. Its handlers never await anything but shutdown: backend I/O
//! (acquire attempts, releases, revocations) runs in tasks of their own (see
//! `attempt.rs` and `io.rs`)
//! and reports back by message, so a slow database cannot delay another key's acquire
//! or release; a backend that needs no I/O (the memory backend) answers inline through
//! its [`InlineBackend`](crate::backend::InlineBackend) capability; and each lease's
//! renewal actor is started in a task and attaches by message, so starting actors does
//! not bound the mailbox either.
//!
//! Its handlers live beside it: `acquire.rs` hands leases out, `ending.rs` ends them
//! and decides what is given back; this file is the actor itself (starting, dispatching
//! messages, and watching its renewal actors come and go).

use std::sync::Arc;

use async_trait::async_trait;
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent};
use tracing::Instrument;

use super::config::Config;
use super::messages::{call, ManagerMessage, Msg};
use super::renewer::{RenewerRef, RenewerState};
use super::state::SupervisorState;
use super::table::LeaseTable;
use crate::backend::Backend;
use crate::error::LeaseError;
use crate::key::Key;
use crate::lease::LeaseOwner;

/// The supervisor actor.
pub(crate) struct Supervisor;

pub(crate) struct SupervisorArgs {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Config,
}

/// How a [`Lease`] handle reaches the supervisor that granted it.
struct ManagerOwner {
    actor: ActorRef<ManagerMessage>,
}

#[async_trait]
impl LeaseOwner for ManagerOwner {
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError> {
        let span = tracing::info_span!("lease.release", %key, token);
        let key = key.clone();
        let released = call(&self.actor, |reply| Msg::Release {
            key,
            token,
            reply: Some(reply),
        })
        .instrument(span)
        .await;
        match released {
            // The manager is gone, and every lease it held ended with it (released at
            // shutdown, or lost with the manager): this one is not held any more.
            Err(LeaseError::ManagerStopped) => Err(LeaseError::NotHeld),
            other => other,
        }
    }

    fn leave(&self, key: Key, token: u64) {
        // After shutdown the manager has let go of every lease already.
        let _ = self
            .actor
            .send_message(ManagerMessage(Msg::Leave { key, token }));
    }

    fn release_on_drop(&self, key: Key, token: u64) {
        // After shutdown every lease was already released; nothing is left to do.
        let _ = self.actor.send_message(ManagerMessage(Msg::Release {
            key,
            token,
            reply: None,
        }));
    }
}

impl SupervisorState {
    fn on_attach(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        token: u64,
        renewer: RenewerRef,
    ) {
        let id = renewer.get_id();
        let running = matches!(
            renewer.get_status(),
            ActorStatus::Running | ActorStatus::Starting
        );
        if !self.table.attach(&key, token, renewer.clone()) {
            // The lease ended before its renewer started. Unlink first, as `end_holder`
            // does: a kill that lands before the actor's message loop carries no state,
            // and its exit event would send the supervisor looking through every holder
            // for a renewer that has none.
            renewer.get_cell().unlink(self.cell.clone());
            renewer.kill();
            return;
        }
        if !running {
            // It ended before we knew it: its exit event found nobody to tell.
            self.on_renewer_exit(
                myself,
                (key, token),
                id,
                "exited before it was attached".into(),
            );
        }
    }
}

impl Actor for Supervisor {
    type Msg = ManagerMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ManagerMessage>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            backend: args.backend,
            config: args.config,
            cell: myself.get_cell(),
            owner: Arc::new(ManagerOwner { actor: myself }),
            table: LeaseTable::default(),
            stopping: false,
            groups: Default::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMessage>,
        ManagerMessage(msg): ManagerMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Acquire {
                key,
                options,
                reply,
            } => state.on_acquire(&myself, key, options, reply),
            Msg::Attempted {
                key,
                waiter,
                outcome,
            } => state.on_attempted(&myself, key, waiter, outcome),
            Msg::Release { key, token, reply } => state.on_release(&myself, key, token, reply),
            Msg::Revoke { key, reply } => state.on_revoke(&myself, key, reply),
            Msg::RevokeDone { key } => state.on_revoke_done(&myself, key),
            Msg::WaitExpired { key, waiter } => state.on_wait_expired(&myself, key, waiter),
            Msg::Leave { key, token } => state.on_leave(&myself, key, token),
            Msg::Attach {
                key,
                token,
                renewer,
            } => state.on_attach(&myself, key, token, renewer),
            Msg::Shutdown { reply } => {
                if !state.stopping {
                    state.on_shutdown().await;
                }
                myself.stop(Some("shutdown".into()));
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ManagerMessage>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never stop because a child did (ractor's default): a renewer's end is one
        // lease's end.
        let (cell, final_state, why) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, None, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, final_state, why) => {
                (cell, final_state, why.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        // A renewer that stopped hands us its state, which names its lease; one that
        // failed (or was killed by someone else) only its id (see `renewer.rs`).
        let lease = match final_state.and_then(|mut s| s.take::<RenewerState>().ok()) {
            Some(renewer) => Some(renewer.lease()),
            None => {
                let lease = state.table.renewed_by(id);
                if lease.is_some() {
                    tracing::warn!(target: "leases::manager::supervisor", %id, %why, "a renewal actor failed");
                }
                lease
            }
        };
        if let Some(lease) = lease {
            state.on_renewer_exit(&myself, lease, id, why);
        }
        Ok(())
    }
}
