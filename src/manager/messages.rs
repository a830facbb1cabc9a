//! What travels through the supervisor's mailbox: the public [`ManagerMessage`] that
//! actors may send, the internal protocol behind it, and the one way callers wait for
//! an answer ([`call`]).

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::grant::Grant;
use super::renewer::RenewerRef;
use super::tasks::InFlight;
use crate::backend::{AcquireOutcome, Backend};
use crate::context::LeaseContext;
use crate::error::{BackendError, LeaseError};
use crate::key::Key;
use crate::lease::Lease;
use crate::leaser::AcquireOptions;

/// The reply to an acquire: the lease and its context, or why not.
pub type AcquireReply = Result<(Lease, LeaseContext), LeaseError>;

/// A message to the lease manager's supervisor actor.
///
/// Actors that talk to the manager directly build these with the constructors below
/// and send them with `ractor::call!`, for example
/// `ractor::call!(manager_ref, ManagerMessage::acquire, key, options)`.
pub struct ManagerMessage(pub(crate) Msg);

impl std::fmt::Debug for ManagerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.0 {
            Msg::Acquire { .. } => "Acquire",
            Msg::Attempted { .. } => "Attempted",
            Msg::Release { .. } => "Release",
            Msg::Revoke { .. } => "Revoke",
            Msg::RevokeDone { .. } => "RevokeDone",
            Msg::WaitExpired { .. } => "WaitExpired",
            Msg::Attach { .. } => "Attach",
            Msg::Leave { .. } => "Leave",
            Msg::Shutdown { .. } => "Shutdown",
        };
        write!(f, "ManagerMessage::{name}")
    }
}

impl ManagerMessage {
    /// Acquire `key` with `options`; the reply carries the lease and its context.
    pub fn acquire(
        key: Key,
        options: AcquireOptions,
        reply: RpcReplyPort<AcquireReply>,
    ) -> ManagerMessage {
        ManagerMessage(Msg::Acquire {
            key,
            options,
            reply,
        })
    }

    /// Revoke whoever holds `key`; the reply says whether anyone did.
    pub fn revoke(key: Key, reply: RpcReplyPort<Result<bool, LeaseError>>) -> ManagerMessage {
        ManagerMessage(Msg::Revoke { key, reply })
    }

    /// Shut the manager down: every context ends with
    /// [`CancelReason::Shutdown`](crate::CancelReason::Shutdown), every lease is
    /// released, and the actor stops before the reply.
    pub fn shutdown(reply: RpcReplyPort<()>) -> ManagerMessage {
        ManagerMessage(Msg::Shutdown { reply: Some(reply) })
    }
}

/// The supervisor's protocol.
pub(crate) enum Msg {
    Acquire {
        key: Key,
        options: AcquireOptions,
        reply: RpcReplyPort<AcquireReply>,
    },
    /// An acquire attempt (run in a task) finished.
    Attempted {
        key: Key,
        waiter: Waiter,
        outcome: Attempt,
    },
    Release {
        key: Key,
        token: u64,
        reply: Option<RpcReplyPort<Result<(), LeaseError>>>,
    },
    Revoke {
        key: Key,
        reply: RpcReplyPort<Result<bool, LeaseError>>,
    },
    /// A revoke of a lease held here has reached the backend: the key may be granted
    /// again.
    RevokeDone {
        key: Key,
    },
    /// A lease's renewal actor has started.
    Attach {
        key: Key,
        token: u64,
        renewer: RenewerRef,
    },
    /// The holder of `(key, token)` lets go of it without giving the key back: it stays
    /// taken in the store until it expires or is re-attached elsewhere.
    Leave {
        key: Key,
        token: u64,
    },
    /// A queued waiter's wait ran out, or it is time to see whether its caller went
    /// away.
    WaitExpired {
        key: Key,
        waiter: u64,
    },
    Shutdown {
        reply: Option<RpcReplyPort<()>>,
    },
}

/// The result of one acquire attempt (which may have waited).
pub(crate) enum Attempt {
    /// `started` and `since` are read before the backend was asked: the instant (on
    /// tokio's clock) and the machine's suspended time (see `crate::clock`).
    Granted {
        grant: Grant,
        started: Instant,
        since: Duration,
    },
    Conflict,
    /// A resume was refused: the lease is gone or revoked
    /// ([`LeaseError::NotHeld`]), or was asked for with another TTL.
    Refused(LeaseError),
    /// The attempt waited as long as its caller allowed.
    TimedOut,
    Failed(BackendError),
}

impl Attempt {
    /// The one mapping from a backend's answer to an attempt's outcome, for the inline
    /// path and the task path alike. A grant becomes a [`Grant`] at once, so that it is
    /// given back if nobody takes it.
    pub(crate) fn from_answer(
        answer: Result<AcquireOutcome, BackendError>,
        backend: &std::sync::Arc<dyn Backend>,
        inflight: &InFlight,
        key: &Key,
        started: Instant,
        since: Duration,
    ) -> Attempt {
        match answer {
            Ok(AcquireOutcome::Granted { token }) => Attempt::Granted {
                grant: Grant::new(backend.clone(), inflight.clone(), key.clone(), token),
                started,
                since,
            },
            Ok(AcquireOutcome::Held { .. }) => Attempt::Conflict,
            Err(e) => Attempt::Failed(e),
        }
    }
}

/// A caller waiting for an acquire answer.
pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) options: AcquireOptions,
    pub(crate) reply: RpcReplyPort<AcquireReply>,
    /// When to give up waiting for a held key; `None` means do not wait.
    pub(crate) until: Option<Instant>,
}

/// Sends the message `build` makes (around a fresh reply port) to the supervisor and
/// waits for the answer. A supervisor that is gone, or that drops the request, is
/// [`LeaseError::ManagerStopped`].
pub(crate) async fn call<T>(
    actor: &ActorRef<ManagerMessage>,
    build: impl FnOnce(RpcReplyPort<Result<T, LeaseError>>) -> Msg,
) -> Result<T, LeaseError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    actor
        .send_message(ManagerMessage(build(tx.into())))
        .map_err(|_| LeaseError::ManagerStopped)?;
    rx.await.map_err(|_| LeaseError::ManagerStopped)?
}
