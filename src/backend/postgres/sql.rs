//! The text of every statement the backend sends, for one table, with why each is
//! written as it is: how acquire draws fencing tokens in grant order, and how one renewal
//! statement locks its rows in key order and judges expiry on the locked rows (READ
//! COMMITTED's re-check, and what it does not re-check). The table itself is created by
//! `schema.rs`; the values the statements take and give are converted in `values.rs`.

/// The SQL text for one table.
pub(super) struct Sql {
    pub(super) acquire: String,
    pub(super) renew: String,
    pub(super) release: String,
    pub(super) revoke: String,
    pub(super) info: String,
    pub(super) held_among: String,
    pub(super) channel: String,
    pub(super) list: String,
}

impl Sql {
    pub(super) fn new(t: &str) -> Sql {
        // `t` is a checked identifier (see `PostgresOptions::check`), so formatting it
        // into SQL is safe.
        let live = "expires_at > now()";
        let ttl = "($2::bigint * interval '1 millisecond')";
        let us_left = "GREATEST(0, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000000)::bigint)";
        Sql {
            // The outer SELECT sees the table as it was before the INSERT: when the
            // insert took nothing, it reports how long the current holder has left.
            //
            // The token of a takeover is drawn in the DO UPDATE, that is after the row
            // lock is held and the row re-checked, so it is greater than the token of
            // every grant that committed before it (the VALUES draw is then wasted: a
            // gap). A fresh INSERT uses the VALUES draw; it can only happen when no row
            // exists, and rows are never deleted by this crate (release keeps the row
            // and its token), so no later grant can have come between that draw and
            // the insert. See "Fencing tokens" in `mod.rs`.
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
