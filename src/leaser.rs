//! The `Leaser` trait: what every lease source (the manager, the fake) offers.

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::LeaseInfo;
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
    /// The key is given back only by the holder's own release (see
    /// [`keep_until_released`](AcquireOptions::keep_until_released)).
    pub(crate) keep: bool,
    /// Re-attach the lease with this token instead of acquiring anew (see
    /// [`resume`](AcquireOptions::resume)).
    pub(crate) resume: Option<u64>,
}

impl AcquireOptions {
    /// Options for a lease with this TTL, no metadata, and no waiting.
    pub fn new(ttl: Duration) -> AcquireOptions {
        AcquireOptions {
            ttl,
            metadata: Vec::new(),
            wait: None,
            keep: false,
            resume: None,
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

    /// Keeps the key taken after the lease ends, until this holder lets go of it.
    ///
    /// By default a lease that a revoke ends is given back to the store as soon as its
    /// context has ended: a holder that acts only while its context is live has stopped
    /// by then. A holder whose work can outlive the context (a child process that must
    /// be killed first, a client across the network that hears of the end one hop
    /// later) asks for this instead: however the lease ends (revoked here or through
    /// another manager or server, revoked again, renewal lost, manager shut down), the
    /// context ends at once as always, but the key is given back only when the
    /// [`Lease`](crate::Lease) is released or dropped, and otherwise simply expires on
    /// the store. Renewal stops when the context ends, so the key is free again at the
    /// latest one TTL after the last confirmed renewal. The holder must still have
    /// stopped by [`LeaseContext::deadline`](crate::LeaseContext::deadline).
    pub fn keep_until_released(mut self) -> AcquireOptions {
        self.keep = true;
        self
    }

    /// Re-attaches the live lease `(key, token)` instead of acquiring the key anew: the
    /// lease keeps its token, and this manager renews it from now on.
    ///
    /// This is how a holder moves between processes that share a store (PostgreSQL,
    /// etcd): a lease server that goes away leaves its clients' leases in the store, and
    /// the client re-attaches each one through another server before its deadline. The
    /// backend renews `(key, token)` by compare-and-set, so a lease that has expired,
    /// been released or taken over is never revived: the acquire then fails with
    /// [`LeaseError::NotHeld`], as it does for a revoked lease. A resume never waits
    /// ([`wait`](Self::wait) is ignored) and takes no new token. Whoever held the
    /// lease before must have let go of it without releasing it (a lease server does,
    /// for leases whose stream broke or that it hands over); only the holder itself may
    /// resume a lease, since a resumed lease has the same token as the one it continues.
    /// A resumed lease whose caller went away before it was answered (its acquire
    /// future dropped) is left to expire, never released: its previous holder may still
    /// act on it. (Through a raw [`ManagerMessage::acquire`](crate::ManagerMessage::acquire)
    /// the handle is never known to have arrived: dropping it leaves the lease too;
    /// [`Lease::release`](crate::Lease::release) releases it.)
    ///
    /// Only on a store that outlives its processes
    /// ([`Backend::shared`](crate::backend::Backend::shared): PostgreSQL, etcd). On any
    /// other (the memory backend) a resume is refused with [`LeaseError::NotHeld`] unless
    /// this manager itself still holds `(key, token)` (then it is
    /// [`LeaseError::Conflict`], as for any key held here): the store's leases die with
    /// its process, and a manager that held the lease before could not tell that
    /// another resumed it.
    pub fn resume(mut self, token: u64) -> AcquireOptions {
        self.resume = Some(token);
        self
    }

    /// The token of the lease to re-attach, if [`resume`](Self::resume) was asked for.
    pub fn resumes(&self) -> Option<u64> {
        self.resume
    }

    /// Whether [`keep_until_released`](Self::keep_until_released) was asked for.
    pub fn keeps_until_released(&self) -> bool {
        self.keep
    }

    /// The requested TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long to wait for a held key, if [`wait`](Self::wait) was asked for.
    pub fn waits(&self) -> Option<Duration> {
        self.wait
    }

    /// The metadata to attach (see [`metadata`](Self::metadata)).
    pub fn attached_metadata(&self) -> &[u8] {
        &self.metadata
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

    /// Acquires `key` for `ttl` as one value, a [`HeldLease`]: the lease and its
    /// context together, so that the lease cannot be dropped by mistake while the
    /// context is still watched (see [`HeldLease`]). The recommended form.
    async fn hold(&self, key: Key, ttl: Duration) -> Result<HeldLease, LeaseError> {
        self.hold_with(key, AcquireOptions::new(ttl)).await
    }

    /// [`hold`](Leaser::hold) with metadata and/or waiting; see [`AcquireOptions`].
    async fn hold_with(&self, key: Key, options: AcquireOptions) -> Result<HeldLease, LeaseError> {
        let (lease, ctx) = self.acquire_lease_with(key, options).await?;
        Ok(HeldLease { lease, ctx })
    }

    /// What is known of the current lease on `key`, whoever holds it: token, time left,
    /// metadata (`None` when nobody holds it). An optional capability: the default
    /// answers [`LeaseError::Unsupported`]; [`LeaseManager`](crate::LeaseManager) and
    /// [`FakeLeaser`](crate::FakeLeaser) implement it. Leader election's followers and
    /// observers use it to learn who leads ([`election`](crate::election)).
    async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        let _ = key;
        Err(LeaseError::Unsupported {
            operation: "lease_info",
        })
    }
}

/// A shared leaser is a leaser: `Arc<dyn Leaser>` (or `Arc<LeaseManager>`) can be passed
/// wherever a `Leaser` is taken, such as
/// [`Election::campaign`](crate::election::Election::campaign). Every method forwards,
/// so the inner leaser's own versions of the provided methods are kept.
#[async_trait]
impl<L: Leaser + ?Sized> Leaser for std::sync::Arc<L> {
    async fn acquire_lease(
        &self,
        key: Key,
        ttl: Duration,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        (**self).acquire_lease(key, ttl).await
    }

    async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        (**self).acquire_lease_with(key, options).await
    }

    async fn hold(&self, key: Key, ttl: Duration) -> Result<HeldLease, LeaseError> {
        (**self).hold(key, ttl).await
    }

    async fn hold_with(&self, key: Key, options: AcquireOptions) -> Result<HeldLease, LeaseError> {
        (**self).hold_with(key, options).await
    }

    async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        (**self).lease_info(key).await
    }
}

/// A held lease and its context as one value, from [`Leaser::hold`].
///
/// `acquire_lease` returns `(Lease, LeaseContext)`, as FTL's `AcquireLease` does, and
/// that shape has a trap: `let (_, ctx) = manager.acquire_lease(..).await?` drops the
/// `Lease` at once, which releases it, and `ctx` reads `Released` a moment later. No
/// compiler lint can see that. A `HeldLease` is much harder to split: it is the context
/// (it dereferences to [`LeaseContext`]) and it releases the lease when it is dropped,
/// so holding it means holding the lease, and the type is `#[must_use]`, so the
/// compiler warns when a `hold` result is thrown away unnamed (below). Two ways still
/// drop it at once, as any Rust value: `let _ = ...`, and taking a context off the
/// temporary (`manager.hold(..).await?.context()`, or `.clone()`), which keeps the
/// context and drops the lease at the end of the statement. Bind the `HeldLease` itself:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # async fn job(manager: leases::LeaseManager) -> Result<(), leases::LeaseError> {
/// let key = leases::Key::system(["job"]);
/// manager.hold(key, std::time::Duration::from_secs(5)).await?; // warns: released at once
/// # Ok(())
/// # }
/// ```
///
/// The safe pattern (the same code, compiled):
///
/// ```
/// #![deny(unused_must_use)]
/// # async fn job(manager: leases::LeaseManager) -> Result<(), leases::LeaseError> {
/// let key = leases::Key::system(["job"]);
/// let held = manager.hold(key, std::time::Duration::from_secs(5)).await?;
/// while !held.is_cancelled() {
///     // ... one unit of work, passing held.token() to every write ...
/// #   break;
/// }
/// held.release().await.ok();
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a HeldLease releases the lease at once; keep it in a named binding while you work"]
#[derive(Debug)]
pub struct HeldLease {
    lease: Lease,
    ctx: LeaseContext,
}

impl HeldLease {
    /// The leased key.
    pub fn key(&self) -> &Key {
        self.lease.key()
    }

    /// The fencing token (see [`Lease::token`]).
    pub fn token(&self) -> u64 {
        self.lease.token()
    }

    /// A clone of the context, for another task (see [`LeaseContext`]).
    pub fn context(&self) -> LeaseContext {
        self.ctx.clone()
    }

    /// Releases the lease (see [`Lease::release`]).
    pub async fn release(self) -> Result<(), LeaseError> {
        self.lease.release().await
    }

    /// The two halves, for code that wants them apart (the caller then keeps the
    /// [`Lease`] alive itself).
    pub fn into_parts(self) -> (Lease, LeaseContext) {
        (self.lease, self.ctx)
    }
}

impl std::ops::Deref for HeldLease {
    type Target = LeaseContext;

    fn deref(&self) -> &LeaseContext {
        &self.ctx
    }
}
