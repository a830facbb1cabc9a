//! [`ClientLeaser`]: leases from a lease service (`leases serve`) over gRPC, the Rust
//! half of FTL's `NewClientLeaser` (feature `client`).
//!
//! See [`ClientLeaser`] for how a lease over the network keeps the guarantees.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::context::ContextSender;
use crate::error::{BackendError, BackendErrorKind};
use crate::lease::LeaseOwner;
use crate::leaser::MIN_TTL;
use crate::proto::leases::v1::ended::Reason;
use crate::proto::leases::v1::hold_request::Kind as In;
use crate::proto::leases::v1::hold_response::Kind as Out;
use crate::proto::leases::v1::leases_client::LeasesClient;
use crate::proto::leases::v1::{
    Acquire, Heartbeat, HoldRequest, HoldResponse, KeyRequest, ListRequest, Release,
};
use crate::{
    AcquireOptions, CancelReason, Key, Lease, LeaseContext, LeaseError, LeaseInfo, Leaser,
    LossCause,
};

/// How to reach a lease service. Start from [`ClientOptions::new`].
#[derive(Clone)]
pub struct ClientOptions {
    url: String,
    bearer_token: Option<String>,
    ca_certificate_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    min_ttl: Duration,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "<set>"))
            .field("tls", &self.ca_certificate_pem.is_some())
            .finish()
    }
}

impl ClientOptions {
    /// Options for the service at `url` (`http://host:port`, or `https://` for TLS).
    pub fn new(url: impl Into<String>) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            bearer_token: None,
            ca_certificate_pem: None,
            identity_pem: None,
            domain: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            min_ttl: MIN_TTL,
        }
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Trusts this CA (PEM) for the server's certificate (for `https://` URLs).
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) to a server that requires them.
    pub fn identity_pem(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity_pem = Some((certificate.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry, when it differs from the URL's host.
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// How long to wait for a connection (5 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call (or an acquire's answer, beyond its wait) may take (10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The shortest TTL this client asks for ([`MIN_TTL`] by default). The server
    /// enforces its own minimum too.
    pub fn min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = min_ttl;
        self
    }
}

/// A [`Leaser`] whose leases come from a lease service over gRPC.
///
/// # How a lease over the network keeps the guarantees
/// Each lease is one `Hold` stream of the native protocol (`proto/leases/v1`). The
/// server holds the lease in its own [`LeaseManager`](crate::LeaseManager), renews it
/// with the backend, and answers each of the client's heartbeats (every TTL/4) with the
/// holder's *time left*: the server's local deadline for the lease, measured when it
/// answered. The client adds that time to the instant it **sent** the heartbeat. Since
/// the server measured after that instant, the client's deadline is never later than
/// the server's, which ends before the backend could grant the key to anyone else. So:
/// - the context ends by itself at the local deadline computed from the last confirmed
///   answer (a partitioned client stops in time, with
///   [`LossCause::DeadlineExceeded`]);
/// - a lost connection or server, or a stream that ends, is
///   [`CancelReason::Lost`] at once
///   ([`LossCause::Disconnected`]); a loss the server
///   reports is [`LossCause::Remote`], a revoke
///   [`CancelReason::Revoked`];
/// - the token is the server's fencing token;
/// - [`Lease::release`] ends the context, asks the server to
///   release and waits for its confirmation; dropping the lease asks the same without
///   waiting. Only that `release` message frees the key at once: a stream that ends
///   otherwise (closed, reset, broken) keeps the key taken on the server until the time
///   it last promised has passed;
/// - after a revoke, or its server shutting down, the client sends `release` as soon as
///   the context has ended (the holder was told), or, with
///   [`AcquireOptions::keep_until_released`], only once the
///   [`Lease`] is released or dropped; after a loss it never does, so that the key keeps
///   the safety margin a local manager keeps.
///
/// An acquire that waited ([`AcquireOptions::wait`]) takes one more round trip before
/// it returns: the grant's answer may have been sent long after the request, so its
/// time left is confirmed by a heartbeat first.
///
/// Like the manager, a `ClientLeaser` is cheap to clone and can be used from any task
/// or actor; the renewal of each lease runs in a task of its own.
///
/// Each held lease is one stream on the leaser's one HTTP/2 connection, and the service
/// allows a bounded number of lease streams per connection (`--max-streams-per-connection`,
/// 1024 by default): past it, acquires fail with a `Backend` error saying so. A process
/// that holds more leases at once uses several `ClientLeaser`s.
#[derive(Clone)]
pub struct ClientLeaser {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    auth: Option<MetadataValue<tonic::metadata::Ascii>>,
    options: ClientOptions,
}

impl std::fmt::Debug for ClientLeaser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLeaser")
            .field("url", &self.inner.options.url)
            .finish()
    }
}

fn unavailable(message: impl Into<String>) -> LeaseError {
    LeaseError::Backend(BackendError::new(BackendErrorKind::Unavailable, message))
}

/// The lease error for a status the service answered with.
fn error_of(status: &Status, waited: Option<Duration>) -> LeaseError {
    let message = format!("lease service: {}", status.message());
    match status.code() {
        Code::ResourceExhausted if status.message() == "lease already held" => LeaseError::Conflict,
        Code::DeadlineExceeded if waited.is_some() => LeaseError::WaitTimedOut {
            waited: waited.unwrap_or_default(),
        },
        Code::Unavailable | Code::Cancelled | Code::Unknown => unavailable(message),
        Code::DeadlineExceeded => {
            LeaseError::Backend(BackendError::new(BackendErrorKind::Timeout, message))
        }
        Code::InvalidArgument => status
            .metadata()
            .get(crate::proto::TTL_REFUSAL)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::proto::parse_ttl_refusal)
            .unwrap_or(LeaseError::InvalidConfig(message)),
        _ => LeaseError::Backend(BackendError::new(BackendErrorKind::Failed, message)),
    }
}

fn from_proto(info: crate::proto::leases::v1::LeaseInfo) -> Result<LeaseInfo, LeaseError> {
    let key = Key::parse(&info.key)?;
    let d = |d: Option<prost_types::Duration>| {
        d.and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()
    };
    Ok(LeaseInfo {
        key,
        token: info.token,
        ttl: d(info.ttl),
        expires_in: d(info.expires_in),
        metadata: info.metadata,
        revoked: info.revoked,
        acquired_at: info
            .acquired_at
            .and_then(|t| std::time::SystemTime::try_from(t).ok()),
    })
}

impl ClientLeaser {
    /// Connects to the lease service at `url` with default options.
    pub async fn connect(url: impl Into<String>) -> Result<ClientLeaser, LeaseError> {
        ClientLeaser::connect_with(ClientOptions::new(url)).await
    }

    /// Connects with `options`. Fails with [`LeaseError::Backend`] when the service
    /// cannot be reached, and [`LeaseError::InvalidConfig`] for a bad URL or TLS file
    /// or a zero timeout.
    pub async fn connect_with(options: ClientOptions) -> Result<ClientLeaser, LeaseError> {
        if options.connect_timeout.is_zero() || options.request_timeout.is_zero() {
            return Err(LeaseError::InvalidConfig(
                "the connect and request timeouts must be positive".into(),
            ));
        }
        let mut endpoint = Endpoint::from_shared(options.url.clone())
            .map_err(|e| {
                LeaseError::InvalidConfig(format!("bad lease service URL {:?}: {e}", options.url))
            })?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if options.url.starts_with("https://") || options.ca_certificate_pem.is_some() {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &options.ca_certificate_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &options.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &options.domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| LeaseError::InvalidConfig(format!("TLS: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            unavailable(format!(
                "cannot reach the lease service at {}: {e}",
                options.url
            ))
        })?;
        let auth =
            match &options.bearer_token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    LeaseError::InvalidConfig("the bearer token must be ASCII".into())
                })?),
                None => None,
            };
        Ok(ClientLeaser {
            inner: Arc::new(Inner {
                channel,
                auth,
                options,
            }),
        })
    }

    fn client(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.inner.channel.clone())
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(auth) = &self.inner.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        // tonic panics on a timeout too long for gRPC's header (about 11,000 years):
        // saturate at about 30 years.
        request.set_timeout(
            self.inner
                .options
                .request_timeout
                .min(crate::clock::FAR_FUTURE),
        );
        request
    }

    /// Revokes the current lease on `key`, whoever holds it: its holder's context ends
    /// with [`CancelReason::Revoked`]. Returns `false` if nobody held it.
    pub async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        let answer = self
            .client()
            .revoke(self.request(KeyRequest {
                key: key.to_string(),
            }))
            .await
            .map_err(|s| error_of(&s, None))?;
        Ok(answer.into_inner().revoked)
    }

    /// The current lease on `key`, if any.
    pub async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        let answer = self
            .client()
            .info(self.request(KeyRequest {
                key: key.to_string(),
            }))
            .await
            .map_err(|s| error_of(&s, None))?;
        answer.into_inner().lease.map(from_proto).transpose()
    }

    /// The live leases whose key strings start with `prefix`, in key order, at most
    /// `limit` (0: the server's limit, 10,000).
    ///
    /// The server sends them in one message, which can be far larger than gRPC's usual
    /// 4 MiB limit (each lease carries up to 64 KiB of metadata): this call accepts an
    /// answer as large as the leases asked for can be, `limit` × about 66 KiB (at most
    /// about 670 MB for 10,000 leases). Ask for fewer leases, or a narrower prefix, to
    /// bound the memory a list takes.
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, LeaseError> {
        let most = crate::proto::listed(limit)
            .saturating_mul(crate::proto::MAX_LISTED_LEASE_BYTES)
            .saturating_add(64 * 1024);
        let answer = self
            .client()
            .max_decoding_message_size(most)
            .list(self.request(ListRequest {
                prefix: prefix.to_string(),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            }))
            .await
            .map_err(|s| error_of(&s, None))?;
        answer
            .into_inner()
            .leases
            .into_iter()
            .map(from_proto)
            .collect()
    }

    /// Checks that the service answers and that its backend is ready.
    pub async fn check(&self) -> Result<(), LeaseError> {
        use crate::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
        let answer = LeaseServiceClient::new(self.inner.channel.clone())
            .ping(self.request(crate::proto::xyz::block::ftl::v1::PingRequest {}))
            .await
            .map_err(|s| error_of(&s, None))?;
        match answer.into_inner().not_ready {
            None => Ok(()),
            Some(why) => Err(unavailable(format!(
                "the lease service is not ready: {why}"
            ))),
        }
    }
}

/// What the holder's side asks of a lease's driver task.
enum Command {
    /// Release, and answer when the server has confirmed (or not).
    Release(Option<oneshot::Sender<Result<(), LeaseError>>>),
}

/// The [`Lease`]'s way to end a lease of this client.
struct Owner {
    commands: mpsc::UnboundedSender<Command>,
}

#[async_trait]
impl LeaseOwner for Owner {
    async fn release(&self, _key: &Key, _token: u64) -> Result<(), LeaseError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Release(Some(tx))).is_err() {
            return Err(LeaseError::NotHeld);
        }
        rx.await.unwrap_or(Err(LeaseError::NotHeld))
    }

    fn release_on_drop(&self, _key: Key, _token: u64) {
        let _ = self.commands.send(Command::Release(None));
    }
}

/// The instant a request is sent, with the machine's suspended time then.
#[derive(Clone, Copy)]
struct Sent {
    at: Instant,
    since: Duration,
}

impl Sent {
    fn now() -> Sent {
        Sent {
            at: Instant::now(),
            since: crate::clock::suspended(),
        }
    }
}

/// The time left an answer reports, at most the lease's TTL: no server can promise
/// more, and a larger (or absurd) value from the network must neither stretch the
/// holder's context nor overflow an instant.
fn time_left_of(d: Option<prost_types::Duration>, ttl: Duration) -> Duration {
    d.and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
        .min(ttl)
}

#[async_trait]
impl Leaser for ClientLeaser {
    async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        options.validate(&key, self.inner.options.min_ttl)?;
        let ttl = options.ttl();
        let wait = options.wait;
        let (requests, mut rx) = mpsc::unbounded_channel::<HoldRequest>();
        let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let sent = Sent::now();
        let _ = requests.send(HoldRequest {
            kind: Some(In::Acquire(Acquire {
                key: key.to_string(),
                ttl: Some(crate::proto::duration(ttl)),
                metadata: options.metadata.clone(),
                wait: wait.map(crate::proto::duration),
            })),
        });
        let mut request = self.request(outgoing);
        // The stream lives as long as the lease: no gRPC deadline on it (a server or
        // proxy that honours one would end the lease when it passed). The client bounds
        // its own waits; the answer may take as long as the wait, plus the usual.
        request.metadata_mut().remove("grpc-timeout");
        let limit = self
            .inner
            .options
            .request_timeout
            .saturating_add(wait.unwrap_or_default());
        let mut answers = tokio::time::timeout(limit, self.client().hold(request))
            .await
            .map_err(|_| unavailable("the lease service did not answer in time"))?
            .map_err(|s| error_of(&s, wait))?
            .into_inner();
        let first = tokio::time::timeout(limit, answers.message())
            .await
            .map_err(|_| unavailable("the lease service did not answer in time"))?;
        let (token, mut time_left) = match first {
            Ok(Some(HoldResponse {
                kind: Some(Out::Granted(g)),
            })) => (g.token, time_left_of(g.time_left, ttl)),
            Ok(Some(other)) => {
                return Err(unavailable(format!("unexpected first answer {other:?}")));
            }
            Ok(None) => return Err(unavailable("the lease service closed the stream")),
            Err(s) => return Err(error_of(&s, wait)),
        };
        let mut confirmed = sent;
        if wait.is_some() {
            // The grant may have come long after the request: confirm the time left
            // with a heartbeat's round trip.
            let hb = Sent::now();
            let _ = requests.send(HoldRequest {
                kind: Some(In::Heartbeat(Heartbeat {})),
            });
            let next = tokio::time::timeout(self.inner.options.request_timeout, answers.message())
                .await
                .map_err(|_| unavailable("the lease service did not confirm the grant in time"))?;
            match next {
                Ok(Some(HoldResponse {
                    kind: Some(Out::Renewed(r)),
                })) => {
                    time_left = time_left_of(r.time_left, ttl);
                    confirmed = hb;
                }
                Ok(Some(HoldResponse {
                    kind: Some(Out::Ended(e)),
                })) => {
                    return Err(unavailable(format!(
                        "the lease ended at once: {}",
                        e.message
                    )));
                }
                Ok(_) => return Err(unavailable("the lease service closed the stream")),
                Err(s) => return Err(error_of(&s, None)),
            }
        }
        let (sender, ctx) =
            LeaseContext::new_since(token, Some(confirmed.at + time_left), confirmed.since);
        let (commands, command_rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(
            ttl,
            options.keep,
            requests,
            answers,
            sender,
            ctx.clone(),
            command_rx,
        ));
        let lease = Lease::new(key, token, Arc::new(Owner { commands }));
        Ok((lease, ctx))
    }

    async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        ClientLeaser::lease_info(self, key).await
    }
}

/// Keeps one lease: heartbeats every TTL/4, extends the context by each answer, ends
/// it when the stream tells or breaks, and carries out the holder's release.
async fn drive(
    ttl: Duration,
    keep_key: bool,
    requests: mpsc::UnboundedSender<HoldRequest>,
    mut answers: tonic::Streaming<HoldResponse>,
    sender: ContextSender,
    watch: LeaseContext,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let stop = keep(
        ttl,
        &requests,
        &mut answers,
        sender,
        watch.clone(),
        &mut commands,
    )
    .await;
    if stop != Stop::Released {
        // The lease ended without the holder's release. The server keeps the key until
        // we say we have stopped (`release`) or the time it promised us has passed. A
        // revoked holder (or one whose server shut down) has stopped once its context
        // ended, unless it keeps its key until its `Lease` is released
        // (`keep_until_released`); a lost one keeps its safety margin, as with a local
        // manager: we never release it, and the key goes back when the server's promise
        // runs out.
        // Revoked or shut down: the server ended the lease and told us, and we have
        // stopped as soon as the context ended (unless the holder keeps the key until
        // it lets go). A loss is not ours to shorten.
        let heard = stop == Stop::Heard;
        // Whether the holder has stopped: at once for one that was told (unless it
        // keeps its key until it lets go); otherwise when it lets go of its `Lease`.
        // Never when its deadline merely passes: the server's promise then runs out
        // by itself, a little later.
        let mut stopped = heard && !keep_key;
        if !stopped {
            let deadline = watch.deadline().map(Instant::from_std);
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => {
                    if let Some(Command::Release(Some(reply))) = command {
                        let _ = reply.send(Err(LeaseError::NotHeld));
                    }
                    stopped = true;
                }
                _ = until_deadline => {}
            }
        }
        // A lost lease is never released (its safety margin is kept, as a local manager
        // keeps it); a revoked or shut-down one is, once its holder has stopped.
        if heard && stopped {
            let _ = requests.send(HoldRequest {
                kind: Some(In::Release(Release {})),
            });
        }
    }
    // Close our side and read the server's to its end (briefly), so that a release
    // reaches it before the stream goes.
    drop(requests);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(Some(_)) = answers.message().await {}
    })
    .await;
}

/// How [`keep`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// By the holder's release (carried out there).
    Released,
    /// The server ended the lease (revoked, or the server is shutting down) and told
    /// us: we stop as soon as the context has ended, and may say so.
    Heard,
    /// Any other way: a loss, a deadline, a broken stream.
    Other,
}

/// The body of [`drive`]: returns once the context has ended, and how.
async fn keep(
    ttl: Duration,
    requests: &mpsc::UnboundedSender<HoldRequest>,
    answers: &mut tonic::Streaming<HoldResponse>,
    sender: ContextSender,
    watch: LeaseContext,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Stop {
    let every = ttl / 4;
    let mut pending: VecDeque<Sent> = VecDeque::new();
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => {
                let reply = match command {
                    Some(Command::Release(reply)) => reply,
                    // Every handle is gone without a release: end the stream (below),
                    // and the server releases.
                    None => None,
                };
                if sender.reason().is_some() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(LeaseError::NotHeld));
                    }
                    return Stop::Released;
                }
                sender.cancel(CancelReason::Released);
                let _ = requests.send(HoldRequest { kind: Some(In::Release(Release {})) });
                let confirmed = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match answers.message().await {
                            Ok(Some(HoldResponse { kind: Some(Out::Ended(e)) })) => {
                                return e.reason == Reason::Released as i32;
                            }
                            Ok(Some(_)) => continue,
                            _ => return false,
                        }
                    }
                })
                .await
                .unwrap_or(false);
                if let Some(reply) = reply {
                    let _ = reply.send(if confirmed {
                        Ok(())
                    } else {
                        Err(unavailable("the lease service did not confirm the release"))
                    });
                }
                return Stop::Released;
            }
            _ = watch.cancelled() => return Stop::Other,
            _ = tokio::time::sleep_until(next) => {
                next += every;
                pending.push_back(Sent::now());
                if requests.send(HoldRequest { kind: Some(In::Heartbeat(Heartbeat {})) }).is_err() {
                    sender.cancel(CancelReason::Lost(LossCause::Disconnected("the request stream closed".into())));
                    return Stop::Other;
                }
            }
            answer = answers.message() => match answer {
                Ok(Some(HoldResponse { kind: Some(Out::Renewed(r)) })) => {
                    if let Some(sent) = pending.pop_front() {
                        sender.extend(sent.at + time_left_of(r.time_left, ttl), sent.since);
                    }
                }
                Ok(Some(HoldResponse { kind: Some(Out::Ended(e)) })) => {
                    let told = Reason::try_from(e.reason).unwrap_or(Reason::Lost);
                    let heard = matches!(told, Reason::Revoked | Reason::Shutdown);
                    let reason = match told {
                        Reason::Revoked => CancelReason::Revoked,
                        Reason::Released => CancelReason::Released,
                        Reason::Shutdown => CancelReason::Lost(LossCause::Remote(e.message)),
                        _ => CancelReason::Lost(LossCause::Remote(e.message)),
                    };
                    sender.cancel(reason);
                    return if heard { Stop::Heard } else { Stop::Other };
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    sender.cancel(CancelReason::Lost(LossCause::Disconnected("the lease service ended the stream".into())));
                    return Stop::Other;
                }
                Err(status) => {
                    sender.cancel(CancelReason::Lost(LossCause::Disconnected(status.message().to_string())));
                    return Stop::Other;
                }
            },
        }
    }
}
