//! How fast and how far `leases` goes, beside baselines run in the same process and the
//! same run. Prints a table; BENCHMARKS.md explains it.
//!
//!     cargo bench --all-features --bench leases            # full run, a few minutes
//!     cargo bench --all-features --bench leases -- --smoke # tiny sizes, a sanity check
//!
//! Baselines:
//! - (a) a bare `Mutex<HashMap>` lease table, no renewal: the floor;
//! - (b) the same table plus one `tokio::spawn`ed renewal task per lease: what users
//!   would otherwise write by hand;
//! - (c) PostgreSQL: the same SQL statements issued directly with the driver, no actors;
//! - (d) a bare ractor supervisor that spawns one linked child actor with a renewal
//!   timer and a watch channel per lease, and does nothing else: the floor of our own
//!   design, what the actor shape alone costs.
//!
//! Scale runs (100k and 1M held leases) each run in a child process of their own, so
//! that resident memory is measured from a clean start.

#[cfg(feature = "postgres")]
#[path = "../tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use leases::backend::MemoryBackend;
use leases::{Key, Lease, LeaseContext, LeaseError, LeaseManager, Leaser};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TTL: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ contenders ---

/// What the throughput harness needs from a lease implementation.
#[async_trait]
trait Subject: Send + Sync + 'static {
    type Held: Send + 'static;
    /// `None` on conflict.
    async fn acquire(&self, key: &Key) -> Option<Self::Held>;
    async fn release(&self, held: Self::Held);
    /// `true` while the lease is still held (for the scale runs).
    fn alive(held: &Self::Held) -> bool;
}

/// Our manager.
struct Ours(LeaseManager);

#[async_trait]
impl Subject for Ours {
    type Held = (Lease, LeaseContext);
    async fn acquire(&self, key: &Key) -> Option<Self::Held> {
        match self.0.acquire_lease(key.clone(), TTL).await {
            Ok(held) => Some(held),
            Err(LeaseError::Conflict) => None,
            Err(e) => panic!("acquire failed: {e}"),
        }
    }
    async fn release(&self, (lease, _): Self::Held) {
        lease.release().await.unwrap();
    }
    fn alive(held: &Self::Held) -> bool {
        !held.1.is_cancelled()
    }
}

/// (a) and (b): a mutex-guarded table; (b) adds a renewal task per lease.
struct Table {
    map: Arc<Mutex<HashMap<Key, (u64, tokio::time::Instant)>>>,
    next: AtomicU64,
    renew: bool,
}

impl Table {
    fn new(renew: bool) -> Table {
        Table {
            map: Arc::default(),
            next: AtomicU64::new(1),
            renew,
        }
    }
}

struct TableHeld {
    key: Key,
    token: u64,
    renewer: Option<JoinHandle<()>>,
    ctx: watch::Receiver<bool>,
}

#[async_trait]
impl Subject for Table {
    type Held = TableHeld;
    async fn acquire(&self, key: &Key) -> Option<TableHeld> {
        let now = tokio::time::Instant::now();
        let token = {
            let mut map = self.map.lock().unwrap();
            if map.get(key).is_some_and(|(_, exp)| *exp > now) {
                return None;
            }
            let token = self.next.fetch_add(1, Ordering::Relaxed);
            map.insert(key.clone(), (token, now + TTL));
            token
        };
        let (tx, ctx) = watch::channel(true);
        let renewer = self.renew.then(|| {
            let map = self.map.clone();
            let key = key.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TTL / 3).await;
                    let now = tokio::time::Instant::now();
                    let mut map = map.lock().unwrap();
                    match map.get_mut(&key) {
                        Some((t, exp)) if *t == token && *exp > now => *exp = now + TTL,
                        _ => {
                            let _ = tx.send(false);
                            return;
                        }
                    }
                }
            })
        });
        Some(TableHeld {
            key: key.clone(),
            token,
            renewer,
            ctx,
        })
    }
    async fn release(&self, held: TableHeld) {
        if let Some(r) = held.renewer {
            r.abort();
        }
        let mut map = self.map.lock().unwrap();
        if map.get(&held.key).is_some_and(|(t, _)| *t == held.token) {
            map.remove(&held.key);
        }
    }
    fn alive(held: &TableHeld) -> bool {
        *held.ctx.borrow()
    }
}

/// (d): a bare ractor supervisor with one linked child per lease.
struct BareSupervisor;
struct BareChild;
struct Tick;

enum BareMsg {
    Acquire(RpcReplyPort<(ActorRef<Tick>, watch::Receiver<bool>)>),
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for BareChild {
    type Msg = Tick;
    type State = (watch::Sender<bool>, AbortOnDrop);
    type Arguments = watch::Sender<bool>;
    async fn pre_start(
        &self,
        myself: ActorRef<Tick>,
        tx: watch::Sender<bool>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let timer = myself.send_interval(TTL / 3, || Tick);
        Ok((tx, AbortOnDrop(timer)))
    }
    async fn handle(
        &self,
        _: ActorRef<Tick>,
        _: Tick,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.0.send_replace(true);
        Ok(())
    }
}

impl Actor for BareSupervisor {
    type Msg = BareMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<BareMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        myself: ActorRef<BareMsg>,
        BareMsg::Acquire(reply): BareMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let (tx, rx) = watch::channel(true);
        let (child, _) = Actor::spawn_linked(None, BareChild, tx, myself.get_cell()).await?;
        let _ = reply.send((child, rx));
        Ok(())
    }
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<BareMsg>,
        _: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

struct Bare(ActorRef<BareMsg>);

#[async_trait]
impl Subject for Bare {
    type Held = (ActorRef<Tick>, watch::Receiver<bool>);
    async fn acquire(&self, _key: &Key) -> Option<Self::Held> {
        Some(ractor::call!(self.0, BareMsg::Acquire).unwrap())
    }
    async fn release(&self, (child, _): Self::Held) {
        child.kill();
    }
    fn alive(held: &Self::Held) -> bool {
        *held.1.borrow()
    }
}

// ------------------------------------------------------------------ throughput ---

struct Throughput {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn keys(client: usize, n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| Key::system(["bench", &client.to_string(), &i.to_string()]))
        .collect()
}

/// `clients` tasks each acquire and release their own keys for `secs`.
async fn pairs<S: Subject>(subject: Arc<S>, clients: usize, secs: f64) -> Throughput {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let s = subject.clone();
        tasks.push(tokio::spawn(async move {
            let ks = keys(c, 16);
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                let k = &ks[(n % 16) as usize];
                let t = Instant::now();
                let held = s.acquire(k).await.expect("distinct keys never conflict");
                lat.push(t.elapsed());
                s.release(held).await;
                n += 1;
            }
            (n, lat)
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (n, l) = t.await.unwrap();
        total += n;
        lat.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Throughput {
        per_sec: total as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// One key held; `clients` tasks try to acquire it for `secs`. Rejections per second.
async fn conflicts<S: Subject>(subject: Arc<S>, clients: usize, secs: f64) -> f64 {
    let key = Key::system(["bench", "held"]);
    let held = subject.acquire(&key).await.expect("free at first");
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let s = subject.clone();
        let k = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                assert!(s.acquire(&k).await.is_none(), "the key is held");
                n += 1;
            }
            n
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    subject.release(held).await;
    rate
}

// ------------------------------------------------------------------------ scale ---

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Holds `n` leases, then idles for `window` while they renew. Prints one line:
/// `scale <name> <n> <bytes per lease> <cpu s per wall s> <lost> <acquire secs>`.
async fn scale<S: Subject>(name: &str, subject: Arc<S>, n: usize, window: Duration) {
    let before = rss_bytes();
    let started = Instant::now();
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let s = subject.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::with_capacity(n / workers + 1);
            for i in (w..n).step_by(workers) {
                let k = Key::system(["scale".to_string(), i.to_string()]);
                held.push(s.acquire(&k).await.expect("distinct keys"));
            }
            held
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.extend(t.await.unwrap());
    }
    let acquire_secs = started.elapsed().as_secs_f64();
    // Let allocation settle, then measure memory and the renewal CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    let lost = held.iter().filter(|h| !S::alive(h)).count();
    println!(
        "scale {name} {n} {} {cpu:.4} {lost} {acquire_secs:.1}",
        after.saturating_sub(before) / n as u64
    );
    std::mem::forget(held); // exiting anyway; dropping a million leases only costs time
}

async fn scale_child(kind: &str, n: usize, window: Duration) {
    match kind {
        "ours" => {
            let m = LeaseManager::builder()
                .backend(Arc::new(MemoryBackend::new()))
                .start()
                .await
                .unwrap();
            scale("ours", Arc::new(Ours(m)), n, window).await
        }
        "a" => scale("a", Arc::new(Table::new(false)), n, window).await,
        "b" => scale("b", Arc::new(Table::new(true)), n, window).await,
        "d" => {
            let (sup, _) = Actor::spawn(None, BareSupervisor, ()).await.unwrap();
            scale("d", Arc::new(Bare(sup)), n, window).await
        }
        other => panic!("unknown scale kind {other}"),
    }
}

struct ScaleResult {
    bytes_per_lease: u64,
    cpu: f64,
    lost: usize,
    acquire_secs: f64,
}

fn run_scale_child(kind: &str, n: usize, window: Duration) -> ScaleResult {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--scale-child",
            kind,
            &n.to_string(),
            &window.as_secs_f64().to_string(),
        ])
        .output()
        .expect("scale child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("scale "))
        .unwrap_or_else(|| {
            panic!(
                "scale child {kind} {n} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<&str> = line.split_whitespace().collect();
    ScaleResult {
        bytes_per_lease: f[3].parse().unwrap(),
        cpu: f[4].parse().unwrap(),
        lost: f[5].parse().unwrap(),
        acquire_secs: f[6].parse().unwrap(),
    }
}

// ------------------------------------------------------------------- PostgreSQL ---

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
    use leases::backend::PostgresOptions;

    /// The manager's SQL, issued directly: the floor (c).
    pub(super) struct RawSql {
        pool: Pool,
        acquire: String,
        release: String,
    }

    /// The backend's own statements, so that (c) issues exactly what it issues.
    fn statements() -> (String, String) {
        leases::backend::PostgresBackend::statements("leases")
    }

    impl RawSql {
        pub(super) fn new(url: &str, size: usize) -> RawSql {
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

    pub(super) async fn manager(url: &str, pool: usize) -> LeaseManager {
        LeaseManager::builder()
            .postgres(PostgresOptions::new(url).pool_size(pool))
            .start()
            .await
            .unwrap()
    }

    /// Transactions committed in the database so far (every lease statement is one).
    pub(super) async fn commits(url: &str) -> i64 {
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
}

// -------------------------------------------------------------------------- main ---

struct Sizes {
    rounds: usize,
    secs: f64,
    scale: Vec<usize>,
    window: Duration,
    pg_held: usize,
    pg_window: Duration,
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}x", x / base)
    } else {
        "-".into()
    }
}

/// Median by rate of several runs of one cell.
fn median(mut runs: Vec<Throughput>) -> Throughput {
    runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    runs.swap_remove(runs.len() / 2)
}

async fn memory_section(s: &Sizes) {
    println!(
        "\n## Memory backend: throughput (2 worker threads, TTL {TTL:?}; each cell the median of {} runs of {:.0} s, implementations interleaved)\n",
        s.rounds, s.secs
    );
    println!("| implementation | pairs/s, 1 client | pairs/s, 64 clients | Conflict/s, 8 clients | acquire p50 | acquire p99 | 64 clients vs (d) |");
    println!("|---|---|---|---|---|---|---|");
    let m = LeaseManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .start()
        .await
        .unwrap();
    let ours = Arc::new(Ours(m.clone()));
    let a = Arc::new(Table::new(false));
    let b = Arc::new(Table::new(true));
    let (sup, _) = Actor::spawn(None, BareSupervisor, ()).await.unwrap();
    let d = Arc::new(Bare(sup.clone()));

    // [implementation][cell] -> runs; cells: 1 client, 64 clients.
    let mut runs: Vec<[Vec<Throughput>; 2]> = (0..4).map(|_| [Vec::new(), Vec::new()]).collect();
    let mut rejected: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for _ in 0..s.rounds {
        for (cell, clients) in [(0, 1), (1, 64)] {
            runs[0][cell].push(pairs(ours.clone(), clients, s.secs).await);
            runs[1][cell].push(pairs(a.clone(), clients, s.secs).await);
            runs[2][cell].push(pairs(b.clone(), clients, s.secs).await);
            runs[3][cell].push(pairs(d.clone(), clients, s.secs).await);
        }
        rejected[0].push(conflicts(ours.clone(), 8, s.secs).await);
        rejected[1].push(conflicts(a.clone(), 8, s.secs).await);
        rejected[2].push(conflicts(b.clone(), 8, s.secs).await);
    }
    let names = [
        "leases (memory)",
        "(a) Mutex<HashMap>, no renewal",
        "(b) table + spawned renewal task",
        "(d) bare ractor supervisor + child",
    ];
    let results: Vec<(Throughput, Throughput)> = runs
        .into_iter()
        .map(|[one, many]| (median(one), median(many)))
        .collect();
    let d64 = results[3].1.per_sec;
    for (i, (one, many)) in results.iter().enumerate() {
        let conflict = rejected.get(i).map(|r| {
            let mut r = r.clone();
            r.sort_by(f64::total_cmp);
            format!("{:.0}", r[r.len() / 2])
        });
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.1} µs | {:.1} µs | {} |",
            names[i],
            one.per_sec,
            many.per_sec,
            conflict.unwrap_or_else(|| "n/a (no table)".into()),
            one.p50.as_secs_f64() * 1e6,
            one.p99.as_secs_f64() * 1e6,
            ratio(many.per_sec, d64),
        );
    }
    m.shutdown().await;
    sup.stop(None);
}

fn scale_section(s: &Sizes) {
    println!("\n## Memory backend: leases held at once (TTL {TTL:?}, renewal every {:?}; each cell a fresh process)\n", TTL / 3);
    println!("| implementation | leases | resident bytes per lease | vs (d) | CPU per wall second on renewals | lost | time to acquire all |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &s.scale {
        let results: Vec<(&str, ScaleResult)> = ["d", "ours", "b", "a"]
            .iter()
            .map(|k| (*k, run_scale_child(k, n, s.window)))
            .collect();
        let d_bytes = results[0].1.bytes_per_lease as f64;
        for (k, r) in &results {
            let name = match *k {
                "ours" => "leases (memory)",
                "a" => "(a) Mutex<HashMap>, no renewal",
                "b" => "(b) table + spawned renewal task",
                _ => "(d) bare ractor supervisor + child",
            };
            println!(
                "| {name} | {n} | {} | {} | {:.1} % of a core | {} | {:.1} s |",
                r.bytes_per_lease,
                ratio(r.bytes_per_lease as f64, d_bytes),
                r.cpu * 100.0,
                r.lost,
                r.acquire_secs
            );
        }
    }
}

#[cfg(feature = "postgres")]
async fn postgres_section(s: &Sizes) {
    let server = pg::PgServer::start(None);
    let url = server.url();
    println!(
        "\n## PostgreSQL backend (throwaway local server, {:.0} s per cell)\n",
        s.secs
    );
    println!("| implementation | pairs/s, 1 client | pairs/s, 8 clients | acquire p50 (1 client) | acquire p99 | vs (c), 8 clients |");
    println!("|---|---|---|---|---|---|");
    // The manager creates the schema that (c) then uses too.
    let m = postgres::manager(&url, 8).await;
    let warm = m.acquire_lease(Key::system(["warm"]), TTL).await.unwrap();
    warm.0.release().await.unwrap();
    let ours = Arc::new(Ours(m.clone()));
    let raw = Arc::new(postgres::RawSql::new(&url, 8));
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
    let c0 = postgres::commits(&url).await;
    let t0 = Instant::now();
    tokio::time::sleep(s.pg_window).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the stats flush
    let c1 = postgres::commits(&url).await;
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

async fn run(sizes: Sizes) {
    println!("# leases benchmarks");
    println!(
        "\nmachine: {} cores, {}; rustc {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default(),
        option_env!("RUSTC_VERSION").unwrap_or("stable")
    );
    let only = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .unwrap_or_default();
    let want = |s: &str| only.is_empty() || only == s;
    if want("memory") {
        memory_section(&sizes).await;
    }
    if only == "profile" {
        // Only our manager, 64 clients: for `perf record`.
        let m = LeaseManager::builder()
            .backend(Arc::new(MemoryBackend::new()))
            .start()
            .await
            .unwrap();
        let t = pairs(Arc::new(Ours(m)), 64, sizes.secs).await;
        println!("leases (memory), 64 clients: {:.0} pairs/s", t.per_sec);
    }
    if want("scale") {
        scale_section(&sizes);
    }
    #[cfg(feature = "postgres")]
    if want("postgres") {
        postgres_section(&sizes).await;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--scale-child") {
        let kind = args[i + 1].clone();
        let n = args[i + 2].parse().unwrap();
        let window = Duration::from_secs_f64(args[i + 3].parse().unwrap());
        rt.block_on(scale_child(&kind, n, window));
        return;
    }
    let sizes = if let Some(secs) = args
        .iter()
        .position(|a| a == "--secs")
        .map(|i| args[i + 1].parse().unwrap())
    {
        Sizes {
            rounds: 3,
            secs,
            scale: vec![100_000],
            window: Duration::from_secs(12),
            pg_held: 10_000,
            pg_window: Duration::from_secs(30),
        }
    } else if args.iter().any(|a| a == "--smoke") {
        Sizes {
            rounds: 1,
            secs: 0.2,
            scale: vec![1000],
            window: Duration::from_millis(200),
            pg_held: 100,
            pg_window: Duration::from_millis(500),
        }
    } else {
        Sizes {
            rounds: 3,
            secs: 2.0,
            scale: vec![100_000, 1_000_000],
            window: Duration::from_secs(12),
            pg_held: 10_000,
            pg_window: Duration::from_secs(30),
        }
    };
    rt.block_on(run(sizes));
}
