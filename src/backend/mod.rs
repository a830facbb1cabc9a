//! Storage backends: where leases live, and whose clock decides when they expire.
//!
//! The [`Backend`] trait is the seam between the actor machinery and storage. It is
//! shaped for three stores:
//! - the in-process [`MemoryBackend`] (the default),
//! - PostgreSQL, one row per key with `expires_at` and a token from a sequence,
//! - etcd, whose leases carry their own IDs and keep-alives (a backend there keeps a
//!   map from fencing token to etcd lease ID; the token itself can be the key's
//!   creation revision, which etcd makes strictly increasing).
//!
//! Renew and release are compare-and-set on `(key, token)`: a stale holder can neither
//! revive nor delete a newer holder's lease. Revocation marks a lease as revoked
//! instead of deleting it, so that the key stays taken until its holder has noticed
//! (at its next renewal) or its TTL has run out: revoking never creates two holders.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::error::BackendError;
use crate::key::Key;
use crate::lease::LeaseInfo;

mod faulty;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;

pub use faulty::{AcquireFault, FaultyBackend, RenewFault};
pub use memory::MemoryBackend;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBackend, PostgresOptions};

/// The outcome of [`Backend::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The key was free (or its lease had expired) and is now ours with this token.
    Granted {
        /// The fencing token: strictly greater than every token granted before for
        /// this key, by this backend, across restarts.
        token: u64,
    },
    /// Someone holds the key; their lease expires in at most `expires_in` unless renewed.
    Held {
        /// Time left on the current holder's lease, on the backend's clock.
        expires_in: Duration,
    },
}

/// The outcome of [`Backend::renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease was extended by its TTL from the backend's now.
    Renewed,
    /// The lease was revoked; it will not be renewed again.
    Revoked,
    /// The lease is gone: expired, released, or taken over.
    Lost,
}

/// Storage for leases. See the [module docs](self) for the contract.
///
/// The async methods are called from tasks of their own, never on the supervisor's
/// mailbox, so an implementation may wait on I/O for as long as its own timeouts allow.
/// Only [`acquire_now`](Backend::acquire_now) and [`release_now`](Backend::release_now)
/// run on the mailbox, and only a backend that needs no I/O (the memory backend)
/// implements them.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Takes `key` for `ttl` if it is free or its lease has expired, in one atomic step.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError>;

    /// Extends the lease `(key, token)` by `ttl` from now, if it is still held and has not
    /// expired. Never revives an expired lease.
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError>;

    /// Ends the lease `(key, token)` if it is still that lease and has not expired, and
    /// frees the key for others; `Ok(false)` if it had already ended (released,
    /// expired, or taken over). Must not lower the key's fencing token: the next grant
    /// of the key still gets a larger one.
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError>;

    /// Marks the current lease on `key` revoked and returns its token, or `None` if the key
    /// is not held. The key stays taken until the holder releases it or it expires.
    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError>;

    /// The current unexpired lease on `key`, if any.
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError>;

    /// Answers an acquire at once, without I/O, if this backend can (the memory backend
    /// can: it is a map behind a lock). The supervisor then handles the answer inline
    /// instead of spawning a task for it. `None` (the default) means: call
    /// [`acquire`](Backend::acquire) from a task.
    fn acquire_now(
        &self,
        _key: &Key,
        _ttl: Duration,
        _metadata: &[u8],
    ) -> Option<Result<AcquireOutcome, BackendError>> {
        None
    }

    /// Like [`acquire_now`](Backend::acquire_now), for [`release`](Backend::release).
    fn release_now(&self, _key: &Key, _token: u64) -> Option<Result<bool, BackendError>> {
        None
    }

    /// A subscription to keys being freed, used to wake waiting acquirers. Subscribe
    /// *before* the acquire attempt that may have to wait, so no release is missed.
    fn subscribe_frees(&self) -> KeyFrees;
}

/// One notification on a backend's freed-keys channel (see [`KeyFrees`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freed {
    /// This key was released (or given back after a revoke).
    Key(Key),
    /// Notifications may have been missed (the backend's listening connection was
    /// re-established, say): every waiter should look again.
    Everything,
}

/// A subscription to freed keys (see [`Backend::subscribe_frees`]).
#[derive(Debug)]
pub struct KeyFrees {
    rx: Option<broadcast::Receiver<Freed>>,
}

impl KeyFrees {
    /// A subscription fed by a broadcast channel of freed keys.
    pub fn new(rx: broadcast::Receiver<Freed>) -> KeyFrees {
        KeyFrees { rx: Some(rx) }
    }

    /// A subscription that never reports anything: waiters then retry when the holder's
    /// lease would expire.
    pub fn none() -> KeyFrees {
        KeyFrees { rx: None }
    }

    /// Waits until `key` may have been freed, or `max` has passed. Returns `true` if it
    /// woke for a notification (or lost track of them), `false` on timeout.
    pub async fn wait_for(&mut self, key: &Key, max: Duration) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            tokio::time::sleep(max).await;
            return false;
        };
        let woken = async {
            loop {
                match rx.recv().await {
                    Ok(Freed::Key(freed)) if &freed == key => return true,
                    Ok(Freed::Key(_)) => continue,
                    // Missed notifications may include ours: try again.
                    Ok(Freed::Everything) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        return true
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        tokio::time::timeout(max, woken).await.unwrap_or(false)
    }
}
