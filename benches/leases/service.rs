//! The lease service (`leases serve`, memory backend) over gRPC, beside its floor (f):
//! a bare tonic server of the same FTL `LeaseService` (the generated trait and wire)
//! that answers each request with an empty message and holds nothing.
//!
//! Both servers run in processes of their own with the same runtime (tokio's
//! multi-threaded, one worker per core) and are reached over 127.0.0.1 through one
//! HTTP/2 connection; the clients run in this process. Measured:
//! - acquire+release pairs per second with 1 and 64 concurrent streams, and p50/p99 of
//!   one pair: ours through `ClientLeaser` (a lane of its native `HoldMany` stream, and
//!   a `Hold` stream of its own: acquire, granted, release, ended) and through the raw FTL protocol (open a stream, one request, read
//!   the answer, close, read the call's end), and the floor doing the same FTL cycle;
//! - leases held at once through `ClientLeaser` (several connections, since one
//!   connection carries at most `--max-streams-per-connection` streams): the resident
//!   bytes per lease of the server process, and of this (client) process, the CPU per
//!   wall second of each while the heartbeats run, and the leases lost.
//!
//! The floor runs as this binary with `--service-floor`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use leases::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
use leases::proto::xyz::block::ftl::lease::v1::lease_service_server::{
    LeaseService, LeaseServiceServer,
};
use leases::proto::xyz::block::ftl::lease::v1::{AcquireLeaseRequest, AcquireLeaseResponse};
use leases::proto::xyz::block::ftl::v1::{PingRequest, PingResponse};
use leases::{ClientLeaser, Key, Leaser};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::args::Sizes;
use crate::report::{median_by, ratio};
use crate::scale::{cpu_seconds, rss_bytes};
use crate::service_process::Server;
use crate::throughput::Throughput;

/// The TTL of the pairs (as in the memory section).
const PAIR_TTL: Duration = Duration::from_secs(30);
/// The TTL of the held leases: `ClientLeaser` heartbeats every TTL/4 (2.5 s), the
/// server's manager renews every TTL/3.
const HELD_TTL: Duration = Duration::from_secs(10);
/// Held leases per connection (below the server's default of 1024 streams).
const HELD_PER_CONNECTION: usize = 1000;

/// The floor: the FTL service, answering each request with an empty message.
struct Floor;

type Answers = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<AcquireLeaseResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl LeaseService for Floor {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse { not_ready: None }))
    }

    type AcquireLeaseStream = Answers;

    async fn acquire_lease(
        &self,
        request: Request<Streaming<AcquireLeaseRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let answers = request
            .into_inner()
            .map(|r| r.map(|_| AcquireLeaseResponse {}));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// The floor's process: serves on a free port of 127.0.0.1, prints the address, and
/// serves until killed.
pub fn floor_child() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("floor: listening on {}", listener.local_addr().unwrap());
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .max_concurrent_streams(1024)
            .add_service(LeaseServiceServer::new(Floor))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
}

/// One acquire+release cycle on a key; `Err` says what failed.
#[async_trait]
trait Cycle: Send + Sync + 'static {
    async fn cycle(&self, key: &Key) -> Result<(), String>;
}

/// Ours through `ClientLeaser`: acquire, then release (which waits for the server's
/// confirmation).
struct Native(ClientLeaser);

#[async_trait]
impl Cycle for Native {
    async fn cycle(&self, key: &Key) -> Result<(), String> {
        let (lease, _ctx) = self
            .0
            .acquire_lease(key.clone(), PAIR_TTL)
            .await
            .map_err(|e| format!("acquire: {e}"))?;
        lease.release().await.map_err(|e| format!("release: {e}"))
    }
}

/// The raw FTL protocol: open a stream, one request, read its answer, close our side,
/// read the call to its end.
struct Ftl(Channel);

#[async_trait]
impl Cycle for Ftl {
    async fn cycle(&self, key: &Key) -> Result<(), String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _ = tx.send(AcquireLeaseRequest {
            key: key.segments().to_vec(),
            ttl: Some(prost_types::Duration {
                seconds: PAIR_TTL.as_secs() as i64,
                nanos: 0,
            }),
        });
        let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let status = |what: &str, s: Status| format!("{what}: {:?} {}", s.code(), s.message());
        let mut answers = LeaseServiceClient::new(self.0.clone())
            .acquire_lease(outgoing)
            .await
            .map_err(|s| status("call", s))?
            .into_inner();
        answers
            .message()
            .await
            .map_err(|s| status("answer", s))?
            .ok_or("no answer")?;
        drop(tx);
        while answers
            .message()
            .await
            .map_err(|s| status("end", s))?
            .is_some()
        {}
        Ok(())
    }
}

/// `streams` tasks each run cycles on their own 16 keys for `secs`. Failed cycles are
/// not counted as pairs; they are counted and the first is printed.
async fn pairs(subject: Arc<dyn Cycle>, streams: usize, secs: f64) -> (Throughput, usize) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..streams {
        let s = subject.clone();
        tasks.push(tokio::spawn(async move {
            let keys: Vec<Key> = (0..16)
                .map(|i| Key::system(["bench", &c.to_string(), &i.to_string()]))
                .collect();
            let mut lat = Vec::new();
            let mut failed = Vec::new();
            let mut n = 0usize;
            while Instant::now() < end {
                let t = Instant::now();
                match s.cycle(&keys[n % 16]).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => failed.push(e),
                }
                n += 1;
            }
            (lat, failed)
        }));
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut failed = Vec::new();
    for t in tasks {
        let (l, f) = t.await.unwrap();
        lat.extend(l);
        failed.extend(f);
    }
    if let Some(first) = failed.first() {
        eprintln!(
            "{} of {} cycles failed ({streams} streams); the first: {first}",
            failed.len(),
            failed.len() + lat.len()
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let t = Throughput {
        per_sec: lat.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    };
    (t, failed.len())
}

struct Held {
    leases: usize,
    connections: usize,
    server_bytes_per_lease: u64,
    client_bytes_per_lease: u64,
    server_cpu: f64,
    client_cpu: f64,
    lost: usize,
    acquire_secs: f64,
}

/// Holds `n` leases through `ClientLeaser` on a fresh server for `window` while they
/// heartbeat, then releases them.
async fn held(n: usize, window: Duration) -> Held {
    let server = Server::ours();
    let connections = n.div_ceil(HELD_PER_CONNECTION).max(1);
    let mut leasers = Vec::new();
    for _ in 0..connections {
        leasers.push(ClientLeaser::connect(server.url()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (server_before, client_before) = (server.rss(), rss_bytes());
    let started = Instant::now();
    let each = leasers.clone();
    let held = crate::report::spread(n, 8, move |i| {
        let leaser = each[i % each.len()].clone();
        async move {
            let k = Key::system(["held".to_string(), i.to_string()]);
            leaser.acquire_lease(k, HELD_TTL).await.expect("free keys")
        }
    })
    .await;
    let acquire_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (server_after, client_after) = (server.rss(), rss_bytes());
    let (server_cpu0, client_cpu0, t0) = (server.cpu(), cpu_seconds(), Instant::now());
    tokio::time::sleep(window).await;
    let wall = t0.elapsed().as_secs_f64();
    let server_cpu = (server.cpu() - server_cpu0) / wall;
    let client_cpu = (cpu_seconds() - client_cpu0) / wall;
    let lost = held.iter().filter(|(_, ctx)| ctx.is_cancelled()).count();
    let releases: Vec<_> = held
        .into_iter()
        .map(|(lease, _)| tokio::spawn(lease.release()))
        .collect();
    for r in releases {
        let _ = r.await;
    }
    Held {
        leases: n,
        connections,
        server_bytes_per_lease: server_after.saturating_sub(server_before) / n as u64,
        client_bytes_per_lease: client_after.saturating_sub(client_before) / n as u64,
        server_cpu,
        client_cpu,
        lost,
        acquire_secs,
    }
}

pub async fn service_section(s: &Sizes) {
    // The held leases first, while this process's heap is still small.
    let h = held(s.service_held, s.service_window).await;

    println!(
        "\n## Lease service: acquire+release pairs over gRPC (memory backend, TTL {PAIR_TTL:?}; servers in their own processes, one HTTP/2 connection over 127.0.0.1; each cell the median of {} runs of {:.1} s, implementations interleaved)\n",
        s.rounds, s.secs
    );
    println!("| implementation | pairs/s, 1 stream | pairs/s, 64 streams | pair p50, 1 stream | pair p99, 1 stream | pair p50, 64 streams | pair p99, 64 streams | 64 streams vs (f) | failed cycles |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let ours = Server::ours();
    let floor = Server::floor();
    let hold_streams = leases::ClientOptions::new(ours.url()).hold_many(false);
    let subjects: [(&str, Arc<dyn Cycle>); 4] = [
        (
            "leases serve, ClientLeaser (native HoldMany stream)",
            Arc::new(Native(ClientLeaser::connect(ours.url()).await.unwrap())),
        ),
        (
            "leases serve, ClientLeaser (native Hold stream per lease)",
            Arc::new(Native(
                ClientLeaser::connect_with(hold_streams).await.unwrap(),
            )),
        ),
        (
            "leases serve, raw FTL AcquireLease stream",
            Arc::new(Ftl(ours.channel().await)),
        ),
        (
            "(f) bare tonic FTL service, empty answers",
            Arc::new(Ftl(floor.channel().await)),
        ),
    ];
    // [subject][cell] -> runs; cells: 1 stream, 64 streams.
    let mut runs: Vec<[Vec<Throughput>; 2]> = (0..subjects.len())
        .map(|_| [Vec::new(), Vec::new()])
        .collect();
    let mut failed = vec![0; subjects.len()];
    for _ in 0..s.rounds {
        for (cell, streams) in [(0, 1), (1, 64)] {
            for (i, (_, subject)) in subjects.iter().enumerate() {
                let (t, f) = pairs(subject.clone(), streams, s.secs).await;
                runs[i][cell].push(t);
                failed[i] += f;
            }
        }
    }
    let results: Vec<(Throughput, Throughput)> = runs
        .into_iter()
        .map(|[one, many]| {
            (
                median_by(one, |t| t.per_sec),
                median_by(many, |t| t.per_sec),
            )
        })
        .collect();
    let floor64 = results[3].1.per_sec;
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    for (((name, _), (one, many)), failed) in subjects.iter().zip(&results).zip(&failed) {
        println!(
            "| {name} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {failed} |",
            one.per_sec,
            many.per_sec,
            us(one.p50),
            us(one.p99),
            us(many.p50),
            us(many.p99),
            ratio(many.per_sec, floor64),
        );
    }

    println!(
        "\n## Lease service: leases held at once through ClientLeaser (memory backend, TTL {HELD_TTL:?}: heartbeats every {:.1} s, server renewals every {:.1} s; a fresh server process, at most {HELD_PER_CONNECTION} leases per connection)\n",
        (HELD_TTL / 4).as_secs_f64(),
        (HELD_TTL / 3).as_secs_f64()
    );
    println!("| leases | connections | resident bytes per lease, server process | resident bytes per lease, client process | server CPU per wall second | client CPU per wall second | lost over {:.1} s | time to acquire all |", s.service_window.as_secs_f64());
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {:.1} % of a core | {:.1} % of a core | {} | {:.1} s |",
        h.leases,
        h.connections,
        h.server_bytes_per_lease,
        h.client_bytes_per_lease,
        h.server_cpu * 100.0,
        h.client_cpu * 100.0,
        h.lost,
        h.acquire_secs
    );
}
