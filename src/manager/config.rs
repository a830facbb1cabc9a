//! A manager's settings, as its builder set them, and the defaults.

use std::time::Duration;

use super::tasks::InFlight;
use crate::leaser::MIN_TTL;

/// The default safety margin, as a fraction of the TTL: the holder is told of a loss
/// one fifth of a TTL before the backend could grant the key to someone else.
pub const DEFAULT_MARGIN_DIVISOR: u32 = 5;

/// How long shutdown waits for the backend to release the held leases.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) min_ttl: Duration,
    /// `None`: TTL / [`DEFAULT_MARGIN_DIVISOR`].
    pub(crate) safety_margin: Option<Duration>,
    pub(crate) shutdown_timeout: Duration,
    /// The backend I/O this manager has started and not finished.
    pub(crate) inflight: InFlight,
}

impl Config {
    /// The safety margin for a lease of `ttl`: the local deadline is this much before
    /// the earliest moment the backend could expire the lease.
    pub(crate) fn margin(&self, ttl: Duration) -> Duration {
        self.safety_margin
            .unwrap_or(ttl / DEFAULT_MARGIN_DIVISOR)
            .min(ttl / 2)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            min_ttl: MIN_TTL,
            safety_margin: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            inflight: InFlight::default(),
        }
    }
}
