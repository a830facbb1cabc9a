//! The renewal actor: one per held lease, a linked child of the supervisor.
//!
//! It renews every TTL/3 and keeps the lease's *local deadline*: the start of the last
//! confirmed renewal (or of the acquire) + TTL − safety margin, on the monotonic clock.
//! The backend's expiry is at least TTL after that start, so the deadline falls before
//! anyone else can be granted the key. When a renewal is refused, or none is confirmed
//! by the deadline, the renewer ends the holder's context itself (so loss is told on
//! time even if the supervisor's mailbox is busy) and then fails, which the supervisor
//! sees as a supervision event.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;
use tracing::Instrument;

use super::alarms::{Alarms, Bell};

use crate::backend::{Backend, RenewOutcome};
use crate::context::{CancelReason, ContextSender, LossCause};
use crate::key::Key;

/// The renewal actor.
pub(crate) struct Renewer;

/// The one message a renewer gets, from the manager's alarm clock: time to renew (or to
/// check the deadline).
pub(crate) struct Tick;

/// What a renewer needs to start.
pub(crate) struct RenewerArgs {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) key: Key,
    pub(crate) token: u64,
    pub(crate) ttl: Duration,
    pub(crate) margin: Duration,
    pub(crate) ctx: ContextSender,
    /// The local deadline already earned by the acquire.
    pub(crate) deadline: Instant,
    /// The manager's alarm clock, which sends the ticks.
    pub(crate) alarms: Alarms,
}

/// The renewer's own bell on the manager's alarm clock (see [`Alarms`]), silenced when
/// the renewer's state is dropped, which happens however the actor ends (stop, kill,
/// panic), unlike `post_stop`.
struct BellGuard(Arc<Bell>);

impl Drop for BellGuard {
    fn drop(&mut self) {
        self.0.silence();
    }
}

pub(crate) struct RenewerState {
    args: RenewerArgs,
    bell: BellGuard,
}

impl RenewerState {
    /// The pause between renewals.
    fn interval(&self) -> Duration {
        self.args.ttl / 3
    }

    /// The pause before retrying after a failed renewal.
    fn retry(&self) -> Duration {
        (self.args.ttl / 10).max(Duration::from_millis(10))
    }

    /// Schedules the next tick after `after`, but never later than the deadline.
    fn schedule(&mut self, after: Duration) {
        let at = (Instant::now() + after).min(self.args.deadline);
        self.args.alarms.set(at, &self.bell.0);
    }

    /// Ends the context with `reason` and returns the error that fails the actor.
    fn lose(&self, cause: LossCause) -> ActorProcessingErr {
        let reason = CancelReason::Lost(cause);
        if self.args.ctx.cancel(reason.clone()) {
            tracing::warn!(key = %self.args.key, token = self.args.token, %reason, "lease lost");
        }
        From::from(reason.to_string())
    }
}

impl Actor for Renewer {
    type Msg = Tick;
    type State = RenewerState;
    type Arguments = RenewerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Tick>,
        args: RenewerArgs,
    ) -> Result<RenewerState, ActorProcessingErr> {
        let first = (Instant::now() + args.ttl / 3).min(args.deadline);
        let bell = BellGuard(Bell::new(myself));
        args.alarms.set(first, &bell.0);
        Ok(RenewerState { args, bell })
    }

    async fn handle(
        &self,
        myself: ActorRef<Tick>,
        _tick: Tick,
        state: &mut RenewerState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: the actor's task holds the state of its `handle` future for as long as
        // the actor lives, so a renewal's (the backend call, its timeout) would cost
        // every held lease memory between renewals too. One allocation per renewal
        // instead.
        Box::pin(Renewer::renew(myself, state)).await
    }
}

impl Renewer {
    /// One tick: renews the lease (or ends it), and sets the next alarm.
    async fn renew(
        myself: ActorRef<Tick>,
        state: &mut RenewerState,
    ) -> Result<(), ActorProcessingErr> {
        let (start, since) = (Instant::now(), crate::clock::suspended());
        // The context may have ended without us: its deadline passed on the
        // suspend-aware clock, or the supervisor ended it (and maybe died before it
        // could stop us). Never renew a lease whose holder has been told it is over.
        match state.args.ctx.reason_at(start, since) {
            None => {}
            Some(CancelReason::Lost(LossCause::DeadlineExceeded)) => {
                return Err(state.lose(LossCause::DeadlineExceeded))
            }
            Some(reason) => {
                myself.stop(Some(format!("the lease ended: {reason}")));
                return Ok(());
            }
        }
        if start >= state.args.deadline {
            return Err(state.lose(LossCause::DeadlineExceeded));
        }
        let a = &state.args;
        let renewal = a.backend.renew(&a.key, a.token, a.ttl);
        let renewal = crate::metrics::timed_renewal(renewal, start)
            .instrument(tracing::debug_span!("lease.renew", key = %a.key, token = a.token));
        match tokio::time::timeout_at(a.deadline, renewal).await {
            Ok(Ok(RenewOutcome::Renewed)) => {
                let deadline = start + state.args.ttl - state.args.margin;
                if !state.args.ctx.extend(deadline, since) {
                    // Confirmed too late: the context already ended at the old deadline.
                    return Err(state.lose(LossCause::DeadlineExceeded));
                }
                state.args.deadline = deadline;
                tracing::trace!(key = %state.args.key, token = state.args.token, "lease renewed");
                let interval = state.interval();
                state.schedule(interval);
                Ok(())
            }
            Ok(Ok(RenewOutcome::Revoked)) => {
                if state.args.ctx.cancel(CancelReason::Revoked) {
                    tracing::info!(key = %state.args.key, token = state.args.token, "lease revoked");
                }
                myself.stop(Some("revoked".into()));
                Ok(())
            }
            Ok(Ok(RenewOutcome::Lost)) => Err(state.lose(LossCause::RenewalRefused)),
            Ok(Err(error)) => {
                crate::metrics::backend_error(crate::metrics::Op::Renew);
                tracing::warn!(key = %state.args.key, token = state.args.token, %error,
                    "lease renewal failed; retrying until the local deadline");
                let retry = state.retry();
                state.schedule(retry);
                Ok(())
            }
            Err(_elapsed) => Err(state.lose(LossCause::DeadlineExceeded)),
        }
    }
}
