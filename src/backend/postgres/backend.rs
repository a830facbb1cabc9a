//! [`PostgresBackend`]: the backend itself. Building it (options checked, pool, listener
//! and renewal batcher started) and the [`Backend`] operations, each one statement on a
//! pooled connection (renewals go through the batcher).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::connect;
use super::listener;
use super::options::PostgresOptions;
use super::pool::{Db, PgFuture};
use super::renewals::Renewals;
use super::sessions::Sessions;
use super::sql::Sql;
use super::values::{check_ttl, like_prefix, token_from_db, token_to_db, ttl_ms};
use crate::backend::{AcquireOutcome, Backend, Freed, FreedKeys, LeaseInfo, RenewOutcome};
use crate::error::{BackendError, LeaseError};
use crate::key::Key;

/// Leases in a PostgreSQL table, shared by every manager that uses the same table.
///
/// Create it with [`PostgresBackend::connect`] or through
/// [`LeaseManagerBuilder::postgres`](crate::LeaseManagerBuilder::postgres). It talks to
/// the database lazily: creating it never fails because the database is down; the first
/// operation creates the schema if needed (unless [`PostgresOptions::create_schema`] is
/// `false`).
pub struct PostgresBackend {
    db: Arc<Db>,
    frees: broadcast::Sender<Freed>,
    listener: JoinHandle<()>,
    renewals: Renewals,
    sessions: Arc<Sessions>,
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
        options.check()?;
        let (config, tls) = connect::config(&options)?;
        let pool = connect::pool(config.clone(), tls.clone(), &options)?;
        if options.renew_batch_size == 0 {
            return Err(LeaseError::InvalidConfig(
                "renew_batch_size must be at least 1".into(),
            ));
        }
        let sql = Sql::new(&options.table);
        let frees = broadcast::channel(1024).0;
        let listener = runtime.spawn(listener::listen(
            config,
            tls,
            sql.channel.clone(),
            frees.clone(),
            options.statement_timeout,
        ));
        let db = Arc::new(Db::new(pool, sql, options));
        let sessions = Arc::new(Sessions::default());
        let renewals = Renewals::start(&runtime, db.clone(), sessions.clone());
        Ok(PostgresBackend {
            db,
            frees,
            listener,
            renewals,
            sessions,
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
                    self.sessions.granted(key_text, token);
                    return Ok(AcquireOutcome::Granted {
                        token: token_from_db(token)?,
                    });
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
        let k = key.to_string();
        // A re-attach right after this backend let go of the lease (a lease server
        // handing it over and taking it back): the leave answers first.
        self.sessions
            .exits_ended(&k, token, self.db.options.statement_timeout)
            .await;
        self.renewals.renew(k, token, ttl, &self.db.options).await
    }

    /// A group round: one statement for the whole session when nothing changed (see
    /// `rounds.rs`); the leases it cannot answer go through the batcher.
    async fn renew_many(
        &self,
        leases: &[(Key, u64)],
        ttl: Duration,
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        super::rounds::renew_many(&self.db, &self.sessions, &self.renewals, leases, ttl).await
    }

    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        let Some(token) = token_to_db(token) else {
            return Ok(false);
        };
        let k = key.to_string();
        // Forgotten here at once; until the release is known to have ended the lease,
        // it must still leave its session (a failed or abandoned release would leave
        // it in the session, kept alive for ever): see `LeaveUnlessDone`.
        let mut guard = LeaveUnlessDone::new(&self.sessions, &k, token);
        let released = self
            .with_client("release", |c, sql| {
                Box::pin(async move {
                    let stmt = c.prepare_cached(&sql.release).await?;
                    Ok(!c.query(&stmt, &[&k, &token]).await?.is_empty())
                })
            })
            .await;
        if matches!(released, Ok(true)) {
            guard.done();
        }
        released
    }

    /// Takes `(key, token)` out of this backend's session, if it is in one, with the
    /// session's expiry as of its last confirmed renewal as its own: it then lasts as
    /// long as it was promised, and no longer, however long the session is renewed.
    async fn leave(&self, key: &Key, token: u64) -> Result<(), BackendError> {
        let Some(token) = token_to_db(token) else {
            return Ok(());
        };
        let k = key.to_string();
        // Forgotten here but maybe still in the session until the statement is known
        // to have run: after a failed or abandoned one, the session's next renewal
        // statement takes it out.
        let mut guard = LeaveUnlessDone::new(&self.sessions, &k, token);
        let Some((session, until)) = guard.left else {
            // Never attached here: it expires on its own.
            return Ok(());
        };
        let left = self
            .with_client("leave", |c, sql| {
                Box::pin(async move {
                    let stmt = c.prepare_cached(&sql.leave).await?;
                    c.execute(&stmt, &[&vec![k], &vec![token], &session, &vec![until]])
                        .await
                        .map(drop)
                })
            })
            .await;
        if left.is_ok() {
            guard.done();
        }
        left
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

    fn shared(&self) -> bool {
        true
    }

    fn subscribe_freed(&self) -> FreedKeys {
        FreedKeys::new(self.frees.subscribe())
    }
}

/// A lease forgotten by this backend's sessions on its way out (release, leave): unless
/// [`done`](LeaveUnlessDone::done) says its statement ended it, the session's next
/// renewal statement takes it out ([`Sessions::leave_later`]), including when the future
/// is dropped mid-statement. Without this, a lease still attached but forgotten here would
/// be kept alive by the session for as long as this backend renews it.
struct LeaveUnlessDone<'a> {
    sessions: &'a Sessions,
    key: String,
    token: i64,
    /// The session it was in and its expiry as of its last confirmed renewal.
    left: Option<(i64, Option<std::time::SystemTime>)>,
    /// The session it was in, registered as exiting it until this guard is dropped.
    exiting: Option<i64>,
}

impl<'a> LeaveUnlessDone<'a> {
    fn new(sessions: &'a Sessions, key: &str, token: i64) -> Self {
        // A group round must not count it as a member, nor as gone, until the
        // statement that takes it out has answered (see `rounds.rs`).
        let left = sessions.forget_exiting(key, token);
        let exiting = left.map(|(session, _)| session);
        LeaveUnlessDone {
            sessions,
            key: key.to_owned(),
            token,
            left,
            exiting,
        }
    }

    fn done(&mut self) {
        self.left = None;
    }
}

impl Drop for LeaveUnlessDone<'_> {
    fn drop(&mut self) {
        if let Some((session, until)) = self.left.take() {
            self.sessions
                .leave_later(self.key.clone(), self.token, session, until);
        }
        if let Some(session) = self.exiting.take() {
            self.sessions.settled(&self.key, self.token, session);
        }
        self.sessions.exit_ended(&self.key, self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
