//! The `Leaser` trait: what every lease source (the manager, the fake) offers.

use std::time::Duration;

use async_trait::async_trait;

use crate::context::LeaseContext;
use crate::error::LeaseError;
use crate::key::Key;
use crate::lease::Lease;

/// The shortest TTL a [`LeaseManager`](crate::LeaseManager) accepts unless its builder
/// lowers it (as FTL does: 5 seconds).
pub const MIN_TTL: Duration = Duration::from_secs(5);

/// The longest TTL any leaser accepts: one day. Longer leases are almost always a
/// mistake (a crashed holder would block the key for that long), and the bound keeps
/// deadline arithmetic far from overflow.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest metadata, in bytes, that can be attached to a lease.
pub const MAX_METADATA_LEN: usize = 64 * 1024;

/// How to acquire a lease: TTL, metadata, and whether to wait for a held key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireOptions {
    pub(crate) ttl: Duration,
    pub(crate) metadata: Vec<u8>,
    pub(crate) wait: Option<Duration>,
}

impl AcquireOptions {
    /// Options for a lease with this TTL, no metadata, and no waiting.
    pub fn new(ttl: Duration) -> AcquireOptions {
        AcquireOptions {
            ttl,
            metadata: Vec::new(),
            wait: None,
        }
    }

    /// Attaches opaque metadata (at most [`MAX_METADATA_LEN`] bytes) to the lease, readable
    /// by anyone through `lease_info` (for example the holder's address).
    pub fn metadata(mut self, metadata: impl Into<Vec<u8>>) -> AcquireOptions {
        self.metadata = metadata.into();
        self
    }

    /// If the key is held, wait up to `timeout` for it to become free instead of failing
    /// at once with [`LeaseError::Conflict`]; a wait that runs out is
    /// [`LeaseError::WaitTimedOut`]. Waiters of one manager are served first
    /// come, first served; the wait wakes on release, revocation or expiry, without
    /// polling.
    pub fn wait(mut self, timeout: Duration) -> AcquireOptions {
        self.wait = Some(timeout);
        self
    }

    /// The requested TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Checks TTL and metadata against `min_ttl`, [`MAX_TTL`] and [`MAX_METADATA_LEN`],
    /// and the key against [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    pub(crate) fn validate(&self, key: &Key, min_ttl: Duration) -> Result<(), LeaseError> {
        key.check_len()?;
        if self.ttl < min_ttl {
            return Err(LeaseError::TtlTooShort {
                ttl: self.ttl,
                min: min_ttl,
            });
        }
        if self.ttl > MAX_TTL {
            return Err(LeaseError::TtlTooLong {
                ttl: self.ttl,
                max: MAX_TTL,
            });
        }
        if self.metadata.len() > MAX_METADATA_LEN {
            return Err(LeaseError::MetadataTooLarge {
                len: self.metadata.len(),
                max: MAX_METADATA_LEN,
            });
        }
        Ok(())
    }
}

/// Something that grants leases: the Go `Leaser` interface.
///
/// Implemented by [`LeaseManager`](crate::LeaseManager) and
/// [`FakeLeaser`](crate::FakeLeaser). The trait is object-safe, so code can take an
/// `Arc<dyn Leaser>` and be tested against the fake.
#[async_trait]
pub trait Leaser: Send + Sync {
    /// Acquires a lease on `key` for `ttl`, renewed in the background until released.
    ///
    /// Fails with [`LeaseError::Conflict`] if the key is held, and with
    /// [`LeaseError::TtlTooShort`] if `ttl` is below the leaser's minimum.
    async fn acquire_lease(
        &self,
        key: Key,
        ttl: Duration,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        self.acquire_lease_with(key, AcquireOptions::new(ttl)).await
    }

    /// Acquires a lease with metadata and/or waiting; see [`AcquireOptions`].
    async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError>;
}
