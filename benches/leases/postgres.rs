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
use crate::report::{median_by, ratio};
use crate::throughput::{pairs, Throughput};

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

/// One PostgreSQL contender alone for `s.secs`, for `perf record`: the manager, or (c)
/// when `raw`. The server is the section's throwaway one (the profile sees it as
/// `postgres` processes beside the benchmark's).
pub async fn profile_section(s: &Sizes, raw: bool, clients: usize) {
    let server = pg::PgServer::start(None);
    let url = server.url();
    // The manager creates the schema (c) uses too.
    let m = manager(&url, 8).await;
    let warm = m.acquire_lease(Key::system(["warm"]), TTL).await.unwrap();
    warm.0.release().await.unwrap();
    let cpu = crate::scale::cpu_seconds();
    let (label, t) = if raw {
        let t = pairs(Arc::new(RawSql::new(&url, 8)), clients, s.secs).await;
        ("(c) same SQL, driver only", t)
    } else {
        (
            "leases (postgres)",
            pairs(Arc::new(Ours(m.clone())), clients, s.secs).await,
        )
    };
    let cpu = crate::scale::cpu_seconds() - cpu;
    println!(
        "{label}, {clients} clients: {:.0} pairs/s, acquire p50 {:.0} µs, {:.0} µs of this process's CPU per pair",
        t.per_sec,
        t.p50.as_secs_f64() * 1e6,
        cpu * 1e6 / (t.per_sec * s.secs).max(1.0)
    );
    m.shutdown().await;
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
        "\n## PostgreSQL backend (throwaway local server; each cell the median of {} runs of {:.1} s, the two implementations interleaved)\n",
        s.rounds, s.secs
    );
    println!("| implementation | pairs/s, 1 client | pairs/s, 8 clients | pairs/s, 64 clients | acquire p50 (1 client) | acquire p99 | vs (c), 8 clients | vs (c), 64 clients |");
    println!("|---|---|---|---|---|---|---|---|");
    // The manager creates the schema that (c) then uses too.
    let m = manager(&url, 8).await;
    let warm = m.acquire_lease(Key::system(["warm"]), TTL).await.unwrap();
    warm.0.release().await.unwrap();
    let ours = Arc::new(Ours(m.clone()));
    let raw = Arc::new(RawSql::new(&url, 8));
    // [ours, (c)][1, 8, 64 clients] -> runs. The two run turn about, each first in
    // every other round, so that neither always meets the table as the other left it.
    let mut runs: [[Vec<Throughput>; 3]; 2] = Default::default();
    for round in 0..s.rounds {
        for (cell, clients) in [1, 8, 64].into_iter().enumerate() {
            for i in [round % 2, 1 - round % 2] {
                let t = match i {
                    0 => pairs(ours.clone(), clients, s.secs).await,
                    _ => pairs(raw.clone(), clients, s.secs).await,
                };
                runs[i][cell].push(t);
            }
        }
    }
    let [o, c] = runs.map(|cells| cells.map(|r| median_by(r, |t| t.per_sec)));
    for (name, [one, eight, many]) in [("leases (postgres)", &o), ("(c) same SQL, driver only", &c)]
    {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} µs | {:.0} µs | {} | {} |",
            one.per_sec,
            eight.per_sec,
            many.per_sec,
            one.p50.as_secs_f64() * 1e6,
            one.p99.as_secs_f64() * 1e6,
            ratio(eight.per_sec, c[1].per_sec),
            ratio(many.per_sec, c[2].per_sec)
        );
    }
    m.shutdown().await;

    crate::postgres_renewals::renewal_statements_table(&url, s).await;
}
