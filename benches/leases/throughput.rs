//! The memory backend's throughput: acquire/release pairs per second with 1 and 64
//! clients, acquire latency, and conflicts (rejected acquires of a held key) per second,
//! for ours and the baselines (a), (b), (d) in the same process. Implementations are
//! interleaved and each cell is the median of several runs, because these machines are
//! noisy and what matters is the ratio against a baseline measured minutes apart.
//!
//! `pairs` and `Throughput` also serve the PostgreSQL section.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leases::Key;

use crate::args::Sizes;
use crate::contenders::{memory_manager, Bare, Kind, Ours, Subject, Table, TTL};
use crate::report::{median_by, percentile, ratio};

pub struct Throughput {
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

fn keys(client: usize, n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| Key::system(["bench", &client.to_string(), &i.to_string()]))
        .collect()
}

/// `clients` tasks each acquire and release their own keys for `secs`.
pub async fn pairs<S: Subject>(subject: Arc<S>, clients: usize, secs: f64) -> Throughput {
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
    Throughput {
        per_sec: total as f64 / elapsed,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
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

pub async fn memory_section(s: &Sizes) {
    println!(
        "\n## Memory backend: throughput (2 worker threads, TTL {TTL:?}; each cell the median of {} runs of {:.0} s, implementations interleaved)\n",
        s.rounds, s.secs
    );
    println!("| implementation | pairs/s, 1 client | pairs/s, 64 clients | Conflict/s, 8 clients | acquire p50 | acquire p99 | 64 clients vs (d) |");
    println!("|---|---|---|---|---|---|---|");
    let m = memory_manager().await;
    let ours = Arc::new(Ours(m.clone()));
    let a = Arc::new(Table::new(false));
    let b = Arc::new(Table::new(true));
    let d = Arc::new(Bare::start().await);

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
    let names = [Kind::Ours, Kind::A, Kind::B, Kind::D].map(Kind::label);
    let results: Vec<(Throughput, Throughput)> = runs
        .into_iter()
        .map(|[one, many]| (median(one), median(many)))
        .collect();
    let d64 = results[3].1.per_sec;
    for (i, (one, many)) in results.iter().enumerate() {
        let conflict = rejected
            .get(i)
            .map(|r| format!("{:.0}", median_by(r.clone(), |x| *x)));
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
    d.0.stop(None);
}

/// One contender, `clients` clients, pairs for `s.secs`: for `perf record`.
pub async fn profile_section(s: &Sizes, kind: Kind, clients: usize) {
    let t = match kind {
        Kind::Ours => pairs(Arc::new(Ours(memory_manager().await)), clients, s.secs).await,
        Kind::A => pairs(Arc::new(Table::new(false)), clients, s.secs).await,
        Kind::B => pairs(Arc::new(Table::new(true)), clients, s.secs).await,
        Kind::D => pairs(Arc::new(Bare::start().await), clients, s.secs).await,
    };
    println!(
        "{}, {clients} clients: {:.0} pairs/s",
        kind.label(),
        t.per_sec
    );
}

/// Median by rate of several runs of one cell.
fn median(runs: Vec<Throughput>) -> Throughput {
    median_by(runs, |t| t.per_sec)
}
