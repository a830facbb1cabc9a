//! A grant that nobody holds yet, and the guard that gives it back.
//!
//! Its log events keep the target `leases::manager::io` they had before the manager was split
//! into files, so that users' log filters still match them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::tasks::{catch_panic, InFlight};
use crate::backend::Backend;
use crate::error::LeaseError;
use crate::key::Key;
use crate::lease::LeaseOwner;

/// A lease the backend granted that nobody holds yet.
///
/// It travels in the message that reports the grant. If that message is never handled
/// (the supervisor stopped, its mailbox was dropped with the message in it, a task
/// panicked on the way), dropping the guard gives the key back, so a grant can never
/// leave a key leased by nobody for a whole TTL. The supervisor takes the token out
/// with [`Grant::hold`] when it makes the grant a holder.
pub(crate) struct Grant {
    backend: Arc<dyn Backend>,
    inflight: InFlight,
    key: Key,
    token: Option<u64>,
    /// A re-attached lease ([`AcquireOptions::resume`](crate::AcquireOptions::resume)):
    /// its previous holder may still act on it, so nobody here may give it back; if
    /// nobody takes it, it is left to expire.
    resumed: bool,
}

impl Grant {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        inflight: InFlight,
        key: Key,
        token: u64,
    ) -> Grant {
        Grant {
            backend,
            inflight,
            key,
            token: Some(token),
            resumed: false,
        }
    }

    /// A re-attached lease, which dropping leaves to expire instead of giving back.
    pub(crate) fn resumed(
        backend: Arc<dyn Backend>,
        inflight: InFlight,
        key: Key,
        token: u64,
    ) -> Grant {
        let mut grant = Grant::new(backend, inflight, key, token);
        grant.resumed = true;
        grant
    }

    pub(crate) fn token(&self) -> u64 {
        self.token.unwrap_or_default()
    }

    /// The grant now has a holder, which is responsible for releasing it.
    pub(crate) fn hold(mut self) -> u64 {
        self.token.take().unwrap_or_default()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        if self.resumed {
            tracing::debug!(target: "leases::manager::io", key = %self.key, token, "leaving a re-attached lease that nobody took to expire");
            return;
        }
        tracing::debug!(target: "leases::manager::io", key = %self.key, token, "giving back a grant that nobody took");
        if let Some(Ok(_)) = catch_panic(|| {
            self.backend
                .inline()
                .and_then(|b| b.release_now(&self.key, token))
        }) {
            return;
        }
        let (backend, key) = (self.backend.clone(), self.key.clone());
        // Without a runtime (it is shutting down) the lease simply expires.
        self.inflight.spawn(async move {
            let _ = backend.release(&key, token).await;
        });
    }
}

/// The owner of a re-attached lease's handle
/// ([`AcquireOptions::resume`](crate::AcquireOptions::resume)) until it reaches its
/// caller. A handle dropped on its way (the caller went away while it was answered: a
/// lease server's client that hung up during its re-attach) is left to expire, never
/// released, as [`Grant::resumed`] is: the lease's previous holder may still act on it
/// until its deadline. Once delivered
/// ([`LeaseManager::acquire_lease_with`](crate::LeaseManager::acquire_lease_with) says so),
/// the handle is like any other: dropping it releases the lease.
pub(crate) struct Resumed {
    owner: Arc<dyn LeaseOwner>,
    delivered: AtomicBool,
}

impl Resumed {
    pub(crate) fn owning(owner: Arc<dyn LeaseOwner>) -> Arc<dyn LeaseOwner> {
        Arc::new(Resumed {
            owner,
            delivered: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl LeaseOwner for Resumed {
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError> {
        self.owner.release(key, token).await
    }

    fn release_on_drop(&self, key: Key, token: u64) {
        if self.delivered.load(Ordering::Acquire) {
            self.owner.release_on_drop(key, token);
        } else {
            tracing::debug!(target: "leases::manager::io", %key, token, "leaving a re-attached lease whose caller went away to expire");
            self.owner.leave(key, token);
        }
    }

    fn leave(&self, key: Key, token: u64) {
        self.owner.leave(key, token);
    }

    fn delivered(&self) {
        self.delivered.store(true, Ordering::Release);
    }
}
