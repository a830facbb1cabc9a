//! Printing helpers shared by the sections: the report's header, ratios against a
//! baseline, medians of repeated runs, percentiles of latencies.

use std::time::Duration;

/// The title and the machine the run is on.
pub fn header() {
    println!("# leases benchmarks");
    println!(
        "\nmachine: {} cores, {}; rustc {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        option_env!("RUSTC_VERSION").unwrap_or("stable")
    );
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// `x` against the baseline `base`, as `1.23x` (`-` without a baseline).
pub fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}x", x / base)
    } else {
        "-".into()
    }
}

/// Median by `key` of several runs of one cell.
pub fn median_by<T>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs.swap_remove(runs.len() / 2)
}

/// The `p` percentile (0 to 1) of `sorted` latencies; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Runs `acquire(i)` for every `i` in `0..n` on `workers` tasks (task `w` takes `w`,
/// `w + workers`, …, one after another), and gathers what each returned.
pub async fn spread<T, F, Fut>(n: usize, workers: usize, acquire: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let acquire = acquire.clone();
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(n / workers + 1);
                for i in (w..n).step_by(workers) {
                    got.push(acquire(i).await);
                }
                got
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}
