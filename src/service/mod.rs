//! The lease service: `leases serve`, leases over gRPC for any language (feature
//! `server`).
//!
//! One port serves, over HTTP/2 (cleartext h2c, or TLS when configured):
//! - FTL's `xyz.block.ftl.lease.v1.LeaseService` ([`ftl`]), wire-compatible with FTL's
//!   Go and JVM runtimes;
//! - the native `leases.v1.Leases` service ([`native`]), which
//!   [`ClientLeaser`](crate::ClientLeaser) speaks: fencing tokens, the holder's time
//!   left, metadata, waiting, revoke, info and list;
//! - the standard gRPC health service (`grpc.health.v1.Health`, status `SERVING` while
//!   the backend answers) and server reflection (`grpc.reflection.v1`);
//!
//! and, over plain HTTP/1.1 on the same port, `GET /_liveness` (always 200) and
//! `GET /_readiness` (200, or 503 while the backend does not answer).
//!
//! Every lease the service grants is held by one [`LeaseManager`] on behalf of the
//! gRPC stream that asked for it: the manager renews it in the background while the
//! stream is alive and its client keeps sending requests. The client is a holder until
//! it has surely stopped, so a key goes back at once only on the client's own release
//! (the native `release` message, FTL's half-close); however else a lease or its stream
//! ends (a revoke through any server, a loss, a lapse, a reset of any code, a broken
//! connection, a shutdown), the key stays taken until the time the server last promised
//! the client has passed. One function carries that rule for both protocols (see
//! `give_back.rs`), and the manager never gives such a key back by itself
//! ([`AcquireOptions::keep_until_released`](crate::AcquireOptions::keep_until_released)).
//! Several servers on one PostgreSQL table serve the same leases, so that the service
//! survives the loss of a server.
//!
//! # Security and limits
//! The service binds to 127.0.0.1 unless told otherwise, and logs a warning when it
//! binds elsewhere without authentication. [`ServeOptions::auth_token`] turns on
//! bearer-token authentication for both lease services (`authorization: Bearer
//! TOKEN`): a wrong or missing token is `UNAUTHENTICATED`, and nothing changes. The
//! health service, reflection and the HTTP probes stay open, as probes need them.
//! [`ServeOptions::tls`] serves TLS (rustls), optionally requiring client certificates
//! signed by a given CA. Limits, each with its own status when exceeded: the size of
//! one message ([`ServeOptions::max_message_bytes`], `RESOURCE_EXHAUSTED` from gRPC),
//! the keys one FTL stream may hold ([`ServeOptions::max_keys_per_stream`],
//! `RESOURCE_EXHAUSTED` "too many keys on one stream"), and the open lease streams of
//! one connection ([`ServeOptions::max_streams_per_connection`], `RESOURCE_EXHAUSTED`
//! "too many lease streams on one connection"), and the wait for a stream's first
//! request ([`ServeOptions::first_request_timeout`], `DEADLINE_EXCEEDED`), so that a
//! silent stream does not keep its slot. A TTL refusal (`INVALID_ARGUMENT`) carries its
//! numbers in the trailer `leases-ttl-refusal`, from which
//! [`ClientLeaser`](crate::ClientLeaser) rebuilds [`LeaseError::TtlTooShort`] or
//! [`LeaseError::TtlTooLong`].

mod first;
pub mod ftl;
mod give_back;
pub mod native;
mod resets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Code, Status};

use crate::error::LeaseError;
use crate::proto;
use crate::{LeaseManager, MAX_TTL};

/// The address `leases serve` binds to by default: loopback only.
pub const DEFAULT_BIND: &str = "127.0.0.1:8895";

/// The TTL of an FTL `AcquireLease` request that carries none.
pub const DEFAULT_FTL_TTL: Duration = Duration::from_secs(30);

/// Files for serving TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain, PEM.
    pub certificate: PathBuf,
    /// The server's private key, PEM.
    pub private_key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// How to run the lease service. Start from [`ServeOptions::default`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen; [`DEFAULT_BIND`] by default. Port 0 picks a free port (see
    /// [`LeaseServer::local_addr`]).
    pub bind: SocketAddr,
    /// Serve TLS with these files; cleartext HTTP/2 (h2c) when `None`.
    pub tls: Option<TlsFiles>,
    /// Require `authorization: Bearer <token>` on the lease services.
    pub auth_token: Option<String>,
    /// The TTL of an FTL request without one; [`DEFAULT_FTL_TTL`] by default.
    pub default_ttl: Duration,
    /// The largest request message accepted, in bytes (64 KiB by default: a key is at
    /// most [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes and metadata at most
    /// [`MAX_METADATA_LEN`](crate::MAX_METADATA_LEN)).
    pub max_message_bytes: usize,
    /// The most keys one FTL `AcquireLease` stream may hold at once (1024 by default).
    pub max_keys_per_stream: usize,
    /// The most open lease streams (FTL `AcquireLease` and native `Hold`) on one client
    /// connection (1024 by default).
    pub max_streams_per_connection: u32,
    /// How often the health service re-checks the backend (2 s by default; must be
    /// positive: zero would re-check without pause).
    pub health_interval: Duration,
    /// How long a new lease stream (FTL `AcquireLease` or native `Hold`) may wait before
    /// its first request ([`DEFAULT_FIRST_REQUEST_TIMEOUT`] by default; must be
    /// positive). A stream that sends nothing by then ends with `DEADLINE_EXCEEDED` and
    /// frees its slot of [`max_streams_per_connection`](Self::max_streams_per_connection).
    pub first_request_timeout: Duration,
}

/// How long a new lease stream may wait before its first request, by default.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            bind: DEFAULT_BIND.parse().expect("a valid address"),
            tls: None,
            auth_token: None,
            default_ttl: DEFAULT_FTL_TTL,
            max_message_bytes: 64 * 1024 + 4 * 1024,
            max_keys_per_stream: 1024,
            max_streams_per_connection: 1024,
            health_interval: Duration::from_secs(2),
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
        }
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS file could not be read or used.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The options are inconsistent.
    #[error("invalid service options: {0}")]
    InvalidOptions(String),
    /// The HTTP/2 server failed.
    #[error("the server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ServeOptions {
    /// Refuses options no server could use (each with its reason); every other value is
    /// used as given, durations saturating where they would overflow.
    fn check(&self, min_ttl: Duration) -> Result<(), ServeError> {
        let invalid = |why: String| Err(ServeError::InvalidOptions(why));
        if self.max_keys_per_stream == 0 || self.max_streams_per_connection == 0 {
            return invalid("the per-stream and per-connection limits must be at least 1".into());
        }
        if self.max_message_bytes == 0 {
            return invalid("max_message_bytes must be at least 1".into());
        }
        if self.default_ttl < min_ttl {
            return invalid(format!(
                "the default TTL {:?} is below the minimum TTL {min_ttl:?}",
                self.default_ttl
            ));
        }
        if self.default_ttl > MAX_TTL {
            return invalid(format!(
                "the default TTL {:?} is above the maximum TTL {MAX_TTL:?}",
                self.default_ttl
            ));
        }
        if self.health_interval.is_zero() {
            return invalid("health_interval must be positive".into());
        }
        if self.first_request_timeout.is_zero() {
            return invalid("first_request_timeout must be positive".into());
        }
        Ok(())
    }
}

/// State shared by the services of one server.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) manager: LeaseManager,
    pub(crate) options: Arc<ServeOptions>,
    /// Cancelled when the server stops: every stream releases its leases and ends.
    pub(crate) stopping: CancellationToken,
    /// How many streams still hold (or are letting go of) leases.
    pub(crate) active: Arc<tokio::sync::watch::Sender<usize>>,
    /// Open lease streams per client connection (by its remote address).
    pub(crate) streams: Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>>,
}

/// One open lease stream, counted against its connection's limit until dropped.
pub(crate) struct StreamSlot {
    streams: Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>>,
    peer: Option<SocketAddr>,
}

impl Shared {
    /// Counts a new stream of the connection `peer`, or refuses it with
    /// `RESOURCE_EXHAUSTED` when the connection has its limit of open streams.
    pub(crate) fn open_stream(&self, peer: Option<SocketAddr>) -> Result<StreamSlot, Status> {
        if let Some(addr) = peer {
            let mut streams = crate::sync::lock(&self.streams);
            let n = streams.entry(addr).or_insert(0);
            if *n >= self.options.max_streams_per_connection as usize {
                return Err(Status::resource_exhausted(format!(
                    "too many lease streams on one connection (at most {})",
                    self.options.max_streams_per_connection
                )));
            }
            *n += 1;
        }
        Ok(StreamSlot {
            streams: self.streams.clone(),
            peer,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(addr) = self.peer {
            let mut streams = crate::sync::lock(&self.streams);
            if let Some(n) = streams.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    streams.remove(&addr);
                }
            }
        }
    }
}

impl Shared {
    /// Counts a stream until the returned guard is dropped (its task has ended).
    pub(crate) fn stream(&self) -> StreamGuard {
        self.active.send_modify(|n| *n += 1);
        StreamGuard(self.active.clone())
    }
}

/// Held by the task serving one stream; see [`Shared::stream`].
pub(crate) struct StreamGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A running lease service. Stop it with [`shutdown`](LeaseServer::shutdown); dropping
/// it stops it too (without waiting).
pub struct LeaseServer {
    addr: SocketAddr,
    stopping: CancellationToken,
    streams: Arc<tokio::sync::watch::Sender<usize>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl std::fmt::Debug for LeaseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl LeaseServer {
    /// Binds and starts serving leases from `manager`. Returns once the port is bound.
    pub async fn start(
        manager: LeaseManager,
        options: ServeOptions,
    ) -> Result<LeaseServer, ServeError> {
        options.check(manager.min_ttl())?;
        let tls = match &options.tls {
            Some(files) => Some(tls_config(files)?),
            None => None,
        };
        if options.auth_token.is_none() && !options.bind.ip().is_loopback() {
            tracing::warn!(
                bind = %options.bind,
                "serving leases on a non-loopback address without authentication: anyone \
                 who reaches this port can take and revoke leases (set a token)"
            );
        }
        let listener =
            TcpListener::bind(options.bind)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: options.bind,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: options.bind,
            source,
        })?;
        let stopping = CancellationToken::new();
        let streams = Arc::new(tokio::sync::watch::Sender::new(0));
        let shared = Shared {
            manager,
            options: Arc::new(options),
            stopping: stopping.clone(),
            streams: Arc::default(),
            active: streams.clone(),
        };
        let routes = routes(&shared, stopping.clone());
        let mut builder = tonic::transport::Server::builder()
            .accept_http1(true)
            // Our own count refuses a stream beyond the limit with a clear status; HTTP/2's
            // limit, set higher, only guards against clients that ignore it.
            .max_concurrent_streams(shared.options.max_streams_per_connection.saturating_add(16))
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let router = builder.add_routes(routes);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = stopping.clone();
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
                .map_err(ServeError::from)
        });
        tracing::info!(%addr, "lease service listening");
        Ok(LeaseServer {
            addr,
            stopping,
            streams,
            task: Some(task),
        })
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the service gracefully: every stream ends (FTL streams with
    /// `UNAVAILABLE`, native ones with an `ended` answer) and releases its leases, then
    /// the server closes its connections. Returns once every stream has released its
    /// leases: a native stream whose client has not hung up (its connection broke, say)
    /// keeps its lease until the time left it last promised has run out, at most its
    /// TTL, so that shutting the manager down next frees no key a client may still act
    /// on. The manager is not shut down (it is the caller's).
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.stopping.cancel();
        let result = match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(ServeError::InvalidOptions(format!(
                    "the server task failed: {e}"
                ))),
            },
            None => Ok(()),
        };
        let _ = self.streams.subscribe().wait_for(|n| *n == 0).await;
        result
    }

    /// Serves until the returned future is dropped or `stop` completes, then shuts down
    /// as [`shutdown`](Self::shutdown) does.
    pub async fn serve_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        stop.await;
        self.shutdown().await
    }
}

impl Drop for LeaseServer {
    fn drop(&mut self) {
        self.stopping.cancel();
    }
}

fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServeError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let identity = Identity::from_pem(read(&files.certificate)?, read(&files.private_key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}

/// Every service and the HTTP probes, as one router.
fn routes(shared: &Shared, stopping: CancellationToken) -> Routes {
    let limit = shared.options.max_message_bytes;
    let auth = Auth(shared.options.auth_token.clone().map(Arc::from));
    let ftl = proto::xyz::block::ftl::lease::v1::lease_service_server::LeaseServiceServer::new(
        ftl::FtlService::new(shared.clone()),
    )
    .max_decoding_message_size(limit);
    let native = proto::leases::v1::leases_server::LeasesServer::new(native::NativeService::new(
        shared.clone(),
    ))
    .max_decoding_message_size(limit);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(shared.clone(), health_reporter, stopping));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::DESCRIPTORS)
        .build_v1()
        .expect("the descriptors built from proto/ are valid");
    let grpc = Routes::new(tonic::service::interceptor::InterceptedService::new(
        ftl,
        auth.clone(),
    ))
    .add_service(tonic::service::interceptor::InterceptedService::new(
        native, auth,
    ))
    .add_service(health)
    .add_service(reflection);
    let probes = shared.manager.clone();
    let router = grpc
        .into_axum_router()
        .route(
            "/_liveness",
            axum::routing::get(|| async { (StatusCode::OK, "alive\n") }),
        )
        .route(
            "/_readiness",
            axum::routing::get(move || {
                let manager = probes.clone();
                async move {
                    match readiness(&manager).await {
                        None => (StatusCode::OK, "ready\n".to_string()),
                        Some(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    // Last, so that it wraps every route: a reset request stream reads as broken.
    Routes::from(router.layer(axum::middleware::map_request(resets::mark_resets)))
}

/// `None` when the backend answers; else why not. Bounded in time, so that a probe of
/// a hung backend gets its answer.
pub(crate) async fn readiness(manager: &LeaseManager) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(3), manager.check()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("the backend did not answer within 3s".into()),
    }
}

/// Keeps the standard health service in step with the backend.
async fn report_health(
    shared: Shared,
    reporter: tonic_health::server::HealthReporter,
    stopping: CancellationToken,
) {
    use proto::leases::v1::leases_server::LeasesServer;
    use proto::xyz::block::ftl::lease::v1::lease_service_server::LeaseServiceServer;
    loop {
        let ready = readiness(&shared.manager).await.is_none();
        let status = if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        if ready {
            reporter
                .set_serving::<LeaseServiceServer<ftl::FtlService>>()
                .await;
            reporter
                .set_serving::<LeasesServer<native::NativeService>>()
                .await;
        } else {
            reporter
                .set_not_serving::<LeaseServiceServer<ftl::FtlService>>()
                .await;
            reporter
                .set_not_serving::<LeasesServer<native::NativeService>>()
                .await;
        }
        tokio::select! {
            _ = stopping.cancelled() => {
                reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                return;
            }
            _ = tokio::time::sleep(shared.options.health_interval) => {}
        }
    }
}

/// Bearer-token authentication (when configured).
#[derive(Clone)]
struct Auth(Option<Arc<str>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(token) if same(token.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong bearer token")),
            None => Err(Status::unauthenticated(
                "this lease service requires `authorization: Bearer <token>`",
            )),
        }
    }
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The gRPC status for a lease error.
pub(crate) fn status_of(e: &LeaseError) -> Status {
    let code = match e {
        LeaseError::Conflict => Code::ResourceExhausted,
        LeaseError::WaitTimedOut { .. } => Code::DeadlineExceeded,
        LeaseError::TtlTooShort { .. }
        | LeaseError::TtlTooLong { .. }
        | LeaseError::InvalidKey(_)
        | LeaseError::MetadataTooLarge { .. } => Code::InvalidArgument,
        LeaseError::NotHeld => Code::FailedPrecondition,
        LeaseError::ManagerStopped | LeaseError::Backend(_) => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    // The numbers of a TTL refusal, for clients to rebuild the exact error.
    if let Some(value) = proto::ttl_refusal(e).and_then(|v| v.parse().ok()) {
        status.metadata_mut().insert(proto::TTL_REFUSAL, value);
    }
    status
}

pub(crate) use crate::proto::{duration as proto_duration, std_duration as duration_of};

/// How long the holder of `ctx` may still act, by its local deadline.
pub(crate) fn time_left(ctx: &crate::LeaseContext, ttl: Duration) -> Duration {
    match ctx.deadline() {
        Some(d) => {
            tokio::time::Instant::from_std(d).saturating_duration_since(tokio::time::Instant::now())
        }
        None => ttl,
    }
}
