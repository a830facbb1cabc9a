//! [`LeaseServer`]: binds, serves every route of [`routes`](super::routes) over HTTP/2
//! (h2c or TLS), and shuts down once every stream has let go of its leases.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::console::with_console;
use super::events::Events;
use super::handover::{Holds, LetGo};
use super::http::Api;
use super::options::{ServeError, ServeOptions, TlsFiles};
use super::routes::routes;
use super::shared::{PerClient, Shared, SharedState};
use crate::LeaseManager;

/// A running lease service. Stop it with [`shutdown`](LeaseServer::shutdown); dropping
/// it stops it too (without waiting).
pub struct LeaseServer {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
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
        let let_go = LetGo {
            shared_store: manager.backend().shared(),
            stopping: stopping.clone(),
        };
        let shared = Shared::new(SharedState {
            holds: Holds::default(),
            events: Events::default(),
            let_go,
            manager,
            options: Arc::new(options),
            stopping: stopping.clone(),
            streams: PerClient::default(),
            http_leases: PerClient::default(),
            active: streams.clone(),
        });
        let api = Api::new(&shared);
        let http_listener = match shared.options.http_bind {
            Some(bind) => Some(
                TcpListener::bind(bind)
                    .await
                    .map_err(|source| ServeError::Bind { addr: bind, source })?,
            ),
            None => None,
        };
        let http_addr = match &http_listener {
            Some(l) => Some(l.local_addr().map_err(|source| ServeError::Bind {
                addr: l.local_addr().unwrap_or(addr),
                source,
            })?),
            None => None,
        };
        let routes = routes(&shared, &api, stopping.clone());
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
        if let Some(listener) = http_listener {
            let stop = stopping.clone();
            let router = with_console(api.router(), shared.options.console);
            tokio::spawn(async move {
                let router = router.into_make_service_with_connect_info::<SocketAddr>();
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the HTTP API's listener failed");
                }
            });
        }
        tracing::info!(%addr, ?http_addr, "lease service listening");
        Ok(LeaseServer {
            addr,
            http_addr,
            stopping,
            streams,
            task: Some(task),
        })
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the HTTP API's own listener, when
    /// [`ServeOptions::http_bind`] asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops the service gracefully: every stream ends (FTL streams with
    /// `UNAVAILABLE`, native ones with an `ended` answer), then the server closes its
    /// connections. Returns once every stream has let go of its leases. On a store
    /// servers share (PostgreSQL, etcd) native streams end with `HANDED_OVER` and their
    /// leases are left in the store at once, for their clients to re-attach through
    /// another server; on the memory backend (whose leases end with the server) they end
    /// with `SHUTDOWN`, and a stream whose client has not hung up (its connection broke,
    /// say) keeps its lease until the time left it last promised has run out, at most
    /// its TTL. FTL keys are kept until the heartbeat window of their last request has
    /// run out, on any store (FTL clients cannot re-attach). So shutting the manager down
    /// next frees no key a client may still act on. The manager is not shut down (it is
    /// the caller's).
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
