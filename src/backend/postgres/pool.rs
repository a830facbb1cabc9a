//! The pooled connections every operation runs on, and what they guarantee: each
//! operation is bounded by the statement timeout, and a connection goes back to the pool
//! only after a complete answer. One cut off mid-flight (a timeout, a caller that gave
//! up, an error) is discarded, never reused.

use super::errors::{pg_error, pool_error};
use super::options::PostgresOptions;
use super::schema::Schema;
use super::sql::Sql;
use crate::error::{BackendError, BackendErrorKind};

/// What every operation needs to reach the database: shared by the backend and its
/// renewal batcher (see [`renewals`](super::renewals)).
pub(super) struct Db {
    pool: deadpool_postgres::Pool,
    sql: Sql,
    schema: Schema,
    pub(super) options: PostgresOptions,
    /// Renewal statements sent so far (for benchmarks).
    pub(super) renew_statements: std::sync::atomic::AtomicU64,
}

impl Db {
    /// Operations on `pool` for the table of `options`, whose statements are `sql`; the
    /// schema is created by the first one.
    pub(super) fn new(pool: deadpool_postgres::Pool, sql: Sql, options: PostgresOptions) -> Db {
        Db {
            pool,
            sql,
            schema: Schema::new(&options.table),
            options,
            renew_statements: Default::default(),
        }
    }

    /// Runs `op` on a pooled connection (creating the schema first, once), bounded by the
    /// statement timeout.
    ///
    /// Cancellation: this future may be dropped at any await (our own timeout, or a
    /// caller that gives up). The connection is then discarded, never returned to the
    /// pool, because it may be inside a transaction or have a statement in flight (see
    /// [`Checkout`]). Whatever the server was doing is bounded by its own
    /// `statement_timeout` and `idle_in_transaction_session_timeout`.
    pub(super) async fn with_client<T, F>(&self, what: &str, op: F) -> Result<T, BackendError>
    where
        F: for<'c> FnOnce(&'c deadpool_postgres::ClientWrapper, &'c Sql) -> PgFuture<'c, T>,
    {
        let work = async {
            // Await 1: a connection from the pool (or a new one).
            let mut conn = Checkout::new(self.pool.get().await.map_err(pool_error)?);
            // Await 2: the schema, once per backend, in a transaction (unless this
            // backend is not to create it: read-only use).
            if self.options.create_schema {
                self.schema.ensure(conn.client_mut()).await?;
            }
            // Await 3: the operation's one statement.
            let result = op(conn.client(), &self.sql).await;
            if result.is_ok() {
                // A complete answer: nothing is in flight and no transaction is open.
                conn.finished();
            }
            result.map_err(|e| self.error(what, e))
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
}

impl Db {
    /// An operation's error; a missing table, which a backend that does not create its
    /// schema can meet, says so and how to create it.
    fn error(&self, what: &str, e: tokio_postgres::Error) -> BackendError {
        let missing = e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE);
        let old = e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN);
        if !(missing || old) || self.options.create_schema {
            return pg_error(what, e);
        }
        let table = &self.options.table;
        let exists = e
            .as_db_error()
            .is_some_and(|d| d.message().contains(&format!("{table}_sessions")) || old);
        if exists {
            // A table made by a version without sessions: the column `session` or the
            // table `<table>_sessions` is missing.
            return BackendError::with_source(
                BackendErrorKind::Failed,
                format!(
                    "{what}: the lease table {table:?} was made by an earlier version: it \
                     lacks the column \"session\" or the table \"{table}_sessions\", and this \
                     backend does not change the schema (PostgresOptions::create_schema(false)). \
                     Upgrade it once with a role allowed to (any backend with create_schema(true) \
                     does it on its first operation), or run: {sql} ({e})",
                    sql = super::schema::Schema::upgrade_sql(table)
                ),
                e,
            );
        }
        BackendError::with_source(
            BackendErrorKind::Failed,
            format!(
                "{what}: the lease table {table:?} does not exist, and this backend does not \
                 create it (PostgresOptions::create_schema(false), as for read-only use): \
                 create it once with a role allowed to (any acquire does, e.g. `leases run` \
                 or `leases serve --postgres`), or with the SQL in the backend's docs: {e}"
            ),
            e,
        )
    }
}

/// The future an operation on a pooled connection returns.
pub(super) type PgFuture<'c, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
>;

/// A pooled connection that goes back to the pool only after a complete answer.
///
/// Dropped before [`finished`](Checkout::finished) (a timeout, a cancelled caller, an
/// error, a panic), it takes the connection out of the pool and closes it: a
/// connection with an open transaction or a statement in flight must never serve
/// another operation (its grants would be uncommitted and invisible to others, on a
/// frozen `now()`). The server then rolls back whatever was open.
pub(super) struct Checkout {
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
