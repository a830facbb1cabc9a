//! How to campaign (identity, TTL, retry and backoff), the bounds every option is
//! checked against, and the runtime every election task needs.

use std::time::Duration;

use crate::error::LeaseError;
use crate::key::Key;
use crate::leaser::{MAX_METADATA_LEN, MAX_TTL};

/// How to campaign: identity, TTL, retry and backoff.
#[derive(Debug, Clone)]
pub struct ElectionOptions {
    pub(super) identity: String,
    pub(super) ttl: Duration,
    retry: Option<Duration>,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Option<Duration>,
    pub(super) seed: Option<u64>,
}

impl ElectionOptions {
    /// A candidate called `identity` (stored as the lease's metadata, at most
    /// [`MAX_METADATA_LEN`] bytes), leading with leases of `ttl`.
    pub fn new(identity: impl Into<String>, ttl: Duration) -> ElectionOptions {
        ElectionOptions {
            identity: identity.into(),
            ttl,
            retry: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: None,
            seed: None,
        }
    }

    /// How often a follower looks at who leads (default TTL/4, at least 1 ms; shorter is
    /// refused, and any longer value works: `Duration::MAX` means "never"): it bounds how stale
    /// `Follower { leader }` can be. It does not delay a takeover: a follower waits for
    /// the key inside the leaser, which wakes it at once when the key is released or
    /// expires.
    pub fn retry(mut self, retry: Duration) -> ElectionOptions {
        self.retry = Some(retry);
        self
    }

    /// The pause after a lost term or a backend error before campaigning again: it
    /// starts at `min` and doubles with each failure in a row up to `max`, and each
    /// pause is drawn at random from the upper half of that (jitter: the first pause is
    /// between `min/2` and `min`), so that candidates that failed together do not retry
    /// together. Defaults: 100 ms and the TTL. `min` must be at least 1 ms; a `max` of
    /// any length saturates.
    pub fn backoff(mut self, min: Duration, max: Duration) -> ElectionOptions {
        self.backoff_min = min;
        self.backoff_max = Some(max);
        self
    }

    /// Seeds the backoff's jitter, for reproducible tests (default: random).
    pub fn jitter_seed(mut self, seed: u64) -> ElectionOptions {
        self.seed = Some(seed);
        self
    }

    /// The identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(super) fn retry_or_default(&self) -> Duration {
        self.retry.unwrap_or((self.ttl / 4).max(MIN_PERIOD))
    }

    pub(super) fn check(&self, key: &Key) -> Result<(), LeaseError> {
        key.check_len()?;
        if self.identity.len() > MAX_METADATA_LEN {
            return Err(LeaseError::MetadataTooLarge {
                len: self.identity.len(),
                max: MAX_METADATA_LEN,
            });
        }
        if self.ttl > MAX_TTL {
            return Err(LeaseError::TtlTooLong {
                ttl: self.ttl,
                max: MAX_TTL,
            });
        }
        let max = self.backoff_max.unwrap_or(self.ttl);
        if self.retry_or_default() < MIN_PERIOD
            || self.backoff_min < MIN_PERIOD
            || max < self.backoff_min
        {
            return Err(LeaseError::InvalidConfig(format!(
                "election: retry ({:?}) and backoff ({:?}..{:?}) must be at least {MIN_PERIOD:?}, with min <= max",
                self.retry_or_default(),
                self.backoff_min,
                max
            )));
        }
        Ok(())
    }
}

/// The shortest retry, backoff or observer interval: anything shorter would ask the
/// leaser without pause.
pub(super) const MIN_PERIOD: Duration = Duration::from_millis(1);

/// The runtime the election's tasks run on: the caller's.
pub(super) fn runtime() -> Result<tokio::runtime::Handle, LeaseError> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        LeaseError::InvalidConfig("leader election needs a running tokio runtime".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let key = Key::system(["e"]);
        let ttl = Duration::from_secs(5);
        assert!(ElectionOptions::new("a", ttl).check(&key).is_ok());
        assert!(matches!(
            ElectionOptions::new("a".repeat(MAX_METADATA_LEN + 1), ttl).check(&key),
            Err(LeaseError::MetadataTooLarge { .. })
        ));
        assert!(matches!(
            ElectionOptions::new("a", ttl)
                .retry(Duration::ZERO)
                .check(&key),
            Err(LeaseError::InvalidConfig(_))
        ));
        assert!(matches!(
            ElectionOptions::new("a", ttl)
                .backoff(Duration::from_secs(2), Duration::from_secs(1))
                .check(&key),
            Err(LeaseError::InvalidConfig(_))
        ));
        assert!(matches!(
            ElectionOptions::new("a", MAX_TTL * 2).check(&key),
            Err(LeaseError::TtlTooLong { .. })
        ));
    }
}
