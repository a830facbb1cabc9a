//! The context that tells a lease's holder when the lease ends, and why.
//!
//! This is the most safety-critical code in the crate: a [`LeaseContext`] must end
//! before the backend could grant its key to anyone else, and once ended it must stay
//! ended. The owner's side, [`ContextSender`], is held by the manager (and the renewal
//! actor); the holder's side is cheap to clone and reads the clock itself.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::LeaseError;

/// Why a [`LeaseContext`] ended. Every end has one: there is no silent loss.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The holder released the lease (explicitly, or by dropping the [`Lease`](crate::Lease)).
    Released,
    /// An operator or another manager revoked the lease.
    Revoked,
    /// The lease was lost: renewal failed, or could not be confirmed before the local
    /// deadline. Stop acting as the holder at once.
    Lost(LossCause),
    /// The lease manager shut down (or all its handles were dropped).
    Shutdown,
}

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossCause {
    /// The backend refused the renewal: the lease expired there or is no longer ours.
    RenewalRefused,
    /// No renewal was confirmed before the local deadline (last confirmed renewal + TTL
    /// − safety margin). The backend may be down or slow; the key may soon be granted to
    /// someone else, so the holder is told first.
    DeadlineExceeded,
    /// The renewal actor failed (for example it panicked); the message says how.
    RenewerFailed(String),
    /// The lease manager's supervisor stopped without ending the lease normally.
    ManagerFailed,
    /// A [`FakeLeaser`](crate::FakeLeaser) was told to lose the lease.
    Injected,
    /// The lease service reported the lease lost (for a
    /// [`ClientLeaser`](crate::ClientLeaser)); the message says why.
    Remote(String),
    /// The connection to the lease service broke, or the service ended the lease's
    /// stream (for a [`ClientLeaser`](crate::ClientLeaser)); the message says how.
    Disconnected(String),
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::Released => f.write_str("released"),
            CancelReason::Revoked => f.write_str("revoked"),
            CancelReason::Shutdown => f.write_str("lease manager shut down"),
            CancelReason::Lost(cause) => write!(f, "lost: {cause}"),
        }
    }
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossCause::RenewalRefused => f.write_str("the backend refused the renewal"),
            LossCause::DeadlineExceeded => {
                f.write_str("no renewal was confirmed before the local deadline")
            }
            LossCause::RenewerFailed(why) => write!(f, "the renewal actor failed: {why}"),
            LossCause::ManagerFailed => f.write_str("the lease manager stopped unexpectedly"),
            LossCause::Injected => f.write_str("loss injected by a fake leaser"),
            LossCause::Remote(why) => write!(f, "the lease service reported: {why}"),
            LossCause::Disconnected(why) => {
                write!(f, "the connection to the lease service was lost: {why}")
            }
        }
    }
}

/// State shared by a context's clones and whoever may end it.
#[derive(Debug)]
struct Shared {
    /// Why the context ended; set once (the first reason wins) and never cleared.
    reason: watch::Sender<Option<CancelReason>>,
    /// The local deadline, in nanoseconds after `base`; `u64::MAX` for none.
    deadline: AtomicU64,
    base: Instant,
    /// The machine's suspended time (see `crate::clock`) when the renewal (or acquire)
    /// that set the current deadline *started*, in nanoseconds: time suspended since
    /// then counts against the deadline, time suspended before does not.
    suspended_base: AtomicU64,
    /// Whether its end is counted in the crate's metrics (leases held through a
    /// manager are; fakes' are not).
    metered: bool,
}

impl Shared {
    fn cancel(&self, reason: CancelReason) -> bool {
        let ended = self.reason.send_if_modified(|state| {
            if state.is_some() {
                false
            } else {
                *state = Some(reason);
                true
            }
        });
        if ended && self.metered {
            // Set once and never changed, so this is the reason just set.
            if let Some(reason) = self.reason.borrow().as_ref() {
                crate::metrics::ended(reason);
            }
        }
        ended
    }

    fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Acquire) {
            u64::MAX => None,
            nanos => Some(self.base + Duration::from_nanos(nanos)),
        }
    }

    /// How long the machine has been suspended since the start of the renewal that set
    /// the deadline: time that tokio's clock did not count but the backend's did.
    fn slept(&self) -> Duration {
        let base = Duration::from_nanos(self.suspended_base.load(Ordering::Acquire));
        crate::clock::suspended().saturating_sub(base)
    }

    /// `true` once the deadline has passed, counting suspended time.
    fn past(&self, deadline: Instant) -> bool {
        self.past_at(deadline, Instant::now(), crate::clock::suspended())
    }

    /// [`past`](Self::past) with the clocks read by the caller: tokio's `now` and the
    /// machine's suspended time `suspended` (see `crate::clock`).
    fn past_at(&self, deadline: Instant, now: Instant, suspended: Duration) -> bool {
        let base = Duration::from_nanos(self.suspended_base.load(Ordering::Acquire));
        now + suspended.saturating_sub(base) >= deadline
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1)
    }

    /// The reason, ending the context first if its deadline has passed. Once a reader has
    /// seen the deadline pass, the end is recorded, so no later extension can revive it.
    fn reason(&self) -> Option<CancelReason> {
        self.reason_when(|d| self.past(d))
    }

    /// [`reason`](Self::reason) with the clocks read by the caller (see
    /// [`past_at`](Self::past_at)).
    fn reason_at(&self, now: Instant, suspended: Duration) -> Option<CancelReason> {
        self.reason_when(|d| self.past_at(d, now, suspended))
    }

    fn reason_when(&self, past: impl FnOnce(Instant) -> bool) -> Option<CancelReason> {
        if let Some(reason) = self.reason.borrow().clone() {
            return Some(reason);
        }
        if self.deadline().is_some_and(past) {
            self.cancel(CancelReason::Lost(LossCause::DeadlineExceeded));
            return self.reason.borrow().clone();
        }
        None
    }
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The owner's side of a context: ends it with a reason, moves its deadline.
#[derive(Debug, Clone)]
pub(crate) struct ContextSender(Arc<Shared>);

impl ContextSender {
    /// Ends the context with `reason` unless it has already ended; returns `true` when
    /// this call ended it. The first reason wins.
    pub(crate) fn cancel(&self, reason: CancelReason) -> bool {
        self.0.cancel(reason)
    }

    /// The reason the context ended with, if it has.
    pub(crate) fn reason(&self) -> Option<CancelReason> {
        self.0.reason()
    }

    /// [`reason`](Self::reason), judged at `now` (tokio's clock) with the machine's
    /// suspended time read as `suspended` (see `crate::clock`): for a caller that has
    /// just read both clocks.
    pub(crate) fn reason_at(&self, now: Instant, suspended: Duration) -> Option<CancelReason> {
        self.0.reason_at(now, suspended)
    }

    /// Moves the local deadline to `deadline` after a confirmed renewal that started
    /// when the machine's suspended time read `since` (see `crate::clock`). Returns
    /// `false` (and changes nothing) if the context has already ended, or if its current
    /// deadline has passed: a late confirmation never revives a context.
    ///
    /// The deadline and its base are two atomics; a reader that sees one new and one old
    /// judges by a deadline no later than the new pair's (an older deadline, or more
    /// suspended time), so a torn read can only end the context early, never late.
    pub(crate) fn extend(&self, deadline: Instant, since: Duration) -> bool {
        if self.0.reason().is_some() {
            return false;
        }
        self.0
            .suspended_base
            .fetch_max(nanos_of(since), Ordering::AcqRel);
        let new = self.0.nanos(deadline);
        let mut current = self.0.deadline.load(Ordering::Acquire);
        // Checked just above for the first try (each check reads the clock three
        // times, and renewals are the hot path); again before every retry.
        while let Err(seen) =
            self.0
                .deadline
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
        {
            if self.0.reason().is_some() {
                return false;
            }
            current = seen;
        }
        // A reader may have seen the old deadline pass while we swapped: then it has
        // ended the context, and the extension does not count.
        self.0.reason().is_none()
    }
}

/// A holder's view of its lease: cancelled when the lease ends, with a reason.
///
/// The Rust counterpart of the cancellable `context.Context` FTL hands its lease
/// holders, built on a `tokio::sync::watch` channel: cheap to clone, and every clone
/// sees the same end. Check [`is_cancelled`](LeaseContext::is_cancelled) right before
/// each side effect, or race the work against [`cancelled`](LeaseContext::cancelled).
///
/// The context carries the lease's local deadline and ends by itself when the deadline
/// passes, even if the renewal actor has not run yet (after a long pause of the
/// process, say): `is_cancelled` reads the monotonic clock. So it ends *before* the
/// backend could grant the key to anyone else (see the crate docs for the margin this
/// relies on).
#[derive(Clone)]
pub struct LeaseContext {
    shared: Arc<Shared>,
    token: u64,
}

impl fmt::Debug for LeaseContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseContext")
            .field("token", &self.token)
            .field("reason", &self.reason())
            .finish()
    }
}

impl LeaseContext {
    /// A new live context with a local deadline (`None`: no deadline) and the sender
    /// that ends it.
    pub(crate) fn new(token: u64, deadline: Option<Instant>) -> (ContextSender, LeaseContext) {
        LeaseContext::build(token, deadline, crate::clock::suspended(), false)
    }

    /// Like [`new`](Self::new), for a deadline computed from an acquire that started
    /// when the machine's suspended time read `since`: a suspend between that start and
    /// now already counts against the deadline. The manager's contexts: their ends are
    /// counted in the crate's metrics.
    pub(crate) fn new_since(
        token: u64,
        deadline: Option<Instant>,
        since: Duration,
    ) -> (ContextSender, LeaseContext) {
        LeaseContext::build(token, deadline, since, true)
    }

    fn build(
        token: u64,
        deadline: Option<Instant>,
        since: Duration,
        metered: bool,
    ) -> (ContextSender, LeaseContext) {
        let shared = Arc::new(Shared {
            reason: watch::channel(None).0,
            deadline: AtomicU64::new(u64::MAX),
            base: Instant::now(),
            suspended_base: AtomicU64::new(nanos_of(since)),
            metered,
        });
        if let Some(d) = deadline {
            shared.deadline.store(shared.nanos(d), Ordering::Release);
        }
        (
            ContextSender(shared.clone()),
            LeaseContext { shared, token },
        )
    }

    /// A context that never ends, as held by [`Lease::noop`](crate::Lease::noop).
    pub fn never() -> LeaseContext {
        LeaseContext::new(0, None).1
    }

    /// The fencing token of the lease this context belongs to.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The local deadline: when the context ends unless a renewal is confirmed first,
    /// as a `std` instant (time the machine spent suspended already taken off). `None`
    /// for contexts without one (fakes, [`LeaseContext::never`]). On a paused tokio
    /// clock (tests), compare it with `tokio::time::Instant::from_std(deadline)`.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        let d = self.shared.deadline()?;
        let d = d.checked_sub(self.shared.slept()).unwrap_or(d);
        Some(d.into_std())
    }

    /// `true` once the lease has ended for any reason.
    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Why the lease ended, or `None` while it is held.
    pub fn reason(&self) -> Option<CancelReason> {
        self.shared.reason()
    }

    /// Waits until the lease ends and returns why. Cancel-safe.
    pub async fn cancelled(&self) -> CancelReason {
        // tokio's timers do not count time the machine spent suspended, so a sleep until
        // the deadline could wake long after it has passed on the suspend-aware clock:
        // look again at least this often.
        const RECHECK: Duration = Duration::from_secs(1);
        let mut rx = self.shared.reason.subscribe();
        loop {
            if let Some(reason) = self.reason() {
                return reason;
            }
            match self.shared.deadline() {
                Some(d) => {
                    let d = d.checked_sub(self.shared.slept()).unwrap_or(d);
                    let wake = d.min(Instant::now() + RECHECK);
                    tokio::select! {
                        _ = rx.changed() => {}
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                }
                None => {
                    let _ = rx.changed().await;
                }
            }
        }
    }

    /// Runs `work` while the lease is held: its output, or [`LeaseEnded`] (and `work`
    /// dropped, wherever it was) as soon as the lease ends. Use it for work that is
    /// cancel-safe at every await; check [`is_cancelled`](Self::is_cancelled) before
    /// each side effect that is not.
    ///
    /// The lease's end is looked at first each time both are ready, so `work` is never
    /// polled again after the lease has ended.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), leases::LeaseError> {
    /// use std::time::Duration;
    /// use leases::{CancelReason, Key, LeaseEnded, LeaseManager};
    ///
    /// let manager = LeaseManager::start().await?;
    /// let key = Key::system(["compaction"]);
    /// let held = manager.hold(key.clone(), Duration::from_secs(10)).await?;
    /// let compacted = held.run_until_cancelled(async { 42 }).await;
    /// assert_eq!(compacted, Ok(42));
    /// manager.revoke(&key).await?;
    /// let never = held.run_until_cancelled(std::future::pending::<()>()).await;
    /// assert_eq!(never, Err(LeaseEnded { reason: CancelReason::Revoked }));
    /// # manager.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_until_cancelled<F: std::future::Future>(
        &self,
        work: F,
    ) -> Result<F::Output, LeaseEnded> {
        tokio::select! {
            biased;
            reason = self.cancelled() => Err(LeaseEnded { reason }),
            output = work => Ok(output),
        }
    }

    /// A [`CancellationToken`](tokio_util::sync::CancellationToken) that is cancelled
    /// when the lease ends, so that existing cancellable code works unchanged. Cancelling
    /// the token does not end the lease (release the [`Lease`](crate::Lease) for that).
    /// Needs a running tokio runtime (a small task watches the lease until either ends).
    pub fn cancellation_token(&self) -> tokio_util::sync::CancellationToken {
        let token = tokio_util::sync::CancellationToken::new();
        if self.is_cancelled() {
            token.cancel();
            return token;
        }
        let (ctx, watch) = (self.clone(), token.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = ctx.cancelled() => watch.cancel(),
                // Cancelled by its owner: nothing left to watch for.
                _ = watch.cancelled() => {}
            }
        });
        token
    }

    /// `Ok(())` while the lease is held, else [`LeaseEnded`] with the reason it ended.
    /// Handy before a side effect: `ctx.check()?;` (it converts into
    /// [`LeaseError::NotHeld`] where a `LeaseError` is expected).
    pub fn check(&self) -> Result<(), LeaseEnded> {
        match self.reason() {
            Some(reason) => Err(LeaseEnded { reason }),
            None => Ok(()),
        }
    }

    /// Sends `make(reason)` to `actor` when the lease ends, so that an actor learns of
    /// the loss as an ordinary message. Needs a running tokio runtime. Part of the
    /// [ractor-facing API](crate::actors).
    pub fn forward_to<M, F>(&self, actor: ractor::ActorRef<M>, make: F)
    where
        M: ractor::Message,
        F: FnOnce(CancelReason) -> M + Send + 'static,
    {
        let ctx = self.clone();
        tokio::spawn(async move {
            let reason = ctx.cancelled().await;
            // The actor may be gone; then nobody is left to tell.
            let _ = actor.send_message(make(reason));
        });
    }
}

/// The lease behind a [`LeaseContext`] has ended; [`LeaseContext::check`] says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lease has ended: {reason}")]
pub struct LeaseEnded {
    /// Why it ended.
    pub reason: CancelReason,
}

impl From<LeaseEnded> for LeaseError {
    fn from(_: LeaseEnded) -> LeaseError {
        LeaseError::NotHeld
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn context_ends_once_with_the_first_reason() {
        let (tx, ctx) = LeaseContext::new(7, None);
        let copy = ctx.clone();
        assert!(!ctx.is_cancelled());
        assert!(ctx.check().is_ok());
        assert!(tx.cancel(CancelReason::Revoked));
        assert!(!tx.cancel(CancelReason::Released));
        assert_eq!(copy.cancelled().await, CancelReason::Revoked);
        assert_eq!(ctx.reason(), Some(CancelReason::Revoked));
        assert_eq!(
            ctx.check(),
            Err(LeaseEnded {
                reason: CancelReason::Revoked
            })
        );
        assert!(matches!(
            LeaseError::from(ctx.check().unwrap_err()),
            LeaseError::NotHeld
        ));
        assert_eq!(ctx.token(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_context_by_itself() {
        let start = Instant::now();
        let (tx, ctx) = LeaseContext::new(1, Some(start + Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!ctx.is_cancelled());
        assert!(tx.extend(start + Duration::from_secs(2), crate::clock::suspended()));
        tokio::time::advance(Duration::from_millis(1001)).await;
        // Nobody has run to end it, yet it has ended, and stays ended.
        assert_eq!(
            ctx.reason(),
            Some(CancelReason::Lost(LossCause::DeadlineExceeded))
        );
        assert!(!tx.extend(start + Duration::from_secs(10), crate::clock::suspended()));
        assert!(ctx.is_cancelled());
        assert_eq!(
            ctx.cancelled().await,
            CancelReason::Lost(LossCause::DeadlineExceeded)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_wakes_at_the_deadline() {
        let start = Instant::now();
        let (_tx, ctx) = LeaseContext::new(1, Some(start + Duration::from_secs(3)));
        ctx.cancelled().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[test]
    fn never_is_never_cancelled() {
        let ctx = LeaseContext::never();
        assert!(!ctx.is_cancelled());
        assert!(ctx.check().is_ok());
    }
}
