//! The leaser conformance suite through the HTTP API (`HttpLeaser`), on the memory
//! backend and on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::service::LeaseServer;
use leases::testing::leaser::LeaserEnv;
use leases::{Key, LeaseError, LeaseInfo, LeaseManager, Leaser};
use serde_json::json;

use crate::client::{Http, HttpLeaser};
use crate::support;
use crate::support::remote::{local, memory_manager, TTL};

struct HttpEnv {
    _server: LeaseServer,
    http: Http,
    prefix: String,
}

impl HttpEnv {
    async fn new(manager: LeaseManager, case: &str) -> HttpEnv {
        let server = LeaseServer::start(manager, local()).await.unwrap();
        HttpEnv {
            http: Http::new(server.local_addr()),
            _server: server,
            prefix: format!("{}-http-{case}", support::pg::run_id()),
        }
    }
}

#[async_trait]
impl LeaserEnv for HttpEnv {
    async fn leaser(&self) -> Arc<dyn Leaser> {
        Arc::new(HttpLeaser {
            http: self.http.clone(),
        })
    }
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        let reply = self
            .http
            .post("/v1/revoke", json!({ "key": key.to_string() }))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        Ok(reply.body["revoked"].as_bool().unwrap())
    }
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        HttpLeaser {
            http: self.http.clone(),
        }
        .lease_info(key)
        .await
    }
    fn ttl(&self) -> Duration {
        TTL
    }
    fn key(&self, name: &str) -> Key {
        Key::system(["http", &self.prefix, name])
    }
}

mod on_memory {
    use super::*;

    async fn env(case: &str) -> HttpEnv {
        HttpEnv::new(memory_manager().await, case).await
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

mod on_postgres {
    use super::*;
    use leases::backend::PostgresOptions;

    async fn env(case: &str) -> HttpEnv {
        let manager = LeaseManager::builder()
            .min_ttl(TTL)
            .postgres(PostgresOptions::new(support::pg::shared_url()).pool_size(4))
            .start()
            .await
            .unwrap();
        HttpEnv::new(manager, case).await
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}
