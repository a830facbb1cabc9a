//! Found by the adversarial review: a machine suspended *during an acquire* (after the
//! backend granted the lease, before the manager built the holder's context) must not
//! hand out a live context for a lease that already expired on the backend. Its own test
//! binary: the simulated suspend moves a process-wide clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leases::backend::{AcquireOutcome, Backend, FreedKeys, RenewOutcome};
use leases::{BackendError, Key, LeaseInfo, LeaseManager};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(5);

/// Time this machine has spent suspended (simulated), which a remote backend's clock
/// counts and tokio's does not.
static SUSPENDED_NS: AtomicU64 = AtomicU64::new(0);

fn suspend(d: Duration) {
    leases::clock::simulate_suspend(d);
    SUSPENDED_NS.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
}

/// A backend on another machine (a database): its clock keeps running while this machine
/// is suspended. Otherwise a plain map with compare-and-set on the token.
struct Remote {
    origin: Instant,
    last: AtomicU64,
    held: Mutex<HashMap<Key, (u64, Duration)>>,
    /// Suspend this machine right after the next grant is answered.
    suspend_after_grant: AtomicBool,
}

impl Remote {
    fn now(&self) -> Duration {
        self.origin.elapsed() + Duration::from_nanos(SUSPENDED_NS.load(Ordering::SeqCst))
    }
}

#[async_trait]
impl Backend for Remote {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        _m: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        let now = self.now();
        let outcome = {
            let mut held = self.held.lock().unwrap();
            match held.get(key) {
                Some(&(_, exp)) if exp > now => AcquireOutcome::Held {
                    expires_in: exp - now,
                },
                _ => {
                    let token = self.last.fetch_add(1, Ordering::SeqCst) + 1;
                    held.insert(key.clone(), (token, now + ttl));
                    AcquireOutcome::Granted { token }
                }
            }
        };
        if matches!(outcome, AcquireOutcome::Granted { .. })
            && self.suspend_after_grant.swap(false, Ordering::SeqCst)
        {
            // The database committed and answered; the laptop's lid closes before the
            // manager handles the answer.
            suspend(2 * TTL);
        }
        Ok(outcome)
    }
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let now = self.now();
        let mut held = self.held.lock().unwrap();
        match held.get_mut(key) {
            Some((t, exp)) if *t == token && *exp > now => {
                *exp = now + ttl;
                Ok(RenewOutcome::Renewed)
            }
            _ => Ok(RenewOutcome::Lost),
        }
    }
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        let now = self.now();
        let mut held = self.held.lock().unwrap();
        match held.get(key) {
            Some(&(t, exp)) if t == token && exp > now => {
                held.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn revoke(&self, _key: &Key) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }
    async fn info(&self, _key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        Ok(None)
    }
    fn subscribe_freed(&self) -> FreedKeys {
        FreedKeys::none()
    }
}

/// Guarantees 1 and 2: the local deadline is "start of the acquire + TTL − margin" on the
/// suspend-aware clock. A suspend between the backend's answer and the making of the
/// context is not counted (the context's suspend baseline is taken when it is made, and
/// the "confirmed too late" check in the supervisor reads tokio's clock only), so the
/// holder gets a live context for a lease that already expired on the backend, and a
/// second manager is granted the same key while the first context is still live.
#[tokio::test(start_paused = true)]
async fn suspend_during_acquire_yields_a_live_context_for_an_expired_lease() {
    let backend = Arc::new(Remote {
        origin: Instant::now(),
        last: AtomicU64::new(0),
        held: Mutex::new(HashMap::new()),
        suspend_after_grant: AtomicBool::new(true),
    });
    let m1 = LeaseManager::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    let m2 = LeaseManager::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    let key = Key::system(["suspend-mid-acquire"]);

    // The acquire may rightly fail ("confirmed too late"); if it succeeds, its context
    // must already have ended.
    let first = m1.acquire_lease(key.clone(), TTL).await;
    // On the backend's clock, the first lease expired a TTL ago; another machine takes it.
    let (_l2, ctx2) = m2.acquire_lease(key.clone(), TTL).await.unwrap();
    if let Ok((_l1, ctx1)) = &first {
        assert!(ctx2.token() > ctx1.token());
        assert!(
            ctx1.is_cancelled() || ctx2.is_cancelled(),
            "two live holders of {key}: token {} (granted {:?} before its context was made, \
             lease already expired on the backend) and token {}",
            ctx1.token(),
            2 * TTL,
            ctx2.token()
        );
    }
}
