//! When `leases run` stops a command: the kill-timing rule.
//!
//! The command's processes must be dead before the key could be granted elsewhere.
//! That moment is, at the earliest, the lease context's local deadline
//! ([`LeaseContext::deadline`]): the start of the last confirmed renewal + TTL − the
//! library's safety margin (TTL/5), which the store's expiry follows. A lease that has
//! ended (revoked, lost) keeps its last deadline, and `run` keeps the key taken until
//! the command is dead (`keep_until_released`), so the store lets it go at that expiry
//! at the earliest.

use std::time::Duration;

use leases::LeaseContext;
use tokio::time::Instant;

/// When `run` stops a command whose lease is in danger, measured back from the lease
/// context's local deadline (`LeaseContext::deadline`: the start of the last confirmed
/// renewal + TTL − the library's safety margin, itself before the store could grant the
/// key to anyone else).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// SIGKILL goes out at the latest this long before the deadline, whatever `--grace`
    /// says: time for the kernel to kill the tree and for `run` to find it gone.
    /// TTL/20, at most 1 s (250 ms at the minimum TTL of 5 s).
    pub(crate) kill_margin: Duration,
    /// While the lease is live but no renewal has been confirmed until this long before
    /// the deadline, the command is stopped as if the lease were lost (SIGTERM now,
    /// SIGKILL at the kill margin): waiting for the context to end at the deadline would
    /// leave no time to kill. TTL/10 (500 ms at 5 s). Renewals go every TTL/3 (TTL/4
    /// through a lease service), so a live lease is normally more than TTL/5 from its
    /// deadline.
    pub(crate) stop_ahead: Duration,
}

impl Timing {
    pub(crate) fn for_ttl(ttl: Duration) -> Timing {
        let kill_margin = (ttl / 20).min(Duration::from_secs(1));
        Timing {
            kill_margin,
            stop_ahead: (ttl / 10).max(kill_margin * 2),
        }
    }
}

/// `a - b`, or `a` itself if that would be before the clock's start.
pub(crate) fn before(a: Instant, b: Duration) -> Instant {
    a.checked_sub(b).unwrap_or(a)
}

/// When SIGKILL must go out for a command stopped since `since`: after `grace`, but
/// never later than the kill margin before the context's deadline (the last one
/// confirmed, which a lease that ended keeps).
pub(crate) fn kill_at(
    ctx: &LeaseContext,
    timing: Timing,
    since: Instant,
    grace: Duration,
) -> Instant {
    let after_grace = since
        .checked_add(grace)
        .unwrap_or(since + Duration::from_secs(3600));
    match ctx.deadline() {
        Some(deadline) => after_grace.min(before(Instant::from_std(deadline), timing.kill_margin)),
        None => after_grace,
    }
}

/// Is the lease live and not yet in danger (see [`Timing::stop_ahead`])?
pub(crate) fn lease_is_safe(ctx: &LeaseContext, timing: Timing) -> bool {
    !ctx.is_cancelled()
        && ctx
            .deadline()
            .is_none_or(|d| Instant::now() < before(Instant::from_std(d), timing.stop_ahead))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_scale_with_the_ttl_and_are_capped() {
        let t = Timing::for_ttl(Duration::from_secs(5));
        assert_eq!(t.kill_margin, Duration::from_millis(250));
        assert_eq!(t.stop_ahead, Duration::from_millis(500));
        let t = Timing::for_ttl(Duration::from_secs(30));
        assert_eq!(t.kill_margin, Duration::from_secs(1));
        assert_eq!(t.stop_ahead, Duration::from_secs(3));
        let t = Timing::for_ttl(Duration::from_secs(3600));
        assert_eq!(t.kill_margin, Duration::from_secs(1));
        assert_eq!(t.stop_ahead, Duration::from_secs(360));
        // The stop always comes before the kill, which comes before the deadline.
        for secs in [5, 6, 7, 19, 20, 21, 60, 86_400] {
            let t = Timing::for_ttl(Duration::from_secs(secs));
            assert!(t.stop_ahead > t.kill_margin && t.kill_margin > Duration::ZERO);
        }
    }

    #[tokio::test]
    async fn the_grace_is_capped_by_the_deadline() {
        let timing = Timing::for_ttl(Duration::from_secs(5));
        // A context without a deadline: the grace alone.
        let never = LeaseContext::never();
        let now = Instant::now();
        assert_eq!(
            kill_at(&never, timing, now, Duration::from_secs(10)),
            now + Duration::from_secs(10)
        );
        assert!(lease_is_safe(&never, timing));
        // A huge grace does not overflow.
        let _ = kill_at(&never, timing, now, Duration::MAX);
    }
}
