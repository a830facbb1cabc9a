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
use crate::support::remote::local;

struct HttpEnv {
    _server: LeaseServer,
    http: Http,
    prefix: String,
}

impl HttpEnv {
    async fn new(manager: LeaseManager, case: &str) -> HttpEnv {
        let options = leases::service::ServeOptions {
            default_ttl: HTTP_TTL,
            ..local()
        };
        let server = LeaseServer::start(manager, options).await.unwrap();
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
    /// The managers' minimum here: the production minimum, where the other suites use
    /// 1 s. The thin test client heartbeats one request at a time, each on a new
    /// HTTP/1.1 connection, and 50 leases at 1 s (or 2 s) were lost at their deadlines on
    /// a loaded 2-core machine; the kit checks meanings, not speed.
    fn ttl(&self) -> Duration {
        HTTP_TTL
    }
    fn key(&self, name: &str) -> Key {
        Key::system(["http", &self.prefix, name])
    }
}

/// The TTL of the leases here, and the managers' minimum (see `HttpEnv::ttl`).
const HTTP_TTL: Duration = Duration::from_secs(5);

mod on_memory {
    use super::*;

    async fn env(case: &str) -> HttpEnv {
        let manager = LeaseManager::builder()
            .min_ttl(HTTP_TTL)
            .start()
            .await
            .unwrap();
        HttpEnv::new(manager, case).await
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

mod on_postgres {
    use super::*;
    use leases::backend::PostgresOptions;

    async fn env(case: &str) -> HttpEnv {
        let manager = LeaseManager::builder()
            .min_ttl(HTTP_TTL)
            .postgres(PostgresOptions::new(support::pg::shared_url()).pool_size(4))
            .start()
            .await
            .unwrap();
        HttpEnv::new(manager, case).await
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}
