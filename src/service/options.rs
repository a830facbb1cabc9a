//! How to run the lease service ([`ServeOptions`], [`TlsFiles`]), their defaults, the
//! check that refuses options no server could use, and [`ServeError`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::MAX_TTL;

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
    /// [`LeaseServer::local_addr`](crate::service::LeaseServer::local_addr)).
    pub bind: SocketAddr,
    /// Serve TLS with these files; cleartext HTTP/2 (h2c) when `None`.
    pub tls: Option<TlsFiles>,
    /// Require `authorization: Bearer <token>` on the lease services.
    pub auth_token: Option<String>,
    /// The TTL of an FTL request without one; [`DEFAULT_FTL_TTL`] by default.
    pub default_ttl: Duration,
    /// The largest request message accepted, in bytes (68 KiB by default: metadata of
    /// up to [`MAX_METADATA_LEN`](crate::MAX_METADATA_LEN) bytes, plus 4 KiB for a key
    /// of up to [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes and the other fields).
    pub max_message_bytes: usize,
    /// The most keys one FTL `AcquireLease` stream may hold at once (1024 by default).
    pub max_keys_per_stream: usize,
    /// The most open lease streams (FTL `AcquireLease`, native `Hold` and `HoldMany`)
    /// on one client connection (1024 by default).
    pub max_streams_per_connection: u32,
    /// The most leases one native `HoldMany` stream may hold at once
    /// ([`DEFAULT_MAX_LEASES_PER_STREAM`] by default); an acquire beyond it is refused
    /// with `RESOURCE_EXHAUSTED` "too many leases on one stream (at most N)".
    pub max_leases_per_stream: usize,
    /// Serve the native `HoldMany` call (`true` by default). `false` answers it with
    /// `UNIMPLEMENTED`, as servers from before it did: clients fall back to one `Hold`
    /// stream per lease.
    pub hold_many: bool,
    /// The most HTTP leases (`POST /v1/acquire`, see `docs/http.md`) kept at once for
    /// one client, counted by its IP address (1024 by default): an HTTP client opens a
    /// connection per request, so its address is what identifies it. Clients behind
    /// one proxy or NAT share a count; raise the limit for them. An acquire beyond it
    /// is refused with 429 and the code `too_many_leases`.
    pub max_http_leases_per_client: usize,
    /// How often the health service re-checks the backend (2 s by default; must be
    /// positive: zero would re-check without pause).
    pub health_interval: Duration,
    /// How long a new lease stream (FTL `AcquireLease` or native `Hold`) may wait before
    /// its first request ([`DEFAULT_FIRST_REQUEST_TIMEOUT`] by default; must be
    /// positive). A stream that sends nothing by then ends with `DEADLINE_EXCEEDED` and
    /// frees its slot of [`max_streams_per_connection`](Self::max_streams_per_connection).
    pub first_request_timeout: Duration,
    /// Also serve the HTTP/JSON API (`/v1/...`, see `docs/http.md`) on this address,
    /// over plain HTTP/1.1 (never TLS; keep it on loopback or behind a proxy that
    /// terminates TLS). The API is always served on [`bind`](Self::bind) too. `None`
    /// by default.
    pub http_bind: Option<SocketAddr>,
    /// Serve the live console at `GET /console` (see `docs/console.md`), and, when
    /// [`auth_token`](Self::auth_token) is set, let requests that carry no token *read*
    /// (`GET /v1/list`, `/v1/info`, `/v1/events`), so that the console shows the leases
    /// to anyone who reaches the port. Changing anything (acquire, heartbeat, release,
    /// revoke) still needs the token, and a request that carries a wrong one is still
    /// refused. `false` by default: no console, and every lease route needs the token.
    pub console: bool,
}

/// The most leases one `HoldMany` stream may hold, by default.
pub const DEFAULT_MAX_LEASES_PER_STREAM: usize = 1_000_000;

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
            max_leases_per_stream: DEFAULT_MAX_LEASES_PER_STREAM,
            hold_many: true,
            max_http_leases_per_client: 1024,
            health_interval: Duration::from_secs(2),
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            http_bind: None,
            console: false,
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
    pub(super) fn check(&self, min_ttl: Duration) -> Result<(), ServeError> {
        let invalid = |why: String| Err(ServeError::InvalidOptions(why));
        if self.max_keys_per_stream == 0
            || self.max_leases_per_stream == 0
            || self.max_streams_per_connection == 0
            || self.max_http_leases_per_client == 0
        {
            return invalid(
                "the per-stream, per-connection and per-client limits must be at least 1".into(),
            );
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
