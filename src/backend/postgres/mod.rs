//! The PostgreSQL backend (feature `postgres`): leases shared by many processes.
//!
//! One row per key, on the database's clock (`now()`), with no reaper:
//!
//! ```sql
//! CREATE SEQUENCE IF NOT EXISTS leases_token_seq;
//! CREATE TABLE IF NOT EXISTS leases (
//!     key         TEXT PRIMARY KEY,          -- the key's canonical string form
//!     token       BIGINT NOT NULL,           -- fencing token, from leases_token_seq
//!     ttl_ms      BIGINT NOT NULL,
//!     expires_at  TIMESTAMPTZ NOT NULL,      -- a row past this is free to take
//!     metadata    BYTEA NOT NULL,
//!     revoked     BOOLEAN NOT NULL DEFAULT false,
//!     acquired_at TIMESTAMPTZ NOT NULL
//! );
//! ```
//!
//! - **Acquire** is one `INSERT … ON CONFLICT (key) DO UPDATE … WHERE expires_at <= now()`
//!   that takes a free or expired row.
//! - **Renew** is batched: renewals that fall due close together (within
//!   [`PostgresOptions::renew_batch_window`]) go to the database as one `UPDATE … FROM
//!   unnest($keys, $tokens, $ttls) … RETURNING position, revoked`, in chunks of at most
//!   [`PostgresOptions::renew_batch_size`] leases, keys in order (the statement locks
//!   its rows in key order, then judges expiry on the locked rows), with at most half the
//!   pool's connections running renewal statements at once (so acquires and releases
//!   keep the other half when renewals pile up; renewals wait in the batch queue,
//!   where they join larger statements). No lease is in two statements at once. For each
//!   lease it is compare-and-set on `(key, token)` that never revives an expired lease
//!   (judged on the database's clock), extends only a lease that is not revoked, and
//!   reads `revoked` from the very row version it locked (so a renewal that waited on a
//!   committing revoke is told `Revoked`, not `Lost`). A lease missing from the answer
//!   is lost, and its holder is told at once; a statement that fails or times out
//!   fails every renewal in it (none counts as renewed) and their renewers retry. Each
//!   holder's deadline counts from its renewer's start, taken before the batch was
//!   sent. One renewal actor per lease remains: batching happens below it, here.
//! - **Release** is compare-and-set on `(key, token)` too. It ends the lease by setting
//!   `expires_at = now()` and keeps the row (see fencing below), then sends
//!   `NOTIFY <table>_freed, '<key>'`; one listening connection per backend wakes
//!   waiting acquirers.
//! - **Revoke** sets `revoked`; the holder is refused at its next renewal and then gives
//!   the key back.
//!
//! The table and sequence are created on first use, in a transaction under an advisory
//! lock, so many processes can start at once.
//!
//! # Fencing tokens
//! Tokens come from one sequence, which only grows (across server restarts too), and
//! are strictly increasing per key **in grant order**. A takeover of an existing row
//! draws its token inside the `DO UPDATE`, that is after it holds the row lock and has
//! re-checked the row, so after every grant that committed before it. A first grant of a
//! key (no row yet) uses the value drawn in `VALUES`; since this crate never deletes
//! rows, no other grant of that key can have happened between that draw and the insert.
//! Failed or lost tries use up values: tokens have gaps. Tokens are `BIGINT`, so they
//! stay below 2^63.
//!
//! An operator may delete rows of keys no longer used (`DELETE … WHERE expires_at <
//! now() - interval '1 day'`). Delete only rows that expired longer ago than the
//! statement timeout: a row deleted while an acquire that drew its token before the
//! row's last grant is still in flight would let that older token through.
//!
//! # Timeouts, cancellation and what they leave behind
//! Every operation runs on a pooled connection under the statement timeout, and the
//! server enforces the same bound by itself (`statement_timeout` and
//! `idle_in_transaction_session_timeout` are set on every connection), so nothing we
//! stopped waiting for keeps running there. A connection goes back to the pool only
//! after a complete answer; when an operation's future is dropped at any await (our
//! timeout, a caller that gives up, a shutdown) or fails, its connection is closed,
//! never reused: it might be inside a transaction or have a statement in flight, and
//! grants made on it would be uncommitted and invisible to everyone else.
//!
//! The await points, and what dropping the future at each leaves behind:
//! 1. *Waiting for a pooled connection*: nothing.
//! 2. *Creating the schema* (first operation only; `BEGIN`, the advisory lock, two
//!    `CREATE … IF NOT EXISTS`, `COMMIT`, through the driver's transaction API): the
//!    connection is closed and the server rolls the transaction back; the next
//!    operation tries again.
//! 3. *Preparing the statement*: the connection is closed; nothing changed.
//! 4. *The statement itself*. The server either never ran it, cancels it, or committed it
//!    and the answer was lost. A statement still waiting on a lock when we close its
//!    connection may commit on the server up to the statement timeout later (the server
//!    notices a vanished client only when it answers), so "lost" covers that too: a
//!    phantom grant keeps a key for at most TTL + statement timeout after the call
//!    started. For each operation, a lost answer means:
//!    - **acquire**: possibly a *phantom grant* that nobody holds. The caller gets an
//!      error and the key stays taken for at most one TTL on the database's clock, then
//!      expires like any lease. Never a second holder: a phantom has no context.
//!    - **renew**: possibly an extension nobody knows of. The renewer counts the renewal
//!      as failed (the local deadline does not move) and retries, so the holder is
//!      still told at its deadline; the row then expires up to one TTL later.
//!      (Renewal statements are run by the backend's batcher task, not by the renewer:
//!      a renewer that stops waiting cuts no statement short; see `renewals.rs`. Only
//!      dropping the backend aborts them, with the same effect as here.)
//!    - **release**: possibly released. The holder's context has already ended; if the
//!      release did not happen, the lease expires within its TTL.
//!    - **revoke**: possibly revoked; the holder learns at its next renewal.
//!    - **info**: nothing.
//!
//! The listening connection (for wake-ups) awaits connect, `LISTEN`, notifications
//! and a ping every two seconds, each bounded by the statement timeout. Notifications
//! sent while it reconnects are lost, so after every (re)connect every waiter is told to
//! look again ([`Freed::Everything`]); a silent connection is found by the ping and by
//! TCP keepalives.
//!
//! # Clocks
//! Expiry is judged on the database server's wall clock (`now()`), holders' deadlines
//! on their own monotonic (suspend-aware) clocks. A *forward* step of the database's
//! clock by more than the safety margin expires leases early and can grant a key while
//! its holder's context is still live: keep the database's clock slewed (NTP/chrony
//! slew, not step), or use a safety margin larger than any step you expect. A backward
//! step only makes leases last longer (less available, still exclusive).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{broadcast, OnceCell};
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use super::{AcquireOutcome, Backend, Freed, FreedKeys, RenewOutcome};
use crate::backend::LeaseInfo;
use crate::error::{BackendError, BackendErrorKind, LeaseError};
use crate::key::Key;

mod renewals;

/// How to reach and use the database.
#[derive(Clone)]
pub struct PostgresOptions {
    url: String,
    pool_size: usize,
    table: String,
    connect_timeout: Duration,
    statement_timeout: Duration,
    ca_certificate_pem: Option<Vec<u8>>,
    renew_batch_window: Duration,
    renew_batch_size: usize,
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
}

/// The SQL text for one table.
struct Sql {
    schema: Vec<String>,
    lock_schema: String,
    acquire: String,
    renew: String,
    release: String,
    revoke: String,
    info: String,
    held_among: String,
    channel: String,
    list: String,
}

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 48
}

impl Sql {
    fn new(t: &str) -> Sql {
        // `t` is a checked identifier, so formatting it into SQL is safe.
        let live = "expires_at > now()";
        let ttl = "($2::bigint * interval '1 millisecond')";
        let us_left = "GREATEST(0, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000000)::bigint)";
        Sql {
            lock_schema: format!("SELECT pg_advisory_xact_lock(hashtext('leases schema {t}'))"),
            schema: vec![
                format!("CREATE SEQUENCE IF NOT EXISTS {t}_token_seq"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        key TEXT PRIMARY KEY,
                        token BIGINT NOT NULL,
                        ttl_ms BIGINT NOT NULL,
                        expires_at TIMESTAMPTZ NOT NULL,
                        metadata BYTEA NOT NULL,
                        revoked BOOLEAN NOT NULL DEFAULT false,
                        acquired_at TIMESTAMPTZ NOT NULL)"
                ),
            ],
            // The outer SELECT sees the table as it was before the INSERT: when the
            // insert took nothing, it reports how long the current holder has left.
            //
            // The token of a takeover is drawn in the DO UPDATE, that is after the row
            // lock is held and the row re-checked, so it is greater than the token of
            // every grant that committed before it (the VALUES draw is then wasted: a
            // gap). A fresh INSERT uses the VALUES draw; it can only happen when no row
            // exists, and rows are never deleted by this crate (release keeps the row
            // and its token), so no later grant can have come between that draw and
            // the insert. See "Fencing tokens" in the module docs.
            acquire: format!(
                "WITH ins AS (
                    INSERT INTO {t} AS l (key, token, ttl_ms, expires_at, metadata, revoked, acquired_at)
                    VALUES ($1, nextval('{t}_token_seq'), $2, now() + {ttl}, $3, false, now())
                    ON CONFLICT (key) DO UPDATE SET
                        token = nextval('{t}_token_seq'), ttl_ms = EXCLUDED.ttl_ms,
                        expires_at = EXCLUDED.expires_at, metadata = EXCLUDED.metadata,
                        revoked = false, acquired_at = EXCLUDED.acquired_at
                    WHERE l.expires_at <= now()
                    RETURNING token)
                SELECT (SELECT token FROM ins),
                       (SELECT {us_left} FROM {t} WHERE key = $1 AND {live})"
            ),
            // Renewals, many leases in one statement: `$1` keys, `$2` tokens, `$3` TTLs
            // in ms, one element per lease (no lease twice); it returns the position
            // (from 1) in the arrays and `revoked` of every lease it matched, and a lease
            // it did not return is lost.
            //
            // `mine` locks the rows still held by the given `(key, token)`, in key
            // order (the sort runs below the row locks), so that two statements that
            // shared rows could never wait on each other in a cycle (the batcher never
            // has one lease in two running statements anyway). A row that another
            // transaction *changed* while we waited for its lock is re-checked on its
            // newest version (READ COMMITTED's re-check), so a renewal that waited on a
            // committing revoke returns `revoked` set (and extends nothing), one that
            // waited on a takeover or a release does not match.
            //
            // A row whose lock we waited for but that was *not* changed (a rival's
            // acquire locks the row of a live lease, takes nothing, and holds the lock
            // until its commit) is not re-checked: the lease may have expired during
            // the wait. So expiry is judged again, on `clock_timestamp()`, in the
            // filter on `mine`'s rows, which reads each row only after `mine` has
            // locked it, whatever the plan; with the lock held the row cannot change
            // any more. A lease that expired is then not matched (lost), never revived.
            //
            // Liveness is judged on `clock_timestamp()`, not `now()` (the statement's
            // start): a renewal that waited on the row lock of a committing release
            // re-checks the released row, whose `expires_at` is the release's `now()`,
            // later than our `now()`; against `now()` it would revive a released lease.
            // The new expiry still counts from `now()`, which is no earlier than the
            // moment the batch was sent, hence than every renewer's start.
            //
            // A renewal never moves an expiry backwards (`GREATEST`): a statement we
            // gave up on may still run on the server (for up to its statement timeout,
            // which starts only when the statement reaches the server, while ours
            // started before waiting for a connection), after a retry of the same lease
            // was confirmed; its older `now()` must not shorten what the retry promised.
            renew: format!(
                "WITH mine AS MATERIALIZED (
                    SELECT l.key, l.token, l.expires_at, w.ttl_ms, w.i FROM {t} l
                    JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS w(key, token, ttl_ms, i)
                      ON l.key = w.key AND l.token = w.token
                    WHERE l.expires_at > clock_timestamp()
                    ORDER BY l.key COLLATE \"C\"
                    FOR UPDATE OF l)
                UPDATE {t} l SET
                    expires_at = CASE WHEN l.revoked THEN l.expires_at
                        ELSE GREATEST(l.expires_at, now() + (m.ttl_ms * interval '1 millisecond')) END,
                    ttl_ms = CASE WHEN l.revoked THEN l.ttl_ms ELSE m.ttl_ms END
                FROM mine m
                WHERE m.expires_at > clock_timestamp() AND l.key = m.key AND l.token = m.token
                RETURNING m.i, l.revoked"
            ),
            // Release ends the lease but keeps the row, and with it the key's last
            // token: see the acquire above for why rows are never deleted here.
            release: format!(
                "WITH r AS (
                    UPDATE {t} SET expires_at = now(), revoked = false
                    WHERE key = $1 AND token = $2 AND {live}
                    RETURNING key)
                SELECT pg_notify('{t}_freed', key) FROM r"
            ),
            revoke: format!("UPDATE {t} SET revoked = true WHERE key = $1 AND {live} RETURNING token"),
            info: format!(
                "SELECT token, ttl_ms, {us_left}, metadata, revoked, acquired_at FROM {t} WHERE key = $1 AND {live}"
            ),
            held_among: format!("SELECT key FROM {t} WHERE key = ANY($1) AND {live}"),
            channel: format!("{t}_freed"),
            // `$1` is a LIKE pattern made by `like_prefix` (its metacharacters escaped
            // with `!`). Ordered byte-wise, as the memory backend orders. Not indexed
            // (a LIKE prefix uses the primary key's index only under the C collation):
            // an operator's look, not a hot path.
            list: format!(
                "SELECT key, token, ttl_ms, {us_left}, metadata, revoked, acquired_at FROM {t}
                 WHERE key LIKE $1 ESCAPE '!' AND {live}
                 ORDER BY key COLLATE \"C\" LIMIT $2"
            ),
        }
    }
}

/// Leases in a PostgreSQL table, shared by every manager that uses the same table.
///
/// Create it with [`PostgresBackend::connect`] or through
/// [`LeaseManagerBuilder::postgres`](crate::LeaseManagerBuilder::postgres). It talks to
/// the database lazily: creating it never fails because the database is down; the first
/// operation creates the schema if needed.
pub struct PostgresBackend {
    db: Arc<Db>,
    frees: broadcast::Sender<Freed>,
    listener: JoinHandle<()>,
    renewals: renewals::Renewals,
}

/// What every operation needs to reach the database: shared by the backend and its
/// renewal batcher (see [`renewals`]).
struct Db {
    pool: Pool,
    sql: Sql,
    options: PostgresOptions,
    schema: OnceCell<()>,
    /// Renewal statements sent so far (for benchmarks).
    renew_statements: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("options", &self.db.options)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.listener.abort();
        self.renewals.stop();
    }
}

fn pg_error(what: &str, e: tokio_postgres::Error) -> BackendError {
    let kind = if e.is_closed() || e.as_db_error().is_none() {
        BackendErrorKind::Unavailable
    } else {
        BackendErrorKind::Failed
    };
    BackendError::with_source(kind, format!("{what}: {e}"), e)
}

fn pool_error(e: deadpool_postgres::PoolError) -> BackendError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(_) => BackendError::new(
            BackendErrorKind::Unavailable,
            format!("no database connection in time: {e}"),
        ),
        PoolError::Backend(e) => pg_error("could not connect to the database", e),
        other => BackendError::new(
            BackendErrorKind::Unavailable,
            format!("database connection pool: {other}"),
        ),
    }
}

/// A LIKE pattern matching every string that starts with `prefix`: `%`, `_` and the
/// escape character `!` are escaped, so that no character of the prefix is special.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The most connections a pool may have: far above any server's `max_connections`.
const MAX_POOL_SIZE: usize = 10_000;

/// PostgreSQL's `statement_timeout` is a 32-bit count of milliseconds.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The longest TTL the database can add to `now()` (a thousand years; PostgreSQL's
/// timestamps end in the year 294276). A longer one is refused before it reaches the
/// database, so that it cannot fail a whole batch of renewals.
const MAX_DB_TTL: Duration = Duration::from_secs(1000 * 366 * 24 * 3600);

fn check_ttl(what: &str, ttl: Duration) -> Result<(), BackendError> {
    if ttl > MAX_DB_TTL {
        return Err(BackendError::new(
            BackendErrorKind::Failed,
            format!(
                "{what}: a TTL of {ttl:?} is longer than the database can store ({MAX_DB_TTL:?})"
            ),
        ));
    }
    Ok(())
}

fn ttl_ms(ttl: Duration) -> i64 {
    // Round up: the database must never expire a lease before the holder's deadline.
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

fn token_to_db(token: u64) -> Option<i64> {
    i64::try_from(token).ok()
}

fn token_from_db(token: i64) -> Result<u64, BackendError> {
    u64::try_from(token).map_err(|_| {
        BackendError::new(
            BackendErrorKind::Failed,
            format!("the token sequence returned {token}, which is not a valid fencing token"),
        )
    })
}

/// Accepts any server certificate (libpq's `sslmode=require`) but still checks the
/// handshake signatures.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector(
    options: &PostgresOptions,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, LeaseError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| LeaseError::InvalidConfig(format!("TLS: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?;
    let config = match &options.ca_certificate_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PostgresBackend {
    /// Connects: prepares a backend for these options (see [`new`](Self::new)), then
    /// checks that the database answers and creates the table if needed (see
    /// [`check`](Self::check)), so that a bad address or password shows here and not at
    /// the first acquire.
    pub async fn connect(options: PostgresOptions) -> Result<PostgresBackend, LeaseError> {
        let backend = PostgresBackend::new(options)?;
        Backend::check(&backend).await?;
        Ok(backend)
    }

    /// Prepares a backend for these options without connecting: checks the options and
    /// starts the task that listens for released keys (so it must be called within a
    /// tokio runtime). Operations connect lazily; a database that is down shows as
    /// [`LeaseError::Backend`] errors then.
    pub fn new(options: PostgresOptions) -> Result<PostgresBackend, LeaseError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            LeaseError::InvalidConfig(
                "PostgresBackend::new must be called within a tokio runtime".into(),
            )
        })?;
        if !valid_identifier(&options.table) {
            return Err(LeaseError::InvalidConfig(format!(
                "table name {:?} must be a lower-case SQL identifier of at most 48 characters",
                options.table
            )));
        }
        if options.pool_size == 0 || options.pool_size > MAX_POOL_SIZE {
            return Err(LeaseError::InvalidConfig(format!(
                "pool_size must be from 1 to {MAX_POOL_SIZE}, not {}",
                options.pool_size
            )));
        }
        if options.statement_timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(LeaseError::InvalidConfig(
                "connect_timeout and statement_timeout must be positive".into(),
            ));
        }
        if options.statement_timeout > MAX_STATEMENT_TIMEOUT {
            return Err(LeaseError::InvalidConfig(format!(
                "statement_timeout must be at most {MAX_STATEMENT_TIMEOUT:?} \
                 (PostgreSQL's own limit), not {:?}",
                options.statement_timeout
            )));
        }
        let mut config: tokio_postgres::Config = options.url.parse().map_err(|e| {
            LeaseError::InvalidConfig(format!("bad PostgreSQL connection string: {e}"))
        })?;
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
        let tls = tls_connector(&options)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| LeaseError::InvalidConfig(format!("connection pool: {e}")))?;
        if options.renew_batch_size == 0 {
            return Err(LeaseError::InvalidConfig(
                "renew_batch_size must be at least 1".into(),
            ));
        }
        let sql = Sql::new(&options.table);
        let frees = broadcast::channel(1024).0;
        let listener = runtime.spawn(listen(
            config,
            tls,
            sql.channel.clone(),
            frees.clone(),
            options.statement_timeout,
        ));
        let db = Arc::new(Db {
            pool,
            sql,
            options,
            schema: OnceCell::new(),
            renew_statements: Default::default(),
        });
        let renewals = renewals::Renewals::start(&runtime, db.clone());
        Ok(PostgresBackend {
            db,
            frees,
            listener,
            renewals,
        })
    }

    /// The acquire and release statements this backend issues for `table` (parameters:
    /// acquire `$1` key, `$2` TTL in ms, `$3` metadata; release `$1` key, `$2` token).
    /// For benchmarks that compare the backend with the bare driver.
    #[doc(hidden)]
    pub fn statements(table: &str) -> (String, String) {
        let sql = Sql::new(table);
        (sql.acquire, sql.release)
    }

    /// How many renewal statements this backend has sent (each renews up to
    /// `renew_batch_size` leases). For benchmarks.
    #[doc(hidden)]
    pub fn renew_statements(&self) -> u64 {
        self.db
            .renew_statements
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The options this backend was made with.
    pub fn options(&self) -> &PostgresOptions {
        &self.db.options
    }

    /// Runs `op` on a pooled connection: see [`Db::with_client`].
    async fn with_client<T, F>(&self, what: &str, op: F) -> Result<T, BackendError>
    where
        F: for<'c> FnOnce(&'c deadpool_postgres::ClientWrapper, &'c Sql) -> PgFuture<'c, T>,
    {
        self.db.with_client(what, op).await
    }
}

impl Db {
    /// Runs `op` on a pooled connection (creating the schema first, once), bounded by the
    /// statement timeout.
    ///
    /// Cancellation: this future may be dropped at any await (our own timeout, or a
    /// caller that gives up). The connection is then discarded, never returned to the
    /// pool, because it may be inside a transaction or have a statement in flight (see
    /// [`Checkout`]). Whatever the server was doing is bounded by its own
    /// `statement_timeout` and `idle_in_transaction_session_timeout`.
    async fn with_client<T, F>(&self, what: &str, op: F) -> Result<T, BackendError>
    where
        F: for<'c> FnOnce(&'c deadpool_postgres::ClientWrapper, &'c Sql) -> PgFuture<'c, T>,
    {
        let work = async {
            // Await 1: a connection from the pool (or a new one).
            let mut conn = Checkout::new(self.pool.get().await.map_err(pool_error)?);
            // Await 2: the schema, once per backend, in a transaction.
            self.schema
                .get_or_try_init(|| async { self.create_schema(conn.client_mut()).await })
                .await?;
            // Await 3: the operation's one statement.
            let result = op(conn.client(), &self.sql).await;
            if result.is_ok() {
                // A complete answer: nothing is in flight and no transaction is open.
                conn.finished();
            }
            result.map_err(|e| pg_error(what, e))
        };
        match tokio::time::timeout(self.options.statement_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Timeout,
                format!(
                    "{what}: no answer from the database in {:?}",
                    self.options.statement_timeout
                ),
            )),
        }
    }

    /// Creates the sequence and the table if they do not exist, in a transaction that
    /// holds an advisory lock, so that processes starting together do not trip over each
    /// other's `CREATE … IF NOT EXISTS`.
    async fn create_schema(
        &self,
        client: &mut deadpool_postgres::ClientWrapper,
    ) -> Result<(), BackendError> {
        let fail = |e| pg_error("could not create the lease table", e);
        // The driver's transaction: a dropped or failed one is rolled back. (If this
        // future is dropped mid-way, the connection is discarded anyway.)
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute(self.sql.lock_schema.as_str(), &[])
            .await
            .map_err(fail)?;
        for statement in &self.sql.schema {
            tx.batch_execute(statement).await.map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }
}

/// The future an operation on a pooled connection returns.
type PgFuture<'c, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
>;

/// A pooled connection that goes back to the pool only after a complete answer.
///
/// Dropped before [`finished`](Checkout::finished) (a timeout, a cancelled caller, an
/// error, a panic), it takes the connection out of the pool and closes it: a
/// connection with an open transaction or a statement in flight must never serve
/// another operation (its grants would be uncommitted and invisible to others, on a
/// frozen `now()`). The server then rolls back whatever was open.
struct Checkout {
    object: Option<deadpool_postgres::Object>,
    finished: bool,
}

impl Checkout {
    fn new(object: deadpool_postgres::Object) -> Checkout {
        Checkout {
            object: Some(object),
            finished: false,
        }
    }

    fn client(&self) -> &deadpool_postgres::ClientWrapper {
        self.object
            .as_ref()
            .expect("a checkout holds its connection until dropped")
    }

    fn client_mut(&mut self) -> &mut deadpool_postgres::ClientWrapper {
        self.object
            .as_mut()
            .expect("a checkout holds its connection until dropped")
    }

    /// The operation got its whole answer: the connection may be reused.
    fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            if !self.finished {
                // Detach from the pool (which may then open a fresh connection) and
                // drop the client, which closes the connection.
                drop(deadpool_postgres::Object::take(object));
                tracing::debug!("discarded a database connection left mid-operation");
            }
        }
    }
}

/// Keeps one connection listening on the release channel, reconnecting when it drops,
/// and forwards every released key to the subscribers.
///
/// Notifications sent while no connection listens are lost, so every time a LISTEN
/// starts (the first time too: subscribers may have been waiting before it) the
/// subscribers are told [`Freed::Everything`] and look again. A connection that went
/// silent is found by a ping every few seconds, bounded by the statement timeout.
async fn listen(
    mut config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    channel: String,
    frees: broadcast::Sender<Freed>,
    statement_timeout: Duration,
) {
    if config.get_application_name() == Some("leases") {
        // So that operators (and tests) can tell it from the pooled connections.
        config.application_name("leases-listener");
    }
    const PING: Duration = Duration::from_secs(2);
    let mut backoff = Duration::from_millis(25);
    loop {
        match tokio::time::timeout(statement_timeout, config.connect(tls.clone())).await {
            Ok(Ok((client, mut connection))) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(message)) => {
                                if tx.send(message).is_err() {
                                    return;
                                }
                            }
                            Some(Err(_)) | None => return,
                        }
                    }
                });
                let listening = tokio::time::timeout(
                    statement_timeout,
                    client.batch_execute(&format!("LISTEN {channel}")),
                )
                .await;
                if let Ok(Ok(())) = listening {
                    tracing::debug!(%channel, "listening for released leases");
                    backoff = Duration::from_millis(25);
                    let _ = frees.send(Freed::Everything);
                    let mut ping = tokio::time::interval(PING);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            message = rx.recv() => match message {
                                Some(AsyncMessage::Notification(n)) => {
                                    if let Ok(key) = Key::parse(n.payload()) {
                                        let _ = frees.send(Freed::Key(key));
                                    }
                                }
                                Some(_) => {}
                                None => break,
                            },
                            _ = ping.tick() => {
                                let alive = tokio::time::timeout(
                                    statement_timeout,
                                    client.simple_query(""),
                                )
                                .await;
                                if !matches!(alive, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                }
                driver.abort();
                tracing::debug!(%channel, "release listener disconnected; reconnecting");
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "release listener cannot connect; retrying");
            }
            Err(_) => tracing::debug!("release listener: connect timed out; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        check_ttl("acquire", ttl)?;
        let key_text = key.to_string();
        let ms = ttl_ms(ttl);
        for _ in 0..3 {
            // The statement's future owns its parameters (it may outlive this call's
            // borrows only in the type checker's eyes; `with_client` awaits it).
            let (k, m) = (key_text.clone(), metadata.to_vec());
            let (token, left): (Option<i64>, Option<i64>) = self
                .with_client("acquire", |c, sql| {
                    Box::pin(async move {
                        let stmt = c.prepare_cached(&sql.acquire).await?;
                        let row = c.query_one(&stmt, &[&k, &ms, &m]).await?;
                        Ok((row.get(0), row.get(1)))
                    })
                })
                .await?;
            match (token, left) {
                (Some(token), _) => {
                    return Ok(AcquireOutcome::Granted {
                        token: token_from_db(token)?,
                    })
                }
                (None, Some(us)) => {
                    return Ok(AcquireOutcome::Held {
                        expires_in: Duration::from_micros(u64::try_from(us).unwrap_or(0)),
                    })
                }
                // Taken by a concurrent insert our snapshot could not see: look again.
                (None, None) => continue,
            }
        }
        Ok(AcquireOutcome::Held {
            expires_in: Duration::ZERO,
        })
    }

    /// Queues the renewal for the next batch: renewals due close together share one
    /// statement (see [`PostgresOptions::renew_batch_window`]).
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let Some(token) = token_to_db(token) else {
            return Ok(RenewOutcome::Lost);
        };
        check_ttl("renew", ttl)?;
        self.renewals
            .renew(key.to_string(), token, ttl, &self.db.options)
            .await
    }

    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        let Some(token) = token_to_db(token) else {
            return Ok(false);
        };
        let k = key.to_string();
        self.with_client("release", |c, sql| {
            Box::pin(async move {
                let stmt = c.prepare_cached(&sql.release).await?;
                Ok(!c.query(&stmt, &[&k, &token]).await?.is_empty())
            })
        })
        .await
    }

    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        let k = key.to_string();
        let token: Option<i64> = self
            .with_client("revoke", |c, sql| {
                Box::pin(async move {
                    let stmt = c.prepare_cached(&sql.revoke).await?;
                    Ok(c.query_opt(&stmt, &[&k]).await?.map(|row| row.get(0)))
                })
            })
            .await?;
        token.map(token_from_db).transpose()
    }

    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        let k = key.to_string();
        let row = self
            .with_client("lease info", |c, sql| {
                Box::pin(async move {
                    let stmt = c.prepare_cached(&sql.info).await?;
                    c.query_opt(&stmt, &[&k]).await
                })
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let ttl: i64 = row.get(1);
        let left: i64 = row.get(2);
        Ok(Some(LeaseInfo {
            key: key.clone(),
            token: token_from_db(row.get(0))?,
            ttl: Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
            expires_in: Duration::from_micros(u64::try_from(left).unwrap_or(0)),
            metadata: row.get(3),
            revoked: row.get(4),
            acquired_at: row.get(5),
        }))
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, BackendError> {
        let pattern = like_prefix(prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .with_client("list leases", |c, sql| {
                Box::pin(async move {
                    let stmt = c.prepare_cached(&sql.list).await?;
                    c.query(&stmt, &[&pattern, &limit]).await
                })
            })
            .await?;
        let mut leases = Vec::with_capacity(rows.len());
        for row in rows {
            let text: String = row.get(0);
            // Rows are written by this crate, in canonical form; a row someone else
            // wrote by hand is left out rather than failing the whole listing.
            let Ok(key) = Key::parse(&text) else {
                tracing::warn!(key = %text, "list: skipped a row whose key does not parse");
                continue;
            };
            let ttl: i64 = row.get(2);
            let left: i64 = row.get(3);
            leases.push(LeaseInfo {
                key,
                token: token_from_db(row.get(1))?,
                ttl: Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
                expires_in: Duration::from_micros(u64::try_from(left).unwrap_or(0)),
                metadata: row.get(4),
                revoked: row.get(5),
                acquired_at: row.get(6),
            });
        }
        Ok(leases)
    }

    async fn free_among(&self, keys: &[Key]) -> Result<Vec<bool>, BackendError> {
        let texts: Vec<String> = keys.iter().map(Key::to_string).collect();
        let query = texts.clone();
        let held: std::collections::HashSet<String> = self
            .with_client("free keys", |c, sql| {
                Box::pin(async move {
                    let stmt = c.prepare_cached(&sql.held_among).await?;
                    let rows = c.query(&stmt, &[&query]).await?;
                    Ok(rows.iter().map(|r| r.get(0)).collect())
                })
            })
            .await?;
        Ok(texts.iter().map(|k| !held.contains(k)).collect())
    }

    /// Checks that the database answers, creating the table on first use; bounded by
    /// the connect and statement timeouts.
    async fn check(&self) -> Result<(), BackendError> {
        self.with_client("check", |c, _| {
            Box::pin(async move { c.simple_query("").await.map(drop) })
        })
        .await
    }

    fn subscribe_freed(&self) -> FreedKeys {
        FreedKeys::new(self.frees.subscribe())
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

    #[test]
    fn like_prefix_escapes_metacharacters() {
        assert_eq!(like_prefix(""), "%");
        assert_eq!(like_prefix("/system/a_b%2F!"), "/system/a!_b!%2F!!%");
    }

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::from_secs(5)), 5000);
        assert_eq!(ttl_ms(Duration::MAX), i64::MAX);
    }

    #[tokio::test]
    async fn bad_options_are_config_errors() {
        for opts in [
            PostgresOptions::new("postgres://x/y").table("Bad-Name"),
            PostgresOptions::new("postgres://x/y").pool_size(0),
            PostgresOptions::new("postgres://x/y").statement_timeout(Duration::ZERO),
            PostgresOptions::new("postgres://x/y").connect_timeout(Duration::ZERO),
            PostgresOptions::new("not a url = = ="),
            PostgresOptions::new("host=x").ca_certificate_pem(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            ),
        ] {
            assert!(matches!(
                PostgresBackend::connect(opts).await,
                Err(LeaseError::InvalidConfig(_))
            ));
        }
    }
}
