//! What every part of the story shares: the TTL, the jobs and who holds them, the
//! timeline's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leases::Key;

/// Short, so that the story fits in seconds; production leases use MIN_TTL (5 s) or more.
pub const TTL: Duration = Duration::from_secs(1);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The two jobs: billing and emails.
pub fn jobs() -> (Key, Key) {
    (
        Key::system(["jobs", "billing"]),
        Key::system(["jobs", "emails"]),
    )
}

/// Who holds a lease, as its worker put it in the metadata.
pub fn holder_name(info: &leases::LeaseInfo) -> String {
    String::from_utf8_lossy(&info.metadata).into_owned()
}

/// Prints timeline lines, in seconds since the story began (shared across processes
/// through the wall clock).
#[derive(Clone, Copy)]
pub struct Clock {
    pub start_ms: u128,
}

impl Clock {
    pub fn now_ms() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    }
    pub fn say(&self, what: impl AsRef<str>) {
        let s = Self::now_ms().saturating_sub(self.start_ms) as f64 / 1000.0;
        println!("[{s:5.2}s] {}", what.as_ref());
    }
}
