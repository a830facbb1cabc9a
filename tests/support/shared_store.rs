//! A memory store that says it outlives its servers ([`Backend::shared`]), as PostgreSQL
//! and etcd do: several lease servers in one test process on one store, where a lease
//! can be re-attached through another server, on the memory backend's speed.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{MemoryBackend, RenewOutcome};
use leases::{BackendError, Key};

/// A [`MemoryBackend`] shared by every clone, with `shared()` true.
#[derive(Clone, Default)]
pub struct SharedStore {
    inner: Arc<MemoryBackend>,
    /// How long a renewal's answer takes after the renewal took effect.
    renew_answer_delay: Duration,
}

impl SharedStore {
    /// The same store, reached through a slow link: each renewal answers `delay`
    /// after it took effect (a database that commits, then answers late).
    #[allow(dead_code)]
    pub fn answering_renewals_after(&self, delay: Duration) -> SharedStore {
        SharedStore {
            inner: self.inner.clone(),
            renew_answer_delay: delay,
        }
    }
}

forward_backend! {
    SharedStore => inner;
    forward: acquire, release, revoke, info, list, subscribe_freed;
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let outcome = self.inner.renew(key, token, ttl).await;
        if !self.renew_answer_delay.is_zero() {
            tokio::time::sleep(self.renew_answer_delay).await;
        }
        outcome
    }
    fn shared(&self) -> bool {
        true
    }
}
