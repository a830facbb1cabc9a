//! The renewal actor: one per held lease, a linked child of the supervisor.
//!
//! It renews every TTL/3 and keeps the lease's *local deadline*: the start of the last
//! confirmed renewal (or of the acquire) + TTL − safety margin, on the monotonic clock.
//! The backend's expiry is at least TTL after that start, so the deadline falls before
//! anyone else can be granted the key. When a renewal is refused, or none is confirmed
//! by the deadline, the renewer ends the holder's context itself (so loss is told on
//! time even if the supervisor's mailbox is busy) and then fails, which the supervisor
//! sees as a supervision event.
//!
//! A tick has two halves: the renewal itself (the backend call, bounded by the
//! deadline), which comes to a [`Renewal`], and [`RenewerState::settle`], which acts on
//! it (moves the deadline, or ends the lease, or retries). Only the first half knows
//! where the answer comes from.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;
use tracing::Instrument;

use super::alarms::{Alarms, Bell, Tick};

use crate::backend::{Backend, RenewOutcome};
use crate::context::ContextSender;
use crate::error::BackendError;
use crate::key::Key;
use crate::reason::{CancelReason, LossCause};

/// The renewal actor. The one message it gets is a [`Tick`] from the manager's alarm
/// clock: time to renew (or to check the deadline).
pub(crate) struct Renewer;

/// How the supervisor (and the lease table) address a renewer.
pub(crate) type RenewerRef = ActorRef<Tick>;

/// What one renewal of the lease came to.
pub(crate) enum Renewal {
    /// The backend confirmed the renewal, which started at `start` (tokio's clock) when
    /// the machine's suspended time read `since` (see `crate::clock`).
    Renewed { start: Instant, since: Duration },
    /// The lease was revoked.
    Revoked,
    /// The backend refused: the lease expired there or is no longer ours.
    Refused,
    /// The backend call failed; it may be retried until the deadline.
    Failed(BackendError),
    /// No answer came before the local deadline.
    TimedOut,
}

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
    pub(crate) alarms: Alarms<Tick>,
}

/// The renewer's own bell on the manager's alarm clock (see [`Alarms`]), silenced when
/// the renewer's state is dropped, which happens however the actor ends (stop, kill,
/// panic), unlike `post_stop`.
struct BellGuard(Arc<Bell<Tick>>);

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
        let renewal = state.renew_once(start, since).await;
        state.settle(&myself, renewal)
    }
}

impl RenewerState {
    /// Asks the backend to renew the lease, waiting at most until the local deadline.
    /// `start` and `since` are read before the call (see [`Renewal::Renewed`]).
    async fn renew_once(&self, start: Instant, since: Duration) -> Renewal {
        let a = &self.args;
        let renewal = a.backend.renew(&a.key, a.token, a.ttl);
        let renewal = crate::metrics::timed_renewal(renewal, start)
            .instrument(tracing::debug_span!("lease.renew", key = %a.key, token = a.token));
        match tokio::time::timeout_at(a.deadline, renewal).await {
            Ok(Ok(RenewOutcome::Renewed)) => Renewal::Renewed { start, since },
            Ok(Ok(RenewOutcome::Revoked)) => Renewal::Revoked,
            Ok(Ok(RenewOutcome::Lost)) => Renewal::Refused,
            Ok(Err(error)) => Renewal::Failed(error),
            Err(_elapsed) => Renewal::TimedOut,
        }
    }

    /// Acts on a renewal: moves the deadline and sets the next alarm, or ends the
    /// lease (stopping the actor, or failing it for a loss), or retries after a
    /// failure.
    fn settle(
        &mut self,
        myself: &ActorRef<Tick>,
        renewal: Renewal,
    ) -> Result<(), ActorProcessingErr> {
        match renewal {
            Renewal::Renewed { start, since } => {
                let deadline = start + self.args.ttl - self.args.margin;
                if !self.args.ctx.extend(deadline, since) {
                    // Confirmed too late: the context already ended at the old deadline.
                    return Err(self.lose(LossCause::DeadlineExceeded));
                }
                self.args.deadline = deadline;
                tracing::trace!(key = %self.args.key, token = self.args.token, "lease renewed");
                let interval = self.interval();
                self.schedule(interval);
                Ok(())
            }
            Renewal::Revoked => {
                if self.args.ctx.cancel(CancelReason::Revoked) {
                    tracing::info!(key = %self.args.key, token = self.args.token, "lease revoked");
                }
                myself.stop(Some("revoked".into()));
                Ok(())
            }
            Renewal::Refused => Err(self.lose(LossCause::RenewalRefused)),
            Renewal::Failed(error) => {
                crate::metrics::backend_error(crate::metrics::Op::Renew);
                tracing::warn!(key = %self.args.key, token = self.args.token, %error,
                    "lease renewal failed; retrying until the local deadline");
                let retry = self.retry();
                self.schedule(retry);
                Ok(())
            }
            Renewal::TimedOut => Err(self.lose(LossCause::DeadlineExceeded)),
        }
    }
}
