//! Adversarial review of the remote-holder rule (918e527): each test is one way a key
//! held for a client of the lease service can be granted to someone else while the
//! client may still act by the rule ("a remote client is a holder until it has surely
//! heard or its promised time has passed").
//!
//! Real sockets and the real clock; every bound is a lower bound the server must
//! respect whatever the machine's speed (the time a promise was made is measured from
//! before the request was sent, so the server's own promise can only be later), with
//! margins of many seconds between what a correct server does and what a faulty one
//! does.
#![cfg(feature = "server")]

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use leases::backend::{Backend, MemoryBackend};
use leases::proto::leases::v1::hold_request::Kind as In;
use leases::proto::leases::v1::hold_response::Kind as Out;
use leases::proto::leases::v1::{Acquire, HoldRequest, HoldResponse};
use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseResponse;
use leases::service::{LeaseServer, ServeOptions};
use leases::{Key, Leaser};
use prost::Message;
use support::remote::{client_at, ftl_request, granted_at, local, manager_on, RawStream, FTL, TTL};
use support::slowed::{Op, Slowed};
use tokio::time::Instant;

// ---------------------------------------------------------- FTL revokes -----

/// An FTL stream's promise is the heartbeat window of its last request (`Held::promised`:
/// last + window; the window is the last request's TTL, at most the acquiring one's). After a revoke (here through
/// another manager on the same store, as through another server) the stream ends with
/// `RESOURCE_EXHAUSTED` and `give_back` keeps the `Lease` until that promise. But the
/// manager stops renewing a kept lease as soon as its context ends, so the store frees
/// the key one lease TTL after the last renewal, whatever the server promised: the
/// key is granted elsewhere while the FTL client, which acts until it sees an error
/// (and FTL's Go runtime never reads its answers), is still a holder by the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_ftl_key_stays_taken_for_its_heartbeat_window() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let a = manager_on(store.clone()).await;
    let b = manager_on(store.clone()).await;
    let server = LeaseServer::start(a.clone(), local()).await.unwrap();
    let key = Key::system(["review", "ftl", "revoke"]);
    let mut s = RawStream::open(server.local_addr(), FTL).await;
    // Acquired with a TTL of 3 s; the heartbeat then asks for a 20 s window. A request's
    // TTL sets the key's heartbeat window, up to the TTL it was acquired with (ftl.rs):
    // the store holds the key for that (and half again), and no more.
    s.send(&ftl_request(&key, TTL * 3));
    let _: AcquireLeaseResponse = s.next().await.expect("the acquire's answer");
    let window = TTL * 3;
    let sent = Instant::now();
    s.send(&ftl_request(&key, TTL * 20));
    let _: AcquireLeaseResponse = s.next().await.expect("the heartbeat's answer");
    // Revoked through another manager of the store.
    assert!(b.revoke(&key).await.unwrap());
    let at = granted_at(&b, &key, window * 2).await;
    assert!(
        at >= sent + window,
        "guarantee 1 (exclusion, remote-holder rule): the revoked FTL key was granted \
         elsewhere {:?} after the client's last request, {:?} before its heartbeat window \
         ({window:?}) ran out",
        at - sent,
        sent + window - at
    );
    drop(s);
    server.shutdown().await.unwrap();
}

/// A store that records when each renewal was confirmed (to place a request between two
/// renewals on purpose).
struct Recorded {
    inner: MemoryBackend,
    renewed: std::sync::Mutex<Vec<(Key, Instant)>>,
}

impl Recorded {
    fn renewals_after(&self, key: &Key, after: Option<Instant>) -> Vec<Instant> {
        self.renewed
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, at)| k == key && after.is_none_or(|a| *at > a))
            .map(|(_, at)| *at)
            .collect()
    }
}

forward_backend! {
    Recorded => inner;
    forward: acquire, release, revoke, info, subscribe_freed;
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<leases::backend::RenewOutcome, leases::BackendError> {
        let outcome = self.inner.renew(key, token, ttl).await;
        if matches!(outcome, Ok(leases::backend::RenewOutcome::Renewed)) {
            self.renewed
                .lock()
                .unwrap()
                .push((key.clone(), Instant::now()));
        }
        outcome
    }
}

/// The same gap with FTL's Go runtime's own requests (every heartbeat carries the
/// lease's TTL, 3 s here): a heartbeat that arrives between two renewals promises the
/// client up to a renewal interval (TTL/3) more than the store keeps a revoked key,
/// since renewal stops at the revoke. The heartbeat is sent half a second after a
/// confirmed renewal and the revoke follows at once; an attempt in which another
/// renewal was confirmed before the revoke (a stalled machine) is tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_ftl_key_stays_taken_for_a_same_ttl_heartbeat() {
    let ttl = TTL * 3;
    for attempt in 0..5 {
        let store = Arc::new(Recorded {
            inner: MemoryBackend::new(),
            renewed: Default::default(),
        });
        let a = manager_on(store.clone()).await;
        let b = manager_on(store.clone()).await;
        let server = LeaseServer::start(a.clone(), local()).await.unwrap();
        let key = Key::system(["review", "ftl", "same-ttl", &attempt.to_string()]);
        let mut s = RawStream::open(server.local_addr(), FTL).await;
        s.send(&ftl_request(&key, ttl));
        let _: AcquireLeaseResponse = s.next().await.expect("the acquire's answer");
        // The first confirmed renewal.
        let first = tokio::time::timeout(ttl * 2, async {
            loop {
                if let Some(at) = store.renewals_after(&key, None).first() {
                    return *at;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a renewal within two TTLs");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = Instant::now();
        s.send(&ftl_request(&key, ttl));
        let _: AcquireLeaseResponse = s.next().await.expect("the heartbeat's answer");
        // Revoked through the same server's manager (as `leases revoke` does).
        assert!(a.revoke(&key).await.unwrap());
        let at = granted_at(&b, &key, ttl * 4).await;
        if !store.renewals_after(&key, Some(first)).is_empty() {
            // Another renewal came before the revoke: not the case under test.
            drop(s);
            server.shutdown().await.unwrap();
            continue;
        }
        assert!(
            at >= sent + ttl,
            "guarantee 1 (exclusion, remote-holder rule): the revoked FTL key was granted \
             elsewhere {:?} after the client's last heartbeat (TTL {ttl:?}), {:?} before \
             its heartbeat window ran out",
            at - sent,
            sent + ttl - at
        );
        drop(s);
        server.shutdown().await.unwrap();
        return;
    }
    panic!("setup: every attempt saw a renewal between the heartbeat and the revoke");
}

// ------------------------------------------------------ server shutdown -----

/// `LeaseServer::shutdown`: "a native stream whose client has not hung up (its
/// connection broke, say) keeps its lease until the time left it last promised has run
/// out". A `ClientLeaser` that hears the `ended(SHUTDOWN)` answer has stopped (its
/// context ended at once) and hangs up; yet it never sends `release` (it maps SHUTDOWN
/// to a loss, "after a loss it never does"), and the server reads a half-close without
/// `release` as a broken stream, so a graceful shutdown with healthy clients waits out
/// every client's whole promise (up to the 24 h `MAX_TTL`) with the key taken by
/// nobody. A local manager gives a live lease back at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shutdown_does_not_wait_out_a_client_that_heard() {
    let manager = manager_on(Arc::new(MemoryBackend::new())).await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let client = client_at(server.local_addr()).await;
    let key = Key::system(["review", "shutdown", "heard"]);
    let ttl = Duration::from_secs(20);
    let (lease, ctx) = client.acquire_lease(key.clone(), ttl).await.unwrap();
    let started = Instant::now();
    let stopping = tokio::spawn(server.shutdown());
    let reason = tokio::time::timeout(Duration::from_secs(5), ctx.cancelled())
        .await
        .expect("the client hears the shutdown");
    // The holder has stopped; it lets go of its lease too.
    drop(lease);
    stopping.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took < ttl / 2,
        "liveness: LeaseServer::shutdown took {took:?} (lease TTL {ttl:?}) although its \
         only client heard the shutdown ({reason}), stopped and let go of its lease; the \
         key stayed taken by nobody meanwhile"
    );
    manager.shutdown().await;
}

// ------------------------------------------- FTL acquires in flight -----

/// A store whose acquires of keys under `/system/slow` take `delay`.
fn slow_acquires(delay: Duration) -> Slowed {
    Slowed::new(move |op, key| {
        (op == Op::Acquire && key.to_string().starts_with("/system/slow")).then_some(delay)
    })
}

/// (passes) An FTL stream reset while one of its acquires is still running: the client
/// was never told it holds that key, so the grant goes back as soon as the store makes
/// it (it is not kept for a heartbeat window, nor for a TTL), while the key the client
/// was told about is kept for its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ftl_acquire_in_flight_at_a_reset_is_given_back_at_once() {
    let delay = TTL * 2;
    let store = Arc::new(slow_acquires(delay));
    let a = manager_on(store.clone()).await;
    let server = LeaseServer::start(a.clone(), local()).await.unwrap();
    let told = Key::system(["review", "told"]);
    let slow = Key::system(["slow", "review"]);
    let mut s = RawStream::open(server.local_addr(), FTL).await;
    let window = TTL * 20;
    let sent = Instant::now();
    s.send(&ftl_request(&told, window));
    let _: AcquireLeaseResponse = s.next().await.expect("the acquire's answer");
    s.send(&ftl_request(&slow, window));
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.reset(h2::Reason::CANCEL);
    let reset = Instant::now();
    // The slow key: free about when its acquire finishes on the store.
    let other = manager_on(store.clone()).await;
    let at = granted_at(&other, &slow, window).await;
    assert!(
        at - reset < delay + TTL * 3,
        "liveness: a grant nobody was told of came back {:?} after the reset (its acquire \
         took {delay:?})",
        at - reset
    );
    // The key the client was told of: kept for its window.
    let at = granted_at(&other, &told, window * 2).await;
    assert!(
        at >= sent + window,
        "guarantee 1: the key the reset client was told of came back {:?} before its window",
        sent + window - at
    );
    server.shutdown().await.unwrap();
}

// ------------------------------------------------------------- HTTP/1.1 -----

/// A native `Hold` stream over plain HTTP/1.1 (the server accepts HTTP/1; the reset
/// wrapper only looks at HTTP/2 bodies): a chunked request body, read by hand.
struct Http1Hold {
    tcp: tokio::net::TcpStream,
    raw: BytesMut,
    body: BytesMut,
    head_done: bool,
}

impl Http1Hold {
    async fn open(addr: SocketAddr) -> Http1Hold {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /leases.v1.Leases/Hold HTTP/1.1\r\nhost: {addr}\r\n\
             content-type: application/grpc\r\nte: trailers\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        Http1Hold {
            tcp,
            raw: BytesMut::new(),
            body: BytesMut::new(),
            head_done: false,
        }
    }

    async fn send(&mut self, message: &impl Message) {
        use tokio::io::AsyncWriteExt;
        let bytes = message.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        frame.extend_from_slice(&bytes);
        let mut chunk = format!("{:x}\r\n", frame.len()).into_bytes();
        chunk.extend_from_slice(&frame);
        chunk.extend_from_slice(b"\r\n");
        self.tcp.write_all(&chunk).await.unwrap();
    }

    /// The last chunk: the request body ends cleanly (a half-close).
    async fn end(&mut self) {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(b"0\r\n\r\n").await.unwrap();
    }

    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.head_done {
            if let Some(i) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.raw[..i]).to_string();
                assert!(head.starts_with("HTTP/1.1 200"), "answer head: {head}");
                self.raw.advance(i + 4);
                self.head_done = true;
            } else {
                return;
            }
        }
        while let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&self.raw[..i]).to_string();
            let len = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if self.raw.len() < i + 2 + len + 2 {
                return;
            }
            self.raw.advance(i + 2);
            let data = self.raw.split_to(len);
            self.raw.advance(2);
            self.body.extend_from_slice(&data);
            if len == 0 {
                return;
            }
        }
    }

    async fn next(&mut self) -> Option<HoldResponse> {
        use tokio::io::AsyncReadExt;
        loop {
            self.dechunk();
            if self.body.len() >= 5 {
                let len = u32::from_be_bytes(self.body[1..5].try_into().unwrap()) as usize;
                if self.body.len() >= 5 + len {
                    self.body.advance(5);
                    return Some(HoldResponse::decode(self.body.split_to(len)).unwrap());
                }
            }
            let mut buf = [0u8; 4096];
            let n = self.tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }
}

/// (passes) Over HTTP/1.1 too, only `release` frees the key at once: a connection cut
/// in the middle of the chunked request body, and a clean end of the body without
/// `release`, both keep the key until the promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_hold_stream_keeps_the_key_until_its_promise() {
    for (i, clean_end) in [false, true].into_iter().enumerate() {
        let manager = manager_on(Arc::new(MemoryBackend::new())).await;
        let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
        let key = Key::system(["review", "http1", &i.to_string()]);
        let mut s = Http1Hold::open(server.local_addr()).await;
        let sent = Instant::now();
        s.send(&HoldRequest {
            kind: Some(In::Acquire(Acquire {
                key: key.to_string(),
                ttl: Some((TTL * 3).try_into().unwrap()),
                metadata: Vec::new(),
                wait: None,
                resume: None,
            })),
        })
        .await;
        let left = match s.next().await.map(|a| a.kind) {
            Some(Some(Out::Granted(g))) => Duration::try_from(g.time_left.unwrap()).unwrap(),
            other => panic!("not granted over HTTP/1.1: {other:?}"),
        };
        let promised = sent + left;
        if clean_end {
            s.end().await;
        } else {
            drop(s);
        }
        let at = granted_at(&manager, &key, TTL * 10).await;
        assert!(
            at >= promised,
            "guarantee 1 (remote-holder rule) over HTTP/1.1 ({}): the key was granted {:?} \
             before the promise ran out",
            if clean_end {
                "body ended without release"
            } else {
                "connection cut mid-body"
            },
            promised - at
        );
        server.shutdown().await.unwrap();
    }
}

/// (passes) `max_keys_per_stream` counts acquires still running: with a limit of one, a
/// second key asked for while the first is being acquired is refused (after the first
/// key's answer, in request order) and never taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_key_limit_counts_acquires_in_flight() {
    let store = Arc::new(slow_acquires(TTL));
    let manager = manager_on(store.clone()).await;
    let options = ServeOptions {
        max_keys_per_stream: 1,
        ..local()
    };
    let server = LeaseServer::start(manager.clone(), options).await.unwrap();
    let first = Key::system(["slow", "limit"]);
    let second = Key::system(["review", "limit"]);
    let mut s = RawStream::open(server.local_addr(), FTL).await;
    s.send(&ftl_request(&first, TTL * 5));
    s.send(&ftl_request(&second, TTL * 5));
    let answer: Option<AcquireLeaseResponse> =
        tokio::time::timeout(TTL * 5, s.next()).await.unwrap();
    assert!(answer.is_some(), "the first key's answer comes first");
    let next: Option<AcquireLeaseResponse> = tokio::time::timeout(TTL * 5, s.next()).await.unwrap();
    assert!(next.is_none(), "the second key is refused");
    let trailers = s.body.trailers().await.ok().flatten();
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-message"))
        .map(|v| v.to_str().unwrap_or("").to_string());
    assert!(
        status
            .as_deref()
            .is_some_and(|m| m.contains("too%20many%20keys") || m.contains("too many keys")),
        "refused for the limit: {trailers:?}"
    );
    assert!(
        manager.lease_info(&second).await.unwrap().is_none(),
        "the refused key was never taken"
    );
    server.shutdown().await.unwrap();
}
