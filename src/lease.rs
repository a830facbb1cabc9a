//! A held lease: the handle that releases it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::LeaseError;
use crate::key::Key;

/// Whatever can end a lease on behalf of its [`Lease`] handle: the manager, or a fake.
#[async_trait]
pub(crate) trait LeaseOwner: Send + Sync {
    /// Releases the lease `(key, token)` and waits for the outcome.
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError>;
    /// Releases the lease in the background (from `Drop`).
    fn release_on_drop(&self, key: Key, token: u64);
    /// Lets go of the lease without giving the key back (see [`Lease::leave`]). Owners
    /// whose leases cannot be re-attached elsewhere release instead.
    fn leave(&self, key: Key, token: u64) {
        self.release_on_drop(key, token);
    }
    /// The lease's handle has reached whoever asked for it (see [`Lease::delivered`]).
    fn delivered(&self) {}
}

/// A held lease. Release it with [`Lease::release`]; dropping it releases it too.
///
/// The lease is renewed in the background while it is held. Watch its
/// [`LeaseContext`](crate::LeaseContext) to learn when it ends for any other reason.
pub struct Lease {
    key: Key,
    token: u64,
    /// Who releases it; `None` once released, and for [`Lease::noop`].
    owner: Option<Arc<dyn LeaseOwner>>,
    noop: bool,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("noop", &self.noop)
            .finish()
    }
}

impl Lease {
    pub(crate) fn new(key: Key, token: u64, owner: Arc<dyn LeaseOwner>) -> Lease {
        Lease {
            key,
            token,
            owner: Some(owner),
            noop: false,
        }
    }

    /// A lease that holds nothing and whose release does nothing: the Go `NoopLease`.
    /// Its key is `/system` and its token 0.
    pub fn noop() -> Lease {
        Lease {
            key: Key::system([""; 0]),
            token: 0,
            owner: None,
            noop: true,
        }
    }

    /// `true` for [`Lease::noop`].
    pub fn is_noop(&self) -> bool {
        self.noop
    }

    /// The leased key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The fencing token: strictly greater than every earlier token of this key. Pass
    /// it with every write to a resource that remembers the highest token it has seen.
    ///
    /// Tokens are `u64`, but stores may bound them: PostgreSQL's are `BIGINT`, so they
    /// stay below 2^63 (store them as `BIGINT` too). Tokens have gaps: tries that failed
    /// or were refused use up values, and one counter may serve many keys. Compare
    /// tokens of one key only, and only for order.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Releases the lease and waits until the backend has freed the key. The holder's
    /// context ends with [`CancelReason::Released`](crate::CancelReason::Released) before this returns.
    ///
    /// Returns [`LeaseError::NotHeld`] if the lease had already ended (lost or revoked):
    /// never a panic, and never a change to a newer holder's lease.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        match self.owner.take() {
            Some(owner) => owner.release(&self.key, self.token).await,
            None => Ok(()),
        }
    }
}

impl Lease {
    /// Lets go of the lease here without giving the key back: renewal stops, the
    /// holder's context ends with [`CancelReason::HandedOver`](crate::CancelReason::HandedOver)
    /// if it had not ended, and the key stays taken in the store until the lease
    /// expires or another manager re-attaches it
    /// ([`AcquireOptions::resume`](crate::AcquireOptions::resume)). For the lease server,
    /// whose clients may re-attach through another server: releasing would free a key
    /// a re-attached client still holds.
    pub(crate) fn leave(mut self) {
        if let Some(owner) = self.owner.take() {
            owner.leave(self.key.clone(), self.token);
        }
    }

    /// Tells the lease's owner that this handle has reached whoever asked for it: from
    /// here on dropping it releases the lease. (A re-attached lease dropped on its way
    /// is left to expire instead: its previous holder may still act on it.)
    pub(crate) fn delivered(&self) {
        if let Some(owner) = &self.owner {
            owner.delivered();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.release_on_drop(self.key.clone(), self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn noop_lease() {
        let lease = Lease::noop();
        assert!(lease.is_noop());
        assert_eq!(lease.token(), 0);
        lease.release().await.unwrap();
    }
}
