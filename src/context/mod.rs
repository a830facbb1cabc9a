//! The context that tells a lease's holder when the lease ends, and why.
//!
//! This is the most safety-critical code in the crate: a [`LeaseContext`] must end
//! before the backend could grant its key to anyone else, and once ended it must stay
//! ended. The owner's side, [`ContextSender`], is held by the manager (and the renewal
//! actor); the holder's side is cheap to clone and reads the clock itself.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

mod shared;

pub(crate) use shared::ContextSender;
use shared::Shared;

use crate::reason::{CancelReason, LeaseEnded};

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
        let shared = Shared::new(deadline, since, metered);
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
        self.ended(Some(RECHECK)).await
    }

    /// [`cancelled`](Self::cancelled) for a waiter that many leases have at once and
    /// that need not see a deadline pass while the machine was suspended at once: it
    /// wakes at the deadline known when it last looked (or at an end, or when the
    /// deadline moves earlier), not also every second. The lease service's streams wait
    /// so (100k held leases were 100k wake-ups a second); their clients' own deadlines
    /// come first anyway, and each heartbeat looks at [`reason`](Self::reason), which
    /// counts suspended time. A holder's own waits must not: they are how loss is told
    /// early.
    pub(crate) fn cancelled_lazily(&self) -> impl std::future::Future<Output = CancelReason> + '_ {
        self.ended(None)
    }

    /// Waits for the end: at an end, at the deadline known when it last looked, when
    /// the deadline moves earlier (see [`ContextSender::extend`]), and, with `recheck`,
    /// at least that often.
    async fn ended(&self, recheck: Option<Duration>) -> CancelReason {
        let mut rx = self.shared.subscribe();
        loop {
            if let Some(reason) = self.reason() {
                return reason;
            }
            match self.shared.deadline() {
                Some(d) => {
                    let d = d.checked_sub(self.shared.slept()).unwrap_or(d);
                    let wake = match recheck {
                        Some(every) => d.min(Instant::now() + every),
                        None => d,
                    };
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
    /// [`LeaseError::NotHeld`](crate::LeaseError::NotHeld) where a `LeaseError` is
    /// expected).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LeaseError;
    use crate::reason::LossCause;

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

    #[tokio::test(start_paused = true)]
    async fn a_lazy_waiter_wakes_at_an_earlier_deadline() {
        let start = Instant::now();
        let (tx, ctx) = LeaseContext::new(1, Some(start + Duration::from_secs(30)));
        let waiter = tokio::spawn(async move { ctx.cancelled_lazily().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Moved earlier (no renewal does so today): the waiter must not sleep on to 30 s.
        assert!(tx.extend(start + Duration::from_secs(5), Duration::ZERO));
        let reason = waiter.await.unwrap();
        assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }

    /// Review probe (`review-memory`): a lazy waiter on a context with no deadline
    /// (`None`: it waits on the channel alone) wakes at a deadline set later by
    /// `extend`, as `cancelled` does. Holds (before the change it slept for ever).
    #[tokio::test(start_paused = true)]
    async fn review_a_lazy_waiter_wakes_at_a_deadline_set_where_there_was_none() {
        let start = Instant::now();
        let (tx, ctx) = LeaseContext::new(1, None);
        let waiter = tokio::spawn(async move { ctx.cancelled_lazily().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(tx.extend(start + Duration::from_secs(5), Duration::ZERO));
        let reason = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the lazy waiter slept past the deadline")
            .unwrap();
        assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }

    /// Review probe (`review-memory`): a deadline moved earlier (wakes the lazy waiter)
    /// and then later again before the earlier one passed: the waiter must not end the
    /// context at the earlier deadline it was woken for, but at the later one. Holds
    /// (before the change it failed the last assertion: the lazy waiter slept to 30 s).
    #[tokio::test(start_paused = true)]
    async fn review_a_lazy_waiter_woken_for_an_earlier_deadline_rereads_a_later_one() {
        let start = Instant::now();
        let (tx, ctx) = LeaseContext::new(1, Some(start + Duration::from_secs(30)));
        let seen = ctx.clone();
        let waiter = tokio::spawn(async move { ctx.cancelled_lazily().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(tx.extend(start + Duration::from_secs(5), Duration::ZERO));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(tx.extend(start + Duration::from_secs(20), Duration::ZERO));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(seen.reason(), None, "ended at the deadline moved away from");
        let reason = waiter.await.unwrap();
        assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
        assert_eq!(Instant::now() - start, Duration::from_secs(20));
    }

    /// Review probe (`review-memory`): many lazy and eager waiters of one context, the
    /// deadline moved earlier several times in a row: every waiter ends at the last
    /// (earliest) deadline, none sleeps on to the first. Holds (also before the change:
    /// an eager waiter that sees the deadline pass ends the context for every waiter).
    #[tokio::test(start_paused = true)]
    async fn review_every_waiter_wakes_at_a_deadline_moved_earlier_twice() {
        let start = Instant::now();
        let (tx, ctx) = LeaseContext::new(1, Some(start + Duration::from_secs(100)));
        let mut waiters = Vec::new();
        for i in 0..8 {
            let ctx = ctx.clone();
            waiters.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    ctx.cancelled_lazily().await
                } else {
                    ctx.cancelled().await
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(tx.extend(start + Duration::from_secs(50), Duration::ZERO));
        assert!(tx.extend(start + Duration::from_millis(3500), Duration::ZERO));
        for w in waiters {
            let reason = tokio::time::timeout(Duration::from_secs(200), w)
                .await
                .expect("a waiter slept past the deadline")
                .unwrap();
            assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
        }
        assert_eq!(Instant::now() - start, Duration::from_millis(3500));
    }

    #[test]
    fn never_is_never_cancelled() {
        let ctx = LeaseContext::never();
        assert!(!ctx.is_cancelled());
        assert!(ctx.check().is_ok());
    }
}
