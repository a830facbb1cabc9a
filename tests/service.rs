//! The lease service and `ClientLeaser`: the leaser conformance suite through the
//! service (on the memory backend and on PostgreSQL), FTL's wire contract case by case,
//! bad input, security, probes, and a server that goes away under its clients.
//!
//! These tests use real sockets, so they run on the real clock with short TTLs.
#![cfg(feature = "server")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseRequest;
use leases::service::{LeaseServer, ServeOptions};
use leases::testing::leaser::LeaserEnv;
use leases::{
    CancelReason, ClientLeaser, ClientOptions, Key, LeaseError, LeaseInfo, LeaseManager, Leaser,
    LossCause,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

const TTL: Duration = Duration::from_secs(1);

fn local() -> ServeOptions {
    ServeOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        default_ttl: Duration::from_secs(2),
        ..ServeOptions::default()
    }
}

async fn memory_manager() -> LeaseManager {
    LeaseManager::builder().min_ttl(TTL).start().await.unwrap()
}

async fn client(server: &LeaseServer) -> ClientLeaser {
    ClientLeaser::connect_with(
        ClientOptions::new(format!("http://{}", server.local_addr())).min_ttl(TTL),
    )
    .await
    .unwrap()
}

/// A server (on a manager of its own) and clients of it.
struct ServiceEnv {
    server: LeaseServer,
    admin: ClientLeaser,
    prefix: String,
}

impl ServiceEnv {
    async fn new(manager: LeaseManager, case: &str) -> ServiceEnv {
        let server = LeaseServer::start(manager, local()).await.unwrap();
        let admin = client(&server).await;
        ServiceEnv {
            server,
            admin,
            prefix: format!("{}-{case}", support::pg::run_id()),
        }
    }
}

#[async_trait]
impl LeaserEnv for ServiceEnv {
    async fn leaser(&self) -> Arc<dyn Leaser> {
        Arc::new(client(&self.server).await)
    }
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        self.admin.revoke(key).await
    }
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        self.admin.lease_info(key).await
    }
    fn ttl(&self) -> Duration {
        TTL
    }
    fn key(&self, name: &str) -> Key {
        Key::system(["service", &self.prefix, name])
    }
}

/// The suite through a server on the memory backend.
mod on_memory {
    use super::*;

    async fn env(case: &str) -> ServiceEnv {
        ServiceEnv::new(memory_manager().await, case).await
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

/// The suite through a server on PostgreSQL.
mod on_postgres {
    use super::*;
    use leases::backend::PostgresOptions;

    async fn env(case: &str) -> ServiceEnv {
        let manager = LeaseManager::builder()
            .min_ttl(TTL)
            .postgres(PostgresOptions::new(support::pg::shared_url()).pool_size(4))
            .start()
            .await
            .unwrap();
        ServiceEnv::new(manager, case).await
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

/// The manager's own leaser passes the same suite (the suite's reference).
mod direct {
    use super::*;

    struct ManagerEnv {
        manager: LeaseManager,
        case: String,
    }

    #[async_trait]
    impl LeaserEnv for ManagerEnv {
        async fn leaser(&self) -> Arc<dyn Leaser> {
            Arc::new(self.manager.clone())
        }
        async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
            self.manager.revoke(key).await
        }
        async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
            self.manager.lease_info(key).await
        }
        fn ttl(&self) -> Duration {
            TTL
        }
        fn key(&self, name: &str) -> Key {
            Key::system(["direct", &self.case, name])
        }
    }

    async fn env(case: &str) -> ManagerEnv {
        ManagerEnv {
            manager: memory_manager().await,
            case: case.to_string(),
        }
    }

    leases::leaser_conformance_tests!(env, #[tokio::test(start_paused = true)]);
}

// ------------------------------------------------------------- FTL's protocol ---

/// An FTL-style stream: requests go in through `tx`; answers are read (or not).
struct FtlStream {
    tx: mpsc::UnboundedSender<AcquireLeaseRequest>,
    answers: tonic::Streaming<leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseResponse>,
}

fn request(key: &[&str], ttl: Option<Duration>) -> AcquireLeaseRequest {
    AcquireLeaseRequest {
        key: key.iter().map(|s| s.to_string()).collect(),
        ttl: ttl.map(|d| prost_types::Duration::try_from(d).unwrap()),
    }
}

async fn ftl_channel(server: &LeaseServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Opens a stream whose first request is `first`.
async fn ftl_open(
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

/// The next answer: `Ok(true)` an empty response, `Ok(false)` a clean end.
async fn next(s: &mut FtlStream) -> Result<bool, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), s.answers.message())
        .await
        .expect("an answer within 10 s")
        .map(|m| m.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_acquire_conflict_heartbeat_and_release_on_close() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = ftl_channel(&server).await;
    let key = ["module", "echo", "cron"];
    let mut a = ftl_open(&ch, request(&key, Some(TTL * 2))).await.unwrap();
    assert!(next(&mut a).await.unwrap());
    // Held: another stream is refused with RESOURCE_EXHAUSTED "lease already held".
    let mut b = ftl_open(&ch, request(&key, Some(TTL * 2))).await.unwrap();
    let refused = next(&mut b).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), "lease already held");
    // Heartbeats: one empty answer per request, in order; the lease outlives its TTL.
    for _ in 0..6 {
        tokio::time::sleep(TTL / 2).await;
        a.tx.send(request(&key, Some(TTL * 2))).unwrap();
        assert!(next(&mut a).await.unwrap());
    }
    let info = client(&server)
        .await
        .lease_info(&Key::module("echo", ["cron"]))
        .await
        .unwrap()
        .expect("still held after 3 s of heartbeats");
    // Closing the request side (FTL's release) releases the lease at once: the call
    // ends (OK) once it is released. (Dropping the whole call instead would reset the
    // stream, which is no release: the key would be kept for its window.)
    let FtlStream { tx, mut answers } = a;
    drop(tx);
    assert!(
        matches!(answers.message().await, Ok(None)),
        "the call ends OK"
    );
    let c = client(&server).await;
    let mut got = None;
    for _ in 0..50 {
        match c.acquire_lease(Key::module("echo", ["cron"]), TTL).await {
            Ok(x) => {
                got = Some(x);
                break;
            }
            Err(LeaseError::Conflict) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let (lease, _ctx) = got.expect("released within 1 s of the stream closing");
    assert!(lease.token() > info.token);
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_no_heartbeat_expires_and_ends_the_stream() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = ftl_channel(&server).await;
    // Like FTL's JVM runtime: one request, no renewal.
    let mut a = ftl_open(&ch, request(&["system", "jvm"], Some(TTL)))
        .await
        .unwrap();
    assert!(next(&mut a).await.unwrap());
    let ended = next(&mut a).await.unwrap_err();
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    // The key is free again.
    let c = client(&server).await;
    let (lease, _) = c.acquire_lease(Key::system(["jvm"]), TTL).await.unwrap();
    lease.release().await.unwrap();
    // A later request on the ended stream never re-acquires silently.
    let _ = a.tx.send(request(&["system", "jvm"], Some(TTL)));
    assert!(matches!(next(&mut a).await, Ok(false) | Err(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_revoke_and_loss_end_the_stream_at_once() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = ftl_channel(&server).await;
    let mut a = ftl_open(&ch, request(&["system", "revoked"], Some(TTL * 5)))
        .await
        .unwrap();
    assert!(next(&mut a).await.unwrap());
    assert!(client(&server)
        .await
        .revoke(&Key::system(["revoked"]))
        .await
        .unwrap());
    let ended = next(&mut a).await.unwrap_err();
    assert_eq!(ended.code(), Code::ResourceExhausted);
    assert!(ended.message().contains("revoked"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_bad_input() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = ftl_channel(&server).await;
    let cases: Vec<(AcquireLeaseRequest, Code)> = vec![
        (request(&["nope"], Some(TTL)), Code::InvalidArgument),
        (request(&[], Some(TTL)), Code::InvalidArgument),
        (request(&["module"], Some(TTL)), Code::InvalidArgument),
        (
            request(&["system", "x"], Some(TTL / 10)),
            Code::InvalidArgument,
        ),
        (
            AcquireLeaseRequest {
                key: vec!["system".into(), "x".into()],
                ttl: Some(prost_types::Duration {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
            },
            Code::InvalidArgument,
        ),
        (
            AcquireLeaseRequest {
                key: vec!["system".into(), "x".into()],
                ttl: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
            },
            Code::InvalidArgument,
        ),
        // A key longer than the crate's limit, but within the message limit.
        (
            request(&["system", &"k".repeat(5000)], Some(TTL)),
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let shown = format!("{:?}", req.key.iter().map(|k| k.len()).collect::<Vec<_>>());
        let mut s = ftl_open(&ch, req).await.unwrap();
        let e = next(&mut s).await.unwrap_err();
        assert_eq!(e.code(), code, "{shown}: {e:?}");
    }
    // An oversized message is refused by the message limit.
    let huge = request(&["system", &"k".repeat(1 << 20)], Some(TTL));
    let result = match ftl_open(&ch, huge).await {
        Ok(mut s) => next(&mut s).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let e = result.unwrap_err();
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{e:?}"
    );
    // A missing TTL takes the server's default (2 s here): still held after 1.5 s
    // without heartbeats, free after it lapses.
    let mut d = ftl_open(&ch, request(&["system", "default-ttl"], None))
        .await
        .unwrap();
    assert!(next(&mut d).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = client(&server).await;
    assert!(matches!(
        c.acquire_lease(Key::system(["default-ttl"]), TTL).await,
        Err(LeaseError::Conflict)
    ));
    // The service still serves.
    let (lease, _) = c
        .acquire_lease(Key::system(["after-bad-input"]), TTL)
        .await
        .unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_too_many_keys_on_one_stream() {
    let options = ServeOptions {
        max_keys_per_stream: 100,
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let ch = ftl_channel(&server).await;
    let mut s = ftl_open(&ch, request(&["system", "many", "0"], Some(TTL * 5)))
        .await
        .unwrap();
    for i in 1..10_000 {
        if s.tx
            .send(request(&["system", "many", &i.to_string()], Some(TTL * 5)))
            .is_err()
        {
            break;
        }
    }
    let mut answered = 0;
    let end = loop {
        match next(&mut s).await {
            Ok(true) => answered += 1,
            Ok(false) => break None,
            Err(e) => break Some(e),
        }
    };
    assert_eq!(answered, 100);
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), Code::ResourceExhausted);
    assert!(end.message().contains("too many keys"), "{end:?}");
    // The stream broke (it did not end by the client's half-close): each key stays
    // taken until its heartbeat window (5 s) has run out, then all 100 are given back.
    let c = client(&server).await;
    assert!(
        matches!(
            c.acquire_lease(Key::system(["many", "0"]), TTL).await,
            Err(LeaseError::Conflict)
        ),
        "a key of a broken stream was given back before its window ran out"
    );
    let until = tokio::time::Instant::now() + TTL * 5 + Duration::from_secs(10);
    for i in 0..100 {
        let key = Key::system(["many", &i.to_string()]);
        let mut ok = false;
        while tokio::time::Instant::now() < until {
            match c.acquire_lease(key.clone(), TTL).await {
                Ok((lease, _)) => {
                    lease.release().await.unwrap();
                    ok = true;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(ok, "{key} was not given back after its window");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_nothing() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = ftl_channel(&server).await;
    // Like FTL's Go runtime: heartbeats, never reads. Many of them, fast.
    let s = ftl_open(&ch, request(&["system", "unread"], Some(TTL * 3)))
        .await
        .unwrap();
    for _ in 0..20_000 {
        s.tx.send(request(&["system", "unread"], Some(TTL * 3)))
            .unwrap();
    }
    // Other streams and clients are served meanwhile, on the same connection too.
    let mut other = ftl_open(&ch, request(&["system", "reader"], Some(TTL)))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), next(&mut other))
            .await
            .unwrap()
            .unwrap()
    );
    let c = client(&server).await;
    let (lease, _) = tokio::time::timeout(
        Duration::from_secs(5),
        c.acquire_lease(Key::system(["x"]), TTL),
    )
    .await
    .unwrap()
    .unwrap();
    lease.release().await.unwrap();
    // And the unread stream still holds its key.
    assert!(matches!(
        c.acquire_lease(Key::system(["unread"]), TTL).await,
        Err(LeaseError::Conflict)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_keeps_its_key_until_its_window_runs_out() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    // A raw TCP connection that speaks just enough HTTP/2 to open the stream is hard to
    // build by hand; a tonic channel dropped with its runtime is the same to the
    // server: the connection closes without the stream being ended.
    let addr = server.local_addr();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ch = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut s = ftl_open(&ch, request(&["system", "vanish"], Some(TTL * 3)))
                .await
                .unwrap();
            assert!(next(&mut s).await.unwrap());
            std::mem::forget(s);
        });
        // The runtime drops here: its sockets close, nothing is sent.
    })
    .join()
    .unwrap();
    let vanished = tokio::time::Instant::now();
    let c = client(&server).await;
    // It may still be acting until its heartbeat window (3 s) runs out.
    assert!(matches!(
        c.acquire_lease(Key::system(["vanish"]), TTL).await,
        Err(LeaseError::Conflict)
    ));
    let mut ok = false;
    for _ in 0..300 {
        match c.acquire_lease(Key::system(["vanish"]), TTL).await {
            Ok((lease, _)) => {
                lease.release().await.unwrap();
                ok = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(
        ok,
        "a vanished client's lease (window 3 s) was not given back within 6 s"
    );
    assert!(
        vanished.elapsed() >= TTL * 2,
        "given back after {:?}, before its window could have run out",
        vanished.elapsed()
    );
}

// ------------------------------------------------------------- the client side ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_is_lost_for_its_clients() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let c = client(&server).await;
    let (lease, ctx) = c
        .acquire_lease(Key::system(["stop"]), TTL * 3)
        .await
        .unwrap();
    server.shutdown().await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), ctx.cancelled())
        .await
        .expect("told at once");
    assert!(matches!(reason, CancelReason::Lost(_)), "{reason:?}");
    assert!(lease.release().await.is_err());
    // The server released it: the manager has no lease on the key.
    assert!(manager
        .lease_info(&Key::system(["stop"]))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_ends_the_context_at_its_deadline() {
    // A proxy between client and server that goes silent (blackhole) after the grant:
    // no answer comes, the stream does not break; the context must end by its
    // deadline, before the server's lease expires in the store.
    use support::proxy::FaultProxy;
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let proxy = FaultProxy::start(server.local_addr()).await;
    let c = ClientLeaser::connect_with(
        ClientOptions::new(format!("http://127.0.0.1:{}", proxy.port())).min_ttl(TTL),
    )
    .await
    .unwrap();
    let key = Key::system(["silent"]);
    let (_lease, ctx) = c.acquire_lease(key.clone(), TTL * 2).await.unwrap();
    let deadline = ctx.deadline().unwrap();
    proxy.set(support::proxy::Fault::Blackhole);
    let reason = tokio::time::timeout(TTL * 4, ctx.cancelled())
        .await
        .expect("ends");
    let ended_at = std::time::Instant::now();
    assert!(
        matches!(
            reason,
            CancelReason::Lost(LossCause::DeadlineExceeded)
                | CancelReason::Lost(LossCause::Disconnected(_))
        ),
        "{reason:?}"
    );
    // The server still holds the lease for at least a while after the client stopped:
    // the server only lets go a TTL after the last heartbeat it received.
    let info = manager.lease_info(&key).await.unwrap();
    assert!(
        info.is_some(),
        "the server let go before its client stopped acting (client deadline {deadline:?}, ended {ended_at:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens() {
    let options = ServeOptions {
        auth_token: Some("s3cret".into()),
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    for token in [None, Some("wrong")] {
        let mut o = ClientOptions::new(url.clone()).min_ttl(TTL);
        if let Some(t) = token {
            o = o.bearer_token(t);
        }
        let c = ClientLeaser::connect_with(o).await.unwrap();
        let e = c
            .acquire_lease(Key::system(["auth"]), TTL)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("bearer token") || e.to_string().contains("authorization"),
            "{e}"
        );
        assert!(c.revoke(&Key::system(["auth"])).await.is_err());
    }
    let c = ClientLeaser::connect_with(ClientOptions::new(url).min_ttl(TTL).bearer_token("s3cret"))
        .await
        .unwrap();
    let (lease, _) = c.acquire_lease(Key::system(["auth"]), TTL).await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("leases-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("server.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), cert.signing_key.serialize_pem()).unwrap();
    let options = ServeOptions {
        tls: Some(leases::service::TlsFiles {
            certificate: dir.join("server.crt"),
            private_key: dir.join("server.key"),
            client_ca: None,
        }),
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let c = ClientLeaser::connect_with(
        ClientOptions::new(format!("https://localhost:{}", server.local_addr().port()))
            .ca_certificate_pem(cert.cert.pem())
            .min_ttl(TTL),
    )
    .await
    .unwrap();
    let (lease, ctx) = c.acquire_lease(Key::system(["tls"]), TTL).await.unwrap();
    tokio::time::sleep(TTL).await;
    assert!(!ctx.is_cancelled());
    lease.release().await.unwrap();
    // Cleartext to a TLS server fails with a typed error, not a hang or panic.
    let plain = ClientLeaser::connect_with(
        ClientOptions::new(format!("http://127.0.0.1:{}", server.local_addr().port()))
            .min_ttl(TTL)
            .request_timeout(Duration::from_secs(2)),
    )
    .await;
    if let Ok(plain) = plain {
        assert!(plain
            .acquire_lease(Key::system(["tls2"]), TTL)
            .await
            .is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_health_and_ping() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    for (path, want) in [("/_readiness", "200"), ("/_liveness", "200")] {
        let mut s = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {want}")),
            "{path}: {out}"
        );
    }
    let c = client(&server).await;
    c.check().await.unwrap();
    let ch = ftl_channel(&server).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "xyz.block.ftl.lease.v1.LeaseService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_while_postgres_is_down() {
    use leases::backend::PostgresOptions;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = support::pg::PgServer::start(None);
    let manager = LeaseManager::builder()
        .min_ttl(TTL)
        .postgres(PostgresOptions::new(pg.url()).connect_timeout(Duration::from_secs(1)))
        .start()
        .await
        .unwrap();
    let server = LeaseServer::start(manager, local()).await.unwrap();
    let probe = |addr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /_readiness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(probe(server.local_addr()).await.starts_with("HTTP/1.1 200"));
    pg.stop();
    let out = probe(server.local_addr()).await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    let c = client(&server).await;
    assert!(c.check().await.is_err());
    pg.start_again();
    let mut ready = false;
    for _ in 0..50 {
        if probe(server.local_addr()).await.starts_with("HTTP/1.1 200") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "ready again after the database came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_streams_on_one_connection() {
    let options = ServeOptions {
        max_streams_per_connection: 3,
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let ch = ftl_channel(&server).await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut s = ftl_open(
            &ch,
            request(&["system", "streams", &i.to_string()], Some(TTL * 5)),
        )
        .await
        .unwrap();
        assert!(next(&mut s).await.unwrap());
        open.push(s);
    }
    let refused = match ftl_open(&ch, request(&["system", "streams", "3"], Some(TTL * 5))).await {
        Ok(mut s) => next(&mut s).await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("too many lease streams"),
        "{refused:?}"
    );
    // Another connection is not affected; and a closed stream frees its place.
    let other = ftl_channel(&server).await;
    let mut s = ftl_open(&other, request(&["system", "streams", "4"], Some(TTL * 5)))
        .await
        .unwrap();
    assert!(next(&mut s).await.unwrap());
    drop(open.pop());
    let mut freed = false;
    for _ in 0..50 {
        if let Ok(mut s) = ftl_open(&ch, request(&["system", "streams", "5"], Some(TTL * 5))).await
        {
            if next(&mut s).await.is_ok() {
                freed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "a closed stream's place was not freed");
}
