//! The text of every statement the backend sends, for one table, with why each is
//! written as it is: how acquire draws fencing tokens in grant order, and how one renewal
//! statement locks its rows in key order and judges expiry on the locked rows (READ
//! COMMITTED's re-check, and what it does not re-check). The table itself is created by
//! `schema.rs`; the values the statements take and give are converted in `values.rs`.

/// The SQL text for one table.
pub(super) struct Sql {
    pub(super) acquire: String,
    pub(super) session_new: String,
    pub(super) session_renew: String,
    pub(super) session_round: String,
    pub(super) leave: String,
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
        //
        // A row is *attached* to a session when `session` is set and `expires_at` is
        // 'infinity': its expiry is its session's. Any other row (session NULL, or a
        // finite `expires_at` written by a version without sessions, which does not know
        // the column) expires at its own `expires_at`. Old versions read 'infinity' as
        // held: they never take over an attached row (see "Upgrading" in `mod.rs`).
        let attached = "(l.session IS NOT NULL AND l.expires_at = 'infinity')";
        // The expiry of row `l`, with its session `s` LEFT JOINed. A session row that is
        // not there (not yet visible to this statement's snapshot) counts as held.
        let eff = format!(
            "(CASE WHEN {attached} THEN COALESCE(s.expires_at, 'infinity') ELSE l.expires_at END)"
        );
        // The same, for statements on `l` alone (no join): a sub-select of the session.
        let eff_sub = format!(
            "(CASE WHEN {attached} THEN COALESCE((SELECT s.expires_at FROM {t}_sessions s WHERE s.id = l.session), 'infinity') ELSE l.expires_at END)"
        );
        let live = format!("{eff} > now()");
        let live_sub = format!("{eff_sub} > now()");
        let join = format!("{t} l LEFT JOIN {t}_sessions s ON s.id = l.session");
        let ttl = "($2::bigint * interval '1 millisecond')";
        let us_left =
            format!("GREATEST(0, (EXTRACT(EPOCH FROM ({eff} - now())) * 1000000)::bigint)");
        // The part of a session renewal that `session_renew` and `session_round` share:
        // see `session_renew` for what each step does and why.
        let renew_ctes = format!(
            "WITH cand AS (
                    SELECT a.key, a.token, a.i, a.any_session, false AS out, NULL::timestamptz AS until
                      FROM unnest($5::text[], $6::bigint[], $7::bool[]) WITH ORDINALITY AS a(key, token, any_session, i)
                    UNION ALL
                    SELECT l.key, l.token, NULL, NULL, false, NULL FROM {t} l
                     WHERE l.session = $1 AND l.revoked AND l.expires_at = 'infinity'
                    UNION ALL
                    SELECT o.key, o.token, NULL, NULL, true, o.until
                      FROM unnest($8::text[], $9::bigint[], $10::timestamptz[]) AS o(key, token, until)),
                locked AS MATERIALIZED (
                    SELECT l.key, l.token, l.session, l.expires_at, l.revoked, c.i, c.any_session, c.out, c.until
                      FROM {t} l JOIN cand c ON l.key = c.key AND l.token = c.token
                     ORDER BY l.key COLLATE \"C\"
                     FOR UPDATE OF l),
                sess AS (
                    UPDATE {t}_sessions SET
                        expires_at = GREATEST(expires_at, now() + ($2::bigint * interval '1 millisecond'))
                    WHERE id = $1 AND expires_at > clock_timestamp()
                      AND (SELECT count(*) FROM locked) >= 0
                    RETURNING id, expires_at),
                detach AS (
                    UPDATE {t} l SET session = NULL, expires_at = sess.expires_at
                      FROM locked m, sess
                     WHERE l.key = m.key AND l.token = m.token AND NOT m.out
                       AND m.session = $1 AND m.expires_at = 'infinity' AND m.revoked
                       AND NOT EXISTS (SELECT 1 FROM locked g WHERE g.out AND g.key = m.key AND g.token = m.token)
                    RETURNING l.key, l.token),
                gone AS (
                    UPDATE {t} l SET session = NULL, expires_at = LEAST(COALESCE(m.until, 'infinity'),
                        COALESCE((SELECT o.expires_at FROM {t}_sessions o WHERE o.id = $1), now()))
                      FROM locked m
                     WHERE l.key = m.key AND l.token = m.token AND m.out
                       AND m.session = $1 AND m.expires_at = 'infinity'
                    RETURNING l.key),
                moved AS (
                    UPDATE {t} l SET session = $1, expires_at = 'infinity'
                      FROM locked m, sess
                     WHERE l.key = m.key AND l.token = m.token AND m.i IS NOT NULL AND NOT m.revoked
                       AND CASE WHEN m.session IS NOT NULL AND m.expires_at = 'infinity'
                           THEN m.session = $1 OR (m.any_session AND COALESCE(
                               (SELECT o.expires_at > clock_timestamp() FROM {t}_sessions o WHERE o.id = m.session), false))
                           ELSE m.expires_at > clock_timestamp() END
                    RETURNING m.i)"
        );
        // Out rows (`$8`/`$9`) the statement did not lock although they were attached
        // to the session on its snapshot: by position from 1. A row updated after the
        // snapshot (revoked, say) can drop out of `locked` (PostgreSQL's re-check of a
        // join against the `UNION ALL` in `cand`; the review of owed leaves found it),
        // and `gone` then does not take it out: it stays owed.
        let missed = format!(
            "SELECT o.j FROM unnest($8::text[], $9::bigint[]) WITH ORDINALITY AS o(key, token, j)
              WHERE NOT EXISTS (SELECT 1 FROM locked m WHERE m.out AND m.key = o.key AND m.token = o.token)
                AND EXISTS (SELECT 1 FROM {t} l WHERE l.key = o.key AND l.token = o.token
                              AND l.session = $1 AND l.expires_at = 'infinity')"
        );
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
            //
            // A new lease is detached (session NULL, its own expiry); its first renewal
            // attaches it to the renewing backend's session (`session_renew`).
            //
            // Taking over an attached row: ON CONFLICT has locked the row's newest
            // version, and the WHERE reads its session's expiry with `FOR SHARE`. That
            // lock conflicts with a session renewal's UPDATE of the session row: if one
            // is in progress we wait for its commit, and READ COMMITTED then hands the
            // locked sub-select the session's *newest* version (a locking read follows
            // the update chain), so we see the extension and take nothing. If we lock
            // first, a renewal that comes later waits for our commit and then re-checks
            // its `expires_at > clock_timestamp()` on the session's newest version: an
            // expired session stays expired (renewals never revive one), so a renewal
            // can never confirm a session whose lease we took. A session row our
            // snapshot cannot see (created after it) gives NULL: nothing is taken.
            acquire: format!(
                "WITH ins AS (
                    INSERT INTO {t} AS l (key, token, ttl_ms, expires_at, metadata, revoked, acquired_at, session)
                    VALUES ($1, nextval('{t}_token_seq'), $2, now() + {ttl}, $3, false, now(), NULL)
                    ON CONFLICT (key) DO UPDATE SET
                        token = nextval('{t}_token_seq'), ttl_ms = EXCLUDED.ttl_ms,
                        expires_at = EXCLUDED.expires_at, metadata = EXCLUDED.metadata,
                        revoked = false, acquired_at = EXCLUDED.acquired_at, session = NULL
                    WHERE CASE WHEN {attached}
                        THEN (SELECT s.expires_at <= now() FROM {t}_sessions s WHERE s.id = l.session FOR SHARE)
                        ELSE l.expires_at <= now() END
                    RETURNING token)
                SELECT (SELECT token FROM ins),
                       (SELECT {us_left} FROM {join} WHERE l.key = $1 AND {live})"
            ),
            // A new session: `$1` its TTL in ms.
            session_new: format!(
                "INSERT INTO {t}_sessions (id, ttl_ms, expires_at)
                 VALUES (nextval('{t}_session_seq'), $1, now() + ($1::bigint * interval '1 millisecond'))
                 RETURNING id"
            ),
            // One session renewal, in one statement: `$1` the session, `$2` its TTL in
            // ms; `$3`/`$4` keys and tokens of leases that should be in the session
            // (members); `$5`/`$6`/`$7` keys, tokens and "from any session" flags of
            // leases to attach to it (new leases of this backend: only from detached;
            // re-attached ones: also moved from another live session); `$8`/`$9`/`$10`
            // keys, tokens and promised expiries (NULL: unknown) of leases this backend
            // takes out of the session (`gone`, below).
            //
            // It answers rows `(kind, position, expiry)`: kind 0 (one row): 1 if the
            // session was renewed, and its new expiry; kind 1: a member (position from 1 in `$3`) that is revoked; kind
            // 2: a member no longer in the session (lost); kind 3: an attach that
            // succeeded; kind 4: an attach of a revoked lease; kind 7: a lease to take
            // out (position from 1 in `$8`) that `gone` may have missed, still owed.
            // Every other member was renewed; every other attach is lost.
            //
            // Locks, always lease rows (in key order) before the session row, as
            // acquire does (row, then session `FOR SHARE`), so that no two of them wait
            // on each other in a cycle:
            // - `locked` locks the rows to attach and this session's revoked rows. A row
            //   changed while we waited is re-checked on its newest version (READ
            //   COMMITTED's re-check of the join), and `locked` returns that version's
            //   values; later steps judge those values, on `clock_timestamp()` (a row
            //   not changed during our wait is not re-checked, but it can no longer
            //   change: we hold its lock).
            // - `sess` renews the session by compare-and-set; its WHERE depends on
            //   `locked` (an init plan), so the lease locks are all taken first. A
            //   session that expired is never revived; if an acquire holds the
            //   session `FOR SHARE`, the UPDATE waits for its commit and re-checks the
            //   session's newest version with a fresh `clock_timestamp()`.
            // - `detach` takes the revoked rows out of the session with the session's
            //   new expiry (read under its row lock, after any concurrent renewal of it
            //   committed: at least what any answered renewal promised). A revoked
            //   lease then lasts at most one more TTL, and is not extended again.
            // - `gone` takes out of the session the leases this backend no longer
            //   renews and has not yet taken out (a leave or release whose statement
            //   failed, members nobody renewed for a TTL, attaches whose answer was
            //   lost: `Sessions::outgoing`), each with the earlier of the expiry its
            //   holder was promised and the session's expiry before this statement. In
            //   the same statement as the session's renewal: a renewal that commits
            //   never extends a lease this backend had let go of when it sent it. (A
            //   separate statement before it could fail while the renewal succeeds, and
            //   under a flaky connection did so round after round: the key stayed taken
            //   by nobody for as long, `tests/pg_faults`.) A revoked lease among them is
            //   left to `gone`, not `detach`, which would give it one more TTL.
            // - `moved` attaches: a detached live row, or (flag set) a row of another
            //   session that is live. That session's expiry is read from our snapshot:
            //   an older version has an earlier expiry, so it can only make us refuse.
            //   Our lock on the lease row orders us with any takeover (which locks the
            //   row first): after us, the takeover sees the row in our session.
            // - `members` are judged on the snapshot, read first (the output lists
            //   them before `sess`), so the session row is locked only for the short
            //   rest of the statement. While `sess` succeeds no member
            //   can have been taken over (that needs the session expired, see
            //   acquire); one moved away or released after our snapshot is reported
            //   renewed, which only concerns a holder that let go (or the same lease,
            //   re-attached elsewhere).
            session_renew: format!(
                "{renew_ctes},
                members AS (
                    SELECT w.i, l.session, l.expires_at, l.revoked
                      FROM unnest($3::text[], $4::bigint[]) WITH ORDINALITY AS w(key, token, i)
                      LEFT JOIN {t} l ON l.key = w.key AND l.token = w.token)
                SELECT CASE WHEN m.revoked AND (m.session = $1 OR m.expires_at > now()) THEN 1 ELSE 2 END,
                       m.i, NULL::timestamptz
                  FROM members m
                 WHERE NOT (m.session IS NOT DISTINCT FROM $1 AND m.expires_at = 'infinity' AND NOT m.revoked)
                UNION ALL
                SELECT 0, (SELECT count(*) FROM sess), (SELECT expires_at FROM sess)
                UNION ALL
                SELECT 3, i, NULL FROM moved
                UNION ALL
                SELECT 4, m.i, NULL FROM locked m WHERE m.i IS NOT NULL AND m.revoked AND m.expires_at > now()
                UNION ALL
                SELECT 7, x.j, NULL FROM ({missed}) x"
            ),
            // A group round's renewal of a whole session (see `rounds.rs`): as
            // `session_renew`, with the same `$1`, `$2`, attaches `$5`/`$6`/`$7` and
            // leases taken out `$8`/`$9`/`$10`, but
            // no members. In their place, `$3`/`$4`: keys and tokens of leases that
            // may be in the session without being members the backend knows of
            // (attaches and exits not yet answered); they are left out of the count.
            //
            // It answers rows `(kind, number, expiry, key, token)`: kind 0, 3 and 4 as
            // `session_renew`; kind 5 (one row): how many rows are attached to the
            // session on the statement's snapshot, but for those of `$3`/`$4` (an index
            // scan of `{t}_session`, no lock, no row written); kind 6: a revoked row of
            // the session, by key and token: taken out of it by `detach`, or revoked
            // on the statement's snapshot (the second part of `cand`). The latter
            // matters when another statement of the session detached the row between
            // our snapshot and our lock on it: `detach` then names nothing, but the
            // count (on the snapshot) still has the row, so without it a revoked member
            // would be confirmed renewed (review finding, `tests/pg_rounds_review.rs`).
            // A row may be named twice.
            //
            // The count is read on the same snapshot as the members of `session_renew`
            // (the first the statement takes): see `rounds.rs` for why a count equal
            // to the members known here proves that every one is still attached.
            session_round: format!(
                "{renew_ctes}
                SELECT 0, (SELECT count(*) FROM sess), (SELECT expires_at FROM sess), NULL::text, NULL::bigint
                UNION ALL
                SELECT 5,
                    (SELECT count(*) FROM {t} l WHERE l.session = $1 AND l.expires_at = 'infinity')
                    - (SELECT count(*) FROM unnest($3::text[], $4::bigint[]) AS x(key, token)
                        JOIN {t} l ON l.key = x.key AND l.token = x.token
                        WHERE l.session = $1 AND l.expires_at = 'infinity'),
                    NULL, NULL, NULL
                UNION ALL
                SELECT 3, i, NULL, NULL, NULL FROM moved
                UNION ALL
                SELECT 4, m.i, NULL, NULL, NULL FROM locked m WHERE m.i IS NOT NULL AND m.revoked AND m.expires_at > now()
                UNION ALL
                SELECT 6, NULL, NULL, d.key, d.token FROM detach d
                UNION ALL
                SELECT 6, NULL, NULL, c.key, c.token FROM cand c WHERE c.i IS NULL AND NOT c.out
                UNION ALL
                SELECT 7, x.j, NULL, NULL, NULL FROM ({missed}) x"
            ),
            // A lease this backend stops holding without releasing it (`Backend::leave`,
            // or a holder whose renewals stopped): taken out of session `$3` (`$1` keys,
            // `$2` tokens, keys in order) with the earlier of `$4` (the session's expiry
            // as of the lease's last confirmed renewal, at least what its holder was
            // promised; NULL: unknown) and the session's newest expiry (`FOR SHARE`,
            // after the row lock, as acquire locks): it lasts as long as promised, and
            // no longer than it would have without sessions.
            leave: format!(
                "UPDATE {t} l SET session = NULL, expires_at = LEAST(COALESCE(w.until, 'infinity'),
                    COALESCE((SELECT s.expires_at FROM {t}_sessions s WHERE s.id = l.session FOR SHARE), now()))
                 FROM unnest($1::text[], $2::bigint[], $4::timestamptz[]) AS w(key, token, until)
                 WHERE l.key = w.key AND l.token = w.token AND l.session = $3 AND l.expires_at = 'infinity'"
            ),
            // Release ends the lease but keeps the row, and with it the key's last
            // token: see the acquire above for why rows are never deleted here.
            release: format!(
                "WITH r AS (
                    UPDATE {t} l SET expires_at = now(), revoked = false, session = NULL
                    WHERE key = $1 AND token = $2 AND {live_sub}
                    RETURNING key)
                SELECT pg_notify('{t}_freed', key) FROM r"
            ),
            revoke: format!(
                "UPDATE {t} l SET revoked = true WHERE key = $1 AND {live_sub} RETURNING token"
            ),
            info: format!(
                "SELECT l.token, l.ttl_ms, {us_left}, l.metadata, l.revoked, l.acquired_at FROM {join}
                 WHERE l.key = $1 AND {live}"
            ),
            held_among: format!("SELECT l.key FROM {join} WHERE l.key = ANY($1) AND {live}"),
            channel: format!("{t}_freed"),
            // `$1` is a LIKE pattern made by `like_prefix` (its metacharacters escaped
            // with `!`). Ordered byte-wise, as the memory backend orders. Not indexed
            // (a LIKE prefix uses the primary key's index only under the C collation):
            // an operator's look, not a hot path.
            list: format!(
                "SELECT l.key, l.token, l.ttl_ms, {us_left}, l.metadata, l.revoked, l.acquired_at FROM {join}
                 WHERE l.key LIKE $1 ESCAPE '!' AND {live}
                 ORDER BY l.key COLLATE \"C\" LIMIT $2"
            ),
        }
    }
}
