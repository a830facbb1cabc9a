//! The leaser conformance suite through the service, on the memory backend and on
//! PostgreSQL, beside the manager's own leaser (the suite's reference).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::service::LeaseServer;
use leases::testing::leaser::LeaserEnv;
use leases::{ClientLeaser, Key, LeaseError, LeaseInfo, LeaseManager, Leaser};

use crate::support;
use crate::support::remote::{client_of, hold_client_of, local, memory_manager, TTL};

/// A server (on a manager of its own) and clients of it.
struct ServiceEnv {
    server: LeaseServer,
    /// Whether the leasers under test use `HoldMany` (the default) or `Hold` streams.
    hold_many: bool,
    admin: ClientLeaser,
    prefix: String,
}

impl ServiceEnv {
    async fn new(manager: LeaseManager, case: &str) -> ServiceEnv {
        let server = LeaseServer::start(manager, local()).await.unwrap();
        let admin = client_of(&server).await;
        ServiceEnv {
            server,
            hold_many: true,
            admin,
            prefix: format!("{}-{case}", support::pg::run_id()),
        }
    }
}

#[async_trait]
impl LeaserEnv for ServiceEnv {
    async fn leaser(&self) -> Arc<dyn Leaser> {
        if self.hold_many {
            Arc::new(client_of(&self.server).await)
        } else {
            Arc::new(hold_client_of(&self.server).await)
        }
    }
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        self.admin.revoke(key).await
    }
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        self.admin.lease_info(key).await
    }
    fn ttl(&self) -> Duration {
        TTL
    }
    fn key(&self, name: &str) -> Key {
        Key::system(["service", &self.prefix, name])
    }
}

/// The suite through a server on the memory backend.
mod on_memory {
    use super::*;

    async fn env(case: &str) -> ServiceEnv {
        ServiceEnv::new(memory_manager().await, case).await
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

/// The suite through a server on the memory backend, each lease on a `Hold` stream of
/// its own (what a client does against a server from before `HoldMany`).
mod on_memory_hold_streams {
    use super::*;

    async fn env(case: &str) -> ServiceEnv {
        let mut env = ServiceEnv::new(memory_manager().await, case).await;
        env.hold_many = false;
        env
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

/// The suite through a server on PostgreSQL.
mod on_postgres {
    use super::*;
    use leases::backend::PostgresOptions;

    async fn env(case: &str) -> ServiceEnv {
        let manager = LeaseManager::builder()
            .min_ttl(TTL)
            .postgres(PostgresOptions::new(support::pg::shared_url()).pool_size(4))
            .start()
            .await
            .unwrap();
        ServiceEnv::new(manager, case).await
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

/// The manager's own leaser passes the same suite (the suite's reference).
mod direct {
    use super::*;

    struct ManagerEnv {
        manager: LeaseManager,
        case: String,
    }

    #[async_trait]
    impl LeaserEnv for ManagerEnv {
        async fn leaser(&self) -> Arc<dyn Leaser> {
            Arc::new(self.manager.clone())
        }
        async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
            self.manager.revoke(key).await
        }
        async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
            self.manager.lease_info(key).await
        }
        fn ttl(&self) -> Duration {
            TTL
        }
        fn key(&self, name: &str) -> Key {
            Key::system(["direct", &self.case, name])
        }
    }

    async fn env(case: &str) -> ManagerEnv {
        ManagerEnv {
            manager: memory_manager().await,
            case: case.to_string(),
        }
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(start_paused = true)]);
}
