//! Several OS processes contend for the same keys through one PostgreSQL database,
//! while this process injects faults: a holder killed with SIGKILL, a holder frozen
//! with SIGSTOP past its TTL and resumed, connections killed with
//! `pg_terminate_backend`, the server crashed and restarted mid-run, and one live
//! holder cut off from the database (its role may no longer log in) while it keeps
//! working: it must stop at its local deadline, before anyone else is granted the key.
//!
//! Every contender logs what it does on the database's clock (`clock_timestamp()`):
//! `got` when granted, `work` for each side effect it performs as holder (a write
//! through `leases::fence::Fence`, recorded with whether the fence accepted it), `lost`
//! or `released` when the lease ends. The checker then asserts, per key:
//! - tokens only grow, in the order the database granted them (a trigger records each
//!   grant; a process frozen right after its grant logs `got` late), and every token a
//!   process was handed is one the database granted;
//! - no two holders overlap: every action of a holder comes before the next holder's
//!   grant, except a write by a process that was frozen, which the fence must refuse;
//! - the killed holder's key is taken over after its TTL, the frozen holder reports
//!   `Lost` and never acts again, and every process keeps working across connection
//!   kills and the server restart, with the same managers.
//!
//!
//! Then a **chaos phase**: every process reaches the database through a TCP fault
//! proxy of its own (`support/proxy.rs`), and each proxy follows a random schedule of
//! delays, blackholes, resets, half-open connections and slow drips, switched at random
//! moments, so that single statements are cut off mid-flight. Throughout the run the
//! orchestrator samples the database every 200 ms and also asserts, on the database's
//! clock:
//! - no key stays taken by nobody longer than TTL + statement timeout (a holder that
//!   ended, or a grant whose answer was lost, leaves a row that must expire by then);
//! - no session sits `idle in transaction` (a connection left mid-transaction).
//!
//! The schedules' seed is `PG_FAULTS_SEED` (default 1), printed with the faults.
//!
//! Runs as a plain program (`harness = false`); `cargo test --all-features` runs it.
//! The same binary, started with `contender …`, is one contending process.

#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leases::backend::PostgresOptions;
use leases::fence::{Fence, Fenced};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, Leaser};
use support::pg::PgServer;
use support::proxy::{FaultProxy, FaultSchedule};
use support::rng::XorShift;
use tokio_postgres::{Client, NoTls};

const TABLE: &str = "leases";
const TTL: Duration = Duration::from_secs(2);
const KEYS: usize = 2;
/// The statement timeout of the contenders' managers.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(1);
/// When the chaos phase starts and how long it lasts; the run ends a little after.
const CHAOS_AT: u64 = 42;
const CHAOS: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(CHAOS_AT + 30 + 4);

fn key(i: usize) -> Key {
    Key::system(["faults", &format!("job-{i}")])
}

// ---------------------------------------------------------------- the contender ---

/// A log connection that reconnects when it breaks; logging never blocks for long.
struct Log {
    url: String,
    name: String,
    client: Option<Client>,
}

impl Log {
    async fn client(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let connect = tokio_postgres::connect(&self.url, NoTls);
            self.client = match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok((client, conn))) => {
                    tokio::spawn(conn);
                    Some(client)
                }
                _ => None,
            };
        }
        self.client.as_ref()
    }

    /// Records an event; returns whether it was recorded.
    async fn event(&mut self, key: &Key, token: u64, kind: &str) -> bool {
        let (name, k, t) = (self.name.clone(), key.to_string(), token as i64);
        let Some(c) = self.client().await else {
            return false;
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&name, &k, &t, &kind];
        let insert = c.execute(
            "INSERT INTO events (proc, key, token, kind) VALUES ($1, $2, $3, $4)",
            &params,
        );
        matches!(
            tokio::time::timeout(Duration::from_secs(1), insert).await,
            Ok(Ok(_))
        )
    }

    /// The holder's side effect: a write guarded by the fence (`leases::fence`), which
    /// records whether the fence accepted it. An accepted write is the fenced statement
    /// itself; a refused one changed nothing, so it is recorded afterwards.
    async fn work(&mut self, key: &Key, token: u64) -> Option<bool> {
        self.fenced(key, token, "work").await
    }

    /// A fenced write recorded as `kind` (`work`, or `late` for a lost holder's write).
    async fn fenced(&mut self, key: &Key, token: u64, kind: &str) -> Option<bool> {
        let (name, k, t) = (self.name.clone(), key.to_string(), token as i64);
        let c = self.client().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&name, &k, &t, &kind];
        let fence = fence();
        let write = fence.write(
            c,
            key,
            token,
            "INSERT INTO events (proc, key, token, kind, accepted)
             VALUES ($1, $2, $3, $4, true)",
            &params,
        );
        match tokio::time::timeout(Duration::from_secs(1), write).await {
            Ok(Ok(Fenced::Accepted { .. })) => Some(true),
            Ok(Ok(Fenced::Refused { .. })) => {
                let insert = c.execute(
                    "INSERT INTO events (proc, key, token, kind, accepted)
                     VALUES ($1, $2, $3, $4, false)",
                    &params,
                );
                match tokio::time::timeout(Duration::from_secs(1), insert).await {
                    Ok(Ok(_)) => Some(false),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// The fence every contender's writes go through.
fn fence() -> Fence {
    Fence::new("fence").expect("a valid table name")
}

async fn contender(url: String, name: String, seconds: u64, via: String) {
    // The manager logs in as a role of its own, so that the orchestrator can cut this
    // process off from the database, and through this process's fault proxy (`via`);
    // the event log uses the shared role, directly.
    let manager_url = via.replacen("postgres://postgres@", &format!("postgres://{name}@"), 1);
    let manager = LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .postgres(
            PostgresOptions::new(manager_url)
                .pool_size(3)
                .connect_timeout(Duration::from_secs(1))
                .statement_timeout(STATEMENT_TIMEOUT),
        )
        .start()
        .await
        .expect("manager starts");
    let leaser: Arc<dyn Leaser> = Arc::new(manager.clone());
    let mut log = Log {
        url,
        name: name.clone(),
        client: None,
    };
    let mut rng = XorShift::new(u64::from(std::process::id()));
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let k = key(rng.below(KEYS as u64) as usize);
        // Half the attempts wait for the key, half poll it, so that keys are tried at
        // every moment of a lease's life, not only when it ends.
        let polling = rng.below(2) == 0;
        let mut opts = AcquireOptions::new(TTL).metadata(name.clone());
        if !polling {
            opts = opts.wait(TTL);
        }
        let (lease, ctx) = match leaser.acquire_lease_with(k.clone(), opts).await {
            Ok(got) => got,
            Err(LeaseError::Conflict | LeaseError::WaitTimedOut { .. }) => {
                if polling {
                    tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
                }
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let token = lease.token();
        log.event(&k, token, "got").await;
        let hold_until = Instant::now() + Duration::from_millis(300 + rng.below(2500));
        while Instant::now() < hold_until && Instant::now() < end {
            // Check the lease right before each side effect.
            if ctx.is_cancelled() {
                break;
            }
            log.work(&k, token).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match ctx.reason() {
            Some(reason) => {
                let kind = match reason {
                    CancelReason::Lost(_) => "lost",
                    CancelReason::Revoked => "revoked",
                    _ => "ended",
                };
                for _ in 0..20 {
                    if log.event(&k, token, kind).await {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                drop(lease);
                if kind == "lost" {
                    // A holder paused between its check and its write writes late: do
                    // so once, 1.5 TTL after the loss, when the key has usually changed
                    // hands. The fence decides; the checker judges its answer.
                    let mut late = Log {
                        url: log.url.clone(),
                        name: name.clone(),
                        client: None,
                    };
                    let k = k.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(TTL * 3 / 2).await;
                        late.fenced(&k, token, "late").await;
                    });
                }
            }
            None => {
                let released = lease.release().await.is_ok();
                log.event(
                    &k,
                    token,
                    if released {
                        "released"
                    } else {
                        "release-failed"
                    },
                )
                .await;
            }
        }
    }
    manager.shutdown().await;
}

// --------------------------------------------------------------- the orchestrator ---

struct Proc {
    name: String,
    child: Child,
    frozen: bool,
    killed: bool,
    /// This process's way to the database.
    proxy: FaultProxy,
}

async fn spawn(url: &str, port: u16, name: &str, seconds: u64) -> Proc {
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).await;
    let via = url.replacen(&format!(":{port}/"), &format!(":{}/", proxy.port()), 1);
    assert_ne!(via, url, "the server URL names its port");
    let exe = std::env::current_exe().expect("own path");
    let child = Command::new(exe)
        .args(["contender", url, name, &seconds.to_string(), &via])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn contender");
    Proc {
        name: name.to_string(),
        child,
        frozen: false,
        killed: false,
        proxy,
    }
}

/// One look at the database by the sampler.
struct Sample {
    at: std::time::SystemTime,
    /// `(key, token)` of every live lease.
    live: Vec<(String, u64)>,
    /// Client sessions `idle in transaction` for more than 200 ms.
    idle_in_tx: Vec<String>,
}

/// Samples the lease table and `pg_stat_activity` every 200 ms until `stop` is set,
/// reconnecting across the server's restart.
async fn sample(url: String, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut client: Option<Client> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio_postgres::connect(&url, NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                Err(_) => None,
            };
        }
        if let Some(c) = &client {
            let look = async {
                let at: std::time::SystemTime =
                    c.query_one("SELECT clock_timestamp()", &[]).await?.get(0);
                let live = c
                    .query(
                        &format!("SELECT key, token FROM {TABLE} WHERE expires_at > now()"),
                        &[],
                    )
                    .await
                    .unwrap_or_default()
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                    .collect();
                let idle_in_tx = c
                    .query(
                        "SELECT usename || ' ' || application_name || ': ' || left(query, 80)
                         FROM pg_stat_activity
                         WHERE state LIKE 'idle in transaction%'
                           AND clock_timestamp() - state_change > interval '200 milliseconds'",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
                    .collect();
                Ok::<_, tokio_postgres::Error>(Sample {
                    at,
                    live,
                    idle_in_tx,
                })
            };
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), look).await {
                out.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out
}

fn signal(p: &Proc, sig: libc::c_int) {
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", p.name);
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

async fn db_now(client: &Client) -> std::time::SystemTime {
    client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The process name and token holding `key` now, waiting up to `TTL` for one.
async fn holder(client: &Client, key: &Key) -> (String, u64) {
    let until = Instant::now() + TTL * 2;
    loop {
        let row = client
            .query_opt(
                &format!(
                    "SELECT convert_from(metadata, 'UTF8'), token FROM {TABLE} \
                     WHERE key = $1 AND expires_at > now() AND NOT revoked"
                ),
                &[&key.to_string()],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return (row.get(0), row.get::<_, i64>(1) as u64);
        }
        assert!(Instant::now() < until, "nobody holds {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Clone)]
struct Event {
    at: std::time::SystemTime,
    proc: String,
    key: String,
    token: u64,
    kind: String,
    accepted: Option<bool>,
}

struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if ok {
            self.passed += 1;
        } else {
            let what = what.into();
            eprintln!("FAILED: {what}");
            self.failed.push(what);
        }
    }
}

async fn orchestrate() -> Checks {
    let server = PgServer::start(None);
    let url = server.url();
    let admin = connect(&url).await;
    admin
        .batch_execute(
            "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                proc TEXT NOT NULL, key TEXT NOT NULL, token BIGINT NOT NULL, kind TEXT NOT NULL, accepted BOOLEAN);
             CREATE ROLE p1 LOGIN SUPERUSER; CREATE ROLE p2 LOGIN SUPERUSER;
             CREATE ROLE p3 LOGIN SUPERUSER; CREATE ROLE p4 LOGIN SUPERUSER;
             CREATE ROLE p5 LOGIN SUPERUSER;",
        )
        .await
        .unwrap();
    fence().create(&admin).await.unwrap();
    // The lease table is made here, before any process starts, so that a trigger can
    // record every grant as the database makes it: grants of one key are serialized by
    // its row lock, so `grants.id` orders them as the database did. The processes' own
    // "got" events are logged after the acquire returns, and a process frozen between
    // the two logs its grant late; only the database's record can judge token order.
    leases::backend::PostgresBackend::connect(PostgresOptions::new(url.clone()))
        .await
        .expect("the lease table is created");
    admin
        .batch_execute(&format!(
            "CREATE TABLE grants (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, token BIGINT NOT NULL);
             CREATE FUNCTION record_grant() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF TG_OP = 'INSERT' OR NEW.token IS DISTINCT FROM OLD.token THEN
                     INSERT INTO grants (key, token) VALUES (NEW.key, NEW.token);
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER record_grant AFTER INSERT OR UPDATE ON {TABLE}
                 FOR EACH ROW EXECUTE FUNCTION record_grant();"
        ))
        .await
        .unwrap();
    let port = server.port();
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample(url.clone(), stop_sampling.clone()));
    let started = Instant::now();
    let mut procs: Vec<Proc> = Vec::new();
    for i in 1..=4 {
        procs.push(spawn(&url, port, &format!("p{i}"), RUN.as_secs()).await);
    }
    let at = |s: u64| started + Duration::from_secs(s);
    let mut faults = Vec::new();

    // SIGKILL the holder of job-0.
    tokio::time::sleep_until(at(6).into()).await;
    let (victim, killed_token) = holder(&admin, &key(0)).await;
    let killed_at = db_now(&admin).await;
    let p = procs.iter_mut().find(|p| p.name == victim).unwrap();
    signal(p, libc::SIGKILL);
    p.killed = true;
    faults.push(format!(
        "SIGKILL {victim} holding job-0 (token {killed_token})"
    ));
    let remaining = RUN.saturating_sub(started.elapsed()).as_secs();
    procs.push(spawn(&url, port, "p5", remaining).await);

    // SIGSTOP the holder of job-1 for 2.5 TTLs, then resume it.
    tokio::time::sleep_until(at(14).into()).await;
    let (frozen, frozen_token) = holder(&admin, &key(1)).await;
    let p = procs.iter_mut().find(|p| p.name == frozen).unwrap();
    signal(p, libc::SIGSTOP);
    p.frozen = true;
    tokio::time::sleep(TTL * 5 / 2).await;
    let resumed_at = db_now(&admin).await;
    let p = procs.iter().find(|p| p.name == frozen).unwrap();
    signal(p, libc::SIGCONT);
    faults.push(format!(
        "SIGSTOP {frozen} holding job-1 (token {frozen_token}) for {:?}",
        TTL * 5 / 2
    ));

    // Kill every client connection, twice.
    tokio::time::sleep_until(at(24).into()).await;
    let mut terminated = 0;
    for _ in 0..2 {
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
                &[],
            )
            .await
            .unwrap();
        terminated += rows.len();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let after_terminate = db_now(&admin).await;
    faults.push(format!(
        "pg_terminate_backend on {terminated} connections (two rounds)"
    ));

    // Crash the server and start it again.
    tokio::time::sleep_until(at(30).into()).await;
    drop(admin);
    server.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.start_again();
    let admin = connect(&url).await;
    let restarted_at = db_now(&admin).await;
    faults.push("server crashed (immediate stop) and restarted".to_string());

    // Cut the holder of job-0 off from the database for 2.5 TTLs while it keeps
    // working: it may not log in, and its connections are closed.
    tokio::time::sleep_until(at(35).into()).await;
    let (cut, cut_token) = holder(&admin, &key(0)).await;
    admin
        .batch_execute(&format!(
            "ALTER ROLE {cut} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{cut}'"
        ))
        .await
        .unwrap();
    tokio::time::sleep(TTL * 5 / 2).await;
    admin
        .batch_execute(&format!("ALTER ROLE {cut} LOGIN"))
        .await
        .unwrap();
    faults.push(format!(
        "{cut} (holding job-0, token {cut_token}) cut off from the database for {:?}",
        TTL * 5 / 2
    ));

    // Chaos: every process's link to the database follows a random fault schedule.
    tokio::time::sleep_until(at(CHAOS_AT).into()).await;
    let seed: u64 = std::env::var("PG_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let chaos_from = db_now(&admin).await;
    let schedules: Vec<(String, tokio::task::JoinHandle<Vec<String>>)> = procs
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.killed)
        .map(|(i, p)| {
            let schedule =
                FaultSchedule::random(seed * 1000 + i as u64, CHAOS, Duration::from_millis(1500));
            (p.name.clone(), p.proxy.run_schedule(schedule))
        })
        .collect();
    let mut chaos_log = Vec::new();
    for (name, handle) in schedules {
        for step in handle.await.unwrap() {
            chaos_log.push(format!("{name}: {step}"));
        }
    }
    let chaos_to = db_now(&admin).await;
    let chaos_faults = chaos_log.iter().filter(|l| !l.contains(" pass")).count();
    faults.push(format!(
        "chaos (seed {seed}): {chaos_faults} faults on {} proxies over {CHAOS:?}",
        procs.len() - 1
    ));

    // Let the run finish.
    let mut exits = Vec::new();
    for p in &mut procs {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = p.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = p.child.kill();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        exits.push((p.name.clone(), p.killed, status));
    }

    let rows = admin
        .query(
            "SELECT at, proc, key, token, kind, accepted FROM events ORDER BY at, id",
            &[],
        )
        .await
        .unwrap();
    let events: Vec<Event> = rows
        .iter()
        .map(|r| Event {
            at: r.get(0),
            proc: r.get(1),
            key: r.get(2),
            token: r.get::<_, i64>(3) as u64,
            kind: r.get(4),
            accepted: r.get(5),
        })
        .collect();
    let db_grants: Vec<(String, u64)> = admin
        .query("SELECT key, token FROM grants ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    stop_sampling.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    let frozen_procs: Vec<String> = procs
        .iter()
        .filter(|p| p.frozen)
        .map(|p| p.name.clone())
        .collect();

    let mut c = Checks {
        passed: 0,
        failed: Vec::new(),
    };
    for (name, killed, status) in &exits {
        if !killed {
            c.check(
                status.is_some_and(|s| s.success()),
                format!("{name} exited cleanly ({status:?})"),
            );
        }
    }

    // Per key: tokens grow in grant order; no overlap.
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in &events {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    let mut grants_total = 0;
    let mut refused_stale = 0;
    for (k, evs) in &by_key {
        let grants: Vec<&&Event> = evs.iter().filter(|e| e.kind == "got").collect();
        grants_total += grants.len();
        // Token order is judged on the database's record of grants (see the trigger).
        let in_db: Vec<u64> = db_grants
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, t)| *t)
            .collect();
        let backwards: Vec<&[u64]> = in_db.windows(2).filter(|w| w[0] >= w[1]).collect();
        c.check(
            backwards.is_empty(),
            format!("{k}: tokens grow in the order the database granted them {backwards:?}"),
        );
        // Every token a process was handed is one the database granted for that key.
        let unknown: Vec<u64> = grants
            .iter()
            .map(|g| g.token)
            .filter(|t| !in_db.contains(t))
            .collect();
        c.check(
            unknown.is_empty(),
            format!("{k}: every token handed out was granted by the database {unknown:?}"),
        );
        // When did each token's holder start, and what did it do after the next grant?
        let first_at: HashMap<u64, std::time::SystemTime> =
            grants.iter().map(|g| (g.token, g.at)).collect();
        let mut tokens: Vec<u64> = first_at.keys().copied().collect();
        tokens.sort_unstable();
        for pair in tokens.windows(2) {
            let (old, next) = (pair[0], pair[1]);
            let next_at = first_at[&next];
            for e in evs
                .iter()
                .filter(|e| e.token == old && e.kind == "work" && e.at > next_at)
            {
                if frozen_procs.contains(&e.proc) && e.accepted == Some(false) {
                    // The pause-between-check-and-write case: fencing caught it.
                    refused_stale += 1;
                } else {
                    c.check(
                        false,
                        format!(
                            "{k}: {} acted with token {old} after token {next} was granted: {e:?}",
                            e.proc
                        ),
                    );
                }
            }
        }
        c.check(true, format!("{k}: holders do not overlap"));
    }

    // The killed holder's key was taken over, after its lease ran out.
    let job0 = key(0).to_string();
    let takeover = events
        .iter()
        .find(|e| e.key == job0 && e.kind == "got" && e.token > killed_token && e.at > killed_at);
    c.check(takeover.is_some(), "job-0 was taken over after the SIGKILL");
    if let Some(t) = takeover {
        let after = t.at.duration_since(killed_at).unwrap_or_default();
        c.check(
            after <= TTL + Duration::from_secs(2),
            format!("job-0 taken over {after:?} after the kill (TTL {TTL:?})"),
        );
    }

    // The frozen holder was told it lost the lease and never acted as holder again.
    let job1 = key(1).to_string();
    c.check(
        events
            .iter()
            .any(|e| e.proc == frozen && e.token == frozen_token && e.kind == "lost"),
        format!("{frozen} reported Lost for token {frozen_token} after SIGCONT"),
    );
    c.check(
        !events.iter().any(|e| {
            e.proc == frozen
                && e.token == frozen_token
                && e.kind == "work"
                && e.at > resumed_at
                && e.accepted == Some(true)
        }),
        format!("{frozen} did no accepted work with token {frozen_token} after resuming"),
    );
    c.check(
        events
            .iter()
            .any(|e| e.key == job1 && e.kind == "got" && e.token > frozen_token),
        "job-1 was taken over while its holder was frozen",
    );

    if std::env::var_os("PG_FAULTS_DEBUG").is_some() {
        for e in events.iter().filter(|e| e.key == job0 && e.kind != "work") {
            eprintln!("{:?} {} {} {}", e.at, e.proc, e.token, e.kind);
        }
        eprintln!(
            "last work of the cut holder: {:?}",
            events
                .iter()
                .filter(|e| e.proc == cut && e.token == cut_token && e.kind == "work")
                .map(|e| e.at)
                .max()
        );
    }
    // The cut-off holder stopped on its own, before job-0 changed hands.
    let next = events
        .iter()
        .find(|e| e.key == job0 && e.kind == "got" && e.token > cut_token);
    let last_work = events
        .iter()
        .filter(|e| e.proc == cut && e.token == cut_token && e.kind == "work")
        .map(|e| e.at)
        .max();
    // Either its context ended with Lost, or its planned hold ended first and its
    // release failed (the database refused it): both mean it stopped acting.
    let ends: Vec<&str> = events
        .iter()
        .filter(|e| {
            e.proc == cut
                && e.token == cut_token
                && !["work", "late", "got"].contains(&e.kind.as_str())
        })
        .map(|e| e.kind.as_str())
        .collect();
    c.check(
        ends == ["lost"] || ends == ["release-failed"],
        format!("{cut} reported Lost (or a failed release) for token {cut_token} while cut off: {ends:?}"),
    );
    c.check(
        matches!((next, last_work), (Some(n), Some(w)) if w < n.at),
        format!(
            "{cut}'s last write came before job-0's next grant ({last_work:?} vs {:?})",
            next.map(|n| n.at)
        ),
    );

    // Everyone kept working across the connection kills and the restart.
    let got_after = |t: std::time::SystemTime| {
        events
            .iter()
            .filter(|e| e.kind == "got" && e.at > t)
            .map(|e| e.proc.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let after_kill = got_after(after_terminate);
    c.check(
        after_kill.len() >= 3,
        format!("processes granted leases after pg_terminate_backend: {after_kill:?}"),
    );
    let after_restart = got_after(restarted_at);
    c.check(
        after_restart.len() >= 3,
        format!("processes granted leases after the restart: {after_restart:?}"),
    );

    // No session was left idle in a transaction.
    let idle: Vec<&String> = samples.iter().flat_map(|s| &s.idle_in_tx).collect();
    c.check(
        idle.is_empty(),
        format!(
            "no session idle in transaction ({} samples): {idle:?}",
            samples.len()
        ),
    );
    c.check(
        samples.len() > 100,
        format!("the sampler saw the run ({} samples)", samples.len()),
    );

    // No key stayed taken by nobody for longer than TTL + statement timeout: every
    // (key, token) seen live must have a holder that has not ended, or have ended (or,
    // for a grant nobody received, first appeared) at most that long before.
    let bound = TTL + STATEMENT_TIMEOUT + Duration::from_millis(400);
    let mut first_live: HashMap<(String, u64), std::time::SystemTime> = HashMap::new();
    let mut last_live: HashMap<(String, u64), std::time::SystemTime> = HashMap::new();
    for s in &samples {
        for kt in &s.live {
            first_live.entry(kt.clone()).or_insert(s.at);
            last_live.insert(kt.clone(), s.at);
        }
    }
    let mut stuck = Vec::new();
    for (kt, last) in &last_live {
        let of_token = |kind: &str| {
            events
                .iter()
                .find(|e| e.key == kt.0 && e.token == kt.1 && e.kind == kind)
                .map(|e| e.at)
        };
        let holder = events
            .iter()
            .find(|e| e.key == kt.0 && e.token == kt.1 && e.kind == "got")
            .map(|e| e.proc.clone());
        // Frozen and killed processes cannot say they ended; they are the scripted
        // faults, checked above.
        if holder
            .as_ref()
            .is_some_and(|h| frozen_procs.contains(h) || exits.iter().any(|(n, k, _)| n == h && *k))
        {
            continue;
        }
        let ended = ["lost", "released", "release-failed", "ended", "revoked"]
            .iter()
            .filter_map(|k| of_token(k))
            .min();
        let since = match (&holder, ended) {
            (Some(_), Some(end)) => end,
            (Some(_), None) => continue, // held to the end of the run
            (None, _) => first_live[kt], // granted, but nobody received it
        };
        let taken_by_nobody = last.duration_since(since).unwrap_or_default();
        if taken_by_nobody > bound {
            stuck.push(format!("{} token {}: {taken_by_nobody:?}", kt.0, kt.1));
        }
    }
    c.check(
        stuck.is_empty(),
        format!("no key taken by nobody for more than {bound:?}: {stuck:?}"),
    );
    let chaos_grants = events
        .iter()
        .filter(|e| e.kind == "got" && e.at > chaos_from && e.at < chaos_to)
        .count();
    c.check(
        chaos_grants > 0,
        format!("leases were granted during the chaos phase ({chaos_grants})"),
    );

    // Each lost holder's late write (with its old token): the fence refused it only if
    // a newer token had written for the key, and accepted it only if none had, give or
    // take the moment two statements cross (100 ms). A failure here is a stale write
    // the fence let through, or a refusal without cause; a pass adds no check, so that
    // the count of checks stays the same whatever the faults did.
    let (mut late_refused, mut late_accepted) = (0, 0);
    for e in events.iter().filter(|e| e.kind == "late") {
        let newer_wrote = |before: std::time::SystemTime| {
            events.iter().any(|n| {
                n.key == e.key && n.token > e.token && n.accepted == Some(true) && n.at < before
            })
        };
        match e.accepted {
            Some(false) => {
                late_refused += 1;
                if !newer_wrote(e.at) {
                    c.check(
                        false,
                        format!("late write refused, but no newer token wrote: {e:?}"),
                    );
                }
            }
            Some(true) => {
                late_accepted += 1;
                if newer_wrote(e.at - Duration::from_millis(100)) {
                    c.check(
                        false,
                        format!("stale late write accepted by the fence: {e:?}"),
                    );
                }
            }
            None => {}
        }
    }
    let work = events.iter().filter(|e| e.kind == "work").count();
    let lost = events.iter().filter(|e| e.kind == "lost").count();
    println!("pg_faults: {} processes, {grants_total} grants, {work} fenced writes, {lost} losses, {refused_stale} stale writes refused by the fence", procs.len());
    println!("pg_faults: late writes of lost holders: {late_refused} refused by the fence, {late_accepted} accepted (no newer token had written)");
    for f in &faults {
        println!("pg_faults: fault: {f}");
    }
    println!("pg_faults: chaos: {chaos_grants} grants during the chaos phase");
    if std::env::var_os("PG_FAULTS_VERBOSE").is_some() {
        for l in &chaos_log {
            println!("pg_faults: chaos: {l}");
        }
    }
    c
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("contender") {
        let seconds = args[4].parse().unwrap();
        rt.block_on(contender(
            args[2].clone(),
            args[3].clone(),
            seconds,
            args[5].clone(),
        ));
        return;
    }
    if args.iter().skip(1).any(|a| a == "--list") {
        println!("pg_faults: test");
        return;
    }
    let checks = rt.block_on(orchestrate());
    println!("{} passed, {} failed", checks.passed, checks.failed.len());
    if !checks.failed.is_empty() {
        std::process::exit(1);
    }
}
