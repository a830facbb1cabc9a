//! The TCP fault proxy of the test harness (`support/proxy/`), checked against a tiny
//! local echo server: each fault mode, `reset_all`, dropping the proxy, and schedules.

mod support;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::proxy::{Fault, FaultProxy, FaultSchedule, Step};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};

/// How long a read must stay silent to count as "nothing arrives".
const SILENCE: Duration = Duration::from_millis(300);
/// Generous bound for things that must happen, so a loaded machine doesn't flake.
const SOON: Duration = Duration::from_secs(5);

/// An echo server that counts the bytes it received.
struct Echo {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
}

async fn echo_server() -> Echo {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Echo { addr, received }
}

async fn setup() -> (Echo, FaultProxy) {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo.addr).await;
    (echo, proxy)
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Writes `msg` and expects exactly it back.
async fn roundtrip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    timeout(SOON, stream.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(buf, msg);
}

/// Asserts nothing arrives on `stream` for `SILENCE`.
async fn assert_silent(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(SILENCE, stream.read(&mut buf)).await {
        Err(_) => {}
        Ok(r) => panic!("expected silence, read returned {r:?}"),
    }
}

/// Asserts the peer aborted `stream` with a RST.
async fn assert_reset(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let r = timeout(SOON, stream.read(&mut buf))
        .await
        .expect("reset in time");
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a connection reset, read returned Ok({n})"),
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn pass_echoes_and_counts() {
    let (_echo, proxy) = setup().await;
    assert_ne!(proxy.port(), 0);
    let mut client = connect(&proxy).await;
    roundtrip(&mut client, b"hello").await;
    assert_eq!(proxy.connections(), 1);
    let c = proxy.counters();
    assert_eq!((c.accepted, c.to_server, c.to_client), (1, 5, 5));

    // A clean close ends the proxied connection too.
    drop(client);
    wait_until("the connection to end", || proxy.connections() == 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delay_adds_latency_each_way() {
    let (_echo, proxy) = setup().await;
    let mut client = connect(&proxy).await;
    roundtrip(&mut client, b"warm").await;

    let delay = Duration::from_millis(150);
    proxy.set(Fault::Delay(delay));
    let start = Instant::now();
    roundtrip(&mut client, b"slow").await;
    // One-sided: each direction adds the delay; no upper bound on a shared machine.
    assert!(start.elapsed() >= 2 * delay, "{:?}", start.elapsed());

    proxy.set(Fault::Pass);
    roundtrip(&mut client, b"fast").await;
}

#[tokio::test]
async fn blackhole_discards_both_ways_and_never_replays() {
    let (echo, proxy) = setup().await;
    let mut client = connect(&proxy).await;
    roundtrip(&mut client, b"before").await;

    proxy.set(Fault::Blackhole);
    client.write_all(b"lost").await.unwrap();
    assert_silent(&mut client).await;
    // A new connection is accepted but reaches nothing.
    let mut late = connect(&proxy).await;
    late.write_all(b"gone").await.unwrap();
    assert_silent(&mut late).await;
    assert_eq!(echo.received.load(Ordering::SeqCst), 6);

    proxy.set(Fault::Pass);
    // Exactly the new bytes come back: "lost" and "gone" were discarded, not held.
    roundtrip(&mut client, b"after").await;
    roundtrip(&mut late, b"late").await;
    assert_eq!(echo.received.load(Ordering::SeqCst), 6 + 5 + 4);
}

#[tokio::test]
async fn reset_aborts_existing_and_new_connections() {
    let (_echo, proxy) = setup().await;
    let mut client = connect(&proxy).await;
    roundtrip(&mut client, b"hi").await;

    proxy.set(Fault::Reset);
    assert_reset(&mut client).await;
    let mut late = connect(&proxy).await;
    assert_reset(&mut late).await;
    wait_until("no live connections", || proxy.connections() == 0).await;

    proxy.set(Fault::Pass);
    let mut again = connect(&proxy).await;
    roundtrip(&mut again, b"back").await;
}

#[tokio::test]
async fn half_open_forwards_writes_but_never_answers() {
    let (echo, proxy) = setup().await;
    let mut client = connect(&proxy).await;
    roundtrip(&mut client, b"x").await;

    proxy.set(Fault::HalfOpen);
    client.write_all(b"0123456789").await.unwrap();
    assert_silent(&mut client).await;
    wait_until("the server to get the bytes", || {
        echo.received.load(Ordering::SeqCst) == 11
    })
    .await;
    assert_eq!(proxy.counters().to_client, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_drip_limits_the_rate() {
    let (_echo, proxy) = setup().await;
    let mut client = connect(&proxy).await;
    roundtrip(&mut client, b"x").await;

    proxy.set(Fault::SlowDrip {
        bytes: 100,
        every: Duration::from_millis(20),
    });
    let msg = vec![7u8; 1000];
    let start = Instant::now();
    roundtrip(&mut client, &msg).await;
    // Ten slices of 100 bytes, 20 ms apart, in one direction alone: at least 180 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(180),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn reset_all_is_one_shot() {
    let (_echo, proxy) = setup().await;
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    roundtrip(&mut a, b"a").await;
    roundtrip(&mut b, b"b").await;

    proxy.reset_all();
    assert_reset(&mut a).await;
    assert_reset(&mut b).await;
    assert_eq!(proxy.fault(), Fault::Pass);

    let mut c = connect(&proxy).await;
    roundtrip(&mut c, b"c").await;
    assert_eq!(proxy.counters().accepted, 3);
}

#[tokio::test]
async fn dropping_the_proxy_closes_connections() {
    let (_echo, proxy) = setup().await;
    let addr = proxy.addr();
    let mut client = connect(&proxy).await;
    roundtrip(&mut client, b"x").await;

    drop(proxy);
    let mut buf = [0u8; 8];
    let r = timeout(SOON, client.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // The listener is gone too (give the abort a moment to land).
    sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[test]
fn random_schedules_are_deterministic_and_bounded() {
    let total = Duration::from_secs(20);
    let max_hold = Duration::from_millis(800);
    let a = FaultSchedule::random(42, total, max_hold);
    assert_eq!(a, FaultSchedule::random(42, total, max_hold));
    assert_ne!(a, FaultSchedule::random(43, total, max_hold));
    assert!(a.steps.len() > 5);

    let mut end = Duration::ZERO;
    for step in &a.steps {
        assert!(step.at >= end, "steps overlap: {step:?}");
        assert!(step.hold >= Duration::from_millis(50) && step.hold <= max_hold);
        assert_ne!(step.fault, Fault::Pass);
        end = step.at + step.hold;
    }
    assert!(end <= total);

    // Every kind of fault shows up across a few seeds.
    let kinds: std::collections::BTreeSet<String> = (0..5)
        .flat_map(|seed| FaultSchedule::random(seed, total, max_hold).steps)
        .map(|s| s.fault.to_string().split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
}

#[tokio::test]
async fn run_schedule_applies_steps_then_passes() {
    let (_echo, proxy) = setup().await;
    let schedule = FaultSchedule::new(vec![
        Step {
            at: Duration::from_millis(20),
            fault: Fault::Blackhole,
            hold: Duration::from_millis(100),
        },
        Step {
            at: Duration::from_millis(120),
            fault: Fault::Delay(Duration::from_millis(5)),
            hold: Duration::from_millis(50),
        },
    ]);
    let run = proxy.run_schedule(schedule);
    sleep(Duration::from_millis(70)).await;
    assert_eq!(proxy.fault(), Fault::Blackhole);
    let log = timeout(SOON, run).await.unwrap().unwrap();
    assert_eq!(proxy.fault(), Fault::Pass);
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log[0].ends_with("blackhole for 0.10s"), "{log:?}");
    assert!(log[1].ends_with("delay 5ms for 0.05s"), "{log:?}");
    assert!(log[2].ends_with("pass (end)"), "{log:?}");

    // The proxy still works afterwards.
    let mut client = connect(&proxy).await;
    roundtrip(&mut client, b"ok").await;
}
