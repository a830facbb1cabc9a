//! [`ClientLeaser`] and its one connection: reaching the service (TLS, bearer token,
//! timeouts), and the requests every call sends on it.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Request;

use super::options::ClientOptions;

use crate::error::{BackendError, BackendErrorKind};
use crate::proto::leases::v1::leases_client::LeasesClient;
use crate::LeaseError;

/// A [`Leaser`](crate::Leaser) whose leases come from a lease service over gRPC.
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
///   [`LossCause::DeadlineExceeded`](crate::LossCause::DeadlineExceeded));
/// - a lost connection or server, or a stream that ends, is
///   [`CancelReason::Lost`](crate::CancelReason::Lost) at once
///   ([`LossCause::Disconnected`](crate::LossCause::Disconnected)); a loss the server
///   reports is [`LossCause::Remote`](crate::LossCause::Remote), a revoke
///   [`CancelReason::Revoked`](crate::CancelReason::Revoked);
/// - the token is the server's fencing token;
/// - [`Lease::release`](crate::Lease::release) ends the context, asks the server to
///   release and waits for its confirmation; dropping the lease asks the same without
///   waiting. Only that `release` message frees the key at once: a stream that ends
///   otherwise (closed, reset, broken) keeps the key taken on the server until the time
///   it last promised has passed;
/// - after a revoke, or its server shutting down, the client sends `release` as soon as
///   the context has ended (the holder was told), or, with
///   [`AcquireOptions::keep_until_released`](crate::AcquireOptions::keep_until_released),
///   only once the [`Lease`](crate::Lease) is released or dropped; after a loss it never
///   does, so that the key keeps the safety margin a local manager keeps.
///
/// An acquire that waited ([`AcquireOptions::wait`](crate::AcquireOptions::wait)) takes
/// one more round trip before it returns: the grant's answer may have been sent long
/// after the request, so its time left is confirmed by a heartbeat first.
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
        // The transport error is kept as the cause: it says why (refused, DNS, TLS).
        let channel = endpoint.connect().await.map_err(|e| {
            LeaseError::Backend(BackendError::with_source(
                BackendErrorKind::Unavailable,
                format!("cannot reach the lease service at {}: {e}", options.url),
                e,
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

    /// A client of the native service on this leaser's connection.
    pub(super) fn client(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel().clone())
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

    /// The options this leaser was connected with.
    pub(super) fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The leaser's one connection to the service.
    pub(super) fn channel(&self) -> &Channel {
        &self.inner.channel
    }
}
