//! The supervisor's state: the lease table and what the handlers need besides it.
//! Changed only from the supervisor's handlers (see `supervisor.rs`), so it needs no
//! locks; the handlers are split by what they do: acquiring (`acquire.rs`), ending
//! (`ending.rs`), and the actor's own wiring (`supervisor.rs`).

use std::sync::Arc;

use ractor::RpcReplyPort;

use super::config::Config;
use super::group::Groups;
use super::table::LeaseTable;
use crate::backend::Backend;
use crate::error::LeaseError;
use crate::lease::LeaseOwner;

/// What the supervisor actor owns.
pub(crate) struct SupervisorState {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) config: Config,
    pub(super) owner: Arc<dyn LeaseOwner>,
    /// This actor, the renewers' supervisor.
    pub(super) cell: ractor::ActorCell,
    pub(super) table: LeaseTable,
    pub(super) stopping: bool,
    /// The renewal groups of this manager, one per TTL.
    pub(super) groups: Groups,
}

/// Answers a request the stopping (or stopped) manager will not serve.
pub(super) fn stopped_reply<T>(reply: RpcReplyPort<Result<T, LeaseError>>) {
    let _ = reply.send(Err(LeaseError::ManagerStopped));
}
