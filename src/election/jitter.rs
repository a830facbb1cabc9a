//! Backoff with jitter, so that candidates that failed together do not retry together.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A small pseudo-random generator (xorshift64*) for backoff jitter: no dependency,
/// seeded at random (from std's hasher keys) unless a test fixes the seed.
#[derive(Debug)]
pub(super) struct Jitter(u64);

impl Jitter {
    pub(super) fn new(seed: Option<u64>) -> Jitter {
        let seed = seed.unwrap_or_else(|| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(0x5eed);
            h.finish()
        });
        // Zero is xorshift's one fixed point.
        Jitter(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A pause drawn from the upper half of `min * 2^(failures-1)` capped at `max`.
    pub(super) fn backoff(&mut self, min: Duration, max: Duration, failures: u32) -> Duration {
        let doubled = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let ceiling = doubled.min(max);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let extra = self.next() % span.saturating_add(1);
        half + Duration::from_nanos(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let mut j = Jitter::new(Some(7));
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut seen = std::collections::HashSet::new();
        for failures in 1..40 {
            let b = j.backoff(min, max, failures);
            assert!(b >= min / 2 && b <= max, "{b:?} for {failures}");
            seen.insert(b);
        }
        assert!(seen.len() > 10, "jitter varies the pauses");
        // The ceiling doubles: the 1st pause is at most min, the 4th at most 8 min.
        let mut j = Jitter::new(Some(1));
        assert!(j.backoff(min, max, 1) <= min);
        assert!(j.backoff(min, max, 4) <= min * 8);
        assert!(j.backoff(min, max, 4) >= min * 4);
    }
}
