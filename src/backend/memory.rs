//! The in-process backend: the embedded default.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;
// A fast, randomly seeded hasher: SipHash showed in the profile of renewals.
use foldhash::HashMap;

use super::{AcquireOutcome, Backend, Freed, FreedKeys, InlineBackend, RenewOutcome};
use crate::backend::LeaseInfo;
use crate::error::BackendError;
use crate::key::Key;

/// How many freed-key notifications a slow waiter may fall behind before it simply
/// retries.
const FREES_CAPACITY: usize = 1024;

/// Leases kept in this process's memory, on `tokio::time`'s clock.
///
/// Several [`LeaseManager`](crate::LeaseManager)s can share one `MemoryBackend` (wrap it
/// in an `Arc`): they then contend for keys as separate processes would on a database.
///
/// Fencing tokens come from one counter for all keys, started at the wall clock's
/// nanoseconds since the Unix epoch when the backend is created. A restarted process
/// therefore hands out larger tokens than the previous one did (unless the wall clock
/// moved backwards across the restart, or the old process granted more than one lease
/// per nanosecond of its life); [`MemoryBackend::with_token_floor`] lets a caller who
/// persists the last token start above it instead.
///
/// A lease whose expiry would lie more than about 292 years from the backend's creation
/// (an absurd TTL, or a paused test clock moved that far) is refused with an error
/// rather than granted: the backend keeps its instants as 64-bit nanoseconds.
#[derive(Debug)]
pub struct MemoryBackend {
    state: Mutex<State>,
    frees: broadcast::Sender<Freed>,
}

#[derive(Debug)]
struct State {
    last_token: u64,
    held: HashMap<Key, Entry>,
    /// The metadata of the entries that have any (most leases have none, and a field
    /// would cost every entry 16 bytes).
    metadata: HashMap<Key, Box<[u8]>>,
    /// What the entries' instants count from.
    base: Instant,
}

/// A key's lease. Kept small (40 bytes), since the map holds one for every lease: its
/// instants are nanoseconds from [`State::base`] (see [`State::at`]), its durations
/// nanoseconds.
#[derive(Debug)]
struct Entry {
    token: u64,
    /// The TTL it was granted or last renewed with (saturated at `u64::MAX`).
    ttl: u64,
    /// When it expires: nanoseconds from [`State::base`], strictly between `i64::MIN`
    /// and `i64::MAX` (see [`State::span`]).
    expires_at: i64,
    /// When it was granted, after the Unix epoch (0 for a wall clock before it).
    acquired_at: u64,
    revoked: bool,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl State {
    /// The metadata of `key`'s entry.
    fn metadata(&self, key: &Key) -> Vec<u8> {
        self.metadata
            .get(key)
            .map(|m| m.to_vec())
            .unwrap_or_default()
    }

    /// `at` as nanoseconds from [`base`](Self::base) (negative before it: a backend
    /// made on one tokio clock may be used on another that is behind it, in tests),
    /// saturated at `i64::MIN` and `i64::MAX`, about 292 years either side. Right for
    /// judging *now* against expiries, which all lie strictly inside (see
    /// [`span`](Self::span)): a saturated `now` is past every expiry, or before all.
    fn at(&self, at: Instant) -> i64 {
        if at >= self.base {
            i64::try_from((at - self.base).as_nanos()).unwrap_or(i64::MAX)
        } else {
            i64::try_from((self.base - at).as_nanos()).map_or(i64::MIN, |n| -n)
        }
    }

    /// `now` and the expiry of a lease granted or renewed at `now` for `ttl`, as
    /// [`at`](Self::at) reads them; an error if the expiry does not lie strictly inside
    /// the range `at` can tell apart.
    fn span(&self, now: Instant, ttl: Duration) -> Result<(i64, i64), BackendError> {
        let expires_at = self.at(deadline(now, ttl)?);
        if expires_at == i64::MIN || expires_at == i64::MAX {
            return Err(BackendError::new(
                crate::error::BackendErrorKind::Failed,
                format!("TTL {ttl:?} ends beyond the memory backend's clock range (about 292 years from its start)"),
            ));
        }
        Ok((self.at(now), expires_at))
    }
}

impl Entry {
    fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl)
    }

    fn acquired_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.acquired_at)
    }

    /// The time left at `now` (as [`State::at`] reads it); zero once expired.
    fn expires_in(&self, now: i64) -> Duration {
        let left = i128::from(self.expires_at) - i128::from(now);
        Duration::from_nanos(u64::try_from(left).unwrap_or(0))
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// An empty backend whose tokens start at the wall clock's nanoseconds since the epoch.
    pub fn new() -> MemoryBackend {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2))
            .unwrap_or(0);
        MemoryBackend::with_token_floor(now)
    }

    /// An empty backend whose first token is `floor + 1`.
    pub fn with_token_floor(floor: u64) -> MemoryBackend {
        MemoryBackend {
            state: Mutex::new(State {
                last_token: floor,
                held: HashMap::default(),
                metadata: HashMap::default(),
                base: Instant::now(),
            }),
            frees: broadcast::channel(FREES_CAPACITY).0,
        }
    }

    /// The number of keys with a lease entry (held, or expired and not yet reclaimed).
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    /// `true` when no key has a lease entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn notify_freed(&self, key: &Key) {
        if self.frees.receiver_count() > 0 {
            let _ = self.frees.send(Freed::Key(key.clone()));
        }
    }
}

fn deadline(now: Instant, ttl: Duration) -> Result<Instant, BackendError> {
    now.checked_add(ttl).ok_or_else(|| {
        BackendError::new(
            crate::error::BackendErrorKind::Failed,
            format!("TTL {ttl:?} overflows the clock"),
        )
    })
}

/// Renews `(key, token)` at `now` to `expires_at` (as [`State::span`] gives them), if
/// it is still that lease and live.
fn renew_entry(
    state: &mut State,
    key: &Key,
    token: u64,
    ttl: Duration,
    (now, expires_at): (i64, i64),
) -> RenewOutcome {
    match state.held.get_mut(key) {
        Some(h) if h.token == token && h.expires_at > now => {
            if h.revoked {
                RenewOutcome::Revoked
            } else {
                h.expires_at = expires_at;
                h.ttl = nanos(ttl);
                RenewOutcome::Renewed
            }
        }
        _ => RenewOutcome::Lost,
    }
}

impl MemoryBackend {
    fn acquire_sync(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        let now = Instant::now();
        let mut state = self.lock();
        let (now, expires_at) = state.span(now, ttl)?;
        if let Some(h) = state.held.get(key) {
            if h.expires_at > now {
                return Ok(AcquireOutcome::Held {
                    expires_in: h.expires_in(now),
                });
            }
        }
        state.last_token = state.last_token.checked_add(1).ok_or_else(|| {
            BackendError::new(crate::error::BackendErrorKind::Failed, "tokens exhausted")
        })?;
        let token = state.last_token;
        state.held.insert(
            key.clone(),
            Entry {
                token,
                ttl: nanos(ttl),
                expires_at,
                acquired_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, nanos),
                revoked: false,
            },
        );
        if metadata.is_empty() {
            state.metadata.remove(key);
        } else {
            state.metadata.insert(key.clone(), metadata.into());
        }
        Ok(AcquireOutcome::Granted { token })
    }

    fn release_sync(&self, key: &Key, token: u64) -> bool {
        let removed = {
            let mut state = self.lock();
            let now = state.at(Instant::now());
            match state.held.get(key) {
                // An expired lease is not released: it already ended (the backend
                // contract: `true` only for a lease that was live).
                Some(h) if h.token == token && h.expires_at > now => {
                    state.metadata.remove(key);
                    state.held.remove(key).is_some()
                }
                _ => false,
            }
        };
        if removed {
            self.notify_freed(key);
        }
        removed
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        self.acquire_sync(key, ttl, metadata)
    }

    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let now = Instant::now();
        let mut state = self.lock();
        let span = state.span(now, ttl)?;
        Ok(renew_entry(&mut state, key, token, ttl, span))
    }

    /// The whole group in one pass under the lock, on one reading of the clock.
    async fn renew_many(
        &self,
        leases: &[(Key, u64)],
        ttl: Duration,
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        let now = Instant::now();
        let mut state = self.lock();
        let span = match state.span(now, ttl) {
            Ok(span) => span,
            Err(e) => return leases.iter().map(|_| Err(e.clone())).collect(),
        };
        leases
            .iter()
            .map(|(key, token)| Ok(renew_entry(&mut state, key, *token, ttl, span)))
            .collect()
    }

    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        Ok(self.release_sync(key, token))
    }

    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        let mut state = self.lock();
        let now = state.at(Instant::now());
        match state.held.get_mut(key) {
            Some(h) if h.expires_at > now => {
                h.revoked = true;
                Ok(Some(h.token))
            }
            _ => Ok(None),
        }
    }

    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        let state = self.lock();
        let now = state.at(Instant::now());
        Ok(state
            .held
            .get(key)
            .filter(|h| h.expires_at > now)
            .map(|h| LeaseInfo {
                key: key.clone(),
                token: h.token,
                ttl: h.ttl(),
                expires_in: h.expires_in(now),
                metadata: state.metadata(key),
                revoked: h.revoked,
                acquired_at: Some(h.acquired_at()),
            }))
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, BackendError> {
        let state = self.lock();
        let now = state.at(Instant::now());
        let mut live: Vec<(String, &Key, &Entry)> = state
            .held
            .iter()
            .filter(|(_, h)| h.expires_at > now)
            .map(|(k, h)| (k.to_string(), k, h))
            .filter(|(text, _, _)| text.starts_with(prefix))
            .collect();
        live.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(live
            .into_iter()
            .take(limit)
            .map(|(_, key, h)| LeaseInfo {
                key: key.clone(),
                token: h.token,
                ttl: h.ttl(),
                expires_in: h.expires_in(now),
                metadata: state.metadata(key),
                revoked: h.revoked,
                acquired_at: Some(h.acquired_at()),
            })
            .collect())
    }

    async fn free_among(&self, keys: &[Key]) -> Result<Vec<bool>, BackendError> {
        let state = self.lock();
        let now = state.at(Instant::now());
        Ok(keys
            .iter()
            .map(|k| state.held.get(k).is_none_or(|h| h.expires_at <= now))
            .collect())
    }

    fn subscribe_freed(&self) -> FreedKeys {
        FreedKeys::new(self.frees.subscribe())
    }

    fn inline(&self) -> Option<&dyn InlineBackend> {
        Some(self)
    }
}

/// The memory backend is a map behind a lock: it always answers at once.
impl InlineBackend for MemoryBackend {
    fn acquire_now(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Option<Result<AcquireOutcome, BackendError>> {
        Some(self.acquire_sync(key, ttl, metadata))
    }

    fn release_now(&self, key: &Key, token: u64) -> Option<Result<bool, BackendError>> {
        Some(Ok(self.release_sync(key, token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn granted(o: AcquireOutcome) -> u64 {
        match o {
            AcquireOutcome::Granted { token } => token,
            held => panic!("expected a grant, got {held:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn compare_and_set_on_token() {
        let b = MemoryBackend::with_token_floor(100);
        let k = Key::system(["a"]);
        let t1 = granted(b.acquire(&k, TTL, b"m").await.unwrap());
        assert_eq!(t1, 101);
        assert_eq!(
            b.acquire(&k, TTL, b"").await.unwrap(),
            AcquireOutcome::Held { expires_in: TTL }
        );
        assert_eq!(b.renew(&k, t1 + 1, TTL).await.unwrap(), RenewOutcome::Lost);
        assert!(!b.release(&k, t1 + 1).await.unwrap());
        tokio::time::advance(TTL).await;
        // Expired: renew refuses, and someone else takes it with a larger token.
        assert_eq!(b.renew(&k, t1, TTL).await.unwrap(), RenewOutcome::Lost);
        let t2 = granted(b.acquire(&k, TTL, b"").await.unwrap());
        assert!(t2 > t1);
        // The stale holder cannot delete the newer lease.
        assert!(!b.release(&k, t1).await.unwrap());
        assert_eq!(b.info(&k).await.unwrap().unwrap().token, t2);
        assert!(b.release(&k, t2).await.unwrap());
        assert!(b.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn revoke_marks_until_expiry_or_release() {
        let b = MemoryBackend::new();
        let k = Key::system(["r"]);
        let t = granted(b.acquire(&k, TTL, b"").await.unwrap());
        assert_eq!(b.revoke(&k).await.unwrap(), Some(t));
        assert!(b.info(&k).await.unwrap().unwrap().revoked);
        assert_eq!(b.renew(&k, t, TTL).await.unwrap(), RenewOutcome::Revoked);
        assert!(matches!(
            b.acquire(&k, TTL, b"").await.unwrap(),
            AcquireOutcome::Held { .. }
        ));
        let mut frees = b.subscribe_freed();
        assert!(b.release(&k, t).await.unwrap());
        assert!(frees.wait_for(&k, Duration::from_secs(1)).await);
        assert_eq!(b.revoke(&k).await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn metadata_and_times_belong_to_the_current_lease() {
        let b = MemoryBackend::new();
        let k = Key::system(["m"]);
        let before = SystemTime::now();
        let t1 = granted(b.acquire(&k, TTL, b"first").await.unwrap());
        let info = b.info(&k).await.unwrap().unwrap();
        assert_eq!((info.token, info.metadata.as_slice()), (t1, &b"first"[..]));
        assert_eq!((info.ttl, info.expires_in), (TTL, TTL));
        let at = info.acquired_at.unwrap();
        assert!(at >= before - Duration::from_secs(1) && at <= SystemTime::now());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            b.renew(&k, t1, 2 * TTL).await.unwrap(),
            RenewOutcome::Renewed
        );
        let info = b.info(&k).await.unwrap().unwrap();
        assert_eq!((info.ttl, info.expires_in), (2 * TTL, 2 * TTL));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            b.info(&k).await.unwrap().unwrap().expires_in,
            2 * TTL - Duration::from_secs(5)
        );

        // A lease taken over after an expiry does not show its predecessor's metadata.
        tokio::time::advance(2 * TTL).await;
        assert!(b.info(&k).await.unwrap().is_none(), "expired");
        let t2 = granted(b.acquire(&k, TTL, b"").await.unwrap());
        let info = b.info(&k).await.unwrap().unwrap();
        assert_eq!((info.token, info.metadata.len()), (t2, 0));
        assert!(b.release(&k, t2).await.unwrap());
        // Nor after a release.
        let t3 = granted(b.acquire(&k, TTL, b"third").await.unwrap());
        assert!(b.release(&k, t3).await.unwrap());
        let t4 = granted(b.acquire(&k, TTL, b"").await.unwrap());
        let listed = b.list("/system/m", 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].token, listed[0].metadata.len()), (t4, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_ttl_is_an_error() {
        let b = MemoryBackend::new();
        let k = Key::system(["x"]);
        assert!(b.acquire(&k, Duration::MAX, b"").await.is_err());
    }
}
