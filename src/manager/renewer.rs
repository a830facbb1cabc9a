//! The renewal actor: one per held lease, a linked child of the supervisor.
//!
//! It does no I/O and keeps no timer. When it starts it joins its lease's *group* (the
//! manager's leases of one TTL, see `group.rs`), which renews the whole group in one
//! backend call every TTL/3 and moves each confirmed lease's *local deadline* (the start
//! of the last renewal confirmed for it, or of the acquire, + TTL − safety margin, on the
//! monotonic clock) straight on its context. The backend's expiry is at least TTL after
//! that start, so the deadline falls before anyone else can be granted the key.
//!
//! The renewer hears from its group only when its lease's renewal is over ([`Fate`]):
//! revoked, refused, or not confirmed by the deadline. It then ends the holder's context
//! itself (so loss is told on time even if the supervisor's mailbox is busy) and stops,
//! with the loss (or "revoked") as its reason. If the context had already ended for
//! another reason (a release, a shutdown: the supervisor ended it and stops this actor),
//! it stops quietly.
//!
//! The supervisor sees the stop as a supervision event that carries the renewer's final
//! state, and so the lease it renewed: that is how it knows which holder to end, without
//! a map from actors to leases (an entry per lease held). The renewer therefore ends its
//! lease by stopping, never by failing; a failure (a panic in this actor's own code) is
//! still seen, and its lease found by the actor's id, the slow way (see
//! `LeaseTable::renewed_by`).

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::group::{Fate, Group, Member, Membership};
use crate::context::ContextSender;
use crate::key::Key;
use crate::reason::{CancelReason, LossCause};

/// The renewal actor. Its messages come from its group: the lease's renewal is over.
pub(crate) struct Renewer;

/// How the supervisor (and the lease table) address a renewer.
pub(crate) type RenewerRef = ActorRef<Fate>;

/// What a renewer needs to start.
pub(crate) struct RenewerArgs {
    pub(crate) key: Key,
    pub(crate) token: u64,
    pub(crate) ctx: ContextSender,
    /// The local deadline already earned by the acquire.
    pub(crate) deadline: tokio::time::Instant,
    /// The group of the lease's TTL, which it joins.
    pub(crate) group: Group,
}

pub(crate) struct RenewerState {
    key: Key,
    token: u64,
    ctx: ContextSender,
    /// Keeps the group's task alive while this lease may be in it; dropped (this actor
    /// has stopped), it tells the group that a member has left.
    _group: Membership,
}

impl RenewerState {
    /// The lease this actor renewed, `(key, token)`.
    pub(crate) fn lease(self) -> (Key, u64) {
        (self.key, self.token)
    }

    /// Ends the context with `cause` and stops the actor with it as the reason.
    fn lose(&self, myself: &ActorRef<Fate>, cause: LossCause) {
        let reason = CancelReason::Lost(cause);
        if self.ctx.cancel(reason.clone()) {
            tracing::warn!(key = %self.key, token = self.token, %reason, "lease lost");
        }
        myself.stop(Some(reason.to_string()));
    }
}

impl Actor for Renewer {
    type Msg = Fate;
    type State = RenewerState;
    type Arguments = RenewerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Fate>,
        args: RenewerArgs,
    ) -> Result<RenewerState, ActorProcessingErr> {
        let member = Member {
            key: args.key.clone(),
            token: args.token,
            ctx: args.ctx.clone(),
            deadline: args.deadline,
            renewer: myself,
        };
        let Some(membership) = args.group.join(member) else {
            return Err(From::from("the lease's renewal group is gone"));
        };
        Ok(RenewerState {
            key: args.key,
            token: args.token,
            ctx: args.ctx,
            _group: membership,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Fate>,
        fate: Fate,
        state: &mut RenewerState,
    ) -> Result<(), ActorProcessingErr> {
        // The context may have ended without us: its deadline passed on the
        // suspend-aware clock (a loss, reported as one), or the supervisor ended it (and
        // maybe died before it could stop us).
        match state.ctx.reason() {
            None => {}
            Some(CancelReason::Lost(LossCause::DeadlineExceeded)) => {
                state.lose(&myself, LossCause::DeadlineExceeded);
                return Ok(());
            }
            Some(reason) => {
                myself.stop(Some(format!("the lease ended: {reason}")));
                return Ok(());
            }
        }
        match fate {
            Fate::Revoked => {
                if state.ctx.cancel(CancelReason::Revoked) {
                    tracing::info!(key = %state.key, token = state.token, "lease revoked");
                }
                myself.stop(Some("revoked".into()));
            }
            Fate::Refused => state.lose(&myself, LossCause::RenewalRefused),
            Fate::Expired => state.lose(&myself, LossCause::DeadlineExceeded),
            // The supervisor ends the context with the panic as the reason.
            Fate::Panicked(why) => myself.stop(Some(format!("the renewal panicked: {why}"))),
        }
        Ok(())
    }
}
