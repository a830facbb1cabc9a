//! The PostgreSQL backend on a throwaway local server: pairs/s with 1 and 8 clients and
//! acquire latency, beside (c), the manager's SQL issued directly with the driver through
//! a pool of the same size, no actors: the floor of the PostgreSQL backend. Then the
//! renewal statements of many held leases (`postgres_renewals.rs`).

#[path = "../../tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use leases::backend::{PostgresBackend, PostgresOptions};
use leases::{Key, LeaseManager};

use crate::args::Sizes;
use crate::contenders::{Ours, Subject, TTL};
use crate::report::ratio;
use crate::throughput::pairs;

/// The manager's SQL, issued directly: the floor (c).
struct RawSql {
    pool: Pool,
    acquire: String,
    release: String,
}

/// The backend's own statements, so that (c) issues exactly what it issues.
fn statements() -> (String, String) {
    PostgresBackend::statements("leases")
}

impl RawSql {
    fn new(url: &str, size: usize) -> RawSql {
        let config: tokio_postgres::Config = url.parse().unwrap();
        let mgr = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .build()
            .unwrap();
        let (acquire, release) = statements();
        RawSql {
            pool,
            acquire,
            release,
        }
    }
}

#[async_trait]
impl Subject for RawSql {
    type Held = (String, i64);
    async fn acquire(&self, key: &Key) -> Option<Self::Held> {
        let c = self.pool.get().await.unwrap();
        let stmt = c.prepare_cached(&self.acquire).await.unwrap();
        let k = key.to_string();
        let ttl = TTL.as_millis() as i64;
        let row = c.query_one(&stmt, &[&k, &ttl, &&b""[..]]).await.unwrap();
        row.get::<_, Option<i64>>(0).map(|t| (k, t))
    }
    async fn release(&self, (k, t): Self::Held) {
        let c = self.pool.get().await.unwrap();
        let stmt = c.prepare_cached(&self.release).await.unwrap();
        c.query(&stmt, &[&k, &t]).await.unwrap();
    }
    fn alive(_: &Self::Held) -> bool {
        true
    }
}

async fn manager(url: &str, pool: usize) -> LeaseManager {
    LeaseManager::builder()
        .postgres(PostgresOptions::new(url).pool_size(pool))
        .start()
        .await
        .unwrap()
}

pub async fn postgres_section(s: &Sizes) {
    let server = pg::PgServer::start(None);
    let url = server.url();
    // `LEASES_BENCH_PG_HELD_ONLY=1`: the renewal-statements table alone (the held-leases
    // rows), for comparing two builds quickly.
    if std::env::var_os("LEASES_BENCH_PG_HELD_ONLY").is_some() {
        crate::postgres_renewals::renewal_statements_table(&url, s).await;
        return;
    }
    println!(
        "\n## PostgreSQL backend (throwaway local server, {:.0} s per cell)\n",
        s.secs
    );
    println!("| implementation | pairs/s, 1 client | pairs/s, 8 clients | pairs/s, 64 clients | acquire p50 (1 client) | acquire p99 | vs (c), 8 clients | vs (c), 64 clients |");
    println!("|---|---|---|---|---|---|---|---|");
    // The manager creates the schema that (c) then uses too.
    let m = manager(&url, 8).await;
    let warm = m.acquire_lease(Key::system(["warm"]), TTL).await.unwrap();
    warm.0.release().await.unwrap();
    let ours = Arc::new(Ours(m.clone()));
    let raw = Arc::new(RawSql::new(&url, 8));
    let c1 = pairs(raw.clone(), 1, s.secs).await;
    let c8 = pairs(raw.clone(), 8, s.secs).await;
    let c64 = pairs(raw.clone(), 64, s.secs).await;
    let o1 = pairs(ours.clone(), 1, s.secs).await;
    let o8 = pairs(ours.clone(), 8, s.secs).await;
    let o64 = pairs(ours.clone(), 64, s.secs).await;
    for (name, one, eight, many) in [
        ("leases (postgres)", &o1, &o8, &o64),
        ("(c) same SQL, driver only", &c1, &c8, &c64),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} µs | {:.0} µs | {} | {} |",
            one.per_sec,
            eight.per_sec,
            many.per_sec,
            one.p50.as_secs_f64() * 1e6,
            one.p99.as_secs_f64() * 1e6,
            ratio(eight.per_sec, c8.per_sec),
            ratio(many.per_sec, c64.per_sec)
        );
    }
    m.shutdown().await;

    crate::postgres_renewals::renewal_statements_table(&url, s).await;
}
