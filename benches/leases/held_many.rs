//! Leases held at once by one `ClientLeaser` over one connection (`--only held-many`):
//! on its `HoldMany` stream (one heartbeat per group per TTL/4), beside the baseline of
//! the same leaser on one `Hold` stream per lease (`ClientOptions::hold_many(false)`),
//! which one connection allows only up to `--max-streams-per-connection` (1024) leases
//! of. Each against a fresh `leases serve` process on the memory backend, reached
//! through a counting TCP relay in this process, so that every byte on the wire is
//! counted. Measured: the server's resident bytes per lease (growth of its RSS from
//! before the first acquire to 0.5 s after the last, per lease), the bytes each way per
//! lease per minute while the leases are held, an upper bound on the wire messages per
//! lease per minute (bytes / 7: no gRPC message of either call is smaller than 7 bytes,
//! its 5-byte header and a 2-byte `HoldRequest { heartbeat {} }`; HTTP/2 frame headers,
//! pings and window updates count too), and the leases lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leases::{ClientLeaser, ClientOptions, Key, Leaser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::report::ratio;
use crate::service_process::Server;

/// The TTL of the held leases (as in the service section): heartbeats every 2.5 s.
const TTL: Duration = Duration::from_secs(10);

/// A TCP relay that counts the bytes it forwards each way.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    n: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(read) = from.read(&mut buf).await {
        if read == 0 || to.write_all(&buf[..read]).await.is_err() {
            break;
        }
        n.fetch_add(read as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, u.clone()));
                tokio::spawn(pipe(sr, cw, d.clone()));
            }
        });
        Relay { addr, up, down }
    }

    fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

struct Row {
    leases: usize,
    server_bytes_per_lease: u64,
    up_per_lease_minute: f64,
    down_per_lease_minute: f64,
    messages_per_lease_minute: f64,
    lost: usize,
    acquire_secs: f64,
    window_secs: f64,
    /// CPU per wall second over the window: the server process, and this one (the
    /// client and the relay).
    server_cpu: f64,
    client_cpu: f64,
}

/// Holds `n` leases through one `ClientLeaser` for `window`.
async fn held(n: usize, window: Duration, hold_many: bool) -> Row {
    let server = Server::ours();
    let relay = Relay::start(server.url().trim_start_matches("http://").parse().unwrap()).await;
    let options = ClientOptions::new(format!("http://{}", relay.addr)).hold_many(hold_many);
    let leaser = ClientLeaser::connect_with(options).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server_before = server.rss();
    let started = Instant::now();
    // The closure gets its own handle: `leaser` stays open until the end.
    let each = leaser.clone();
    let held = crate::report::spread(n, 64, move |i| {
        let leaser = each.clone();
        async move {
            let k = Key::system(["held-many".to_string(), i.to_string()]);
            leaser.acquire_lease(k, TTL).await.expect("free keys")
        }
    })
    .await;
    let acquire_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server_after = server.rss();
    let (up0, down0) = relay.bytes();
    let (server_cpu0, client_cpu0) = (server.cpu(), crate::scale::cpu_seconds());
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let (up1, down1) = relay.bytes();
    let wall = t0.elapsed().as_secs_f64();
    let server_cpu = (server.cpu() - server_cpu0) / wall;
    let client_cpu = (crate::scale::cpu_seconds() - client_cpu0) / wall;
    let minutes = wall / 60.0;
    let lost = held.iter().filter(|(_, ctx)| ctx.is_cancelled()).count();
    // Why the lost ones ended, for the record (the first words of each reason).
    let mut why: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, ctx) in &held {
        if let Some(reason) = ctx.reason() {
            let r: String = format!("{reason}").chars().take(80).collect();
            *why.entry(r).or_default() += 1;
        }
    }
    for (r, n) in why {
        eprintln!("held-many: {n} lost: {r}");
    }
    let releases: Vec<_> = held
        .into_iter()
        .map(|(lease, _)| tokio::spawn(lease.release()))
        .collect();
    for r in releases {
        let _ = r.await;
    }
    let per = |b: u64| b as f64 / n as f64 / minutes;
    Row {
        leases: n,
        server_bytes_per_lease: server_after.saturating_sub(server_before) / n as u64,
        up_per_lease_minute: per(up1 - up0),
        down_per_lease_minute: per(down1 - down0),
        messages_per_lease_minute: per(up1 - up0 + down1 - down0) / 7.0,
        lost,
        acquire_secs,
        window_secs: minutes * 60.0,
        server_cpu,
        client_cpu,
    }
}

/// The section: the baseline (`Hold` streams, 1000 leases) first, then `HoldMany`.
pub async fn held_many_section(leases: usize, window: Duration, base_window: Duration) {
    println!(
        "\n## Lease service: leases held by one ClientLeaser over one connection (memory backend, TTL {TTL:?}: heartbeats every {:.1} s; a fresh server process per row)\n",
        (TTL / 4).as_secs_f64()
    );
    println!("| stream | leases | window | server resident bytes per lease | vs baseline | bytes up per lease per minute | bytes down per lease per minute | wire messages per lease per minute, at most | vs baseline | server CPU per wall second | client (and relay) CPU per wall second | lost | time to acquire all |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let base = held(leases.min(1000), base_window, false).await;
    let ours = held(leases, window, true).await;
    for (name, r) in [
        ("Hold, one per lease (baseline)", &base),
        ("HoldMany", &ours),
    ] {
        println!(
            "| {name} | {} | {:.0} s | {} | {} | {:.2} | {:.2} | {:.4} | {} | {:.1} % of a core | {:.1} % of a core | {} | {:.1} s |",
            r.leases,
            r.window_secs,
            r.server_bytes_per_lease,
            ratio(
                r.server_bytes_per_lease as f64,
                base.server_bytes_per_lease as f64
            ),
            r.up_per_lease_minute,
            r.down_per_lease_minute,
            r.messages_per_lease_minute,
            ratio(r.messages_per_lease_minute, base.messages_per_lease_minute),
            r.server_cpu * 100.0,
            r.client_cpu * 100.0,
            r.lost,
            r.acquire_secs,
        );
    }
}
