//! A memory store whose calls can be slowed, or stalled for good, per operation and
//! key: what a slow database does to the manager and the lease service.

use std::time::Duration;

use leases::backend::{AcquireOutcome, MemoryBackend, RenewOutcome};
use leases::{BackendError, Key};

/// A store operation, as [`Slowed`]'s rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Acquire,
    Renew,
    Release,
    Revoke,
}

/// How long an operation on a key waits before it reaches the store: `None` not at
/// all, `Some(Duration::MAX)` forever (a black-holed link).
type Rule = Box<dyn Fn(Op, &Key) -> Option<Duration> + Send + Sync>;

/// A [`MemoryBackend`] behind a rule of delays. It answers nothing inline, so the
/// manager runs every call in a task of its own, as it does for a real database.
pub struct Slowed {
    inner: MemoryBackend,
    rule: Rule,
}

impl Slowed {
    pub fn new(rule: impl Fn(Op, &Key) -> Option<Duration> + Send + Sync + 'static) -> Slowed {
        Slowed {
            inner: MemoryBackend::new(),
            rule: Box::new(rule),
        }
    }

    async fn wait(&self, op: Op, key: &Key) {
        match (self.rule)(op, key) {
            None => {}
            Some(Duration::MAX) => std::future::pending().await,
            Some(d) => tokio::time::sleep(d).await,
        }
    }
}

forward_backend! {
    Slowed => inner;
    forward: info, subscribe_freed;
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        self.wait(Op::Acquire, key).await;
        self.inner.acquire(key, ttl, metadata).await
    }
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.wait(Op::Renew, key).await;
        self.inner.renew(key, token, ttl).await
    }
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        self.wait(Op::Release, key).await;
        self.inner.release(key, token).await
    }
    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        self.wait(Op::Revoke, key).await;
        self.inner.revoke(key).await
    }
}
