//! `FakeLeaser`: a leaser for users' unit tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::context::{CancelReason, ContextSender, LeaseContext, LossCause};
use crate::error::LeaseError;
use crate::key::Key;
use crate::lease::{Lease, LeaseOwner};
use crate::leaser::{AcquireOptions, Leaser, MIN_TTL};

/// A [`Leaser`] for unit tests: no actors, no backend, no expiry.
///
/// Leases are held until released, dropped, or ended by the test with
/// [`lose`](FakeLeaser::lose) or [`revoke`](FakeLeaser::revoke), which is how a test
/// drives its code's loss handling. Tokens grow from 1. TTLs are checked against the
/// minimum as the real manager checks them, but never run out.
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
    last_token: u64,
    held: HashMap<Key, (u64, ContextSender, Vec<u8>)>,
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

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        crate::sync::lock(&self.inner.state)
    }

    fn end(&self, key: &Key, token: Option<u64>, reason: CancelReason) -> bool {
        let ended = {
            let mut state = self.lock();
            match state.held.get(key) {
                Some((t, _, _)) if token.is_none_or(|want| want == *t) => {
                    state.held.remove(key).map(|(_, ctx, _)| ctx.cancel(reason))
                }
                _ => None,
            }
        };
        if ended.is_some() {
            self.inner.freed.notify_waiters();
        }
        ended.is_some()
    }

    /// Makes the holder of `key` lose its lease: its context ends with
    /// [`CancelReason::Lost`]`(`[`LossCause::Injected`]`)` and the key is free. Returns
    /// `false` if nobody held it.
    pub fn lose(&self, key: &Key) -> bool {
        self.end(key, None, CancelReason::Lost(LossCause::Injected))
    }

    /// Revokes the holder of `key` ([`CancelReason::Revoked`]) and frees the key.
    pub fn revoke(&self, key: &Key) -> bool {
        self.end(key, None, CancelReason::Revoked)
    }

    /// The token of the current holder of `key`, if any.
    pub fn holder(&self, key: &Key) -> Option<u64> {
        self.lock().held.get(key).map(|(t, _, _)| *t)
    }

    /// The metadata the current holder of `key` attached, if any.
    pub fn metadata(&self, key: &Key) -> Option<Vec<u8>> {
        self.lock().held.get(key).map(|(_, _, m)| m.clone())
    }

    /// Every held key, sorted.
    pub fn held_keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.lock().held.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn try_acquire(&self, key: &Key, options: &AcquireOptions) -> Option<(Lease, LeaseContext)> {
        let mut state = self.lock();
        if state.held.contains_key(key) {
            return None;
        }
        state.last_token += 1;
        let token = state.last_token;
        let (tx, ctx) = LeaseContext::new(token, None);
        state
            .held
            .insert(key.clone(), (token, tx, options.metadata.clone()));
        let owner: Arc<dyn LeaseOwner> = Arc::new(self.clone());
        Some((Lease::new(key.clone(), token, owner), ctx))
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
        let wait = async {
            loop {
                let freed = self.inner.freed.notified();
                if let Some(got) = self.try_acquire(&key, &options) {
                    return got;
                }
                freed.await;
            }
        };
        match options.wait {
            None => self.try_acquire(&key, &options).ok_or(LeaseError::Conflict),
            Some(timeout) => tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| LeaseError::WaitTimedOut { waited: timeout }),
        }
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
