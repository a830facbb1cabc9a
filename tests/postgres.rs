//! The PostgreSQL backend: the conformance suite, TLS, faults and operator SQL.
//!
//! Uses `LEASES_POSTGRES_URL` when set, else starts a throwaway server (see
//! `support/pg.rs`); a missing server is a failure, never a skip.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use leases::backend::{Backend, FaultyBackend, PostgresBackend, PostgresOptions};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, LossCause};
use support::pg::{connect, manager, run_id, shared_url, table, PgServer, Tls};

const TTL: Duration = Duration::from_secs(1);

fn options(url: &str) -> PostgresOptions {
    PostgresOptions::new(url)
        .pool_size(4)
        .connect_timeout(Duration::from_secs(2))
}

struct PgEnv {
    url: String,
    case: String,
    ttl: Duration,
}

#[async_trait]
impl leases::testing::conformance::Env for PgEnv {
    async fn manager(&self) -> LeaseManager {
        LeaseManager::builder()
            .min_ttl(self.ttl)
            .postgres(options(&self.url))
            .start()
            .await
            .unwrap()
    }

    async fn faulty_manager(&self) -> (LeaseManager, Arc<FaultyBackend>) {
        let pg = PostgresBackend::connect(options(&self.url)).await.unwrap();
        leases::testing::conformance::faulty_manager_on(Arc::new(pg), self.ttl).await
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(&self, name: &str) -> Key {
        Key::system(["conformance", &run_id(), &self.case, name])
    }
}

/// The conformance suite again, with every manager reaching the database through a
/// TCP fault proxy whose link keeps changing: random delays and slow drips, switched
/// every 50..400 ms (see `FaultSchedule::latency`), so that every await point of every
/// operation is exercised with latency while the suite's assertions still hold.
mod proxied {
    use super::*;
    use support::proxy::{FaultProxy, FaultSchedule};

    pub(super) struct ProxiedEnv {
        inner: PgEnv,
        _proxy: FaultProxy,
        schedule: tokio::task::JoinHandle<Vec<String>>,
    }

    impl Drop for ProxiedEnv {
        fn drop(&mut self) {
            self.schedule.abort();
        }
    }

    /// `url` with its host and port replaced by the proxy's, as a key=value string.
    fn via(url: &str, port: u16) -> String {
        let config: tokio_postgres::Config = url.parse().unwrap();
        let mut s = format!("host=127.0.0.1 port={port}");
        if let Some(user) = config.get_user() {
            s += &format!(" user={user}");
        }
        if let Some(db) = config.get_dbname() {
            s += &format!(" dbname={db}");
        }
        if let Some(pw) = config.get_password() {
            s += &format!(" password={}", String::from_utf8_lossy(pw));
        }
        s
    }

    fn target(url: &str) -> std::net::SocketAddr {
        use std::net::ToSocketAddrs;
        let config: tokio_postgres::Config = url.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[allow(unreachable_patterns)]
            other => panic!("the proxied suite needs a TCP database address, not {other:?}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        (host.as_str(), port)
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap()
    }

    pub(super) async fn env(case: &str) -> ProxiedEnv {
        let url = shared_url();
        let proxy = FaultProxy::start(target(&url)).await;
        let seed = case
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let schedule = proxy.run_schedule(FaultSchedule::latency(seed, Duration::from_secs(120)));
        ProxiedEnv {
            inner: PgEnv {
                url: via(&url, proxy.port()),
                case: format!("proxied_{case}"),
                // A slow link makes a queue of acquires slow too (200 at once on a
                // pool of 4 take seconds): a longer TTL keeps them within the deadline.
                ttl: TTL * 3,
            },
            _proxy: proxy,
            schedule,
        }
    }

    #[async_trait]
    impl leases::testing::conformance::Env for ProxiedEnv {
        async fn manager(&self) -> LeaseManager {
            self.inner.manager().await
        }
        async fn faulty_manager(&self) -> (LeaseManager, Arc<FaultyBackend>) {
            self.inner.faulty_manager().await
        }
        fn ttl(&self) -> Duration {
            self.inner.ttl()
        }
        fn key(&self, name: &str) -> Key {
            self.inner.key(name)
        }
    }
}

fn env(case: &str) -> PgEnv {
    PgEnv {
        url: shared_url(),
        case: case.to_string(),
        ttl: TTL,
    }
}

leases::conformance_tests!(
    |case: &'static str| async move { env(case) },
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
);

/// The same cases through a fault proxy adding changing latency.
mod through_a_slow_link {
    use super::*;

    leases::conformance_tests!(
        |case: &'static str| proxied::env(case),
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_can_create_the_schema_at_once() {
    let url = shared_url();
    let table = table("schema", "race");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let opts = options(&url).table(table.clone());
        tasks.push(tokio::spawn(async move {
            let b = PostgresBackend::connect(opts).await.unwrap();
            let key = Key::system(["schema", &i.to_string()]);
            b.acquire(&key, TTL, b"").await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_can_list_and_revoke_with_plain_sql() {
    let url = shared_url();
    let table = table("operator", "sql");
    let m = manager(options(&url).table(table.clone())).await;
    let key = Key::system(["ops", "job 1"]);
    let opts = AcquireOptions::new(TTL * 5).metadata(b"host-a".to_vec());
    let (lease, ctx) = m.acquire_lease_with(key.clone(), opts).await.unwrap();
    let client = connect(&url).await;
    // The README's listing query.
    let rows = client
        .query(
            &format!(
                "SELECT key, token, expires_at - now() AS left, convert_from(metadata, 'UTF8') \
                 FROM {table} WHERE expires_at > now() ORDER BY key"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "/system/ops/job%201");
    assert_eq!(rows[0].get::<_, i64>(1) as u64, lease.token());
    assert_eq!(rows[0].get::<_, String>(3), "host-a");
    // The README's revoke statement: the holder is told at its next renewal.
    let n = client
        .execute(
            &format!("UPDATE {table} SET revoked = true WHERE key = $1 AND expires_at > now()"),
            &[&key.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let reason = tokio::time::timeout(TTL * 5, ctx.cancelled())
        .await
        .unwrap();
    assert_eq!(reason, CancelReason::Revoked);
    m.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_backend_error_within_the_connect_timeout() {
    // Nothing listens here: refused at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // This one accepts TCP connections but never answers: only the timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for port in [closed, silent_port] {
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=1");
        let m = manager(options(&url).connect_timeout(Duration::from_secs(1))).await;
        let started = Instant::now();
        let err = m
            .acquire_lease(Key::system(["unreachable"]), TTL)
            .await
            .unwrap_err();
        assert!(matches!(err, LeaseError::Backend(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(matches!(
            m.lease_info(&Key::system(["unreachable"])).await,
            Err(LeaseError::Backend(_))
        ));
        // The up-front check says so too, and its message names the cause.
        let err = m.check().await.unwrap_err();
        assert!(matches!(err, LeaseError::Backend(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("lease backend failed: "),
            "{err}"
        );
        assert!(
            err.to_string().len() > "lease backend failed: ".len() + 10,
            "{err}"
        );
        m.shutdown().await;
        // `PostgresBackend::connect` really connects: the same error, up front.
        let started = Instant::now();
        let err = PostgresBackend::connect(options(&url).connect_timeout(Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, LeaseError::Backend(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    drop(silent);
}

#[tokio::test]
async fn choosing_two_backends_is_a_config_error() {
    let r = LeaseManager::builder()
        .postgres(options("postgres://postgres@127.0.0.1:1/postgres"))
        .backend(Arc::new(leases::backend::MemoryBackend::new()))
        .start()
        .await;
    assert!(matches!(r, Err(LeaseError::InvalidConfig(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_loses_leases_early_and_the_manager_recovers() {
    let server = PgServer::start(None);
    let m = manager(options(&server.url())).await;
    let key = Key::system(["db-loss"]);
    let ttl = Duration::from_secs(2);
    let (_lease, ctx) = m.acquire_lease(key.clone(), ttl).await.unwrap();
    let deadline = ctx.deadline().unwrap();
    server.stop();
    let reason = tokio::time::timeout(ttl * 2, ctx.cancelled())
        .await
        .unwrap();
    assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
    // Told at the local deadline, which is before the row's expires_at.
    let told = std::time::Instant::now();
    assert!(told >= deadline && told < deadline + Duration::from_millis(300));
    server.start_again();
    // The same manager serves again once the old row has expired.
    let opts = AcquireOptions::new(ttl).wait(ttl * 5);
    let (lease, ctx) = m.acquire_lease_with(key.clone(), opts).await.unwrap();
    tokio::time::sleep(ttl).await;
    assert!(!ctx.is_cancelled(), "{:?}", ctx.reason());
    lease.release().await.unwrap();
    m.shutdown().await;
}

fn self_signed() -> Tls {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    Tls {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_sslmode_require() {
    let tls = self_signed();
    let server = PgServer::start(Some(&tls));
    let key = Key::system(["tls"]);

    // sslmode=require: encrypted, certificate not checked (libpq semantics).
    let m = manager(options(&format!("{}?sslmode=require", server.url()))).await;
    let (lease, _) = m.acquire_lease(key.clone(), TTL).await.unwrap();
    lease.release().await.unwrap();
    m.shutdown().await;

    // With the CA given, the certificate is verified too.
    let verified = options(&format!("{}?sslmode=require", server.url()))
        .ca_certificate_pem(tls.cert_pem.clone());
    let m = manager(verified).await;
    let (lease, _) = m.acquire_lease(key.clone(), TTL).await.unwrap();
    lease.release().await.unwrap();
    m.shutdown().await;

    // A certificate from another CA is refused.
    let wrong = options(&format!("{}?sslmode=require", server.url()))
        .ca_certificate_pem(self_signed().cert_pem);
    let m = manager(wrong).await;
    assert!(matches!(
        m.acquire_lease(key.clone(), TTL).await,
        Err(LeaseError::Backend(_))
    ));
    m.shutdown().await;

    // The server refuses unencrypted connections, so the successes above were TLS.
    let m = manager(options(&format!("{}?sslmode=disable", server.url()))).await;
    assert!(matches!(
        m.acquire_lease(key, TTL).await,
        Err(LeaseError::Backend(_))
    ));
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_up_front() {
    let m = manager(options(&shared_url())).await;
    m.check().await.unwrap();
    m.shutdown().await;
    assert!(matches!(m.check().await, Err(LeaseError::ManagerStopped)));
}

/// `create_schema(false)`: the backend never creates its table; without one, each
/// operation fails saying so (and how to create it), and the table stays missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_create_the_schema_leaves_it_missing() {
    let url = shared_url();
    let t = table("pg", "no_schema");
    let backend = PostgresBackend::new(options(&url).table(t.clone()).create_schema(false))
        .expect("options are fine");
    let key = Key::system(["no-schema", &run_id()]);
    for result in [
        backend.info(&key).await.map(drop),
        backend.list("", 10).await.map(drop),
    ] {
        let e = result.expect_err("no table");
        assert_eq!(e.kind(), leases::BackendErrorKind::Failed, "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
    let db = connect(&url).await;
    let exists: bool = db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "the backend created {t}");
}
