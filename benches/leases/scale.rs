//! Leases held at once (100k and 1M in the full run): resident bytes per lease, the CPU
//! the renewals take per wall second, leases lost, and the time to acquire them all, for
//! ours and the baselines (a), (b), (d).
//!
//! Each cell runs in a child process of its own (this binary with `--scale-child`), so
//! that resident memory is measured from a clean start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leases::Key;

use crate::args::Sizes;
use crate::contenders::{memory_manager, Bare, Kind, Ours, Subject, Table, TTL};
use crate::report::ratio;

pub fn rss_bytes() -> u64 {
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

pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Holds `n` leases, then idles for `window` while they renew. Prints one line:
/// `scale <name> <n> <bytes per lease> <cpu s per wall s> <lost> <acquire secs>`.
async fn scale<S: Subject>(name: &str, subject: Arc<S>, n: usize, window: Duration) {
    #[cfg(leases_alloc_profile)]
    let allocs = crate::alloc_profile::snapshot();
    let before = rss_bytes();
    let started = Instant::now();
    let each = subject.clone();
    let held = crate::report::spread(n, 8, move |i| {
        let s = each.clone();
        async move {
            let k = Key::system(["scale".to_string(), i.to_string()]);
            s.acquire(&k).await.expect("distinct keys")
        }
    })
    .await;
    let acquire_secs = started.elapsed().as_secs_f64();
    // Let allocation settle, then measure memory and the renewal CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    #[cfg(leases_alloc_profile)]
    crate::alloc_profile::report(&allocs, &crate::alloc_profile::snapshot(), n);
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

/// The scale child: one cell, printed as one `scale …` line for the parent to read.
pub async fn scale_child(kind: Kind, n: usize, window: Duration) {
    let name = kind.arg();
    match kind {
        Kind::Ours => scale(name, Arc::new(Ours(memory_manager().await)), n, window).await,
        Kind::A => scale(name, Arc::new(Table::new(false)), n, window).await,
        Kind::B => scale(name, Arc::new(Table::new(true)), n, window).await,
        Kind::D => scale(name, Arc::new(Bare::start().await), n, window).await,
    }
}

struct ScaleResult {
    bytes_per_lease: u64,
    cpu: f64,
    lost: usize,
    acquire_secs: f64,
}

/// Runs one cell in a fresh process and reads its line.
fn run_scale_child(kind: Kind, n: usize, window: Duration) -> ScaleResult {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--scale-child",
            kind.arg(),
            &n.to_string(),
            &window.as_secs_f64().to_string(),
        ])
        .output()
        .expect("scale child runs");
    // The counting allocator's lines (`--cfg leases_alloc_profile`), passed on.
    for line in String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("alloc "))
    {
        eprintln!("{} {n}: {line}", kind.arg());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("scale "))
        .unwrap_or_else(|| {
            panic!(
                "scale child {} {n} failed: {}",
                kind.arg(),
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

pub fn scale_section(s: &Sizes) {
    println!("\n## Memory backend: leases held at once (TTL {TTL:?}, renewal every {:?}; each cell a fresh process)\n", TTL / 3);
    println!("| implementation | leases | resident bytes per lease | vs (d) | CPU per wall second on renewals | lost | time to acquire all |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &s.scale {
        let results: Vec<(Kind, ScaleResult)> = [Kind::D, Kind::Ours, Kind::B, Kind::A]
            .into_iter()
            .map(|k| (k, run_scale_child(k, n, s.window)))
            .collect();
        let d_bytes = results[0].1.bytes_per_lease as f64;
        for (k, r) in &results {
            println!(
                "| {} | {n} | {} | {} | {:.1} % of a core | {} | {:.1} s |",
                k.label(),
                r.bytes_per_lease,
                ratio(r.bytes_per_lease as f64, d_bytes),
                r.cpu * 100.0,
                r.lost,
                r.acquire_secs
            );
        }
    }
}
