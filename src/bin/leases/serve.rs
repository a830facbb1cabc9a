//! `leases serve`: the lease service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use leases::backend::{EtcdOptions, PostgresOptions};
use leases::service::{LeaseServer, ServeOptions, TlsFiles, DEFAULT_BIND};
use leases::LeaseManager;

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
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_BIND)]
    pub(crate) bind: SocketAddr,
    /// Require `authorization: Bearer <token>`, with the token read from this file.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// The TTL of an FTL request that carries none.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    pub(crate) default_ttl: Duration,
    /// The shortest TTL granted.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    pub(crate) min_ttl: Duration,
    /// Serve the metrics in Prometheus text format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_bind: Option<SocketAddr>,
    /// The most keys one FTL stream may hold.
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_keys_per_stream: usize,
    /// The most concurrent streams on one connection.
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_streams_per_connection: u32,
}

/// Runs the service until SIGINT or SIGTERM, then stops gracefully.
pub(crate) async fn run(
    args: ServeArgs,
    postgres: Option<String>,
    table: String,
    etcd: Option<EtcdOptions>,
) -> ExitCode {
    match serve(args, postgres, table, etcd).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leases serve: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(
    args: ServeArgs,
    postgres: Option<String>,
    table: String,
    etcd: Option<EtcdOptions>,
) -> Result<(), String> {
    // The recorder first, so that everything the manager does is counted.
    let _metrics = match args.metrics_bind {
        Some(addr) => {
            let exporter = leases::metrics::install_prometheus(addr)
                .await
                .map_err(|e| format!("metrics endpoint: {e}"))?;
            eprintln!(
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
    if let Some(url) = postgres {
        builder = builder.postgres(PostgresOptions::new(url).table(table));
    }
    if let Some(options) = etcd {
        builder = builder.etcd(options);
    }
    let manager = builder.start().await.map_err(|e| e.to_string())?;
    let auth_token = match &args.token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
            let token = token.trim().to_string();
            if token.is_empty() {
                return Err(format!("the token file {} is empty", path.display()));
            }
            Some(token)
        }
        None => None,
    };
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
    eprintln!("leases serve: stopped");
    result
}
