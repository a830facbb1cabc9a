//! The table and its token sequence: their definitions, and their creation on a
//! backend's first operation, in a transaction under an advisory lock, so that many
//! processes can start at once.

use tokio::sync::OnceCell;

use super::errors::pg_error;
use crate::error::BackendError;

/// The schema of one table, and whether this backend has made sure it exists.
pub(super) struct Schema {
    /// Serializes schema creation among processes (released at the transaction's end).
    lock: String,
    /// `CREATE … IF NOT EXISTS` statements, run in order.
    create: Vec<String>,
    /// Set once the schema exists: created here or found.
    ready: OnceCell<()>,
}

impl Schema {
    /// The schema of table `t` (a checked identifier: see `PostgresOptions::check`).
    pub(super) fn new(t: &str) -> Schema {
        Schema {
            lock: format!("SELECT pg_advisory_xact_lock(hashtext('leases schema {t}'))"),
            create: vec![
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
                // Sessions (see `sessions.rs`), added by version 0.x with sessions: a
                // table made by an earlier version gets the column here, under the same
                // advisory lock. Old servers still running leave it NULL.
                //
                // Only when it is missing: `ALTER TABLE` takes an ACCESS EXCLUSIVE lock
                // on the table even when the column exists, and behind any long reader
                // (a backup, an open transaction) that request would queue every other
                // server's renewals until our statement timed out. The index below is
                // guarded alike (`CREATE INDEX` takes a SHARE lock first: no writes).
                format!(
                    "DO $$ BEGIN
                        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('{t}')
                                       AND attname = 'session' AND NOT attisdropped) THEN
                            ALTER TABLE {t} ADD COLUMN IF NOT EXISTS session BIGINT;
                        END IF;
                    END $$"
                ),
                format!("CREATE SEQUENCE IF NOT EXISTS {t}_session_seq"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_sessions (
                        id BIGINT PRIMARY KEY,
                        ttl_ms BIGINT NOT NULL,
                        expires_at TIMESTAMPTZ NOT NULL)"
                ),
                // A session renewal finds its revoked leases through this (small) index.
                format!(
                    "DO $$ BEGIN
                        IF to_regclass('{t}_session_revoked') IS NULL THEN
                            CREATE INDEX IF NOT EXISTS {t}_session_revoked ON {t} (session) WHERE revoked;
                        END IF;
                    END $$"
                ),
                // A group round counts a session's rows through this one (see
                // `rounds.rs`). Only rows in a session: detached rows (acquire and
                // release of short leases) are not in it. `session` is the only column:
                // an acquire or release of a detached row, which writes neither
                // `session` nor this index, stays a HOT update.
                format!(
                    "DO $$ BEGIN
                        IF to_regclass('{t}_session') IS NULL THEN
                            CREATE INDEX IF NOT EXISTS {t}_session ON {t} (session) WHERE session IS NOT NULL;
                        END IF;
                    END $$"
                ),
            ],
            ready: OnceCell::new(),
        }
    }

    /// The statements that bring a table to this version's schema, for an operator
    /// whose backends do not create it (`create_schema(false)`).
    pub(super) fn upgrade_sql(t: &str) -> String {
        Schema::new(t)
            .create
            .iter()
            .map(|s| format!("{};", s.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Creates the schema on `client` unless this backend already did; a failure (or a
    /// dropped future) leaves it to the next operation to try again.
    pub(super) async fn ensure(
        &self,
        client: &mut deadpool_postgres::ClientWrapper,
    ) -> Result<(), BackendError> {
        self.ready.get_or_try_init(|| self.create(client)).await?;
        Ok(())
    }

    /// Creates the sequence and the table if they do not exist, in a transaction that
    /// holds an advisory lock, so that processes starting together do not trip over each
    /// other's `CREATE … IF NOT EXISTS`.
    async fn create(
        &self,
        client: &mut deadpool_postgres::ClientWrapper,
    ) -> Result<(), BackendError> {
        let fail = |e| pg_error("could not create the lease table", e);
        // The driver's transaction: a dropped or failed one is rolled back. (If this
        // future is dropped mid-way, the connection is discarded anyway.)
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute(self.lock.as_str(), &[]).await.map_err(fail)?;
        for statement in &self.create {
            tx.batch_execute(statement).await.map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }
}
