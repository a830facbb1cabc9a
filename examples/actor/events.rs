//! What the actors tell `main`, which drives the story and checks it, and the timeline
//! every piece prints; the timing the pieces share.

use std::sync::OnceLock;
use std::time::Duration;

use leases::{CancelReason, LeaseManager};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Short, so that the story takes a couple of seconds; real leases use 5 s or more.
pub const TTL: Duration = Duration::from_millis(300);
/// The longest any single step of the story may take before the example fails.
pub const STEP: Duration = Duration::from_secs(3);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Prints one timeline line: seconds since start, who, what.
pub fn say(who: &str, what: impl AsRef<str>) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("[{t:4.2}s] {who:<10} {}", what.as_ref());
}

/// What the actors tell `main`, which drives the story and checks it.
pub enum Event {
    /// The supervisor started the manager in its tree.
    ManagerStarted(LeaseManager),
    /// Worker `n` holds the lease with `token` and has done its first unit of work.
    Working { n: u32, token: u64 },
    /// Worker `n`'s lease ended with `reason`.
    LeaseEnded {
        n: u32,
        token: u64,
        reason: CancelReason,
    },
    /// The supervisor saw the manager exit (`failed`: with an error rather than a stop).
    ManagerExited { failed: bool },
    /// The supervisor stopped, after `restarts` worker restarts.
    SupervisorStopped { restarts: u32 },
}

pub type Events = mpsc::UnboundedSender<Event>;
