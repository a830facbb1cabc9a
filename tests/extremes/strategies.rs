//! The extreme values the properties draw from: durations, sizes, counts and strings,
//! the extremes weighted up.

use std::time::Duration;

use leases::{MAX_METADATA_LEN, MAX_TTL};
use proptest::prelude::*;

/// Durations, the extremes weighted up (each is as likely as a random one).
pub fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        2 => Just(Duration::ZERO),
        2 => Just(Duration::from_nanos(1)),
        1 => Just(Duration::from_millis(1)),
        2 => Just(Duration::from_secs(1)),
        1 => Just(Duration::from_secs(5)),
        1 => Just(Duration::from_secs(30)),
        2 => Just(MAX_TTL),
        1 => Just(MAX_TTL + Duration::from_nanos(1)),
        2 => Just(Duration::from_secs(u64::MAX)),
        2 => Just(Duration::MAX),
        1 => any::<u64>().prop_map(Duration::from_nanos),
        1 => (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

pub fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(2),
        Just(1024),
        Just(usize::MAX),
        any::<usize>()
    ]
}

pub fn count() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(2), Just(u32::MAX), any::<u32>()]
}

/// Metadata and identity sizes around the limit.
pub fn metadata_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(MAX_METADATA_LEN),
        Just(MAX_METADATA_LEN + 1),
        0..2 * MAX_METADATA_LEN
    ]
}

pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("leases".to_string()),
        "[a-z_]{1,60}",
        Just("x".repeat(MAX_METADATA_LEN + 1)),
        any::<String>(),
    ]
}

/// In-process cases are cheap (paused time): many of them.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

pub fn valid_ttl(ttl: Duration, min: Duration) -> bool {
    ttl >= min && ttl <= MAX_TTL
}
