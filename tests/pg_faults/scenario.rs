//! The scenario every process shares: the lease table, the TTL, the keys contended for,
//! the timings of the run, and the fence their writes go through.

use std::time::Duration;

use leases::fence::Fence;
use leases::Key;

pub const TABLE: &str = "leases";
pub const TTL: Duration = Duration::from_secs(2);
pub const KEYS: usize = 2;
/// The statement timeout of the contenders' managers.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(1);
/// When the chaos phase starts and how long it lasts; the run ends a little after.
pub const CHAOS_AT: u64 = 42;
pub const CHAOS: Duration = Duration::from_secs(30);
pub const RUN: Duration = Duration::from_secs(CHAOS_AT + 30 + 4);

pub fn key(i: usize) -> Key {
    Key::system(["faults", &format!("job-{i}")])
}

/// The fence every contender's writes go through.
pub fn fence() -> Fence {
    Fence::new("fence").expect("a valid table name")
}
