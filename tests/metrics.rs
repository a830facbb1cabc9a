//! The metrics endpoint (feature `prometheus`): install the recorder, acquire, conflict,
//! time out, fail, lose and release leases, then scrape `/metrics` over plain TCP,
//! parse the Prometheus text format and check that each counter moved by what was done.
//!
//! One test in this binary: a process has one metrics recorder, and the counts must be
//! this test's alone.
#![cfg(feature = "prometheus")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireFault, FaultyBackend, MemoryBackend, RenewFault};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, LossCause};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TTL: Duration = Duration::from_secs(1);

/// A scrape, parsed: `name{sorted labels}` -> value. Comment lines are checked for
/// shape and skipped.
#[derive(Debug)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(comment) = line.strip_prefix('#') {
                let words: Vec<&str> = comment.split_whitespace().collect();
                assert!(
                    matches!(words.first(), Some(&"HELP") | Some(&"TYPE")),
                    "comment line: {line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let name = match series.split_once('{') {
                None => series.to_owned(),
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect("labels end with }");
                    let mut pairs: Vec<&str> = labels.split(',').collect();
                    pairs.sort_unstable();
                    for p in &pairs {
                        let (k, v) = p.split_once('=').expect("label=value");
                        assert!(
                            !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                            "{line}"
                        );
                    }
                    format!("{name}{{{}}}", pairs.join(","))
                }
            };
            assert!(
                samples.insert(name, value).is_none(),
                "duplicate series: {line}"
            );
        }
        Scrape(samples)
    }

    /// A series' value; 0 when it is absent (a counter never incremented).
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

/// `GET path` over a plain TCP connection: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap().to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a content length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "the whole body arrived");
    (status, body.to_owned())
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    Scrape::parse(&body)
}

const GRANTED: &str = "leases_acquires_total{outcome=\"granted\"}";
const CONFLICT: &str = "leases_acquires_total{outcome=\"conflict\"}";
const TIMED_OUT: &str = "leases_acquires_total{outcome=\"timed_out\"}";
const ERROR: &str = "leases_acquires_total{outcome=\"error\"}";
const HELD: &str = "leases_held";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_what_the_manager_did() {
    let exporter = leases::metrics::install_prometheus("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = exporter.local_addr();
    // Only one recorder per process.
    assert!(matches!(
        leases::metrics::install_prometheus("127.0.0.1:0".parse().unwrap()).await,
        Err(leases::metrics::MetricsError::RecorderInstalled)
    ));
    let (status, _) = get(addr, "/elsewhere").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let before = scrape(addr).await;
    assert_eq!(before.get(GRANTED), 0.0, "{before:?}");

    let faults = Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new())));
    let manager = LeaseManager::builder()
        .min_ttl(TTL)
        .backend(faults.clone())
        .start()
        .await
        .unwrap();
    let k = |name: &str| Key::system(["metrics", name]);

    // Two grants, a conflict, a wait that times out, a backend failure.
    let held_a = manager.hold(k("a"), TTL).await.unwrap();
    let held_b = manager.hold(k("b"), TTL).await.unwrap();
    assert!(matches!(
        manager.acquire_lease(k("a"), TTL).await,
        Err(LeaseError::Conflict)
    ));
    let wait = AcquireOptions::new(TTL).wait(Duration::from_millis(50));
    assert!(matches!(
        manager.acquire_lease_with(k("a"), wait).await,
        Err(LeaseError::WaitTimedOut { .. })
    ));
    faults.fail_acquires(&k("c"), AcquireFault::Fail);
    assert!(matches!(
        manager.acquire_lease(k("c"), TTL).await,
        Err(LeaseError::Backend(_))
    ));

    let now = scrape(addr).await;
    assert_eq!(now.get(GRANTED), 2.0, "{now:?}");
    assert_eq!(now.get(CONFLICT), 1.0);
    assert_eq!(now.get(TIMED_OUT), 1.0);
    assert_eq!(now.get(ERROR), 1.0);
    assert_eq!(now.get("leases_backend_errors_total{op=\"acquire\"}"), 1.0);
    assert_eq!(now.get(HELD), 2.0);

    // A renewal refused, and renewals that fail until the deadline.
    faults.fail_renewals(&k("b"), RenewFault::Refuse);
    assert_eq!(
        held_b.cancelled().await,
        CancelReason::Lost(LossCause::RenewalRefused)
    );
    let held_d = manager.hold(k("d"), TTL).await.unwrap();
    faults.fail_renewals(&k("d"), RenewFault::Fail);
    assert_eq!(
        held_d.cancelled().await,
        CancelReason::Lost(LossCause::DeadlineExceeded)
    );
    // `a` has been renewed meanwhile; release it.
    assert!(!held_a.is_cancelled());
    held_a.release().await.unwrap();
    // One more, ended by shutdown.
    let held_e = manager.hold(k("e"), TTL).await.unwrap();
    manager.shutdown().await;
    assert_eq!(held_e.reason(), Some(CancelReason::Shutdown));

    let after = scrape(addr).await;
    assert_eq!(after.get(GRANTED), 4.0, "{after:?}");
    assert_eq!(after.get(HELD), 0.0, "every holder left the table");
    assert_eq!(
        after.get("leases_lost_total{cause=\"renewal_refused\"}"),
        1.0
    );
    assert_eq!(
        after.get("leases_lost_total{cause=\"deadline_exceeded\"}"),
        1.0
    );
    assert_eq!(after.get("leases_ended_total{reason=\"lost\"}"), 2.0);
    assert_eq!(after.get("leases_ended_total{reason=\"released\"}"), 1.0);
    assert_eq!(after.get("leases_ended_total{reason=\"shutdown\"}"), 1.0);
    assert!(after.get("leases_backend_errors_total{op=\"renew\"}") >= 1.0);
    // The renewal latency is a real histogram: a count, a sum and buckets.
    let renewals = after.get("leases_renewal_duration_seconds_count");
    assert!(
        renewals >= 3.0,
        "a's renewals, b's refused one, d's failed ones: {after:?}"
    );
    assert_eq!(
        after.get("leases_renewal_duration_seconds_bucket{le=\"+Inf\"}"),
        renewals
    );
    assert!(after.get("leases_renewal_duration_seconds_sum") >= 0.0);
    // The exporter renders the same text itself.
    assert!(exporter.render().contains("leases_acquires_total"));
}
