//! The conformance suite on the in-memory backend, on paused time.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::backend::{FaultyBackend, MemoryBackend};
use leases::{Key, LeaseManager};

struct MemoryEnv {
    backend: Arc<MemoryBackend>,
}

const TTL: Duration = Duration::from_secs(1);

#[async_trait]
impl conformance::Env for MemoryEnv {
    async fn manager(&self) -> LeaseManager {
        LeaseManager::builder()
            .min_ttl(TTL)
            .backend(self.backend.clone())
            .start()
            .await
            .unwrap()
    }

    async fn faulty_manager(&self) -> (LeaseManager, Arc<FaultyBackend>) {
        conformance::faulty_manager_on(self.backend.clone(), TTL).await
    }

    fn ttl(&self) -> Duration {
        TTL
    }

    fn key(&self, name: &str) -> Key {
        Key::system(["conformance", name])
    }
}

fn env() -> MemoryEnv {
    MemoryEnv {
        backend: Arc::new(MemoryBackend::new()),
    }
}

conformance_suite!(env(), #[tokio::test(start_paused = true)]);
