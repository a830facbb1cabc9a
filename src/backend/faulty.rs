//! A backend wrapper that injects faults, for testing loss handling on the real manager.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::Duration;

use async_trait::async_trait;

use super::{AcquireOutcome, Backend, FreedKeys, InlineBackend, RenewOutcome};
use crate::backend::LeaseInfo;
use crate::error::{BackendError, BackendErrorKind};
use crate::key::Key;

/// A fault that [`FaultyBackend`] applies to the renewals of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenewFault {
    /// Renewals never answer (a hung connection): the holder loses the lease at its
    /// local deadline with [`LossCause::DeadlineExceeded`](crate::LossCause::DeadlineExceeded).
    /// In a group call ([`Backend::renew_many`]) the key's renewal answers a timeout
    /// error instead, so that the other leases of the call are answered.
    Stall,
    /// Renewals fail with an `Unavailable` error: the renewer retries until its deadline.
    Fail,
    /// Renewals answer that the lease is gone.
    Refuse,
    /// The renewal panics inside the renewal actor.
    Panic,
}

/// A fault that [`FaultyBackend`] applies to acquires of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireFault {
    /// The acquire never answers.
    Stall,
    /// The acquire fails with an `Unavailable` error.
    Fail,
    /// The acquire panics inside the task that runs it.
    Panic,
    /// The acquire reaches the wrapped backend (and may be granted there), but the answer
    /// is lost: the caller sees a timeout. A phantom grant, as when a database commits
    /// and the connection dies before the reply arrives.
    LoseAnswer,
}

/// Wraps a backend and injects faults: stalled, failing, refused or panicking renewals
/// for chosen keys, and a whole-backend outage. For tests and demonstrations; it adds a
/// lock per call, so do not use it in production.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    renew_faults: Mutex<HashMap<Key, RenewFault>>,
    acquire_faults: Mutex<HashMap<Key, AcquireFault>>,
    down: AtomicBool,
    stall_releases: AtomicBool,
    fail_revokes: AtomicBool,
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
            acquire_faults: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            stall_releases: AtomicBool::new(false),
            fail_revokes: AtomicBool::new(false),
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

    /// Applies `fault` to every later acquire of `key` (replacing any earlier fault).
    /// Acquires then go through [`Backend::acquire`] (never inline), so that the fault
    /// hits the task that runs them.
    pub fn fail_acquires(&self, key: &Key, fault: AcquireFault) {
        lock(&self.acquire_faults).insert(key.clone(), fault);
    }

    /// Removes the acquire fault of `key`.
    pub fn heal_acquires(&self, key: &Key) {
        lock(&self.acquire_faults).remove(key);
    }

    /// While `stall`, releases never answer (a backend that hangs during a shutdown,
    /// say). Releases already stalled stay stalled.
    pub fn stall_releases(&self, stall: bool) {
        self.stall_releases.store(stall, Ordering::SeqCst);
    }

    /// While `fail`, revokes fail with an `Unavailable` error (other calls still work).
    pub fn fail_revokes(&self, fail: bool) {
        self.fail_revokes.store(fail, Ordering::SeqCst);
    }

    /// While `down`, every call fails with an `Unavailable` error (renewals included).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, HashMap<Key, RenewFault>> {
        lock(&self.renew_faults)
    }

    fn acquire_fault(&self, key: &Key) -> Option<AcquireFault> {
        lock(&self.acquire_faults).get(key).copied()
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
        match self.acquire_fault(key) {
            None => self.inner.acquire(key, ttl, metadata).await,
            Some(AcquireFault::Stall) => std::future::pending().await,
            Some(AcquireFault::Fail) => Err(BackendError::new(
                BackendErrorKind::Unavailable,
                "injected acquire failure",
            )),
            Some(AcquireFault::Panic) => panic!("injected acquire panic for {key}"),
            Some(AcquireFault::LoseAnswer) => {
                let _ = self.inner.acquire(key, ttl, metadata).await;
                Err(BackendError::new(
                    BackendErrorKind::Timeout,
                    "injected: the acquire's answer was lost",
                ))
            }
        }
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

    /// A group call: the healthy leases go to the wrapped backend in one call; each
    /// faulted key answers as its fault says, except that a stalled key's renewal
    /// answers a timeout error at once instead of hanging the whole call, so that one
    /// key's fault stays that key's (its holder still loses the lease at its deadline).
    /// A panicking key panics the call (the manager then renews lease by lease).
    async fn renew_many(
        &self,
        leases: &[(Key, u64)],
        ttl: Duration,
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        if let Err(e) = self.check_up() {
            return leases.iter().map(|_| Err(e.clone())).collect();
        }
        let faults: Vec<Option<RenewFault>> = {
            let map = self.faults();
            leases.iter().map(|(k, _)| map.get(k).copied()).collect()
        };
        let healthy: Vec<(Key, u64)> = leases
            .iter()
            .zip(&faults)
            .filter(|(_, f)| f.is_none())
            .map(|(l, _)| l.clone())
            .collect();
        let mut answers = self.inner.renew_many(&healthy, ttl).await.into_iter();
        leases
            .iter()
            .zip(faults)
            .map(|((key, _), fault)| match fault {
                None => answers.next().unwrap_or_else(|| {
                    Err(BackendError::new(
                        BackendErrorKind::Failed,
                        "the wrapped backend answered too few renewals",
                    ))
                }),
                Some(RenewFault::Stall) => Err(BackendError::new(
                    BackendErrorKind::Timeout,
                    "injected: the renewal stalled",
                )),
                Some(RenewFault::Fail) => Err(BackendError::new(
                    BackendErrorKind::Unavailable,
                    "injected renewal failure",
                )),
                Some(RenewFault::Refuse) => Ok(RenewOutcome::Lost),
                Some(RenewFault::Panic) => panic!("injected renewal panic for {key}"),
            })
            .collect()
    }

    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        self.check_up()?;
        if self.stall_releases.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.release(key, token).await
    }

    async fn leave(&self, key: &Key, token: u64) -> Result<(), BackendError> {
        self.check_up()?;
        self.inner.leave(key, token).await
    }

    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        self.check_up()?;
        if self.fail_revokes.load(Ordering::SeqCst) {
            return Err(BackendError::new(
                BackendErrorKind::Unavailable,
                "injected revoke failure",
            ));
        }
        self.inner.revoke(key).await
    }

    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        self.check_up()?;
        self.inner.info(key).await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, BackendError> {
        self.check_up()?;
        self.inner.list(prefix, limit).await
    }

    async fn free_among(&self, keys: &[Key]) -> Result<Vec<bool>, BackendError> {
        self.check_up()?;
        self.inner.free_among(keys).await
    }

    async fn check(&self) -> Result<(), BackendError> {
        self.check_up()?;
        self.inner.check().await
    }

    fn subscribe_freed(&self) -> FreedKeys {
        self.inner.subscribe_freed()
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn inline(&self) -> Option<&dyn InlineBackend> {
        // Inline only where the wrapped backend is; a call with a fault to inject goes
        // the async way (see below), so that the fault hits the task that runs it.
        self.inner.inline().map(|_| self as &dyn InlineBackend)
    }
}

impl InlineBackend for FaultyBackend {
    fn acquire_now(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Option<Result<AcquireOutcome, BackendError>> {
        match self.check_up() {
            Ok(()) if self.acquire_fault(key).is_some() => None,
            Ok(()) => self.inner.inline()?.acquire_now(key, ttl, metadata),
            Err(e) => Some(Err(e)),
        }
    }

    fn release_now(&self, key: &Key, token: u64) -> Option<Result<bool, BackendError>> {
        match self.check_up() {
            Ok(()) if self.stall_releases.load(Ordering::SeqCst) => None,
            Ok(()) => self.inner.inline()?.release_now(key, token),
            Err(e) => Some(Err(e)),
        }
    }
}
