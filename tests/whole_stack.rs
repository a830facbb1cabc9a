//! The whole-stack checker (issue #19): real `leases serve` processes (two on one
//! throwaway PostgreSQL, one on the memory backend), clients of every kind (see
//! support/clients.rs) through fault proxies (a byte-level TCP proxy in front of a
//! frame-aware HTTP/2 proxy, per server), random operations (revokes through any server
//! or the CLI, sometimes twice) and random faults (delay, blackhole, TCP reset,
//! half-open, RST_STREAM with each code, GOAWAY, SIGSTOP/SIGKILL/SIGTERM of servers and
//! of `leases run`, PostgreSQL stopped and restarted). Every holder records when it
//! acts, on one clock; the checker (support/history.rs) knows only the guarantees.
//!
//!   LEASES_CHECKER_SECONDS=150  how long faults and clients run (the CI length)
//!   LEASES_CHECKER_SEED=N       the seed (printed; default: from the clock)
//!
//! A failure prints the violating intervals and the faults and operations around them.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/clients.rs"]
mod clients;
#[path = "support/h2proxy.rs"]
mod h2proxy;
#[path = "support/history.rs"]
mod history;
mod support;

#[path = "whole_stack/nemesis.rs"]
mod nemesis;

use clients::{Env, Store, TTL};
use h2proxy::H2Proxy;
use history::{now_ns, History};
use support::pg::PgServer;
use support::proxy::FaultProxy;
use support::rng::XorShift;

const LEASES: &str = env!("CARGO_BIN_EXE_leases");

/// A `leases serve` process that can be killed, stopped and restarted on its port.
pub struct Server {
    /// E.g. `pg-a`.
    pub name: String,
    /// Which store it serves.
    pub store: &'static str,
    port: u16,
    args: Vec<String>,
    child: Mutex<Option<std::process::Child>>,
    log: PathBuf,
    /// A fault is being applied to it.
    pub busy: AtomicBool,
}

impl Server {
    fn new(name: &str, store: &'static str, args: Vec<String>, dir: &std::path::Path) -> Server {
        Server {
            name: name.into(),
            store,
            port: free_port(),
            args,
            child: Mutex::new(None),
            log: dir.join(format!("{name}.log")),
            busy: AtomicBool::new(false),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Starts it (again), retrying until it listens or `within` has passed.
    pub fn start(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            if self.try_start() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn try_start(&self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(LEASES)
            .arg("serve")
            .args(&self.args)
            .arg("--bind")
            .arg(self.addr().to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn leases serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
            *self.child.lock().unwrap() = Some(child);
            true
        } else {
            let _ = child.kill();
            let _ = child.wait();
            false
        }
    }

    /// Sends `sig` to it, if it runs.
    pub fn signal(&self, sig: i32) -> bool {
        match self.child.lock().unwrap().as_ref() {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped.
            Some(c) => unsafe { libc::kill(c.id() as i32, sig) == 0 },
            None => false,
        }
    }

    /// Waits up to `within` for it to exit (then SIGKILLs it) and reaps it.
    pub fn reap(&self, within: Duration) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A way to one server: TCP fault proxy → HTTP/2 proxy → server.
pub struct Chain {
    /// E.g. `pg-a/ftl`.
    pub name: String,
    /// Index into the servers.
    pub server: usize,
    /// Used by FTL clients: no silent-link faults (FTL's protocol has no deadline rule).
    pub ftl: bool,
    /// The byte-level proxy clients connect to.
    pub tcp: FaultProxy,
    /// The frame-aware proxy behind it.
    pub h2: H2Proxy,
    /// A link fault is in force.
    pub busy: AtomicBool,
    /// The link when no fault is in force: a far server's delay, or Pass.
    pub base: support::proxy::Fault,
}

/// Everything the nemesis acts on.
pub struct World {
    /// Clients' shared state and the history.
    pub env: Arc<Env>,
    /// The servers.
    pub servers: Vec<Arc<Server>>,
    /// The chains.
    pub chains: Vec<Chain>,
    /// The database.
    pub pg: Arc<PgServer>,
    /// The database is being restarted.
    pub pg_busy: AtomicBool,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn main() {
    if std::env::var_os("WS_ACT_FILE").is_some() {
        clients::actor_main();
        return;
    }
    let seconds = env_u64("LEASES_CHECKER_SECONDS").unwrap_or(150);
    let seed = env_u64("LEASES_CHECKER_SEED").unwrap_or_else(|| now_ns() % 1_000_000);
    println!("whole_stack: seed {seed}, {seconds}s of faults (LEASES_CHECKER_SEED={seed} LEASES_CHECKER_SECONDS={seconds} to rerun)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ok = runtime.block_on(run(seed, seconds));
    runtime.shutdown_timeout(Duration::from_secs(2));
    if !ok {
        std::process::exit(1);
    }
}

async fn run(seed: u64, seconds: u64) -> bool {
    let dir = std::env::temp_dir().join(format!("leases-whole-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pg = Arc::new(
        tokio::task::spawn_blocking(|| PgServer::start(None))
            .await
            .unwrap(),
    );
    let url = pg.url();
    let pg_args = |table: &str| {
        vec![
            "--postgres".to_string(),
            url.clone(),
            "--table".into(),
            table.into(),
            "--min-ttl".into(),
            "5s".into(),
        ]
    };
    let servers: Vec<Arc<Server>> = vec![
        Arc::new(Server::new("pg-a", "pg", pg_args("leases"), &dir)),
        Arc::new(Server::new("pg-b", "pg", pg_args("leases"), &dir)),
        Arc::new(Server::new(
            "mem",
            "mem",
            vec!["--min-ttl".into(), "5s".into()],
            &dir,
        )),
    ];
    for s in &servers {
        let s = s.clone();
        let started = tokio::task::spawn_blocking(move || s.start(Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(started, "a leases serve did not start");
    }
    let mut rng = XorShift::new(seed);
    // pg-a is a far server (as in issue #19's first report): its links always have some
    // delay, so that its clients hear of an ended lease late.
    let far = support::proxy::Fault::Delay(
        rng.millis(Duration::from_millis(150), Duration::from_millis(450)),
    );
    println!("whole_stack: pg-a is far: {far}");
    let mut chains = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        for ftl in [false, true] {
            let h2 = H2Proxy::start(s.addr(), clients::stream_label).await;
            let tcp = FaultProxy::start(h2.addr()).await;
            let base = if s.name == "pg-a" {
                far
            } else {
                support::proxy::Fault::Pass
            };
            tcp.set(base);
            let name = format!("{}{}", s.name, if ftl { "/ftl" } else { "" });
            println!("whole_stack: {name} is http://{}", tcp.addr());
            chains.push(Chain {
                name,
                server: i,
                ftl,
                tcp,
                h2,
                busy: AtomicBool::new(false),
                base,
            });
        }
    }
    let urls = |store: &str, ftl: bool| -> Vec<String> {
        chains
            .iter()
            .filter(|c| servers[c.server].store == store && c.ftl == ftl)
            .map(|c| format!("http://{}", c.tcp.addr()))
            .collect()
    };
    let run_id = format!("r{}", now_ns() % 1_000_000_000);
    let keys = |store: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("/system/ws/{run_id}/{store}/k{i}"))
            .collect()
    };
    let stores = vec![
        Store {
            name: "pg",
            keys: keys("pg", 3),
            urls: urls("pg", false),
            ftl_urls: urls("pg", true),
            postgres: Some(url.clone()),
        },
        Store {
            name: "mem",
            keys: keys("mem", 2),
            urls: urls("mem", false),
            ftl_urls: urls("mem", true),
            postgres: None,
        },
    ];
    let act_file = dir.join("acts.log");
    let origin = now_ns();
    let env = Arc::new(Env {
        stores,
        history: History::default(),
        stop_at: Instant::now() + Duration::from_secs(seconds),
        leases_bin: LEASES.into(),
        actor_bin: std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        act_file: act_file.to_string_lossy().into_owned(),
        runs: Mutex::new(Default::default()),
    });
    let world = Arc::new(World {
        env: env.clone(),
        servers,
        chains,
        pg,
        pg_busy: AtomicBool::new(false),
    });

    let mut workers = tokio::task::JoinSet::new();
    for n in 0..5 {
        workers.spawn(clients::leaser_worker(
            env.clone(),
            n,
            XorShift::new(rng.next()),
        ));
    }
    for n in 0..3 {
        workers.spawn(clients::ftl_worker(
            env.clone(),
            n,
            XorShift::new(rng.next()),
        ));
    }
    for n in 0..3 {
        workers.spawn(clients::run_worker(
            env.clone(),
            n,
            XorShift::new(rng.next()),
        ));
    }
    let nemesis = tokio::spawn(nemesis::run(world.clone(), XorShift::new(rng.next())));
    nemesis.await.unwrap();
    println!("whole_stack: faults over, waiting for the clients to finish");
    let drained = tokio::time::timeout(Duration::from_secs(120), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        println!("whole_stack: some clients did not finish in 120s");
    }
    // Background jobs of `leases run` commands act for at most 8 s.
    tokio::time::sleep(Duration::from_secs(9)).await;
    for s in &world.servers {
        s.signal(libc::SIGKILL);
        s.reap(Duration::from_secs(5));
    }

    let history = &env.history;
    history.load_act_file(&act_file);
    let ttl_ns = TTL.as_nanos() as u64;
    let bound = 2 * ttl_ns + 20_000_000_000;
    let report = history.check(origin, ttl_ns, bound);
    let counts = history.counts();
    let dump = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("whole_stack-{seed}.log"));
    history.dump(&dump, origin);
    println!("whole_stack: the whole history is in {}", dump.display());
    println!("whole_stack: counts (seed {seed}):");
    for (name, n) in &counts {
        println!("  {name}: {n}");
    }
    println!(
        "  grants that acted: {}, acts: {}, violations: {}",
        report.intervals,
        report.acts,
        report.violations.len()
    );
    println!(
        "  liveness: longest a key stayed free while wanted: {:.1}s ({}; fails beyond {:.0}s)",
        report.longest_free_ns as f64 / 1e9,
        report.longest_free_at,
        bound as f64 / 1e9
    );
    let mut ok = true;
    let minimums = nemesis::minimums(seconds);
    for (name, min) in &minimums {
        let n = counts.get(*name).copied().unwrap_or(0);
        if n < *min {
            println!("whole_stack: too few {name}: {n} < {min} (the run would pass vacuously)");
            ok = false;
        }
    }
    let min_acts = 100 * seconds;
    if report.acts < min_acts {
        println!("whole_stack: too few acts: {} < {min_acts}", report.acts);
        ok = false;
    }
    if !report.violations.is_empty() {
        ok = false;
        let mut violations = report.violations.clone();
        violations.sort_by_key(|v| v.at());
        println!(
            "whole_stack: {} VIOLATIONS (seed {seed}); the first at t={}",
            violations.len(),
            history::secs(violations[0].at(), origin)
        );
        // The first violation of each kind of earlier holder, then the next ones.
        let kind = |v: &history::Violation| {
            v.a.grant
                .holder
                .split(':')
                .next()
                .unwrap_or_default()
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
                .to_string()
        };
        let mut by_kind = std::collections::BTreeMap::new();
        for v in &violations {
            *by_kind.entry(kind(v)).or_insert(0) += 1;
        }
        println!("  by the earlier holder's kind: {by_kind:?}");
        for v in &violations {
            println!("  {}", v.line(origin));
        }
        let mut shown: Vec<&history::Violation> = Vec::new();
        for v in &violations {
            if !shown.iter().any(|s| kind(s) == kind(v)) {
                shown.push(v);
            }
        }
        for v in &violations {
            if shown.len() < 8 && !shown.iter().any(|s| std::ptr::eq(*s, v)) {
                shown.push(v);
            }
        }
        for v in shown {
            println!("\n{}", v.describe(origin));
            if v.a.acts > 0 {
                let key = &v.a.grant.key;
                println!("  faults and operations around it:");
                let around = history.events_between(
                    v.a.start.min(v.b.start).saturating_sub(8_000_000_000),
                    v.b.start + 1_000_000_000,
                    origin,
                );
                for line in around.lines() {
                    if line.contains(key.as_str()) || !line.contains("/system/") {
                        println!("{line}");
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        println!("whole_stack: no violations (seed {seed})");
    }
    ok
}
