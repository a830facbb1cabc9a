//! The state a context's clones share with whoever may end it, and the owner's side
//! of a context ([`ContextSender`]): ends it with a reason, moves its deadline.
//!
//! The deadline is read by every holder's clone: a reader that sees it pass ends the
//! context itself, so that loss is told on time even if nobody else runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::reason::{CancelReason, LossCause};

/// State shared by a context's clones and whoever may end it.
#[derive(Debug)]
pub(super) struct Shared {
    /// Why the context ended; set once (the first reason wins) and never cleared.
    reason: watch::Sender<Option<CancelReason>>,
    /// The local deadline, in nanoseconds after `base`; `u64::MAX` for none.
    deadline: AtomicU64,
    base: Instant,
    /// The machine's suspended time (see `crate::clock`) when the renewal (or acquire)
    /// that set the current deadline *started*, in nanoseconds: time suspended since
    /// then counts against the deadline, time suspended before does not. Its top bit,
    /// [`METERED`], never changes and is not part of the time (see
    /// [`suspended_base`](Self::suspended_base)): a field of its own would make every
    /// lease's context 16 bytes larger in the allocator.
    suspended_base: AtomicU64,
}

/// The top bit of [`Shared::suspended_base`]: the context's end is counted in the
/// crate's metrics (leases held through a manager are; fakes' are not). The time below
/// it is capped at 2^63 - 1 ns, some 292 years.
const METERED: u64 = 1 << 63;

impl Shared {
    /// The state of a live context with a local deadline (`None`: no deadline) computed
    /// from an acquire that started when the machine's suspended time read `since`.
    pub(super) fn new(deadline: Option<Instant>, since: Duration, metered: bool) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            reason: watch::channel(None).0,
            deadline: AtomicU64::new(u64::MAX),
            base: Instant::now(),
            suspended_base: AtomicU64::new(
                nanos_of(since).min(!METERED) | if metered { METERED } else { 0 },
            ),
        });
        if let Some(d) = deadline {
            shared.deadline.store(shared.nanos(d), Ordering::Release);
        }
        shared
    }

    /// A receiver that sees the context end.
    pub(super) fn subscribe(&self) -> watch::Receiver<Option<CancelReason>> {
        self.reason.subscribe()
    }

    fn cancel(&self, reason: CancelReason) -> bool {
        let ended = self.reason.send_if_modified(|state| {
            if state.is_some() {
                false
            } else {
                *state = Some(reason);
                true
            }
        });
        if ended && self.suspended_base.load(Ordering::Relaxed) & METERED != 0 {
            // Set once and never changed, so this is the reason just set.
            if let Some(reason) = self.reason.borrow().as_ref() {
                crate::metrics::ended(reason);
            }
        }
        ended
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Acquire) {
            u64::MAX => None,
            nanos => Some(self.base + Duration::from_nanos(nanos)),
        }
    }

    /// How long the machine has been suspended since the start of the renewal that set
    /// the deadline: time that tokio's clock did not count but the backend's did.
    pub(super) fn slept(&self) -> Duration {
        crate::clock::suspended().saturating_sub(self.suspended_base())
    }

    /// `true` once the deadline has passed, counting suspended time.
    fn past(&self, deadline: Instant) -> bool {
        self.past_at(deadline, Instant::now(), crate::clock::suspended())
    }

    /// [`past`](Self::past) with the clocks read by the caller: tokio's `now` and the
    /// machine's suspended time `suspended` (see `crate::clock`).
    fn past_at(&self, deadline: Instant, now: Instant, suspended: Duration) -> bool {
        now + suspended.saturating_sub(self.suspended_base()) >= deadline
    }

    /// [`suspended_base`](Self::suspended_base)'s time, without its flag.
    fn suspended_base(&self) -> Duration {
        Duration::from_nanos(self.suspended_base.load(Ordering::Acquire) & !METERED)
    }

    /// Moves [`suspended_base`](Self::suspended_base)'s time up to `since` (never
    /// down), keeping its flag.
    fn raise_suspended_base(&self, since: Duration) {
        // The flag never changes, so the maximum of two values that carry it is the
        // maximum of their times.
        let flag = self.suspended_base.load(Ordering::Relaxed) & METERED;
        self.suspended_base
            .fetch_max(nanos_of(since).min(!METERED) | flag, Ordering::AcqRel);
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1)
    }

    /// The reason, ending the context first if its deadline has passed. Once a reader has
    /// seen the deadline pass, the end is recorded, so no later extension can revive it.
    pub(super) fn reason(&self) -> Option<CancelReason> {
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
pub(crate) struct ContextSender(pub(super) Arc<Shared>);

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
    /// when the machine's suspended time read `since` (see `crate::clock`); an earlier
    /// deadline than the current one wakes the context's waiters. Returns
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
        self.0.raise_suspended_base(since);
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
        // A waiter that does not look again by itself (`cancelled_lazily`) sleeps until
        // the deadline it last read: if this one is earlier, wake it to read it anew.
        if new < current {
            self.0.reason.send_modify(|_| {});
        }
        // A reader may have seen the old deadline pass while we swapped: then it has
        // ended the context, and the extension does not count.
        self.0.reason().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metered_flag_is_not_part_of_the_suspended_time() {
        for metered in [false, true] {
            let s = Shared::new(None, Duration::from_secs(5), metered);
            let flagged = |s: &Shared| s.suspended_base.load(Ordering::Relaxed) & METERED != 0;
            assert_eq!(s.suspended_base(), Duration::from_secs(5));
            assert_eq!(flagged(&s), metered);
            s.raise_suspended_base(Duration::from_secs(7));
            assert_eq!(s.suspended_base(), Duration::from_secs(7));
            s.raise_suspended_base(Duration::from_secs(6));
            assert_eq!(s.suspended_base(), Duration::from_secs(7), "never down");
            assert_eq!(flagged(&s), metered, "the flag stays");
            // A time too large for the bits below the flag is capped, not wrapped.
            s.raise_suspended_base(Duration::MAX);
            assert_eq!(s.suspended_base(), Duration::from_nanos(!METERED));
            assert_eq!(flagged(&s), metered);
        }
    }

    /// Review probe (renewer_exit_review): suspended time counts against the deadline
    /// of a metered context exactly as of an unmetered one, at creation and after an
    /// extension: the flag in the base's top bit must never read as suspended time.
    #[test]
    fn suspended_time_counts_the_same_whether_metered_or_not() {
        let secs = Duration::from_secs;
        for metered in [false, true] {
            let now = Instant::now();
            let s = Shared::new(Some(now + secs(2)), secs(5), metered);
            assert_eq!(s.reason_at(now + secs(1), secs(5)), None, "{metered}");
            assert_eq!(
                s.reason_at(
                    now + Duration::from_millis(500),
                    Duration::from_millis(6_400)
                ),
                None,
                "{metered}: 1.9 s of 2 s"
            );
            assert_eq!(
                s.reason_at(now + secs(1), secs(6)),
                Some(CancelReason::Lost(LossCause::DeadlineExceeded)),
                "{metered}: 1 s awake + 1 s suspended reaches the deadline"
            );

            let s = ContextSender(Shared::new(Some(now + secs(2)), secs(5), metered));
            assert!(s.extend(now + secs(10), secs(7)));
            assert_eq!(s.reason_at(now + secs(1), secs(15)), None, "{metered}");
            assert_eq!(
                s.reason_at(now + secs(1), secs(16)),
                Some(CancelReason::Lost(LossCause::DeadlineExceeded)),
                "{metered}: 1 s awake + 9 s suspended since the renewal"
            );
            assert_eq!(
                s.0.slept(),
                crate::clock::suspended().saturating_sub(secs(7))
            );
        }
    }
}
