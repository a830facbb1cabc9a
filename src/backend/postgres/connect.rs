//! How the backend's connections are made: the driver's settings (server-side timeouts,
//! TCP keepalives, the application name, TLS) and the pool built from them. The pooled
//! connections and the listening one share these settings.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::options::PostgresOptions;
use super::tls::tls_connector;
use crate::error::LeaseError;

/// The driver's settings for these options, and the TLS connector to use with them.
pub(super) fn config(
    options: &PostgresOptions,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), LeaseError> {
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e| LeaseError::InvalidConfig(format!("bad PostgreSQL connection string: {e}")))?;
    config.connect_timeout(options.connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name("leases");
    }
    // Server-side bounds, so that nothing we start outlives our interest in it: a
    // statement we stopped waiting for is cancelled by the server, and a transaction
    // left open by a connection that went silent is rolled back. Ours come first, so
    // `options=-c …` in the connection string can still override them.
    let server_ms = options.statement_timeout.as_millis().max(1);
    let ours = format!(
        "-c statement_timeout={server_ms} -c idle_in_transaction_session_timeout={server_ms}"
    );
    let theirs = config.get_options().map(str::to_owned);
    config.options(match theirs {
        Some(theirs) => format!("{ours} {theirs}"),
        None => ours,
    });
    // A peer that vanished without a FIN or RST (a blackholed network) is noticed
    // by the kernel, not only by our timeouts: this matters most for the listening
    // connection, which otherwise waits for notifications forever.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    config.keepalives_interval(Duration::from_secs(1));
    config.keepalives_retries(3);
    config.tcp_user_timeout(
        options
            .statement_timeout
            .max(Duration::from_secs(1))
            .saturating_mul(2),
    );
    let tls = tls_connector(options)?;
    Ok((config, tls))
}

/// A pool of at most [`pool_size`](PostgresOptions::pool_size) connections with these
/// settings; waiting for, making and recycling a connection are each bounded by the
/// connect timeout.
pub(super) fn pool(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    options: &PostgresOptions,
) -> Result<Pool, LeaseError> {
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.connect_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| LeaseError::InvalidConfig(format!("connection pool: {e}")))
}
