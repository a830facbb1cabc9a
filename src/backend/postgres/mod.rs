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
//!     acquired_at TIMESTAMPTZ NOT NULL,
//!     session     BIGINT                     -- its session, when attached to one
//! );
//! CREATE SEQUENCE IF NOT EXISTS leases_session_seq;
//! CREATE TABLE IF NOT EXISTS leases_sessions (
//!     id          BIGINT PRIMARY KEY,        -- one per (backend, TTL)
//!     ttl_ms      BIGINT NOT NULL,
//!     expires_at  TIMESTAMPTZ NOT NULL
//! );
//! CREATE INDEX IF NOT EXISTS leases_session_revoked ON leases (session) WHERE revoked;
//! CREATE INDEX IF NOT EXISTS leases_session ON leases (session) WHERE session IS NOT NULL;
//! ```
//!
//! **Sessions.** A lease row with `session` set and `expires_at = 'infinity'` is
//! *attached*: it expires when its session does. Every other row expires at its own
//! `expires_at`. A backend has one session per TTL and renews it, not its leases (see
//! `sessions.rs` and `session_renew` in `sql.rs`).
//!
//! - **Acquire** is one `INSERT … ON CONFLICT (key) DO UPDATE … WHERE` the row expired
//!   (an attached row: its session, read `FOR SHARE`) that takes a free or expired row.
//!   A new lease is detached (its own expiry); its first renewal attaches it.
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
//!
//!   With sessions, a batch's leases of one TTL are one statement that renews their
//!   session by compare-and-set (one row), attaches new and re-attached leases, detaches
//!   the session's revoked leases, and reads which asked leases are revoked or no
//!   longer in the session; the per-lease rules above hold for each lease of it.
//! - **Group rounds** (`renew_many`, the manager's leases of one TTL once per TTL/3) are
//!   one statement per session when nothing changed (`rounds.rs`): it renews the session,
//!   attaches the round's new leases, detaches and names the revoked ones, and counts
//!   the rows attached to the session (an index scan, nothing locked or written). A
//!   count equal to the members this backend knows proves each is still attached; when
//!   it differs, the members are asked one by one as above.
//! - **Leave** ([`Backend::leave`](crate::backend::Backend::leave): a lease server
//!   handing a lease over, or the manager after a holder lost it locally, which releases
//!   nothing) detaches the lease with the session's expiry as of the lease's own last
//!   confirmed renewal (no later than the session's current one), so that the session no
//!   longer keeps it alive; so does a lease nobody asked to renew for a whole TTL. A
//!   leave (or release) whose statement fails is owed to the session: its next renewal
//!   takes the lease out in the very statement that renews the session, so a renewal
//!   that commits never extends a lease this backend had let go of when it sent it.
//!   While such a statement (a leave, a release, a renewal carrying owed leaves) is in
//!   flight, this backend does not renew that lease: a re-attach waits for it to answer
//!   (at most the statement timeout), and a renewal that meets one fails with
//!   `Unavailable` and is retried, and a renewal during which one began is answered
//!   Lost (the leave may write the expiry promised before it), so no statement of this
//!   backend takes out a lease after its holder was told it was renewed.
//! - **Release** is compare-and-set on `(key, token)` too. It ends the lease by setting
//!   `expires_at = now()` and keeps the row (see fencing below), then sends
//!   `NOTIFY <table>_freed, '<key>'`; one listening connection per backend wakes
//!   waiting acquirers.
//! - **Revoke** sets `revoked`; the holder is refused at its next renewal and then gives
//!   the key back.
//!
//! The tables and sequences are created on first use, in a transaction under an advisory
//! lock, so many processes can start at once (a table made by an earlier version gets
//! its `session` column there, `ADD COLUMN IF NOT EXISTS`, run only when the column is
//! missing: the `ALTER` locks the whole table, and behind a long reader every other
//! server's renewals would queue behind it); unless
//! [`PostgresOptions::create_schema`] is `false` (read-only use: the backend then runs
//! no DDL, and a missing table fails each operation with a message that says so).
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
//! # Upgrading
//! Versions without sessions do not know the `session` column. They read an attached
//! row's `expires_at = 'infinity'` as held, so an old server still running against an
//! upgraded table never takes over a lease a session keeps; the rows it writes (session
//! NULL, or a finite `expires_at`) are read by new servers by their own `expires_at`.
//! An old server cannot take over an attached lease whose session expired: a new one
//! must. See docs/operating.md, "Upgrading to sessions".
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
//! look again ([`Freed::Everything`](crate::backend::Freed::Everything)); a silent connection is found by the ping and by
//! TCP keepalives.
//!
//! # Clocks
//! Expiry is judged on the database server's wall clock (`now()`), holders' deadlines
//! on their own monotonic (suspend-aware) clocks. A *forward* step of the database's
//! clock by more than the safety margin expires leases early and can grant a key while
//! its holder's context is still live: keep the database's clock slewed (NTP/chrony
//! slew, not step), or use a safety margin larger than any step you expect. A backward
//! step only makes leases last longer (less available, still exclusive).
//!
//! # Where things are
//! One file per concept; each file uses only files listed above it:
//! - `options.rs`: [`PostgresOptions`] and their checks;
//! - `errors.rs`, `values.rs`: the driver's errors, and values between Rust and SQL;
//! - `sql.rs`: the text of every statement, with why each is written as it is (token
//!   order in acquire; the renewal's row locks in key order, READ COMMITTED's re-check
//!   and why expiry is judged again on the locked rows);
//! - `schema.rs`: the table and sequence, created on first use;
//! - `tls.rs`, `connect.rs`: how connections are made (TLS, server-side timeouts,
//!   keepalives) and the pool;
//! - `pool.rs`: running one operation on a pooled connection, and discarding a
//!   connection cut off mid-flight (the await points above);
//! - `listener.rs`: the connection that listens for released keys;
//! - `sessions.rs`: what the backend knows of its sessions and the leases in them;
//! - `renewals.rs`: the renewal batcher, one session statement per TTL and chunk;
//! - `backend.rs`: [`PostgresBackend`] and its [`Backend`](crate::backend::Backend)
//!   operations.

mod backend;
mod connect;
mod errors;
mod listener;
mod options;
mod pool;
mod renewals;
mod rounds;
mod schema;
mod sessions;
mod sql;
mod tls;
mod values;

pub use backend::PostgresBackend;
pub use options::PostgresOptions;
