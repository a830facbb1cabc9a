//! The lease service under test as a remote client sees it, shared by every test file
//! of the service: a server on a store (in this process, or a `leases serve` process),
//! `ClientLeaser`s, FTL streams through tonic, and raw HTTP/2 streams that can be reset
//! with any code (as an L7 proxy does upstream when its downstream client dies), for
//! the tests of the remote-holder rule.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use leases::backend::Backend;
use leases::proto::leases::v1::hold_many_request::Kind as ManyIn;
use leases::proto::leases::v1::hold_many_response::Kind as ManyOut;
use leases::proto::leases::v1::hold_request::Kind as In;
use leases::proto::leases::v1::hold_response::Kind as Out;
use leases::proto::leases::v1::{
    Acquire, GroupHeartbeat, HoldManyRequest, HoldManyResponse, HoldRequest, HoldResponse,
    LeaseAcquire,
};
use leases::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
use leases::proto::xyz::block::ftl::lease::v1::{AcquireLeaseRequest, AcquireLeaseResponse};
use leases::service::{LeaseServer, ServeOptions};
use leases::{AcquireOptions, ClientLeaser, ClientOptions, Key, LeaseManager};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

/// The path of FTL's `AcquireLease` stream.
pub const FTL: &str = "/xyz.block.ftl.lease.v1.LeaseService/AcquireLease";

/// The shortest TTL of the tests' managers and clients.
pub const TTL: Duration = Duration::from_secs(1);

/// The default options on a free port of 127.0.0.1.
pub fn loopback() -> ServeOptions {
    ServeOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServeOptions::default()
    }
}

/// [`loopback`] with a default FTL TTL of 2 s (for managers whose minimum is [`TTL`]).
pub fn local() -> ServeOptions {
    ServeOptions {
        default_ttl: Duration::from_secs(2),
        ..loopback()
    }
}

/// A manager on the memory backend whose minimum TTL is [`TTL`].
pub async fn memory_manager() -> LeaseManager {
    LeaseManager::builder().min_ttl(TTL).start().await.unwrap()
}

pub async fn manager_on(backend: Arc<dyn Backend>) -> LeaseManager {
    LeaseManager::builder()
        .backend(backend)
        .min_ttl(TTL)
        .start()
        .await
        .unwrap()
}

/// A client of the service at `url` asking for TTLs of at least [`TTL`].
pub async fn client_to(url: &str) -> ClientLeaser {
    ClientLeaser::connect_with(ClientOptions::new(url).min_ttl(TTL))
        .await
        .unwrap()
}

/// [`client_to`] the service at `addr`.
pub async fn client_at(addr: SocketAddr) -> ClientLeaser {
    client_to(&format!("http://{addr}")).await
}

/// [`client_to`] the service of `server`.
pub async fn client_of(server: &LeaseServer) -> ClientLeaser {
    client_at(server.local_addr()).await
}

/// [`client_of`] holding each lease on a `Hold` stream of its own, as against a server
/// from before `HoldMany`.
pub async fn hold_client_of(server: &LeaseServer) -> ClientLeaser {
    let url = format!("http://{}", server.local_addr());
    ClientLeaser::connect_with(ClientOptions::new(url).min_ttl(TTL).hold_many(false))
        .await
        .unwrap()
}

/// Reads `answers` to their end, each within 10 s: how many messages came, and the
/// status the stream ended with (`None` for a clean end).
pub async fn answers_to_end<M>(answers: &mut tonic::Streaming<M>) -> (u64, Option<tonic::Status>) {
    let mut n = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("an answer or the end within 10 s")
        {
            Ok(Some(_)) => n += 1,
            Ok(None) => return (n, None),
            Err(status) => return (n, Some(status)),
        }
    }
}

/// A plain gRPC channel (no token, no timeouts) to the service at `addr`.
pub async fn channel_at(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Waits (without polling) for `key` on `manager`; the instant it was granted.
pub async fn granted_at(manager: &LeaseManager, key: &Key, within: Duration) -> Instant {
    let options = AcquireOptions::new(TTL * 3).wait(within);
    let (lease, _ctx) = manager
        .acquire_lease_with(key.clone(), options)
        .await
        .expect("the key is given back within its promise");
    let at = Instant::now();
    drop(lease);
    at
}

// ---------------------------------------------------------- a server process -----

/// A `leases serve` process on a free port of 127.0.0.1; killed when dropped.
pub struct ServeProcess {
    /// The process.
    pub child: Child,
    /// Its URL, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// Starts `leases serve --min-ttl 1s` with the `extra` arguments; returns once it
    /// listens.
    pub fn start(extra: &[&str]) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_leases"))
            .args(["serve", "--bind", "127.0.0.1:0", "--min-ttl", "1s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("leases serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("leases serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        ServeProcess {
            child,
            url: format!("http://{addr}"),
        }
    }
}

// ------------------------------------------------------------ FTL streams -----

/// An FTL `AcquireLease` stream through tonic: requests go in through `tx`; answers
/// are read (or not).
pub struct FtlStream {
    pub tx: mpsc::UnboundedSender<AcquireLeaseRequest>,
    pub answers: tonic::Streaming<AcquireLeaseResponse>,
}

/// Opens an FTL stream on `channel` whose first request is `first`.
pub async fn ftl_open(
    channel: &Channel,
    first: AcquireLeaseRequest,
) -> Result<FtlStream, tonic::Status> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tx.send(first).unwrap();
    let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let answers = LeaseServiceClient::new(channel.clone())
        .acquire_lease(outgoing)
        .await?
        .into_inner();
    Ok(FtlStream { tx, answers })
}

// ------------------------------------------------------------- raw HTTP/2 -----

/// One gRPC stream over a raw HTTP/2 connection, so that a test can reset it with any
/// code (as an L7 proxy does upstream when its downstream client dies).
pub struct RawStream {
    pub send: h2::SendStream<Bytes>,
    pub body: h2::RecvStream,
    buf: BytesMut,
    _conn: h2::client::SendRequest<Bytes>,
}

impl RawStream {
    pub async fn open(addr: SocketAddr, path: &str) -> RawStream {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (conn, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut conn = conn.ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, send) = conn.send_request(request, false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        RawStream {
            send,
            body: response.into_body(),
            buf: BytesMut::new(),
            _conn: conn,
        }
    }

    pub fn send(&mut self, message: &impl Message) {
        let bytes = message.encode_to_vec();
        let mut frame = BytesMut::with_capacity(5 + bytes.len());
        frame.extend_from_slice(&[0]);
        frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        frame.extend_from_slice(&bytes);
        // A stream the server has ended refuses more data: the test reads why next.
        let _ = self.send.send_data(frame.freeze(), false);
    }

    /// The next message of the response, if the stream still has one.
    pub async fn next<M: Message + Default>(&mut self) -> Option<M> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let message = self.buf.split_to(len);
                    return Some(M::decode(message).unwrap());
                }
            }
            let chunk = self.body.data().await?.ok()?;
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The status in the stream's trailers, once its messages are read.
    pub async fn status(&mut self) -> tonic::Status {
        match self.body.trailers().await {
            Ok(Some(trailers)) => tonic::Status::from_header_map(&trailers)
                .unwrap_or_else(|| tonic::Status::unknown("no grpc-status")),
            other => tonic::Status::unknown(format!("no trailers: {other:?}")),
        }
    }

    pub fn reset(&mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
    }
}

/// Holds `key` over a raw native `Hold` stream; the stream, and the instant before
/// which the server cannot have promised the time left it answered with.
pub async fn raw_hold(addr: SocketAddr, key: &Key, ttl: Duration) -> (RawStream, Instant) {
    match raw_acquire(addr, key, ttl, None).await {
        Ok((s, _, promised)) => (s, promised),
        Err(status) => panic!("not granted: {status:?}"),
    }
}

/// Re-attaches the lease `(key, token)` on a new raw native `Hold` stream: the stream,
/// the token and the instant before which the server cannot have promised its time
/// left, or the status the server ended the stream with.
pub async fn raw_resume(
    addr: SocketAddr,
    key: &Key,
    ttl: Duration,
    token: u64,
) -> Result<(RawStream, u64, Instant), tonic::Status> {
    raw_acquire(addr, key, ttl, Some(token)).await
}

/// Acquires `key` (or re-attaches `resume`) on a new raw native `Hold` stream: as
/// [`raw_resume`].
async fn raw_acquire(
    addr: SocketAddr,
    key: &Key,
    ttl: Duration,
    resume: Option<u64>,
) -> Result<(RawStream, u64, Instant), tonic::Status> {
    let mut s = RawStream::open(addr, "/leases.v1.Leases/Hold").await;
    let sent = Instant::now();
    s.send(&HoldRequest {
        kind: Some(In::Acquire(Acquire {
            key: key.to_string(),
            ttl: Some(ttl.try_into().unwrap()),
            metadata: Vec::new(),
            wait: None,
            resume,
        })),
    });
    match s.next::<HoldResponse>().await {
        Some(HoldResponse {
            kind: Some(Out::Granted(g)),
        }) => {
            let left = Duration::try_from(g.time_left.unwrap()).unwrap();
            assert!(left > Duration::ZERO);
            Ok((s, g.token, sent + left))
        }
        Some(other) => panic!("not an answer to an acquire: {other:?}"),
        None => Err(s.status().await),
    }
}

/// Heartbeats on each of `streams` every `every` for `for_`; the first answer that is
/// not `renewed`, if any.
pub async fn raw_heartbeats(
    streams: &mut [&mut RawStream],
    for_: Duration,
    every: Duration,
) -> Result<(), String> {
    let until = Instant::now() + for_;
    while Instant::now() < until {
        for s in streams.iter_mut() {
            s.send(&HoldRequest {
                kind: Some(In::Heartbeat(leases::proto::leases::v1::Heartbeat {})),
            });
            match s.next::<HoldResponse>().await {
                Some(HoldResponse {
                    kind: Some(Out::Renewed(_)),
                }) => {}
                other => return Err(format!("{other:?}")),
            }
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

pub fn ftl_request(key: &Key, ttl: Duration) -> AcquireLeaseRequest {
    AcquireLeaseRequest {
        key: key.segments().iter().map(|s| s.to_string()).collect(),
        ttl: Some(ttl.try_into().unwrap()),
    }
}

/// The URL of a lease service on the memory backend, started once for this test
/// process in a runtime of its own (for tests that run the `leases` binary).
pub fn background_server_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let manager = LeaseManager::start().await.unwrap();
                let server = LeaseServer::start(manager, loopback()).await.unwrap();
                tx.send(format!("http://{}", server.local_addr())).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    })
    .clone()
}

/// A `HoldMany` lane's `acquire` of `key` as lease `id` (a re-attach of the lease with
/// token `resume`, when given).
pub fn lane_acquire(id: u64, key: &Key, ttl: Duration, resume: Option<u64>) -> HoldManyRequest {
    HoldManyRequest {
        kind: Some(ManyIn::Acquire(LeaseAcquire {
            id,
            acquire: Some(Acquire {
                key: key.to_string(),
                ttl: Some(ttl.try_into().unwrap()),
                metadata: Vec::new(),
                wait: None,
                resume,
            }),
        })),
    }
}

/// A `HoldMany` stream's heartbeat of its leases of `ttl`.
pub fn group_heartbeat(ttl: Duration) -> HoldManyRequest {
    HoldManyRequest {
        kind: Some(ManyIn::Heartbeat(GroupHeartbeat {
            ttl: Some(ttl.try_into().unwrap()),
        })),
    }
}

/// The next message of a raw `HoldMany` stream (`None` once it has ended); panics if
/// none comes within 10 s.
pub async fn next_many(s: &mut RawStream) -> Option<ManyOut> {
    tokio::time::timeout(Duration::from_secs(10), s.next::<HoldManyResponse>())
        .await
        .expect("an answer within 10 s")
        .and_then(|m| m.kind)
}
