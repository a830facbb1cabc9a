//! The PostgreSQL section's second table: the database statements per held lease per
//! minute and the server's CPU, with renewals batched (the default) and, as the
//! baseline, one statement per renewal (renewal every TTL/3 means 6.0).

use std::sync::Arc;
use std::time::{Duration, Instant};

use leases::backend::{PostgresBackend, PostgresOptions};
use leases::{Key, LeaseManager};

use crate::args::Sizes;

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

/// CPU seconds the database server has used so far: the postmaster and its live
/// children (connections), plus the children it has reaped.
async fn server_cpu(url: &str) -> f64 {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let dir: String = c
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let pid_file = std::fs::read_to_string(format!("{dir}/postmaster.pid")).unwrap_or_default();
    let Some(postmaster) = pid_file.lines().next().map(str::trim).map(str::to_owned) else {
        return 0.0;
    };
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // (ppid, utime + stime, cutime + cstime) of a process, from /proc/PID/stat.
    let stat = |pid: &str| -> Option<(String, f64, f64)> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Some((f.get(1)?.to_string(), n(11) + n(12), n(13) + n(14)))
    };
    let mut total = stat(&postmaster).map_or(0.0, |(_, own, reaped)| own + reaped);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if let Some((ppid, own, _)) = stat(&pid) {
            if ppid == postmaster {
                total += own;
            }
        }
    }
    total / tick
}

/// One row of the renewal statements table.
struct Held {
    /// Database statements per held lease per minute.
    per: f64,
    /// Of which renewal statements.
    renewals: f64,
    /// Server CPU per wall second.
    cpu: f64,
    /// This process's CPU (the manager, its renewals and the driver) per wall second.
    manager_cpu: f64,
    /// Leases whose context had ended by the end of the window.
    lost: usize,
    /// Seconds from the first acquire to the last.
    acquire_secs: f64,
    /// Growth of this process's resident memory over the acquires, per lease.
    rss_per_lease: u64,
    /// Leases acquired (fewer than asked if the acquires stopped).
    held: usize,
    /// Whether the acquires stopped early because a held lease was lost.
    stopped: bool,
    /// Keys skipped after failed acquires.
    failed: usize,
}

/// Holds `n` leases (acquired by 32 tasks at once) on a manager of its own with these
/// options, then counts the database's statements and CPU over `window`.
async fn statements_per_lease(
    url: &str,
    options: PostgresOptions,
    n: usize,
    ttl: Duration,
    window: Duration,
    name: &str,
) -> Held {
    // The previous row's 100k releases may keep the server busy for a while: wait.
    let mut tries = 0;
    let backend = loop {
        match PostgresBackend::connect(options.clone()).await {
            Ok(b) => break Arc::new(b),
            Err(e) if tries < 12 => {
                tries += 1;
                eprintln!("postgres: the server is busy ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => panic!("postgres: {e}"),
        }
    };
    let m = LeaseManager::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    let rss0 = crate::scale::rss_bytes();
    let started = Instant::now();
    let workers = 32;
    let acquired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = {
        let acquired = acquired.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let done = acquired.load(std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "postgres: {done} of {n} leases acquired after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
        })
    };
    // Set when a held lease has been lost while others were still being acquired: the
    // server (or this machine) cannot keep up with the renewals of that many, and the
    // row then reports how many were held when that happened.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let m = m.clone();
        let name = name.to_string();
        let (acquired, stop, failed) = (acquired.clone(), stop.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let mut held: Vec<(leases::Lease, leases::LeaseContext)> = Vec::new();
            for i in (w..n).step_by(workers) {
                if stop.load(Relaxed) {
                    break;
                }
                let key = Key::system(["held".to_string(), name.clone(), i.to_string()]);
                // A busy machine may keep a pool slot longer than the wait allows: try
                // again. An attempt that timed out may still have been granted on the
                // server, and then the key stays taken (by nobody) until its TTL: after
                // a few tries the key is skipped and counted.
                let mut tries = 0;
                loop {
                    match m.acquire_lease(key.clone(), ttl).await {
                        Ok(lease) => {
                            acquired.fetch_add(1, Relaxed);
                            break held.push(lease);
                        }
                        Err(e) if tries < 5 => {
                            tries += 1;
                            eprintln!("acquire of {key} failed ({e}); retrying");
                        }
                        Err(e) => {
                            eprintln!("acquire of {key} failed ({e}); skipping it");
                            failed.fetch_add(1, Relaxed);
                            break;
                        }
                    }
                }
                if held.len() % 256 == 0 && held.iter().any(|(_, ctx)| ctx.is_cancelled()) {
                    if !stop.swap(true, Relaxed) {
                        eprintln!(
                            "postgres: a held lease was lost with {} acquired: stopping the acquires",
                            acquired.load(Relaxed)
                        );
                    }
                    break;
                }
            }
            held
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.extend(t.await.unwrap());
    }
    let stopped = stop.load(std::sync::atomic::Ordering::Relaxed);
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    let n = held.len();
    let acquire_secs = started.elapsed().as_secs_f64();
    progress.abort();
    let rss_per_lease = crate::scale::rss_bytes().saturating_sub(rss0) / n.max(1) as u64;
    // Past the acquires' own statements (and their statistics, which a busy server
    // may flush seconds late), then count over the window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c0 = commits(url).await;
    let r0 = backend.renew_statements();
    let cpu0 = server_cpu(url).await;
    let mine0 = crate::scale::cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let mine = crate::scale::cpu_seconds() - mine0;
    let cpu = server_cpu(url).await - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let renewals = (backend.renew_statements() - r0) as f64 / n as f64 / (wall / 60.0);
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the stats flush
    let c1 = commits(url).await;
    let minutes = (t0.elapsed().as_secs_f64() - 1.1) / 60.0;
    let lost = held.iter().filter(|(_, ctx)| ctx.is_cancelled()).count();
    // Subtract the two statistics queries and the CPU readings' own.
    let per = (c1 - c0 - 4).max(0) as f64 / held.len() as f64 / minutes;
    m.shutdown().await;
    drop(held);
    // The manager's handle holds the backend too.
    drop(m);
    // The shutdown waits a bounded time for its releases; those still running go on
    // in tasks that hold the backend. Wait for them, so that the next row's count is
    // not theirs.
    let waited = Instant::now();
    while Arc::strong_count(&backend) > 1 && waited.elapsed() < Duration::from_secs(1800) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Held {
        per,
        renewals,
        cpu: cpu / wall,
        manager_cpu: mine / wall,
        lost,
        acquire_secs,
        rss_per_lease,
        held: n,
        stopped,
        failed,
    }
}

/// Holds many leases on the server at `url`, batched and then one statement per
/// renewal, and prints a row for each.
pub async fn renewal_statements_table(url: &str, s: &Sizes) {
    // Statements per held lease per minute, batched (the default) and, as the
    // baseline, one statement per renewal.
    println!(
        "\n### PostgreSQL: renewal statements (TTL {:?}, renewal every {:?}, counted over {:.0} s)\n",
        s.pg_ttl,
        s.pg_ttl / 3,
        s.pg_window.as_secs_f64()
    );
    println!("| renewals | leases held | database statements per held lease per minute | of which renewal statements | server CPU per wall second | manager CPU per wall second | lost | time to acquire all | manager resident bytes per lease |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (tag, name, options, n) in [
        (
            "batched",
            "batched (default: ≤ 50 ms wait, ≤ 1000 leases a statement)",
            PostgresOptions::new(url),
            s.pg_held,
        ),
        (
            "single",
            "one statement per renewal (`renew_batch_size(1)`)",
            PostgresOptions::new(url).renew_batch_size(1),
            s.pg_held_unbatched,
        ),
    ] {
        let h = statements_per_lease(url, options, n, s.pg_ttl, s.pg_window, tag).await;
        let held = if h.held == n && h.failed == 0 {
            n.to_string()
        } else {
            format!(
                "{} of {n}{}{}",
                h.held,
                if h.stopped {
                    " (acquires stopped: a held lease was lost)"
                } else {
                    ""
                },
                if h.failed > 0 {
                    format!(" ({} keys skipped after failed acquires)", h.failed)
                } else {
                    String::new()
                }
            )
        };
        println!(
            "| {name} | {held} | {:.3} | {:.3} | {:.1} % of a core | {:.1} % of a core | {} | {:.1} s | {} |",
            h.per,
            h.renewals,
            h.cpu * 100.0,
            h.manager_cpu * 100.0,
            h.lost,
            h.acquire_secs,
            h.rss_per_lease
        );
    }
}
