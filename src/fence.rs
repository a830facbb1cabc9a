//! Fencing on the resource side, for PostgreSQL (feature `postgres`).
//!
//! A fencing token only helps if the resource *refuses* stale tokens (see "What a lease
//! does not protect against" in the crate docs). [`Fence`] does that for data kept in
//! PostgreSQL: a small table remembers the highest token seen for each key, and
//! [`Fence::write`] runs your write only if its token is at least that high, in **one
//! statement**, so there is no moment between the check and the write in which a newer
//! holder can slip in.
//!
//! ```no_run
//! use leases::fence::{Fence, Fenced};
//! use leases::Key;
//!
//! # async fn example(
//! #     client: &tokio_postgres::Client,
//! #     lease: &leases::Lease,
//! # ) -> Result<(), leases::fence::FenceError> {
//! let fence = Fence::new("fence")?;
//! fence.create(client).await?; // CREATE TABLE IF NOT EXISTS fence (...)
//!
//! let key = Key::system(["reports", "nightly"]);
//! let outcome = fence
//!     .write(
//!         client,
//!         &key,
//!         lease.token(),
//!         "UPDATE reports SET body = $1 WHERE name = $2",
//!         &[&"all good", &"nightly"],
//!     )
//!     .await?;
//! match outcome {
//!     Fenced::Accepted { rows } => println!("wrote {rows} rows"),
//!     Fenced::Refused { highest } => {
//!         // A newer holder (token `highest`) has written: we lost the lease. Nothing
//!         // of this statement took effect.
//!         println!("stale: token {highest} has written since");
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## How the one statement is built, and why it is safe
//!
//! [`Fence::write`] sends your statement with one common table expression put in front
//! of it:
//!
//! ```sql
//! WITH leases_fence_guard AS (
//!     INSERT INTO fence (key, token) VALUES ($n+1::text, $n+2::bigint)
//!     ON CONFLICT (key) DO UPDATE SET token = CASE
//!         WHEN fence.token <= EXCLUDED.token THEN EXCLUDED.token
//!         ELSE ('leases-fence-refused:' || fence.token)::bigint   -- raises an error
//!     END
//!     RETURNING token)
//! UPDATE reports SET body = $1 WHERE name = $2                     -- your statement
//! ```
//!
//! - **A refusal aborts the whole statement.** A stale token does not merely skip the
//!   fence update: it raises an error inside the statement, and PostgreSQL undoes
//!   everything the statement did, your part included. The guard therefore does not
//!   depend on how your statement is written: it need not mention the fence, and no
//!   `WHERE`, `OR` or join of yours can let a stale write through. (The alternative,
//!   asking you to add `WHERE EXISTS (SELECT 1 FROM guard)` yourself, fails silently
//!   the day someone forgets it or puts it under an `OR`.) [`Fence::write`] recognizes
//!   this one error and returns [`Fenced::Refused`] with the highest token.
//! - **The guard always runs.** PostgreSQL runs a data-modifying `WITH` query exactly
//!   once and to completion, whether or not the rest of the statement reads it. As your
//!   statement does not read it, it usually runs *after* your statement's own work;
//!   that order does not matter, since the statement commits or fails as one. An
//!   accepted token is recorded even if your statement changed no rows.
//! - **One key's writes are serialized.** The guard locks the key's fence row until the
//!   transaction ends, so two writers of one key cannot both pass the check on the same
//!   old value (`ON CONFLICT DO UPDATE` re-reads the latest committed row, even under
//!   `READ COMMITTED`). Accepted writes of one key commit in token order, so a row
//!   that several of them write ends as the highest token left it. Under `REPEATABLE
//!   READ` or `SERIALIZABLE` a concurrent writer gets a serialization failure instead
//!   ([`FenceError::Postgres`]): retry it.
//! - **Equal tokens pass.** The holder keeps its token for the whole lease, so it can
//!   write many times; only a *lower* token is refused.
//! - **Your placeholders keep their numbers.** The key and token are bound as the two
//!   parameters after yours (`$n+1`, `$n+2` for `n` parameters), so your SQL is sent
//!   unchanged after the `WITH` part.
//!
//! What your statement may be: any single statement that may follow a `WITH` clause:
//! `INSERT`, `UPDATE`, `DELETE`, `MERGE` (PostgreSQL 15 and later) or `SELECT`. If it
//! starts with its own `WITH`, the guard is added to that list. Anything else (DDL,
//! `CALL`, `COPY`, several statements) is a syntax error from PostgreSQL, returned as
//! [`FenceError::Postgres`]: a misuse is never silent. Don't name a `WITH` query of
//! yours `leases_fence_guard`.
//!
//! ## Transactions, timeouts, cancellation
//!
//! `write` takes any [`GenericClient`]: a [`Client`](tokio_postgres::Client), a
//! [`Transaction`](tokio_postgres::Transaction), or a `deadpool_postgres` connection
//! (pass `&**object`, the `tokio_postgres::Client` inside it).
//!
//! - In a transaction the accepted write, and the token it recorded, commit or roll
//!   back with the transaction; the key's fence row stays locked until then, which
//!   blocks that key's other writers: keep such transactions short. A refusal is an
//!   error inside the transaction, so PostgreSQL aborts the transaction: roll it back.
//!   That is deliberate: nothing else a stale holder wrote in it may commit either.
//! - If the call is cut off (a timeout, a dropped future, a broken connection) you do
//!   not know whether the write committed, but it committed only if its token passed
//!   the fence, together with the fence's update. Retrying with the same token is safe
//!   as far as the fence goes (equal tokens pass); whether your statement is safe to
//!   run twice is up to the statement.
//!
//! ## What the fence does not do
//!
//! It orders the writes *made through it* for one key. Data changed by other
//! statements, or guarded by a different key, is not protected; put every write that a
//! lease guards through the fence, with that lease's key. The fence keeps one row per
//! key forever (a key's highest token must not be forgotten while a stale holder may
//! still write); deleting a key's row re-opens it to any token.
//!
//! [`Fence::create`] runs `CREATE TABLE IF NOT EXISTS`, which PostgreSQL does not make
//! safe against itself: when several processes start at once, create the table once (a
//! migration, or [`Fence::schema_sql`] in your own schema script).

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use crate::key::Key;

/// The name of the `WITH` query that [`Fence::write`] puts in front of a statement.
const GUARD: &str = "leases_fence_guard";

/// The text the guard casts to `bigint` (which fails) to refuse a stale token; the
/// highest token follows it.
const REFUSED_MARK: &str = "leases-fence-refused:";

/// The longest table name [`Fence::new`] accepts (the same limit as the lease table's).
pub const MAX_TABLE_LEN: usize = 48;

/// Why a fenced write, or setting up a fence, failed.
///
/// A stale token is not an error: it is [`Fenced::Refused`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The fence table's name is not a plain lower-case SQL identifier (a letter or `_`,
    /// then letters, digits or `_`) of at most [`MAX_TABLE_LEN`] characters.
    #[error(
        "fence table name {0:?} must be a lower-case SQL identifier of at most {MAX_TABLE_LEN} characters"
    )]
    InvalidTable(String),
    /// The token does not fit PostgreSQL's `BIGINT` (it is 2^63 or more). Tokens from
    /// this crate's backends never get there; nothing was sent to the database.
    #[error("fencing token {0} is too large for the fence (at most 2^63 - 1)")]
    TokenOutOfRange(u64),
    /// PostgreSQL failed the statement: a connection error, a timeout, a serialization
    /// failure, or an error in the caller's statement. Nothing of the statement took
    /// effect, unless the connection broke after it committed.
    #[error("fenced statement failed: {0}")]
    Postgres(#[source] tokio_postgres::Error),
}

/// What [`Fence::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a refused write did not happen"]
pub enum Fenced {
    /// The token was at least the highest seen for the key: it is now the highest, and
    /// the statement ran.
    Accepted {
        /// The rows the statement inserted, updated or deleted (or returned, for a
        /// `SELECT`), as [`Client::execute`](tokio_postgres::Client::execute) counts them.
        rows: u64,
    },
    /// A higher token has been seen for the key: the writer's lease is gone. Nothing of
    /// the statement took effect.
    Refused {
        /// The highest token the fence has seen for the key (higher than the one given).
        highest: u64,
    },
}

impl Fenced {
    /// Whether the write was accepted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Fenced::Accepted { .. })
    }
}

/// A fence table in PostgreSQL that refuses writes with stale fencing tokens.
///
/// Cheap to clone; holds no connection. See the [module docs](self) for how a write is
/// guarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    table: String,
}

impl Fence {
    /// A fence kept in `table` (a plain lower-case SQL identifier of at most
    /// [`MAX_TABLE_LEN`] characters, unquoted and without a schema: it is resolved by
    /// the connection's `search_path`).
    pub fn new(table: impl Into<String>) -> Result<Fence, FenceError> {
        let table = table.into();
        if !valid_identifier(&table) {
            return Err(FenceError::InvalidTable(table));
        }
        Ok(Fence { table })
    }

    /// The fence table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The statement that creates the fence table if it does not exist, for your own
    /// schema scripts: `CREATE TABLE IF NOT EXISTS <table> (key TEXT PRIMARY KEY, token
    /// BIGINT NOT NULL)`.
    pub fn schema_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, token BIGINT NOT NULL)",
            self.table
        )
    }

    /// Creates the fence table if it does not exist ([`Fence::schema_sql`]).
    pub async fn create<C>(&self, client: &C) -> Result<(), FenceError>
    where
        C: GenericClient + Sync,
    {
        client
            .batch_execute(&self.schema_sql())
            .await
            .map_err(FenceError::Postgres)
    }

    /// Runs `statement` with `params` only if `token` is at least the highest token the
    /// fence has seen for `key`, and records `token` as the highest, in one statement.
    ///
    /// Returns [`Fenced::Accepted`] with the statement's row count, or
    /// [`Fenced::Refused`] with the highest token when `token` is lower than it; then
    /// nothing of the statement took effect. `statement` uses `$1` to `$n` for its `n`
    /// parameters as usual. See the [module docs](self) for what it may be, and for
    /// transactions and cancellation.
    pub async fn write<C>(
        &self,
        client: &C,
        key: &Key,
        token: u64,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Fenced, FenceError>
    where
        C: GenericClient + Sync,
    {
        let signed = i64::try_from(token).map_err(|_| FenceError::TokenOutOfRange(token))?;
        let key = key.to_string();
        let sql = self.guarded(statement, params.len());
        let mut all: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(params.len() + 2);
        all.extend_from_slice(params);
        all.push(&key);
        all.push(&signed);
        match client.execute(sql.as_str(), &all).await {
            Ok(rows) => Ok(Fenced::Accepted { rows }),
            Err(e) => match refused_highest(&e) {
                Some(highest) => Ok(Fenced::Refused { highest }),
                None => Err(FenceError::Postgres(e)),
            },
        }
    }

    /// The highest token the fence has accepted for `key`, or `None` if it has seen
    /// none.
    pub async fn highest<C>(&self, client: &C, key: &Key) -> Result<Option<u64>, FenceError>
    where
        C: GenericClient + Sync,
    {
        let sql = format!("SELECT token FROM {} WHERE key = $1", self.table);
        let row = client
            .query_opt(sql.as_str(), &[&key.to_string()])
            .await
            .map_err(FenceError::Postgres)?;
        // Tokens are written only from `u64`s below 2^63, so they are never negative.
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// `statement` with the guard in front; the key and token are the parameters after
    /// the caller's `n`.
    fn guarded(&self, statement: &str, n: usize) -> String {
        // `self.table` is a checked identifier, so formatting it into SQL is safe.
        let t = &self.table;
        let guard = format!(
            "{GUARD} AS (INSERT INTO {t} (key, token) VALUES (${k}::text, ${tok}::bigint) \
             ON CONFLICT (key) DO UPDATE SET token = CASE \
             WHEN {t}.token <= EXCLUDED.token THEN EXCLUDED.token \
             ELSE ('{REFUSED_MARK}' || {t}.token)::bigint END \
             RETURNING token)",
            k = n + 1,
            tok = n + 2,
        );
        match strip_with(statement) {
            Some((recursive, rest)) => {
                let recursive = if recursive { "RECURSIVE " } else { "" };
                format!("WITH {recursive}{guard}, {rest}")
            }
            None => format!("WITH {guard}\n{statement}"),
        }
    }
}

/// If `statement` starts with `WITH` (after white space), whether it is `WITH
/// RECURSIVE` and the text after that.
fn strip_with(statement: &str) -> Option<(bool, &str)> {
    let rest = strip_keyword(statement.trim_start(), "with")?;
    Some(match strip_keyword(rest, "recursive") {
        Some(after) => (true, after),
        None => (false, rest),
    })
}

/// `s` without its leading keyword `word` (any case) and the white space after it.
fn strip_keyword<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let head = s.get(..word.len())?;
    let rest = &s[word.len()..];
    (head.eq_ignore_ascii_case(word) && rest.starts_with(|c: char| c.is_ascii_whitespace()))
        .then(|| rest.trim_start())
}

/// The highest token, if `e` is the guard's refusal.
fn refused_highest(e: &tokio_postgres::Error) -> Option<u64> {
    let db = e.as_db_error()?;
    if db.code() != &SqlState::INVALID_TEXT_REPRESENTATION {
        return None;
    }
    // The message quotes the text that failed to parse, which starts with the mark.
    let msg = db.message();
    let at = msg.find(REFUSED_MARK)? + REFUSED_MARK.len();
    let digits: &str = &msg[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// A plain lower-case SQL identifier of at most [`MAX_TABLE_LEN`] characters.
fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= MAX_TABLE_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        for good in ["fence", "_f", "fence_2", &"a".repeat(MAX_TABLE_LEN)] {
            assert!(Fence::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Fence",
            "2f",
            "f-f",
            "f.f",
            "f f",
            "f;drop table x",
            "\"f\"",
            &"a".repeat(MAX_TABLE_LEN + 1),
        ] {
            assert!(
                matches!(Fence::new(bad), Err(FenceError::InvalidTable(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn guard_goes_in_front_and_numbers_follow_the_callers() {
        let f = Fence::new("fence").unwrap();
        let sql = f.guarded("UPDATE d SET v = $1 WHERE k = $2", 2);
        assert!(sql.starts_with("WITH leases_fence_guard AS (INSERT INTO fence"));
        assert!(sql.contains("VALUES ($3::text, $4::bigint)"));
        assert!(sql.ends_with("\nUPDATE d SET v = $1 WHERE k = $2"));

        let sql = f.guarded("  with x AS (SELECT 1) DELETE FROM d", 0);
        assert!(sql.starts_with("WITH leases_fence_guard AS ("));
        assert!(sql.ends_with("RETURNING token), x AS (SELECT 1) DELETE FROM d"));

        let sql = f.guarded("WITH\tRECURSIVE r AS (SELECT 1) SELECT * FROM r", 0);
        assert!(sql.starts_with("WITH RECURSIVE leases_fence_guard AS ("));
        assert!(sql.ends_with("), r AS (SELECT 1) SELECT * FROM r"));

        // Not a WITH keyword: left alone.
        let sql = f.guarded("WITHOUT_TABLE", 0);
        assert!(sql.ends_with("\nWITHOUT_TABLE"));
        let sql = f.guarded("with", 0);
        assert!(sql.ends_with("\nwith"));
    }

    #[test]
    fn strip_keyword_handles_multibyte_text() {
        assert_eq!(strip_keyword("wé x", "with"), None);
        assert_eq!(strip_keyword("é", "with"), None);
    }
}
