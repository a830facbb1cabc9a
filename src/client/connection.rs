//! [`ClientLeaser`] and its connections, one per server: reaching the service (TLS, bearer token,
//! timeouts), and the requests every call sends on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Request;

use super::many::Streams;
use super::options::ClientOptions;

use crate::error::{BackendError, BackendErrorKind};
use crate::proto::leases::v1::leases_client::LeasesClient;
use crate::LeaseError;

/// A [`Leaser`](crate::Leaser) whose leases come from a lease service over gRPC.
///
/// # How a lease over the network keeps the guarantees
/// Each lease is held as on a `Hold` stream of the native protocol (`proto/leases/v1`),
/// one lane of the connection's `HoldMany` stream (see below). The server holds the lease in its own [`LeaseManager`](crate::LeaseManager), renews it
/// with the backend, and answers each of the client's heartbeats (every TTL/4) with the
/// holder's *time left*: the server's local deadline for the lease, measured when it
/// answered. The client adds that time to the instant it **sent** the heartbeat. Since
/// the server measured after that instant, the client's deadline is never later than
/// the server's, which ends before the backend could grant the key to anyone else. So:
/// - the context ends by itself at the local deadline computed from the last confirmed
///   answer (a partitioned client stops in time, with
///   [`LossCause::DeadlineExceeded`](crate::LossCause::DeadlineExceeded));
/// - a lease lives in the store, not in its stream: when the stream breaks (a lost
///   connection, a server killed or cut off, a heartbeat unanswered for a third of the
///   TTL) or its server drains (`HANDED_OVER`), the client re-attaches the lease by key
///   and token through another server of the same store, or the same one, before its
///   deadline ([`ClientOptions::endpoint`]); the holder notices nothing, and the
///   deadline moves only with the re-attach's answer, counted from when it was sent. If
///   no server takes it back by then, the context ends at the deadline; if a server says
///   it is gone, it ends at once
///   ([`LossCause::Remote`](crate::LossCause::Remote)). On the memory backend a server's
///   leases end with it: a server that stops says so, and the context ends at once;
/// - a loss the server reports is [`LossCause::Remote`](crate::LossCause::Remote), a
///   revoke [`CancelReason::Revoked`](crate::CancelReason::Revoked);
/// - the token is the server's fencing token;
/// - [`Lease::release`](crate::Lease::release) ends the context, asks the server to
///   release and waits for its confirmation; dropping the lease asks the same without
///   waiting. Only that `release` message frees the key at once: a stream that ends
///   otherwise (closed, reset, broken) keeps the key taken until the time the server
///   last promised has passed (on a shared store, until the lease expires there);
/// - after a revoke, or its server shutting down, the client sends `release` as soon as
///   the context has ended (the holder was told), or, with
///   [`AcquireOptions::keep_until_released`](crate::AcquireOptions::keep_until_released),
///   only once the [`Lease`](crate::Lease) is released or dropped; after a loss it never
///   does, so that the key keeps the safety margin a local manager keeps.
///
/// An acquire that waited ([`AcquireOptions::wait`](crate::AcquireOptions::wait)) takes
/// one more round trip before it returns: the grant's answer may have been sent long
/// after the request, so its time left is confirmed by a heartbeat first. If its server
/// drains (or the stream breaks) before it confirms, the grant is re-attached through a
/// server of the same store, as a held lease would be, instead of being dropped.
///
/// Like the manager, a `ClientLeaser` is cheap to clone and can be used from any task
/// or actor; the renewal of each lease runs in a task of its own.
///
/// The leases held through one server share one `HoldMany` stream on the leaser's
/// HTTP/2 connection to it, and its heartbeats go once per group (the leaser's leases
/// of one TTL) every TTL/4, however many leases there are; each lease still keeps its
/// own deadline, counted from the send instant of the group heartbeat that renewed it.
/// A stream holds up to the server's `--max-leases-per-stream` (1,000,000 by default):
/// past it, acquires fail with a `Backend` error saying so. On a server without
/// `HoldMany` (it answers `UNIMPLEMENTED`), or with
/// [`ClientOptions::hold_many(false)`](ClientOptions::hold_many), each lease is one
/// `Hold` stream of its own, and the service allows a bounded number of those per
/// connection (`--max-streams-per-connection`, 1024 by default).
#[derive(Clone)]
pub struct ClientLeaser {
    inner: Arc<Inner>,
}

struct Inner {
    /// One connection per server, in the order of [`ClientOptions::urls`].
    channels: Vec<Channel>,
    /// The server new calls go to: the first that answered, then the next one each
    /// time the current one cannot be reached.
    current: AtomicUsize,
    auth: Option<MetadataValue<tonic::metadata::Ascii>>,
    options: ClientOptions,
    /// The `HoldMany` stream of each server (see `many.rs`).
    streams: Streams,
}

impl std::fmt::Debug for ClientLeaser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLeaser")
            .field("urls", &self.inner.options.urls)
            .finish()
    }
}

impl ClientLeaser {
    /// Connects to the lease service at `url` with default options.
    pub async fn connect(url: impl Into<String>) -> Result<ClientLeaser, LeaseError> {
        ClientLeaser::connect_with(ClientOptions::new(url)).await
    }

    /// Connects with `options`: to the first of its servers that answers (the others are
    /// connected to when needed). Fails with [`LeaseError::Backend`] when no server can
    /// be reached (the error is the first server's), and [`LeaseError::InvalidConfig`]
    /// for a bad URL or TLS file or a zero timeout.
    pub async fn connect_with(options: ClientOptions) -> Result<ClientLeaser, LeaseError> {
        if options.connect_timeout.is_zero() || options.request_timeout.is_zero() {
            return Err(LeaseError::InvalidConfig(
                "the connect and request timeouts must be positive".into(),
            ));
        }
        if options.urls.is_empty() {
            return Err(LeaseError::InvalidConfig(
                "no lease service URL was given".into(),
            ));
        }
        let endpoints = options
            .urls
            .iter()
            .map(|url| endpoint(&options, url))
            .collect::<Result<Vec<_>, _>>()?;
        let mut channels = Vec::with_capacity(endpoints.len());
        let mut first_error = None;
        let mut current = None;
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            if current.is_some() {
                channels.push(endpoint.connect_lazy());
                continue;
            }
            match endpoint.connect().await {
                Ok(channel) => {
                    current = Some(i);
                    channels.push(channel);
                }
                Err(e) => {
                    // The transport error is kept as the cause: it says why (refused,
                    // DNS, TLS).
                    first_error.get_or_insert_with(|| {
                        LeaseError::Backend(BackendError::with_source(
                            BackendErrorKind::Unavailable,
                            format!("cannot reach the lease service at {}: {e}", options.urls[i]),
                            e,
                        ))
                    });
                    channels.push(endpoint.connect_lazy());
                }
            }
        }
        let Some(current) = current else {
            return Err(first_error.unwrap_or(LeaseError::ManagerStopped));
        };
        let auth =
            match &options.bearer_token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    LeaseError::InvalidConfig("the bearer token must be ASCII".into())
                })?),
                None => None,
            };
        let streams = Streams::new(channels.len());
        Ok(ClientLeaser {
            inner: Arc::new(Inner {
                streams,
                channels,
                current: AtomicUsize::new(current),
                auth,
                options,
            }),
        })
    }

    /// A client of the native service on server `i`'s connection.
    pub(super) fn client_at(&self, i: usize) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel_at(i).clone())
    }

    /// A request carrying the bearer token (if any) and the request timeout.
    pub(super) fn request<T>(&self, message: T) -> Request<T> {
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

    /// The `HoldMany` streams, one per server.
    pub(super) fn streams(&self) -> &Streams {
        &self.inner.streams
    }

    /// The options this leaser was connected with.
    pub(super) fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The connection to the current server.
    pub(super) fn channel(&self) -> &Channel {
        self.channel_at(self.current())
    }

    /// The index of the server new calls go to.
    pub(super) fn current(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed)
    }

    /// How many servers this leaser knows.
    pub(super) fn servers(&self) -> usize {
        self.inner.channels.len()
    }

    /// The connection to server `i` (modulo their number).
    pub(super) fn channel_at(&self, i: usize) -> &Channel {
        &self.inner.channels[i % self.inner.channels.len()]
    }

    /// The URL of server `i` (modulo their number).
    pub(super) fn url_at(&self, i: usize) -> &str {
        &self.inner.options.urls[i % self.inner.options.urls.len()]
    }

    /// Server `failed` could not be reached: new calls go to the next one (unless
    /// another call moved on already).
    pub(super) fn move_on_from(&self, failed: usize) {
        let next = (failed + 1) % self.inner.channels.len();
        let _ = self.inner.current.compare_exchange(
            failed % self.inner.channels.len(),
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The endpoint of the server at `url`, with the options' TLS and timeouts.
fn endpoint(options: &ClientOptions, url: &str) -> Result<Endpoint, LeaseError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| LeaseError::InvalidConfig(format!("bad lease service URL {url:?}: {e}")))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") || options.ca_certificate_pem.is_some() {
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
    Ok(endpoint)
}
