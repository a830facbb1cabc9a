//! Where leases live: the one place that knows the backends. Every command talks to a
//! [`Source`]; a new way to reach leases (the lease service) is one more variant, with
//! an arm in each method and in [`Source::open`].

use leases::backend::{PostgresBackend, PostgresOptions};
use leases::{
    AcquireOptions, ClientLeaser, ClientOptions, Key, Lease, LeaseContext, LeaseError, LeaseInfo,
    LeaseManager, Leaser,
};
use std::sync::Arc;

use crate::exit::{Failure, USAGE};
use crate::SourceArgs;

/// Where leases live.
pub(crate) enum Source {
    /// A lease table in PostgreSQL, used directly through a manager of our own.
    Postgres(LeaseManager),
    /// A lease service (`leases serve`), through a client.
    Server(ClientLeaser),
}

impl Source {
    /// Picks the source from the arguments: a flag beats the other source's environment
    /// variable; two sources given the same way are a usage error. Connects lazily (the
    /// first operation shows an unreachable store).
    pub(crate) async fn open(args: &SourceArgs) -> Result<Source, Failure> {
        match args.resolve()? {
            Chosen::Postgres(url) => {
                let options = PostgresOptions::new(url)
                    .table(args.table.clone())
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
            Chosen::Server(url) => {
                let mut options = ClientOptions::new(url);
                if let Some(path) = &args.token_file {
                    let token = std::fs::read_to_string(path).map_err(|e| {
                        Failure::new(USAGE, format!("cannot read {}: {e}", path.display()))
                    })?;
                    options = options.bearer_token(token.trim());
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

    /// Acquires `key`: the lease and its context (see `Leaser::acquire_lease_with`).
    pub(crate) async fn acquire(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        match self {
            Source::Postgres(m) => m.acquire_lease_with(key, options).await,
            Source::Server(c) => c.acquire_lease_with(key, options).await,
        }
    }

    /// Revokes whoever holds `key`; `true` if someone did.
    pub(crate) async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        match self {
            Source::Postgres(m) => m.revoke(key).await,
            Source::Server(c) => c.revoke(key).await,
        }
    }

    /// The live lease on `key`, if any.
    pub(crate) async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        match self {
            Source::Postgres(m) => m.lease_info(key).await,
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
            Source::Postgres(m) => m.list(prefix, limit).await,
            Source::Server(c) => c.list(prefix, limit).await,
        }
    }

    /// Gives back a lease that was revoked (its context ended with `Revoked`), so that
    /// the revoker finds the key free at once. The manager does this too, but in a task
    /// of its own that a process about to exit would cut off; compare-and-set on the
    /// token, so a newer holder is never touched. Never for a lost lease: that one
    /// expires, keeping the safety margin.
    pub(crate) async fn give_back_revoked(&self, key: &Key, token: u64) {
        match self {
            Source::Postgres(m) => {
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
            Source::Postgres(m) => m.shutdown().await,
            Source::Server(_) => {}
        }
    }
}

/// The source the arguments name.
pub(crate) enum Chosen {
    Postgres(String),
    Server(String),
}

impl SourceArgs {
    fn resolve(&self) -> Result<Chosen, Failure> {
        use clap::parser::ValueSource::CommandLine;
        let postgres = self.postgres.clone().filter(|u| !u.is_empty());
        let server = self.server.clone().filter(|u| !u.is_empty());
        let from_flag = |source: Option<clap::parser::ValueSource>| source == Some(CommandLine);
        match (postgres, server) {
            (Some(p), Some(s)) => {
                match (
                    from_flag(self.postgres_source),
                    from_flag(self.server_source),
                ) {
                    (true, false) => Ok(Chosen::Postgres(p)),
                    (false, true) => Ok(Chosen::Server(s)),
                    _ => Err(Failure::new(
                        USAGE,
                        "both a PostgreSQL URL and a lease server were given; choose one \
                         (--postgres or --server; a flag beats the other's environment variable)",
                    )),
                }
            }
            (Some(p), None) => Ok(Chosen::Postgres(p)),
            (None, Some(s)) => Ok(Chosen::Server(s)),
            (None, None) => Err(Failure::new(
                USAGE,
                "where do leases live? give --postgres URL (or set LEASES_POSTGRES_URL)",
            )),
        }
    }
}
