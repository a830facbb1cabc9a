//! Storage backends: where leases live, and whose clock decides when they expire.
//!
//! The [`Backend`] trait is the seam between the actor machinery and storage. It is
//! shaped for three stores:
//! - the in-process [`MemoryBackend`] (the default),
//! - PostgreSQL, one row per key with `expires_at` and a token from a sequence,
//! - etcd (`EtcdBackend`, feature `etcd`): one etcd key per lease, whose create
//!   revision (strictly increasing, cluster-wide) is the token, riding on one etcd lease
//!   per TTL that the backend keeps alive for all its keys of that TTL.
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

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "test-util")]
mod faulty;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;

/// etcd's wire messages and gRPC clients as the etcd backend speaks them (a subset of
/// etcd's v3 API), for benchmarks that send the same operations without the manager.
/// Not a stable API.
#[cfg(feature = "etcd")]
#[doc(hidden)]
pub use etcd::pb as etcd_wire;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdBackend, EtcdOptions};
#[cfg(feature = "test-util")]
pub use faulty::{AcquireFault, FaultyBackend, RenewFault};
pub use memory::MemoryBackend;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBackend, PostgresOptions};

/// What a backend knows about a held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The key.
    pub key: Key,
    /// The holder's fencing token.
    pub token: u64,
    /// The TTL the lease was granted (and is renewed) with.
    pub ttl: Duration,
    /// Time left until the lease expires on the backend's clock, unless renewed.
    pub expires_in: Duration,
    /// The metadata attached at acquire time.
    pub metadata: Vec<u8>,
    /// `true` when the lease was revoked and waits for its holder to notice (it cannot
    /// be renewed, and the key stays taken until `expires_in` runs out or the holder
    /// releases it).
    pub revoked: bool,
    /// When the lease was granted, on the backend's wall clock, if the backend records
    /// it (the memory backend, PostgreSQL and etcd do).
    pub acquired_at: Option<std::time::SystemTime>,
}

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

/// Storage for leases: the seam between the actor machinery and a store.
///
/// # The contract
/// A backend **must**, for the guarantees in the crate docs to hold:
/// 1. **Judge expiry on one clock, the backend's own**, and never expire a lease less
///    than its TTL after the call that granted or renewed it *started* (the manager
///    measures its local deadline from the moment it sent the call). Round a TTL up,
///    never down.
/// 2. **Grant atomically**: [`acquire`](Backend::acquire) takes a key only if it is free
///    or its lease has expired, in one indivisible step; two calls can never both be
///    granted the same key for overlapping times.
/// 3. **Grow tokens**: every grant's token is strictly greater than every token granted
///    before for that key, in grant order, under any interleaving of calls and across
///    restarts of the store. (One counter for all keys is fine; gaps are fine.) Tokens
///    must fit in the store; PostgreSQL's stay below 2^63.
/// 4. **Compare-and-set on `(key, token)`** for [`renew`](Backend::renew) and
///    [`release`](Backend::release): neither may touch a newer lease of the key, and
///    renew must never revive an expired or released lease.
/// 5. **Revoke without freeing**: [`revoke`](Backend::revoke) marks the current lease;
///    the key stays taken until its holder releases it or it expires, and a revoked
///    lease answers [`RenewOutcome::Revoked`] to its renewals.
/// 6. **Wake waiters**: [`subscribe_freed`](Backend::subscribe_freed) delivers every key
///    released through this backend (by any process sharing the store) to subscriptions
///    taken before the release, or [`Freed::Everything`] when some may have been
///    missed. A backend that cannot tell returns [`FreedKeys::none`]; waiters then retry
///    when the holder's lease would expire.
/// 7. **Bound every call**: return within the backend's own timeout; a call cut off
///    (dropped at any await) must leave the store consistent and must not leave shared
///    resources (a pooled connection) in a state another call could trip on.
///
/// The async methods run in tasks of their own, never on the supervisor's mailbox, so
/// a backend may wait on I/O as long as its timeouts allow. A backend that needs no I/O
/// may also offer the [`InlineBackend`] capability (through
/// [`inline`](Backend::inline)), which the manager then uses on its mailbox.
///
/// The conformance suite checks these properties against any backend (see the
/// `testing` module, feature `test-util`).
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

    /// [`renew`](Backend::renew) for many leases of one TTL at once (a *group*: the
    /// manager renews all its leases of one TTL together, once per TTL/3): one answer per
    /// lease, in the order of `leases`. Each answer must be what `renew` would have
    /// answered for that lease, and the contract's rules hold for each (expiry at least
    /// `ttl` after the call *started*; compare-and-set on `(key, token)`).
    ///
    /// The default renews each lease with [`renew`](Backend::renew), all at once, so
    /// that every backend works unchanged (a backend that batches renewals itself, as
    /// PostgreSQL's does, batches these too). A backend that can do better overrides it:
    /// the memory backend renews the whole group in one pass under its lock.
    async fn renew_many(
        &self,
        leases: &[(Key, u64)],
        ttl: Duration,
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        futures_util::future::join_all(
            leases
                .iter()
                .map(|(key, token)| self.renew(key, *token, ttl)),
        )
        .await
    }

    /// Ends the lease `(key, token)` if it is still that lease and has not expired, and
    /// frees the key for others; `Ok(false)` if it had already ended (released,
    /// expired, or taken over). Must not lower the key's fencing token: the next grant
    /// of the key still gets a larger one.
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError>;

    /// The holder of `(key, token)` here stops holding it without releasing it (a lease
    /// server hands it over: its client may have re-attached it elsewhere). The lease must
    /// then last no longer than it was promised, as if it were no longer renewed here,
    /// and may still be re-attached by `(key, token)`. The default does nothing: right
    /// for a backend whose renewals are per lease (the lease expires when nobody renews
    /// it). A backend that renews leases together (PostgreSQL's sessions) takes it out
    /// of the group.
    async fn leave(&self, key: &Key, token: u64) -> Result<(), BackendError> {
        let _ = (key, token);
        Ok(())
    }

    /// Marks the current lease on `key` revoked and returns its token, or `None` if the key
    /// is not held. The key stays taken until the holder releases it or it expires.
    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError>;

    /// The current unexpired lease on `key`, if any.
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError>;

    /// The live (unexpired) leases whose key's string form starts with `prefix`, in
    /// the order of their key strings (byte-wise), at most `limit` of them. An empty
    /// prefix lists every live lease. `prefix` is a plain string prefix of the
    /// canonical form (`/system/jobs` also matches `/system/jobs2/x`; end it with `/` for
    /// one subtree), and no character in it is special.
    ///
    /// An optional capability, for operators and tools: the default answers a
    /// [`BackendErrorKind::Unsupported`](crate::BackendErrorKind::Unsupported) error.
    /// A snapshot only: leases may be granted or end right after.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, BackendError> {
        let _ = (prefix, limit);
        Err(BackendError::new(
            crate::error::BackendErrorKind::Unsupported,
            "this backend cannot list leases",
        ))
    }

    /// Which of `keys` are free now (no unexpired lease): one look for many keys, so that
    /// acquiring any of several keys costs no round trip (and no fencing token) per busy
    /// key. A hint only: a key may be taken or freed right after. The default asks
    /// [`info`](Backend::info) once per key; backends override it with one query.
    async fn free_among(&self, keys: &[Key]) -> Result<Vec<bool>, BackendError> {
        let mut free = Vec::with_capacity(keys.len());
        for key in keys {
            free.push(self.info(key).await?.is_none());
        }
        Ok(free)
    }

    /// Checks that the store answers (and is set up), within the backend's timeouts.
    /// The default, for stores that cannot be down (in memory), is `Ok`.
    async fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// A subscription to keys being freed, used to wake waiting acquirers. Subscribe
    /// *before* the acquire attempt that may have to wait, so no release is missed.
    fn subscribe_freed(&self) -> FreedKeys;

    /// Whether the leases live outside this process, where another process (another
    /// lease server, after a restart or on another machine) can reach them and re-attach
    /// one by key and token ([`AcquireOptions::resume`](crate::AcquireOptions::resume)).
    /// PostgreSQL and etcd answer `true`. The default, `false`, is the safe answer for a
    /// store that dies with its process (the memory backend): a lease server then
    /// waits out what it promised its clients before it stops, instead of handing
    /// their leases over to another server that could not see them.
    fn shared(&self) -> bool {
        false
    }

    /// This backend's inline capability, if it has one: answers without I/O, on the
    /// manager's mailbox. `None` (the default) for every backend that does I/O.
    fn inline(&self) -> Option<&dyn InlineBackend> {
        None
    }
}

/// An optional capability of a [`Backend`] that needs no I/O (the memory backend: a
/// map behind a lock): it answers acquires and releases at once, so the manager handles
/// them on its mailbox instead of starting a task for each. The answers must be the
/// ones the async methods would give. Either method may return `None` for one call ("not
/// now"), and the manager then uses the async method instead.
pub trait InlineBackend {
    /// [`Backend::acquire`], answered at once.
    fn acquire_now(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Option<Result<AcquireOutcome, BackendError>>;

    /// [`Backend::release`], answered at once.
    fn release_now(&self, key: &Key, token: u64) -> Option<Result<bool, BackendError>>;
}

/// One notification on a backend's freed-keys channel (see [`FreedKeys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freed {
    /// This key was released (or given back after a revoke).
    Key(Key),
    /// Notifications may have been missed (the backend's listening connection was
    /// re-established, say): every waiter should look again.
    Everything,
}

/// A subscription to freed keys (see [`Backend::subscribe_freed`]).
#[derive(Debug)]
pub struct FreedKeys {
    rx: Option<broadcast::Receiver<Freed>>,
}

impl FreedKeys {
    /// A subscription fed by a broadcast channel of freed keys.
    pub fn new(rx: broadcast::Receiver<Freed>) -> FreedKeys {
        FreedKeys { rx: Some(rx) }
    }

    /// A subscription that never reports anything: waiters then retry when the holder's
    /// lease would expire.
    pub fn none() -> FreedKeys {
        FreedKeys { rx: None }
    }

    /// Waits until `key` may have been freed, or `max` has passed. Returns `true` if it
    /// woke for a notification (or lost track of them), `false` on timeout.
    pub async fn wait_for(&mut self, key: &Key, max: Duration) -> bool {
        self.wait_for_any(std::slice::from_ref(key), max).await
    }

    /// Waits until any of `keys` may have been freed, or `max` has passed; `true` if it
    /// woke for a notification (or lost track of them), `false` on timeout.
    pub async fn wait_for_any(&mut self, keys: &[Key], max: Duration) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            tokio::time::sleep(max).await;
            return false;
        };
        let woken = async {
            loop {
                match rx.recv().await {
                    Ok(Freed::Key(freed)) if keys.contains(&freed) => return true,
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
