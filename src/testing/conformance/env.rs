//! What the suite needs from a backend under test ([`Env`]), and the helpers every
//! case shares.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{Backend, FaultyBackend};
use crate::{Key, LeaseError, LeaseManager, Leaser};

/// What the suite needs from a backend under test.
#[async_trait]
pub trait Env: Send + Sync {
    /// A new manager on the shared backend.
    async fn manager(&self) -> LeaseManager;
    /// A new manager whose backend (the shared one, wrapped) injects faults.
    async fn faulty_manager(&self) -> (LeaseManager, Arc<FaultyBackend>);
    /// A TTL the managers accept (their minimum).
    fn ttl(&self) -> Duration;
    /// A key unique to this test run.
    fn key(&self, name: &str) -> Key;
}

/// A manager on `inner` wrapped in a fault injector, accepting TTLs down to `ttl`: how
/// every `Env::faulty_manager` is built.
pub async fn faulty_manager_on(
    inner: Arc<dyn Backend>,
    ttl: Duration,
) -> (LeaseManager, Arc<FaultyBackend>) {
    let faulty = Arc::new(FaultyBackend::new(inner));
    let m = LeaseManager::builder()
        .min_ttl(ttl)
        .shutdown_timeout(ttl / 2)
        .backend(faulty.clone())
        .start()
        .await
        .unwrap();
    (m, faulty)
}

pub(super) fn leaser(m: &LeaseManager) -> Arc<dyn Leaser> {
    Arc::new(m.clone())
}

/// Sleeps `n` TTLs.
pub(super) async fn ttls(env: &dyn Env, n: f64) {
    tokio::time::sleep(env.ttl().mul_f64(n)).await;
}

/// Is `key` free for a newcomer right now? (Takes it and gives it back.)
pub(super) async fn free_now(env: &dyn Env, m: &LeaseManager, key: &Key) -> bool {
    match leaser(m).acquire_lease(key.clone(), env.ttl()).await {
        Ok((lease, _ctx)) => {
            lease.release().await.unwrap();
            true
        }
        Err(LeaseError::Conflict) => false,
        Err(e) => panic!("acquire {key}: {e}"),
    }
}
