//! `leases serve`: the lease service.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::ArgMatches;

use leases::backend::PostgresOptions;
use leases::service::{LeaseServer, ServeOptions, TlsFiles};
use leases::LeaseManager;

use crate::args::{SourceArgs, CLIENT_ONLY};
use crate::exit::USAGE;
use crate::serve_args::ServeArgs;

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
        max_leases_per_stream: args.max_leases_per_stream,
        max_http_leases_per_client: args.max_http_leases_per_client,
        http_bind: args.http_bind,
        console: args.console,
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
    if let Some(http) = server.http_addr() {
        println!("leases serve: HTTP API on {http}");
    }
    if args.console {
        let at = server.http_addr().unwrap_or(server.local_addr());
        let scheme = if args.tls_cert.is_some() && server.http_addr().is_none() {
            "https"
        } else {
            "http"
        };
        println!("leases serve: console at {scheme}://{at}/console");
    }
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
