//! Where leases live: the one place that knows the backends. Every command talks to a
//! [`Source`]; a new way to reach leases (the lease service) is one more variant, with
//! an arm in each method and in [`Source::open`].

use leases::backend::{EtcdBackend, EtcdOptions, PostgresBackend, PostgresOptions};
use leases::{
    AcquireOptions, ClientLeaser, ClientOptions, Key, Lease, LeaseContext, LeaseError, LeaseInfo,
    LeaseManager, Leaser,
};
use std::sync::Arc;

use crate::args::SourceArgs;
use crate::exit::{Failure, USAGE};

/// Where leases live.
pub(crate) enum Source {
    /// A lease table in PostgreSQL, used directly through a manager of our own.
    Postgres(LeaseManager),
    /// A lease service (`leases serve`), through a client.
    Server(ClientLeaser),
    /// Leases in an etcd cluster, used directly through a manager of our own.
    Etcd(LeaseManager),
}

/// The etcd options the arguments name, if they name a cluster.
pub(crate) fn etcd_options(etcd: &[String], prefix: &str) -> Option<EtcdOptions> {
    let endpoints: Vec<String> = etcd.iter().filter(|u| !u.is_empty()).cloned().collect();
    (!endpoints.is_empty()).then(|| EtcdOptions::new(endpoints).prefix(prefix.to_string()))
}

impl Source {
    /// Picks the source from the arguments: a flag beats the other source's environment
    /// variable; two sources given the same way are a usage error. Connects lazily (the
    /// first operation shows an unreachable store). `read_only` (for `list` and `info`):
    /// only look, never create the PostgreSQL table, so that a role with only `SELECT`
    /// on it will do.
    pub(crate) async fn open(args: &SourceArgs, read_only: bool) -> Result<Source, Failure> {
        match args.resolve()? {
            Chosen::Postgres(url) => {
                let options = PostgresOptions::new(url)
                    .table(args.table.clone())
                    .create_schema(!read_only)
                    // One lease, or one question, at a time.
                    .pool_size(2);
                let backend =
                    PostgresBackend::new(options).map_err(|e| Failure::from_lease_error(&e))?;
                let manager = LeaseManager::builder()
                    .backend(Arc::new(backend))
                    .start()
                    .await
                    .map_err(|e| Failure::from_lease_error(&e))?;
                Ok(Source::Postgres(manager))
            }
            Chosen::Etcd(options) => {
                let backend =
                    EtcdBackend::new(options).map_err(|e| Failure::from_lease_error(&e))?;
                let manager = LeaseManager::builder()
                    .backend(Arc::new(backend))
                    .start()
                    .await
                    .map_err(|e| Failure::from_lease_error(&e))?;
                Ok(Source::Etcd(manager))
            }
            Chosen::Server(urls) => {
                // Several servers of one store: `URL,URL,...`.
                let urls: Vec<&str> = urls
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .collect();
                for url in &urls {
                    crate::transport::check_scheme(url)?;
                }
                let Some(mut options) = ClientOptions::endpoints(urls) else {
                    return Err(Failure::new(USAGE, "--server (LEASES_SERVER) names no URL"));
                };
                if let Some(path) = &args.token_file {
                    options = options.bearer_token(crate::token::read(path, "--token-file")?);
                }
                if let Some(path) = &args.ca_file {
                    let pem = std::fs::read(path).map_err(|e| {
                        Failure::new(USAGE, format!("cannot read {}: {e}", path.display()))
                    })?;
                    options = options.ca_certificate_pem(pem);
                }
                let client = ClientLeaser::connect_with(options)
                    .await
                    .map_err(|e| Failure::from_lease_error(&e))?;
                Ok(Source::Server(client))
            }
        }
    }

    /// Is this a lease service (whose own bounds may be narrower than the library's)?
    pub(crate) fn is_service(&self) -> bool {
        matches!(self, Source::Server(_))
    }

    /// Acquires `key`: the lease and its context (see `Leaser::acquire_lease_with`).
    pub(crate) async fn acquire(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        match self {
            Source::Postgres(m) | Source::Etcd(m) => m.acquire_lease_with(key, options).await,
            Source::Server(c) => c.acquire_lease_with(key, options).await,
        }
    }

    /// Watches who leads `key` (the library's election observer), looking every
    /// `interval`.
    pub(crate) async fn observe(
        &self,
        key: &Key,
        interval: std::time::Duration,
    ) -> Result<leases::election::Observer, LeaseError> {
        use leases::election::Observer;
        match self {
            Source::Postgres(m) | Source::Etcd(m) => {
                Observer::start(m.clone(), key.clone(), interval).await
            }
            Source::Server(c) => Observer::start(c.clone(), key.clone(), interval).await,
        }
    }

    /// Revokes whoever holds `key`; `true` if someone did.
    pub(crate) async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        match self {
            Source::Postgres(m) | Source::Etcd(m) => m.revoke(key).await,
            Source::Server(c) => c.revoke(key).await,
        }
    }

    /// The live lease on `key`, if any.
    pub(crate) async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        match self {
            Source::Postgres(m) | Source::Etcd(m) => m.lease_info(key).await,
            Source::Server(c) => c.lease_info(key).await,
        }
    }

    /// The live leases under a string prefix, ordered by key, at most `limit`.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<LeaseInfo>, LeaseError> {
        match self {
            Source::Postgres(m) | Source::Etcd(m) => m.list(prefix, limit).await,
            Source::Server(c) => c.list(prefix, limit).await,
        }
    }

    /// Gives back a lease that was revoked (its context ended with `Revoked`), so that
    /// the revoker finds the key free at once. Only once its holder has stopped: `run`
    /// acquires with `keep_until_released` and calls this after the `Lease`'s release,
    /// when every process of its command is dead. That release gives the key back too,
    /// but in a task of the manager's own that a process about to exit would cut off;
    /// this waits for it (compare-and-set on the token, so a newer holder is never
    /// touched). Never for a lost lease: that one expires, keeping the safety margin.
    pub(crate) async fn give_back_revoked(&self, key: &Key, token: u64) {
        match self {
            Source::Postgres(m) | Source::Etcd(m) => {
                if let Err(e) = m.backend().release(key, token).await {
                    eprintln!("leases: could not give back the revoked lease on {key}: {e}");
                }
            }
            // The service's manager gives it back; the service outlives this process.
            Source::Server(_) => {}
        }
    }

    /// Ends the source: releases whatever is still held, stops its tasks.
    pub(crate) async fn shutdown(self) {
        match self {
            Source::Postgres(m) | Source::Etcd(m) => m.shutdown().await,
            Source::Server(_) => {}
        }
    }
}

/// The source the arguments name.
pub(crate) enum Chosen {
    Postgres(String),
    Server(String),
    Etcd(EtcdOptions),
}

impl SourceArgs {
    fn resolve(&self) -> Result<Chosen, Failure> {
        use clap::parser::ValueSource::CommandLine;
        let from_flag = |source: Option<clap::parser::ValueSource>| source == Some(CommandLine);
        // Every source given, with whether it came from a flag.
        let mut given: Vec<(Chosen, bool)> = Vec::new();
        if let Some(p) = self.postgres.clone().filter(|u| !u.is_empty()) {
            given.push((Chosen::Postgres(p), from_flag(self.postgres_source)));
        }
        if let Some(s) = self.server.clone().filter(|u| !u.is_empty()) {
            given.push((Chosen::Server(s), from_flag(self.server_source)));
        }
        if let Some(e) = etcd_options(&self.etcd, &self.etcd_prefix) {
            given.push((Chosen::Etcd(e), from_flag(self.etcd_source)));
        }
        let none = given.is_empty();
        if given.len() > 1 {
            // A flag beats the others' environment variables.
            given.retain(|(_, flag)| *flag);
        }
        match given.len() {
            1 => Ok(given.remove(0).0),
            0 if none => Err(Failure::new(
                USAGE,
                "where do leases live? give --server URL (or set LEASES_SERVER) for a lease \
                 service, or --postgres URL (LEASES_POSTGRES_URL) or --etcd URLS \
                 (LEASES_ETCD_ENDPOINTS) for a store used directly",
            )),
            _ => Err(Failure::new(
                USAGE,
                "more than one of a PostgreSQL URL, a lease server and an etcd cluster were \
                 given; choose one (--postgres, --server or --etcd; a flag beats the others' \
                 environment variables)",
            )),
        }
    }
}
