//! The clock a lease's local deadline is judged on.
//!
//! Deadlines are kept as `tokio::time::Instant`s, so that tests can pause and advance
//! time. But tokio's clock is `CLOCK_MONOTONIC`, which on Linux stops while the machine
//! is suspended: a laptop that sleeps for a minute with a 10 s lease held would wake up
//! believing its lease has most of its TTL left, while the backend expired it long ago
//! and may have granted it to someone else. So every deadline check adds the time the
//! machine spent suspended since the context was made: the growth of
//! `CLOCK_BOOTTIME − CLOCK_MONOTONIC`, which counts exactly the suspended time (and is
//! zero while nothing is suspended, so paused-time tests stay deterministic).
//!
//! On systems without `CLOCK_BOOTTIME` the suspended time reads as zero: a lease there
//! does not survive a suspend safely, and only fencing tokens protect the resource.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Extra suspended time added by [`simulate_suspend`], in nanoseconds.
static SIMULATED: AtomicU64 = AtomicU64::new(0);

/// Time the machine has spent suspended, as a running total from an arbitrary origin.
/// Only differences between two readings mean anything.
pub(crate) fn suspended() -> Duration {
    os_suspended() + Duration::from_nanos(SIMULATED.load(Ordering::Acquire))
}

/// Makes every lease context in this process behave as if the machine had just been
/// suspended for `time` (a test aid: it moves the clock that local deadlines are judged
/// on, as a real suspend would, without touching tokio's clock). It cannot be undone.
#[doc(hidden)]
pub fn simulate_suspend(time: Duration) {
    let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
    let _ = SIMULATED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
        Some(now.saturating_add(nanos))
    });
}

/// How far ahead [`after`] looks at most: about 30 years, as tokio's own timers do.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `d` from now, saturated at [`FAR_FUTURE`] from now: `Instant + Duration`
/// panics on overflow, and a duration a user gave (`Duration::MAX` meaning "never") must
/// not.
pub(crate) fn after(d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + d.min(FAR_FUTURE)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn os_suspended() -> Duration {
    fn read(clock: libc::clockid_t) -> Option<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        if rc != 0 {
            return None;
        }
        Some(Duration::new(
            u64::try_from(ts.tv_sec).ok()?,
            u32::try_from(ts.tv_nsec).ok()?,
        ))
    }
    // Read MONOTONIC on both sides of BOOTTIME would be more exact; a reading that is
    // a few nanoseconds off only moves deadlines by as much.
    match (read(libc::CLOCK_BOOTTIME), read(libc::CLOCK_MONOTONIC)) {
        (Some(boot), Some(mono)) => boot.saturating_sub(mono),
        _ => Duration::ZERO,
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn os_suspended() -> Duration {
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspended_time_does_not_move_while_awake() {
        let a = os_suspended();
        std::thread::sleep(Duration::from_millis(20));
        let b = os_suspended();
        // Both clocks advance together while the machine is awake.
        assert!(b.abs_diff(a) < Duration::from_millis(5), "{a:?} → {b:?}");
    }
}
