//! `leases serve`'s own arguments: the store, the service, authentication and TLS
//! (the client commands' flags are not among them; see `args.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use leases::service::DEFAULT_BIND;

/// Serve leases over gRPC (FTL's LeaseService and the native service) and HTTP/JSON.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  leases serve                                   # memory backend, 127.0.0.1:8895
  leases serve --postgres postgres://u@db/leases # several servers may share one table
  leases serve --metrics-bind 127.0.0.1:9095      # Prometheus text at /metrics
  leases serve --etcd http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379
  leases serve --bind 0.0.0.0:8895 --token-file /etc/leases/token \\
      --tls-cert server.crt --tls-key server.key")]
pub(crate) struct ServeArgs {
    /// Keep the leases in this PostgreSQL database (e.g.
    /// postgres://user:pass@host/db?sslmode=require); several servers may share it.
    #[arg(
        long,
        env = "LEASES_POSTGRES_URL",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Store (default: memory)"
    )]
    pub(crate) postgres: Option<String>,
    /// With --postgres: the lease table's name.
    #[arg(
        long,
        env = "LEASES_TABLE",
        default_value = "leases",
        value_name = "NAME",
        help_heading = "Store (default: memory)"
    )]
    pub(crate) table: String,
    /// Keep the leases in this etcd cluster: its members' client URLs, comma-separated.
    #[arg(
        long,
        env = "LEASES_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URLS",
        help_heading = "Store (default: memory)"
    )]
    pub(crate) etcd: Vec<String>,
    /// With --etcd: the prefix of the etcd keys the leases live under.
    #[arg(
        long,
        env = "LEASES_ETCD_PREFIX",
        default_value = "/leases",
        value_name = "PREFIX",
        help_heading = "Store (default: memory)"
    )]
    pub(crate) etcd_prefix: String,
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_BIND, value_name = "ADDR", help_heading = "Service")]
    pub(crate) bind: SocketAddr,
    /// Require `authorization: Bearer <token>` from every client, with the token read
    /// from this file.
    #[arg(
        long,
        env = "LEASES_SERVE_TOKEN_FILE",
        value_name = "PATH",
        help_heading = "Authentication and TLS"
    )]
    pub(crate) token_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        requires = "tls_key",
        value_name = "PATH",
        help_heading = "Authentication and TLS"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(
        long,
        requires = "tls_cert",
        value_name = "PATH",
        help_heading = "Authentication and TLS"
    )]
    pub(crate) tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(
        long,
        requires = "tls_cert",
        value_name = "PATH",
        help_heading = "Authentication and TLS"
    )]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// The TTL of an FTL request that carries none.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse,
          value_name = "DURATION", help_heading = "Service")]
    pub(crate) default_ttl: Duration,
    /// The shortest TTL granted.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse,
          value_name = "DURATION", help_heading = "Service")]
    pub(crate) min_ttl: Duration,
    /// Serve the metrics in Prometheus text format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", help_heading = "Service")]
    pub(crate) metrics_bind: Option<SocketAddr>,
    /// Also serve the HTTP/JSON API (docs/http.md) on this address, over plain
    /// HTTP/1.1; it is always served on --bind too.
    #[arg(long, value_name = "ADDR", help_heading = "Service")]
    pub(crate) http_bind: Option<SocketAddr>,
    /// Serve the live console at /console (docs/console.md); with --token-file, let
    /// requests without a token read leases and events (changes still need it).
    #[arg(long, help_heading = "Service")]
    pub(crate) console: bool,
    /// The most keys one FTL stream may hold.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        help_heading = "Service"
    )]
    pub(crate) max_keys_per_stream: usize,
    /// The most leases one native HoldMany stream may hold.
    #[arg(
        long,
        default_value_t = leases::service::DEFAULT_MAX_LEASES_PER_STREAM,
        value_name = "N",
        help_heading = "Service"
    )]
    pub(crate) max_leases_per_stream: usize,
    /// The most concurrent streams on one connection.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        help_heading = "Service"
    )]
    pub(crate) max_streams_per_connection: u32,
    /// The most HTTP leases one client (by IP address) may hold at once.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        help_heading = "Service"
    )]
    pub(crate) max_http_leases_per_client: usize,
}
