//! The PostgreSQL backend on a throwaway local server: pairs/s with 1 and 8 clients and
//! acquire latency, beside (c), the manager's SQL issued directly with the driver through
//! a pool of the same size, no actors: the floor of the PostgreSQL backend. Then the
//! database statements per held lease per minute (renewal every TTL/3 means 6.0).

#[path = "../../tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use leases::backend::PostgresOptions;
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
    leases::backend::PostgresBackend::statements("leases")
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

/// Transactions committed in the database so far (every lease statement is one).
async fn commits(url: &str) -> i64 {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Stats are flushed by backends at most once a second; ask for a fresh snapshot.
    c.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    c.query_one(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

pub async fn postgres_section(s: &Sizes) {
    let server = pg::PgServer::start(None);
    let url = server.url();
    println!(
        "\n## PostgreSQL backend (throwaway local server, {:.0} s per cell)\n",
        s.secs
    );
    println!("| implementation | pairs/s, 1 client | pairs/s, 8 clients | acquire p50 (1 client) | acquire p99 | vs (c), 8 clients |");
    println!("|---|---|---|---|---|---|");
    // The manager creates the schema that (c) then uses too.
    let m = manager(&url, 8).await;
    let warm = m.acquire_lease(Key::system(["warm"]), TTL).await.unwrap();
    warm.0.release().await.unwrap();
    let ours = Arc::new(Ours(m.clone()));
    let raw = Arc::new(RawSql::new(&url, 8));
    let c1 = pairs(raw.clone(), 1, s.secs).await;
    let c8 = pairs(raw.clone(), 8, s.secs).await;
    let o1 = pairs(ours.clone(), 1, s.secs).await;
    let o8 = pairs(ours.clone(), 8, s.secs).await;
    for (name, one, many) in [
        ("leases (postgres)", &o1, &o8),
        ("(c) same SQL, driver only", &c1, &c8),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} µs | {:.0} µs | {} |",
            one.per_sec,
            many.per_sec,
            one.p50.as_secs_f64() * 1e6,
            one.p99.as_secs_f64() * 1e6,
            ratio(many.per_sec, c8.per_sec)
        );
    }

    // Statements per held lease per minute.
    let mut held = Vec::new();
    for i in 0..s.pg_held {
        held.push(
            m.acquire_lease(Key::system(["held".to_string(), i.to_string()]), TTL)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c0 = commits(&url).await;
    let t0 = Instant::now();
    tokio::time::sleep(s.pg_window).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the stats flush
    let c1 = commits(&url).await;
    let minutes = (t0.elapsed().as_secs_f64() - 1.1) / 60.0;
    let lost = held.iter().filter(|(_, ctx)| ctx.is_cancelled()).count();
    // Subtract the two statistics queries themselves.
    let per = (c1 - c0 - 2).max(0) as f64 / held.len() as f64 / minutes;
    println!(
        "\n{} leases held, TTL {TTL:?}: {per:.2} database statements per held lease per minute (renewal every TTL/3 means 6.0); {lost} lost",
        held.len()
    );
    m.shutdown().await;
    drop(held);
}
