//! `leases serve`: the lease service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::ArgMatches;

use leases::backend::PostgresOptions;
use leases::service::{LeaseServer, ServeOptions, TlsFiles, DEFAULT_BIND};
use leases::LeaseManager;

use crate::args::{SourceArgs, CLIENT_ONLY};
use crate::exit::USAGE;

/// Serve leases over gRPC (FTL's LeaseService and the native service).
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
    /// The most keys one FTL stream may hold.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        help_heading = "Service"
    )]
    pub(crate) max_keys_per_stream: usize,
    /// The most concurrent streams on one connection.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        help_heading = "Service"
    )]
    pub(crate) max_streams_per_connection: u32,
}

/// `leases serve`: refuses the client commands' flags given before `serve` (their
/// environment variables are not read), takes the store flags given there, reads the
/// token file, then runs the service on a runtime with worker threads.
pub(crate) fn main(
    mut args: ServeArgs,
    top_matches: &ArgMatches,
    top: SourceArgs,
    matches: &ArgMatches,
) -> ExitCode {
    let given = |m: &ArgMatches, id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    for (id, flag) in CLIENT_ONLY {
        if given(top_matches, id) {
            let hint = if id == "token_file" {
                "; serve's own is `leases serve --token-file PATH` (LEASES_SERVE_TOKEN_FILE)"
            } else {
                ""
            };
            eprintln!("leases: {flag} is a flag of the client commands, not of serve{hint}");
            return ExitCode::from(USAGE);
        }
    }
    // `leases --postgres URL serve` as well as `leases serve --postgres URL`.
    if given(top_matches, "postgres") && !given(matches, "postgres") {
        args.postgres = top.postgres;
    }
    if given(top_matches, "table") && !given(matches, "table") {
        args.table = top.table;
    }
    if given(top_matches, "etcd") && !given(matches, "etcd") {
        args.etcd = top.etcd;
    }
    if given(top_matches, "etcd_prefix") && !given(matches, "etcd_prefix") {
        args.etcd_prefix = top.etcd_prefix;
    }
    // The clients' token variable in a server's environment once meant authentication
    // for the server too. Serving without it now would silently open a service its
    // operator meant to close: refuse, and say which variable serve reads.
    if args.token_file.is_none()
        && std::env::var_os("LEASES_TOKEN_FILE").is_some_and(|v| !v.is_empty())
    {
        eprintln!(
            "leases serve: LEASES_TOKEN_FILE is the client commands' token file and serve does \
             not read it; give serve its own with --token-file PATH or LEASES_SERVE_TOKEN_FILE, \
             or unset LEASES_TOKEN_FILE to serve without authentication"
        );
        return ExitCode::from(USAGE);
    }
    let auth_token = match &args.token_file {
        Some(path) => match crate::token::read(path, "serve --token-file") {
            Ok(token) => Some(token),
            Err(f) => {
                eprintln!("leases serve: {}", f.message);
                return ExitCode::from(f.code);
            }
        },
        None => None,
    };
    // The service serves many clients at once: a runtime with worker threads.
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(args, auth_token)),
        Err(e) => {
            eprintln!("leases serve: cannot start the runtime: {e}");
            ExitCode::from(crate::exit::INTERNAL)
        }
    }
}

/// Runs the service until SIGINT or SIGTERM, then stops gracefully.
async fn run(args: ServeArgs, auth_token: Option<String>) -> ExitCode {
    match serve(args, auth_token).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leases serve: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(args: ServeArgs, auth_token: Option<String>) -> Result<(), String> {
    let postgres = args.postgres.clone();
    let etcd = crate::source::etcd_options(&args.etcd, &args.etcd_prefix);
    // The recorder first, so that everything the manager does is counted.
    let _metrics = match args.metrics_bind {
        Some(addr) => {
            let exporter = leases::metrics::install_prometheus(addr)
                .await
                .map_err(|e| format!("metrics endpoint: {e}"))?;
            tracing::info!(
                "leases serve: metrics at http://{}/metrics",
                exporter.local_addr()
            );
            Some(exporter)
        }
        None => None,
    };
    let mut builder = LeaseManager::builder().min_ttl(args.min_ttl);
    let postgres = postgres.filter(|u| !u.is_empty());
    if postgres.is_some() && etcd.is_some() {
        return Err("both --postgres and --etcd were given: choose one".into());
    }
    let on_memory = postgres.is_none() && etcd.is_none();
    if let Some(url) = postgres {
        builder = builder.postgres(PostgresOptions::new(url).table(args.table.clone()));
    }
    if let Some(options) = etcd {
        builder = builder.etcd(options);
    }
    let manager = builder.start().await.map_err(|e| e.to_string())?;
    if on_memory {
        // Said where an operator meets it: a second server on memory is a second,
        // separate set of leases, and a restart ends every lease held here.
        tracing::warn!(
            "leases serve: the leases live in this process's memory: no other server \
             can share them, and they end when this server stops (--postgres or --etcd \
             for leases that outlive it)"
        );
    }
    let tls = args.tls_cert.clone().map(|certificate| TlsFiles {
        certificate,
        private_key: args.tls_key.clone().unwrap_or_default(),
        client_ca: args.tls_client_ca.clone(),
    });
    let options = ServeOptions {
        bind: args.bind,
        tls,
        auth_token,
        default_ttl: args.default_ttl,
        max_keys_per_stream: args.max_keys_per_stream,
        max_streams_per_connection: args.max_streams_per_connection,
        ..ServeOptions::default()
    };
    // The handlers first, so that a signal that comes right after the address is
    // printed is ours to handle.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let server = LeaseServer::start(manager.clone(), options)
        .await
        .map_err(|e| e.to_string())?;
    // Scripts and tests read the address from this line.
    println!("leases serve: listening on {}", server.local_addr());
    let stop = async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    let result = server.serve_until(stop).await.map_err(|e| e.to_string());
    manager.shutdown().await;
    tracing::info!("leases serve: stopped");
    result
}
