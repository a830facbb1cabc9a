//! The handle: [`LeaseManager`], cheap to clone, every clone talking to one supervisor
//! actor; the calls it answers itself (the backend's `info`, `list`, `check`) and those
//! it sends to the supervisor (acquire, revoke, shutdown).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{ActorRef, ActorStatus};
use tracing::Instrument;

use super::config::Config;
use super::messages::{call, ManagerMessage, Msg};
use crate::backend::{Backend, LeaseInfo};
use crate::context::LeaseContext;
use crate::error::LeaseError;
use crate::key::Key;
use crate::lease::Lease;
use crate::leaser::{AcquireOptions, HeldLease, Leaser};

struct Inner {
    actor: ActorRef<ManagerMessage>,
    backend: Arc<dyn Backend>,
    config: Config,
    /// Where the next `acquire_any` starts looking, so that callers spread over keys.
    next_any: std::sync::atomic::AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: shut down, releasing every lease.
        let _ = self
            .actor
            .send_message(ManagerMessage(Msg::Shutdown { reply: None }));
    }
}

/// The in-process lease manager: acquires leases through a [`Backend`] and renews them
/// in the background, one renewal actor per lease under one supervisor actor.
///
/// Cheap to clone; every clone talks to the same supervisor. Dropping the last clone
/// shuts the manager down (leases and contexts do not keep it alive). See the crate
/// docs for the guarantees.
#[derive(Clone)]
pub struct LeaseManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaseManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseManager")
            .field("actor", &self.inner.actor.get_id())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl LeaseManager {
    /// A handle on a started supervisor actor.
    pub(super) fn new(
        actor: ActorRef<ManagerMessage>,
        backend: Arc<dyn Backend>,
        config: Config,
    ) -> LeaseManager {
        LeaseManager {
            inner: Arc::new(Inner {
                actor,
                backend,
                config,
                next_any: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// The supervisor actor, for actors that message the manager directly
    /// (see [`ManagerMessage`] and the [ractor-facing API](crate::actors)).
    pub fn actor(&self) -> ActorRef<ManagerMessage> {
        self.inner.actor.clone()
    }

    /// The backend this manager stores leases in.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.inner.backend.clone()
    }

    /// The smallest TTL this manager accepts.
    pub fn min_ttl(&self) -> Duration {
        self.inner.config.min_ttl
    }

    /// The safety margin used for a lease of `ttl`.
    pub fn safety_margin(&self, ttl: Duration) -> Duration {
        self.inner.config.margin(ttl)
    }

    /// `true` until the manager has shut down.
    pub fn is_running(&self) -> bool {
        matches!(
            self.inner.actor.get_status(),
            ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
        )
    }

    fn check_running(&self) -> Result<(), LeaseError> {
        if self.is_running() {
            Ok(())
        } else {
            Err(LeaseError::ManagerStopped)
        }
    }

    /// Revokes whoever holds `key`, here or in another manager sharing the backend.
    /// Returns `true` if someone held it. A holder in this manager is told at once
    /// ([`CancelReason::Revoked`](crate::CancelReason::Revoked)) and the key is freed
    /// (for a holder that keeps its key until it lets go,
    /// [`AcquireOptions::keep_until_released`], once it does); a holder elsewhere is
    /// told at its next renewal, and until then (at most its TTL) the key stays taken,
    /// so that revoking never makes two holders.
    pub async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        self.check_running()?;
        let key = key.clone();
        call(&self.inner.actor, |reply| Msg::Revoke { key, reply }).await
    }

    /// Checks that the manager runs and its backend answers (for PostgreSQL: connects,
    /// and creates the table if needed), so that a dead or misconfigured store shows
    /// up front rather than at the first acquire. Backends keep no state from this; a
    /// store that goes down later still shows as errors then.
    pub async fn check(&self) -> Result<(), LeaseError> {
        self.check_running()?;
        Ok(self.inner.backend.check().await?)
    }

    /// What the backend knows of the lease on `key`: token, time left, metadata.
    pub async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        self.check_running()?;
        key.check_len()?;
        let info = self.inner.backend.info(key).await;
        if info.is_err() {
            crate::metrics::backend_error(crate::metrics::Op::Info);
        }
        Ok(info?)
    }

    /// The live leases whose key's string form starts with `prefix` (a plain string
    /// prefix; empty for all), ordered by key string, at most `limit` of them: held here
    /// or by any manager sharing the backend. See [`Backend::list`]; a backend that
    /// cannot list answers [`LeaseError::Backend`] with kind
    /// [`Unsupported`](crate::BackendErrorKind::Unsupported).
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, LeaseError> {
        self.check_running()?;
        Ok(self.inner.backend.list(prefix, limit).await?)
    }

    /// Shuts the manager down: every context ends with
    /// [`CancelReason::Shutdown`](crate::CancelReason::Shutdown), held leases are
    /// released (waiting at most the shutdown timeout), waiters get
    /// [`LeaseError::ManagerStopped`], and every actor has stopped when this returns.
    /// Later calls fail with `ManagerStopped`. Calling it again does nothing.
    pub async fn shutdown(&self) {
        // One deadline for everything below: the supervisor's releases, its stopping,
        // and the backend I/O it started (a grant given back, a release, an attempt
        // still running).
        let config = &self.inner.config;
        let now = tokio::time::Instant::now();
        let until = now
            .checked_add(config.shutdown_timeout)
            .unwrap_or_else(|| now + Duration::from_secs(1 << 32));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = Msg::Shutdown {
            reply: Some(tx.into()),
        };
        if self.inner.actor.send_message(ManagerMessage(msg)).is_ok() {
            let _ = tokio::time::timeout_at(until, rx).await;
        }
        // Wait for the actor (and, with it, its children) to finish stopping.
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let _ = self.inner.actor.get_cell().wait(Some(left)).await;
        if tokio::time::timeout_at(until, config.inflight.idle())
            .await
            .is_err()
        {
            tracing::warn!("lease manager shutdown: some backend calls did not finish in time");
        }
    }
}

/// The same calls as [`Leaser`], so that they need no trait import.
impl LeaseManager {
    /// Acquires `key` for `ttl`: see [`Leaser::acquire_lease`].
    pub async fn acquire_lease(
        &self,
        key: Key,
        ttl: Duration,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        self.acquire_lease_with(key, AcquireOptions::new(ttl)).await
    }

    /// Acquires `key` for `ttl` as one [`HeldLease`](crate::HeldLease) (the lease and
    /// its context together, released when dropped): see [`Leaser::hold`]. The
    /// recommended form.
    pub async fn hold(&self, key: Key, ttl: Duration) -> Result<HeldLease, LeaseError> {
        Leaser::hold(self, key, ttl).await
    }

    /// [`hold`](Self::hold) with `options`: see [`Leaser::hold_with`].
    pub async fn hold_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<HeldLease, LeaseError> {
        Leaser::hold_with(self, key, options).await
    }

    /// Acquires `key` with `options` (TTL, metadata, waiting): see
    /// [`Leaser::acquire_lease_with`].
    pub async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        // Checked here too (the supervisor checks every request, whichever way it
        // comes), so that bad input is answered at once, as bad input, even while the
        // manager is busy shutting down or after it stopped.
        options.validate(&key, self.inner.config.min_ttl)?;
        self.check_running()?;
        let span = tracing::info_span!("lease.acquire", %key, token = tracing::field::Empty);
        let acquired = call(&self.inner.actor, |reply| Msg::Acquire {
            key,
            options,
            reply,
        })
        .instrument(span.clone())
        .await;
        if let Ok((lease, _)) = &acquired {
            // It has reached its caller: no `.await` from here on.
            lease.delivered();
            span.record("token", lease.token());
        }
        acquired
    }
}

impl LeaseManager {
    /// Acquires whichever of `keys` is free (a worker taking any free job): returns the
    /// index of the key it got, the lease and its context.
    ///
    /// One call looks at all the keys at once ([`Backend::free_among`]: one query on
    /// PostgreSQL) and tries only those that looked free, so busy keys cost no round
    /// trip and no fencing token each. Successive calls start at successive keys, so that
    /// many callers spread over the keys rather than all racing for the first. With
    /// [`AcquireOptions::wait`] it waits for any of them: it wakes when one is released
    /// or revoked, and looks again at least once a second for expiries (which no backend
    /// announces). Fails with [`LeaseError::Conflict`] (no wait) or
    /// [`LeaseError::WaitTimedOut`] when none could be had, and with
    /// [`LeaseError::InvalidConfig`] for an empty list.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), leases::LeaseError> {
    /// use std::time::Duration;
    /// use leases::{AcquireOptions, Key, LeaseManager};
    ///
    /// let manager = LeaseManager::start().await?;
    /// let jobs: Vec<Key> = (0..4).map(|i| Key::system(["jobs", &i.to_string()])).collect();
    /// let (_busy, _) = manager.acquire_lease(jobs[0].clone(), Duration::from_secs(10)).await?;
    /// // A worker takes whichever job is free, waiting up to a minute if none is.
    /// let opts = AcquireOptions::new(Duration::from_secs(10)).wait(Duration::from_secs(60));
    /// let (i, lease, _ctx) = manager.acquire_any(&jobs, opts).await?;
    /// assert_ne!(i, 0);
    /// lease.release().await?;
    /// # manager.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_any(
        &self,
        keys: &[Key],
        options: AcquireOptions,
    ) -> Result<(usize, Lease, LeaseContext), LeaseError> {
        use std::sync::atomic::Ordering;
        if keys.is_empty() {
            return Err(LeaseError::InvalidConfig(
                "acquire_any needs at least one key".into(),
            ));
        }
        for key in keys {
            options.validate(key, self.inner.config.min_ttl)?;
        }
        self.check_running()?;
        let n = keys.len();
        let start = self.inner.next_any.fetch_add(1, Ordering::Relaxed) % n;
        let now = tokio::time::Instant::now();
        let until = options.wait.map(|w| {
            now.checked_add(w)
                .unwrap_or(now + Duration::from_secs(1 << 32))
        });
        // Subscribe before the first look, so that no release is missed.
        let mut freed = match until {
            Some(_) => self.inner.backend.subscribe_freed(),
            None => crate::backend::FreedKeys::none(),
        };
        let mut once = options.clone();
        once.wait = None;
        loop {
            // A shutdown ends this wait too.
            self.check_running()?;
            let free = self.inner.backend.free_among(keys).await?;
            for i in (0..n).map(|j| (start + j) % n) {
                if !free.get(i).copied().unwrap_or(false) {
                    continue;
                }
                match self.acquire_lease_with(keys[i].clone(), once.clone()).await {
                    Ok((lease, ctx)) => return Ok((i, lease, ctx)),
                    // Taken since we looked: try the next one.
                    Err(LeaseError::Conflict) => continue,
                    Err(e) => return Err(e),
                }
            }
            let Some(until) = until else {
                return Err(LeaseError::Conflict);
            };
            let now = tokio::time::Instant::now();
            if now >= until {
                let waited = options.wait.unwrap_or_default();
                return Err(LeaseError::WaitTimedOut { waited });
            }
            freed
                .wait_for_any(keys, (until - now).min(Duration::from_secs(1)))
                .await;
        }
    }
}

#[async_trait]
impl Leaser for LeaseManager {
    async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        LeaseManager::acquire_lease_with(self, key, options).await
    }

    async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        LeaseManager::lease_info(self, key).await
    }
}
