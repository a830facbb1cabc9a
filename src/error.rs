//! Errors returned by leasers, the manager and backends.

use std::sync::Arc;
use std::time::Duration;

use crate::key::KeyError;

/// Why a lease operation failed.
///
/// Every failure a caller can cause or meet has its own variant; none of the library's
/// operations panic on bad input.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The key is held by someone else (the Go `ErrConflict`).
    #[error("lease already held")]
    Conflict,
    /// An acquire with [`AcquireOptions::wait`](crate::AcquireOptions::wait) waited as
    /// long as it was allowed and the key never became free.
    #[error("lease still held after waiting {waited:?}")]
    WaitTimedOut {
        /// How long the acquire was allowed to wait.
        waited: Duration,
    },
    /// The requested TTL is below the manager's minimum ([`MIN_TTL`](crate::MIN_TTL) by
    /// default).
    #[error("lease TTL {ttl:?} is shorter than the minimum {min:?}")]
    TtlTooShort {
        /// The TTL asked for.
        ttl: Duration,
        /// The smallest TTL this leaser accepts.
        min: Duration,
    },
    /// The requested TTL is above [`MAX_TTL`](crate::MAX_TTL).
    #[error("lease TTL {ttl:?} is longer than the maximum {max:?}")]
    TtlTooLong {
        /// The TTL asked for.
        ttl: Duration,
        /// The largest TTL this leaser accepts.
        max: Duration,
    },
    /// The key cannot be used: its string form is too long, or a string did not parse.
    #[error("invalid lease key: {0}")]
    InvalidKey(#[from] KeyError),
    /// The metadata attached to the lease is larger than
    /// [`MAX_METADATA_LEN`](crate::MAX_METADATA_LEN).
    #[error("lease metadata is {len} bytes, more than the maximum {max}")]
    MetadataTooLarge {
        /// The metadata's length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The lease was already released, lost or revoked, so it cannot be released. No
    /// newer holder's lease was touched.
    #[error("lease is not held: it was already released, lost or revoked")]
    NotHeld,
    /// The lease manager has shut down (or was never reachable); start a new one.
    #[error("lease manager has stopped")]
    ManagerStopped,
    /// The manager's configuration is inconsistent (for example a safety margin that is
    /// not shorter than the minimum TTL).
    #[error("invalid lease manager configuration: {0}")]
    InvalidConfig(String),
    /// The storage backend failed or could not be reached.
    #[error("lease backend failed: {0}")]
    Backend(#[source] BackendError),
    /// This leaser does not offer the operation (for example
    /// [`Leaser::lease_info`](crate::Leaser::lease_info) on a leaser that cannot look
    /// leases up).
    #[error("this leaser does not support {operation}")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
    },
    /// A re-attach ([`AcquireOptions::resume`](crate::AcquireOptions::resume)) asked for
    /// another TTL than the lease has: a lease keeps its TTL (renewing it with two TTLs
    /// at once would let the shorter one cut the longer one's promise short).
    #[error("a re-attached lease keeps its TTL: asked for {asked:?}, the lease has {held:?}")]
    ResumeTtl {
        /// The TTL asked for.
        asked: Duration,
        /// The lease's TTL.
        held: Duration,
    },
}

/// What kind of failure a [`BackendError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The storage could not be reached (connection refused, pool exhausted, server down).
    Unavailable,
    /// The operation did not finish in time.
    Timeout,
    /// The storage answered, but with an error.
    Failed,
    /// The backend does not offer this operation (for example
    /// [`Backend::list`](crate::backend::Backend::list) on a backend that cannot list).
    Unsupported,
    /// The lease service refused the caller's credentials (gRPC `UNAUTHENTICATED` or
    /// `PERMISSION_DENIED`: a missing or wrong bearer token). Retrying does not help.
    Unauthenticated,
}

/// A failure of the storage behind the leases.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct BackendError {
    kind: BackendErrorKind,
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A backend error with a message and no underlying cause.
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> BackendError {
        BackendError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A backend error caused by `source`.
    pub fn with_source<E>(kind: BackendErrorKind, message: impl Into<String>, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        BackendError {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// The human-readable description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<BackendError> for LeaseError {
    fn from(e: BackendError) -> LeaseError {
        LeaseError::Backend(e)
    }
}
