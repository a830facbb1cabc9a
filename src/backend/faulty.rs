//! A backend wrapper that injects faults, for testing loss handling on the real manager.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{AcquireOutcome, Backend, KeyFrees, RenewOutcome};
use crate::error::{BackendError, BackendErrorKind};
use crate::key::Key;
use crate::lease::LeaseInfo;

/// A fault that [`FaultyBackend`] applies to the renewals of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenewFault {
    /// Renewals never answer (a hung connection): the holder loses the lease at its
    /// local deadline with [`LossCause::DeadlineExceeded`](crate::LossCause::DeadlineExceeded).
    Stall,
    /// Renewals fail with an `Unavailable` error: the renewer retries until its deadline.
    Fail,
    /// Renewals answer that the lease is gone.
    Refuse,
    /// The renewal panics inside the renewal actor.
    Panic,
}

/// Wraps a backend and injects faults: stalled, failing, refused or panicking renewals
/// for chosen keys, and a whole-backend outage. For tests and demonstrations; it adds a
/// lock per call, so do not use it in production.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    renew_faults: Mutex<HashMap<Key, RenewFault>>,
    down: AtomicBool,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("down", &self.down.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl FaultyBackend {
    /// Wraps `inner`, with no faults yet.
    pub fn new(inner: Arc<dyn Backend>) -> FaultyBackend {
        FaultyBackend {
            inner,
            renew_faults: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
        }
    }

    /// Applies `fault` to every later renewal of `key` (replacing any earlier fault).
    pub fn fail_renewals(&self, key: &Key, fault: RenewFault) {
        self.faults().insert(key.clone(), fault);
    }

    /// Removes the renewal fault of `key`.
    pub fn heal_renewals(&self, key: &Key) {
        self.faults().remove(key);
    }

    /// While `down`, every call fails with an `Unavailable` error (renewals included).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, HashMap<Key, RenewFault>> {
        self.renew_faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_up(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            Err(BackendError::new(
                BackendErrorKind::Unavailable,
                "injected outage",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        self.check_up()?;
        self.inner.acquire(key, ttl, metadata).await
    }

    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.check_up()?;
        let fault = self.faults().get(key).copied();
        match fault {
            None => self.inner.renew(key, token, ttl).await,
            Some(RenewFault::Stall) => std::future::pending().await,
            Some(RenewFault::Fail) => Err(BackendError::new(
                BackendErrorKind::Unavailable,
                "injected renewal failure",
            )),
            Some(RenewFault::Refuse) => Ok(RenewOutcome::Lost),
            Some(RenewFault::Panic) => panic!("injected renewal panic for {key}"),
        }
    }

    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        self.check_up()?;
        self.inner.release(key, token).await
    }

    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        self.check_up()?;
        self.inner.revoke(key).await
    }

    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        self.check_up()?;
        self.inner.info(key).await
    }

    fn acquire_now(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Option<Result<AcquireOutcome, BackendError>> {
        match self.check_up() {
            Ok(()) => self.inner.acquire_now(key, ttl, metadata),
            Err(e) => Some(Err(e)),
        }
    }

    fn release_now(&self, key: &Key, token: u64) -> Option<Result<bool, BackendError>> {
        match self.check_up() {
            Ok(()) => self.inner.release_now(key, token),
            Err(e) => Some(Err(e)),
        }
    }

    fn subscribe_frees(&self) -> KeyFrees {
        self.inner.subscribe_frees()
    }
}
