//! [`PostgresOptions`]: how to reach and use the database, and the checks every
//! backend makes of them before it starts.

use std::time::Duration;

use crate::error::LeaseError;

/// How to reach and use the database.
#[derive(Clone)]
pub struct PostgresOptions {
    pub(super) url: String,
    pub(super) pool_size: usize,
    pub(super) table: String,
    pub(super) connect_timeout: Duration,
    pub(super) statement_timeout: Duration,
    pub(super) ca_certificate_pem: Option<Vec<u8>>,
    pub(super) renew_batch_window: Duration,
    pub(super) renew_batch_size: usize,
    pub(super) create_schema: bool,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: leave it out.
        f.debug_struct("PostgresOptions")
            .field("pool_size", &self.pool_size)
            .field("table", &self.table)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ca_certificate", &self.ca_certificate_pem.is_some())
            .field("renew_batch_window", &self.renew_batch_window)
            .field("renew_batch_size", &self.renew_batch_size)
            .field("create_schema", &self.create_schema)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Options for this connection string (`postgres://user:pass@host:port/db?sslmode=…`
    /// or `host=… user=…`), with a pool of 8 connections, the table `leases`, 5 s
    /// connect and statement timeouts, and renewals batched (up to 1000 leases a
    /// statement, gathered for up to 50 ms; see
    /// [`renew_batch_window`](Self::renew_batch_window)).
    ///
    /// `sslmode=require` encrypts without verifying the server's certificate, as libpq
    /// does; add [`ca_certificate_pem`](Self::ca_certificate_pem) to verify it.
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            pool_size: 8,
            table: "leases".into(),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            ca_certificate_pem: None,
            renew_batch_window: Duration::from_millis(50),
            renew_batch_size: 1000,
            create_schema: true,
        }
    }

    /// Connections in the pool (renewals, acquires, releases; from 1 to 10,000). One
    /// more connection is used to listen for released keys. At most half of them (at
    /// least one) run renewal statements at once.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// The table name (a plain lower-case SQL identifier). The sequence is
    /// `<table>_token_seq` and the notification channel `<table>_freed`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long to wait for a connection (new or from the pool); must be positive.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one lease operation may take before it fails with a timeout (positive,
    /// and at most about 24.8 days, PostgreSQL's own limit for `statement_timeout`).
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Verify the server's TLS certificate against this CA (PEM). Without it, TLS (when
    /// the connection string asks for it) encrypts but does not authenticate the server.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// How long a renewal may wait for others to share its statement (default 50 ms):
    /// renewals that fall due within this window of each other go to the database as
    /// one statement. A renewal never waits longer than 1/20 of its lease's TTL, and
    /// the wait only delays it (its holder's deadline counts from before the wait), so
    /// it costs no safety. `Duration::ZERO` sends what is queued at once.
    pub fn renew_batch_window(mut self, window: Duration) -> Self {
        self.renew_batch_window = window;
        self
    }

    /// The most leases one renewal statement renews (default 1000; at least 1). More
    /// renewals due at once go as several statements, at most half of
    /// [`pool_size`](Self::pool_size) (at least one) running at once; the rest wait in
    /// the queue. `1` makes every renewal a statement of its own.
    pub fn renew_batch_size(mut self, size: usize) -> Self {
        self.renew_batch_size = size;
        self
    }

    /// Whether the backend creates its table and sequence if they do not exist, on its
    /// first operation (default `true`). With `false` it never runs DDL, nor anything
    /// but its own statements: for read-only use (listing and looking up leases) by a
    /// role with only `SELECT` on the table (and `USAGE` on its schema), or wherever the
    /// schema is managed apart. A table that does not exist then fails each operation
    /// with a [`BackendErrorKind::Failed`](crate::BackendErrorKind::Failed) error that
    /// says so, and how to create it.
    pub fn create_schema(mut self, create: bool) -> Self {
        self.create_schema = create;
        self
    }
}

/// The most connections a pool may have: far above any server's `max_connections`.
const MAX_POOL_SIZE: usize = 10_000;

/// PostgreSQL's `statement_timeout` is a 32-bit count of milliseconds.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 48
}

impl PostgresOptions {
    /// Refuses a table name that is not a plain identifier (it is formatted into SQL), a
    /// pool size or timeout out of range. (The connection string, the CA certificate and
    /// the batch size are checked as the backend is built.)
    pub(super) fn check(&self) -> Result<(), LeaseError> {
        if !valid_identifier(&self.table) {
            return Err(LeaseError::InvalidConfig(format!(
                "table name {:?} must be a lower-case SQL identifier of at most 48 characters",
                self.table
            )));
        }
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(LeaseError::InvalidConfig(format!(
                "pool_size must be from 1 to {MAX_POOL_SIZE}, not {}",
                self.pool_size
            )));
        }
        if self.statement_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(LeaseError::InvalidConfig(
                "connect_timeout and statement_timeout must be positive".into(),
            ));
        }
        if self.statement_timeout > MAX_STATEMENT_TIMEOUT {
            return Err(LeaseError::InvalidConfig(format!(
                "statement_timeout must be at most {MAX_STATEMENT_TIMEOUT:?} \
                 (PostgreSQL's own limit), not {:?}",
                self.statement_timeout
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert!(valid_identifier("leases"));
        assert!(valid_identifier("_my_leases2"));
        for bad in [
            "",
            "Leases",
            "2x",
            "a-b",
            "x; DROP TABLE y",
            &"a".repeat(49),
        ] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }
}
