//! The orchestrator: starts the server and the contending processes, injects the faults
//! on a fixed timetable (SIGKILL, SIGSTOP, killed connections, a crash and restart, a
//! holder cut off, then the chaos phase), and collects the history for the checker.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leases::backend::PostgresOptions;
use leases::Key;
use tokio_postgres::Client;

use crate::checker::{Event, Run};
use crate::sampler::sample;
use crate::scenario::{fence, key, CHAOS, CHAOS_AT, RUN, TABLE, TTL};
use crate::support::pg::{connect, db_now, PgServer};
use crate::support::proxy::{FaultProxy, FaultSchedule};

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

fn signal(p: &Proc, sig: libc::c_int) {
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", p.name);
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

/// Runs the processes and the faults, then collects the history.
pub async fn run() -> Run {
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
    // The holder is read, then cut off: if its planned hold ended and it released the
    // key in between (CI met it), it was never cut off while holding, so it is let in
    // again and the holder of the moment is cut off instead.
    tokio::time::sleep_until(at(35).into()).await;
    let (cut, cut_token) = loop {
        let (cut, cut_token) = holder(&admin, &key(0)).await;
        admin
            .batch_execute(&format!(
                "ALTER ROLE {cut} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{cut}'"
            ))
            .await
            .unwrap();
        let still = admin
            .query_opt(
                &format!(
                    "SELECT 1 FROM {TABLE} WHERE key = $1 AND token = $2 \
                     AND expires_at > now() AND NOT revoked"
                ),
                &[&key(0).to_string(), &(cut_token as i64)],
            )
            .await
            .unwrap();
        if still.is_some() {
            break (cut, cut_token);
        }
        admin
            .batch_execute(&format!("ALTER ROLE {cut} LOGIN"))
            .await
            .unwrap();
    };
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
    Run {
        events,
        db_grants,
        samples,
        exits,
        frozen_procs,
        killed_token,
        killed_at,
        frozen,
        frozen_token,
        resumed_at,
        cut,
        cut_token,
        after_terminate,
        restarted_at,
        chaos_from,
        chaos_to,
        faults,
        chaos_log,
        procs: procs.len(),
    }
}
