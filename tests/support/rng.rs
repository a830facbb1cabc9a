//! A tiny deterministic random number generator for the test harness (no `rand`).

use std::time::Duration;

/// xorshift64, seeded through splitmix64 so that seed 0 and nearby seeds work.
pub struct XorShift(u64);

impl XorShift {
    /// A generator for this seed (any seed, 0 included).
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 1 } else { z })
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration in `[lo, hi]`, millisecond steps.
    pub fn millis(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        let hi = hi.max(lo);
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}
