//! `FakeLeaser`: a leaser for users' unit tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::LeaseInfo;
use crate::context::{ContextSender, LeaseContext};
use crate::error::LeaseError;
use crate::key::Key;
use crate::lease::{Lease, LeaseOwner};
use crate::leaser::{AcquireOptions, Leaser, MIN_TTL};
use crate::reason::{CancelReason, LossCause};

/// A [`Leaser`] for unit tests: no actors, no backend, no renewals.
///
/// Leases are held until released, dropped, or ended by the test with
/// [`lose`](FakeLeaser::lose) or [`revoke`](FakeLeaser::revoke), which is how a test
/// drives its code's loss handling. Tokens grow from 1. TTLs are checked against the
/// minimum as the real manager checks them, but never run out.
///
/// By default a lost key is free at once. The real manager keeps a lost key taken until
/// its lease expires on the backend (so that the old holder has time to stop), and
/// [`keep_lost_keys`](FakeLeaser::keep_lost_keys) makes the fake do the same, on tokio's
/// clock (pause it in tests), so that a unit test never sees a takeover production
/// would not show.
///
/// ```
/// # tokio_test_block_on(async {
/// use leases::{CancelReason, FakeLeaser, Key, Leaser, LossCause};
/// use std::time::Duration;
/// let fake = FakeLeaser::new();
/// let key = Key::system(["job"]);
/// let (_lease, ctx) = fake.acquire_lease(key.clone(), Duration::from_secs(5)).await.unwrap();
/// fake.lose(&key);
/// assert_eq!(ctx.reason(), Some(CancelReason::Lost(LossCause::Injected)));
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Default)]
pub struct FakeLeaser {
    inner: Arc<FakeInner>,
}

#[derive(Default)]
struct FakeInner {
    state: Mutex<FakeState>,
    freed: Notify,
}

#[derive(Default)]
struct FakeState {
    min_ttl: Option<Duration>,
    keep_lost: bool,
    last_token: u64,
    held: HashMap<Key, Entry>,
}

/// One held key.
struct Entry {
    token: u64,
    ctx: ContextSender,
    metadata: Vec<u8>,
    ttl: Duration,
    /// For a key kept after a loss: when it becomes free.
    expires_at: Option<Instant>,
}

impl Entry {
    /// Taken: held, or lost and not yet expired.
    fn taken(&self) -> bool {
        self.expires_at.is_none_or(|at| Instant::now() < at)
    }
}

impl std::fmt::Debug for FakeLeaser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLeaser")
            .field("held", &self.held_keys())
            .finish()
    }
}

impl FakeLeaser {
    /// A fake with the default minimum TTL ([`MIN_TTL`]).
    pub fn new() -> FakeLeaser {
        FakeLeaser::default()
    }

    /// A fake that accepts TTLs down to `min_ttl`.
    pub fn with_min_ttl(min_ttl: Duration) -> FakeLeaser {
        let fake = FakeLeaser::default();
        fake.lock().min_ttl = Some(min_ttl);
        fake
    }

    /// Keeps a lost key taken until one TTL after the loss (on tokio's clock) instead
    /// of freeing it at once, as the real manager keeps it until the lease expires on the
    /// backend. A release of a lost lease is then [`LeaseError::NotHeld`] and frees
    /// nothing, also as in the real manager.
    pub fn keep_lost_keys(self) -> FakeLeaser {
        self.lock().keep_lost = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        crate::sync::lock(&self.inner.state)
    }

    /// Ends the lease on `key` (only if its token is `token`, when given) with `reason`;
    /// `false` if there was none, or it had already ended.
    fn end(&self, key: &Key, token: Option<u64>, reason: CancelReason) -> bool {
        let freed = {
            let mut state = self.lock();
            let keep = state.keep_lost && matches!(reason, CancelReason::Lost(_));
            match state.held.get_mut(key) {
                Some(e) if token.is_none_or(|want| want == e.token) && e.expires_at.is_none() => {
                    if keep {
                        e.ctx.cancel(reason);
                        e.expires_at = Some(Instant::now() + e.ttl);
                        Some(false)
                    } else {
                        state.held.remove(key).map(|e| e.ctx.cancel(reason))
                    }
                }
                _ => None,
            }
        };
        if freed == Some(true) {
            self.inner.freed.notify_waiters();
        }
        freed.is_some()
    }

    /// Makes the holder of `key` lose its lease: its context ends with
    /// [`CancelReason::Lost`]`(`[`LossCause::Injected`]`)` and the key is free (or, with
    /// [`keep_lost_keys`](FakeLeaser::keep_lost_keys), free one TTL later). Returns
    /// `false` if nobody held it.
    pub fn lose(&self, key: &Key) -> bool {
        self.end(key, None, CancelReason::Lost(LossCause::Injected))
    }

    /// Revokes the holder of `key` ([`CancelReason::Revoked`]) and frees the key.
    pub fn revoke(&self, key: &Key) -> bool {
        self.end(key, None, CancelReason::Revoked)
    }

    /// The token of the lease that takes `key` now, if any (a lost lease kept by
    /// [`keep_lost_keys`](FakeLeaser::keep_lost_keys) counts until it expires).
    pub fn holder(&self, key: &Key) -> Option<u64> {
        self.lock()
            .held
            .get(key)
            .filter(|e| e.taken())
            .map(|e| e.token)
    }

    /// The metadata the current holder of `key` attached, if any.
    pub fn metadata(&self, key: &Key) -> Option<Vec<u8>> {
        let state = self.lock();
        state
            .held
            .get(key)
            .filter(|e| e.taken())
            .map(|e| e.metadata.clone())
    }

    /// Every taken key, sorted.
    pub fn held_keys(&self) -> Vec<Key> {
        let state = self.lock();
        let mut keys: Vec<Key> = state
            .held
            .iter()
            .filter(|(_, e)| e.taken())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Takes `key` if it is free; otherwise `Err` with when it frees by itself, if it
    /// will (a kept lost key).
    fn try_acquire(
        &self,
        key: &Key,
        options: &AcquireOptions,
    ) -> Result<(Lease, LeaseContext), Option<Instant>> {
        let mut state = self.lock();
        if let Some(e) = state.held.get(key) {
            if e.taken() {
                return Err(e.expires_at);
            }
        }
        state.last_token += 1;
        let token = state.last_token;
        let (tx, ctx) = LeaseContext::new(token, None);
        state.held.insert(
            key.clone(),
            Entry {
                token,
                ctx: tx,
                metadata: options.metadata.clone(),
                ttl: options.ttl(),
                expires_at: None,
            },
        );
        let owner: Arc<dyn LeaseOwner> = Arc::new(self.clone());
        Ok((Lease::new(key.clone(), token, owner), ctx))
    }
}

#[async_trait]
impl Leaser for FakeLeaser {
    async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        let min_ttl = self.lock().min_ttl.unwrap_or(MIN_TTL);
        options.validate(&key, min_ttl)?;
        if options.resumes().is_some() {
            // Its leases live in this value only: nothing to re-attach elsewhere.
            return Err(LeaseError::Unsupported {
                operation: "resume",
            });
        }
        let wait = async {
            loop {
                let freed = self.inner.freed.notified();
                match self.try_acquire(&key, &options) {
                    Ok(got) => return got,
                    Err(None) => freed.await,
                    Err(Some(expiry)) => {
                        tokio::select! {
                            _ = freed => {}
                            _ = tokio::time::sleep_until(expiry) => {}
                        }
                    }
                }
            }
        };
        match options.wait {
            None => self
                .try_acquire(&key, &options)
                .map_err(|_| LeaseError::Conflict),
            Some(timeout) => tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| LeaseError::WaitTimedOut { waited: timeout }),
        }
    }

    /// The current holder of `key`, as the real manager reports it: a held lease's
    /// time left is its whole TTL (the fake's leases never run out), a kept lost one's
    /// is the time until it frees.
    async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        key.check_len()?;
        let state = self.lock();
        Ok(state
            .held
            .get(key)
            .filter(|e| e.taken())
            .map(|e| LeaseInfo {
                key: key.clone(),
                token: e.token,
                ttl: e.ttl,
                expires_in: e
                    .expires_at
                    .map_or(e.ttl, |at| at.saturating_duration_since(Instant::now())),
                metadata: e.metadata.clone(),
                revoked: false,
                acquired_at: None,
            }))
    }
}

#[async_trait]
impl LeaseOwner for FakeLeaser {
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError> {
        if self.end(key, Some(token), CancelReason::Released) {
            Ok(())
        } else {
            Err(LeaseError::NotHeld)
        }
    }

    fn release_on_drop(&self, key: Key, token: u64) {
        self.end(&key, Some(token), CancelReason::Released);
    }
}
