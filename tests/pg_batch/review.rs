//! Adversarial review of the one-pass renewal `UPDATE` and its batcher (e8415e8): each
//! interleaving is forced with row locks held by a second session, never left to the
//! scheduler.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend, PostgresBackend, PostgresOptions, RenewOutcome};
use leases::Key;
use tokio_postgres::Client;

use crate::support::pg::{connect, grant, run_id, shared_url, table, with_app};

/// This test's table, the application name of its backend's connections, and the
/// backend (batch window `window`, statement timeout 10 s: longer than any wait here).
async fn backend_for(case: &str, window: Duration) -> (String, String, Arc<PostgresBackend>) {
    let t = table("r", case);
    let app = format!("leases_review_{case}_{}", run_id());
    let opts = PostgresOptions::new(with_app(&shared_url(), &app))
        .table(t.clone())
        .renew_batch_window(window)
        .statement_timeout(Duration::from_secs(10));
    let backend = Arc::new(PostgresBackend::connect(opts).await.unwrap());
    (t, app, backend)
}

/// Waits until a renewal statement of `app` is blocked on a lock.
async fn wait_for_blocked_renewal(db: &Client, app: &str) {
    for _ in 0..250 {
        let blocked: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND state = 'active' AND wait_event_type = 'Lock'
                   AND query LIKE '%unnest(%' AND query LIKE '%UPDATE%'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if blocked >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no renewal statement blocked on the locked row");
}

/// `(token, expires_at as µs since the epoch, expired on the database's clock now)`.
async fn row(db: &Client, t: &str, key: &Key) -> (i64, i64, bool) {
    let r = db
        .query_one(
            &format!(
                "SELECT l.token, (EXTRACT(EPOCH FROM CASE WHEN l.session IS NOT NULL AND l.expires_at = 'infinity' THEN s.expires_at ELSE l.expires_at END) * 1000000)::bigint,
                        CASE WHEN l.session IS NOT NULL AND l.expires_at = 'infinity' THEN s.expires_at ELSE l.expires_at END <= clock_timestamp()
                 FROM {t} l LEFT JOIN {t}_sessions s ON s.id = l.session WHERE l.key = $1"
            ),
            &[&key.to_string()],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// A contender's acquire of a held key takes the row lock even though it takes nothing
/// (`INSERT … ON CONFLICT DO UPDATE … WHERE` locks the conflicting row before it
/// evaluates the `WHERE`, and keeps the lock to the end of its transaction). Here the
/// contender's transaction stays open (as a slow commit would keep it: a WAL flush, a
/// synchronous standby) while a renewal of the lease waits on that lock and the lease
/// expires on the database's clock. A lock that ends without updating the row gives
/// the waiting `UPDATE` no re-check: it goes on with the row version it read before it
/// waited, whose `expires_at > clock_timestamp()` was true then. The renewal must
/// nevertheless not revive the expired lease (the `Backend::renew` contract: "Never
/// revives an expired lease"), nor be told `Renewed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_waiting_on_a_contenders_lock_across_expiry_does_not_revive_the_lease() {
    let (t, app, backend) = backend_for("contender", Duration::ZERO).await;
    let url = shared_url();
    let db = connect(&url).await;
    let ttl = Duration::from_secs(30);
    let key = Key::system(["review", "contender"]);
    let token = grant(&backend, &key, ttl).await;
    // The lease is near its end (as if its renewals had failed for a while): one
    // second left on the database's clock.
    db.batch_execute(&format!(
        "UPDATE {t} SET expires_at = now() + interval '1 second' WHERE key = '{key}'"
    ))
    .await
    .unwrap();

    // The contender: the backend's own acquire statement, in a transaction held open.
    let (acquire_sql, _) = PostgresBackend::statements(&t);
    let contender = connect(&url).await;
    contender.batch_execute("BEGIN").await.unwrap();
    let tried = contender
        .query_one(
            acquire_sql.as_str(),
            &[&key.to_string(), &30_000_i64, &Vec::<u8>::new()],
        )
        .await
        .unwrap();
    assert_eq!(
        tried.get::<_, Option<i64>>(0),
        None,
        "the key is held: the contender takes nothing"
    );

    let renewal = {
        let (backend, key) = (backend.clone(), key.clone());
        tokio::spawn(async move { backend.renew(&key, token, ttl).await })
    };
    wait_for_blocked_renewal(&db, &app).await;
    // The lease expires on the database's clock while the renewal waits.
    let (_, expired_at, _) = row(&db, &t, &key).await;
    let mut expired = false;
    for _ in 0..200 {
        if row(&db, &t, &key).await.2 {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(expired, "the lease never expired on the database's clock");
    assert!(!renewal.is_finished(), "the renewal must still be waiting");
    contender.batch_execute("COMMIT").await.unwrap();

    let outcome = renewal.await.unwrap();
    let (after_token, after_expires, after_expired) = row(&db, &t, &key).await;
    assert_eq!(after_token, token as i64);
    assert!(
        outcome.as_ref().ok() != Some(&RenewOutcome::Renewed)
            && after_expired
            && after_expires == expired_at,
        "a lease that expired on the database's clock was revived: the renewal answered \
         {outcome:?}, and the row's expiry moved from {expired_at} to {after_expires} µs \
         (expired now: {after_expired})"
    );
    // And so the key is free for the next acquirer.
    let other = backend.acquire(&key, ttl, b"").await.unwrap();
    assert!(
        matches!(other, AcquireOutcome::Granted { .. }),
        "the expired key is still taken: {other:?}"
    );
}

/// A renewal waiting on the row lock of a committing takeover (here written by a
/// second session as a new grant would be: a new token, a new expiry) re-checks the new
/// row version and does not match; in the same statement, another lease is renewed.
/// Answers go by position: the raced lease is told `Lost`, the other `Renewed`, and the
/// new holder's row is left exactly as the takeover wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_renewal_racing_a_takeover_is_lost_and_extends_nothing() {
    // A window long enough that both renewals share one statement.
    let (t, app, backend) = backend_for("takeover", Duration::from_millis(300)).await;
    let url = shared_url();
    let db = connect(&url).await;
    let ttl = Duration::from_secs(30);
    let a = Key::system(["review", "takeover", "a"]);
    let b = Key::system(["review", "takeover", "b"]);
    let ta = grant(&backend, &a, ttl).await;
    let tb = grant(&backend, &b, ttl).await;

    let taker = connect(&url).await;
    taker
        .batch_execute(&format!(
            "BEGIN; UPDATE {t} SET token = nextval('{t}_token_seq'),
                 expires_at = now() + interval '1 hour', acquired_at = now()
             WHERE key = '{a}'"
        ))
        .await
        .unwrap();
    let renew = |key: &Key, token: u64| {
        let (backend, key) = (backend.clone(), key.clone());
        tokio::spawn(async move { backend.renew(&key, token, ttl).await })
    };
    let (ra, rb) = (renew(&a, ta), renew(&b, tb));
    wait_for_blocked_renewal(&db, &app).await;
    assert!(
        !ra.is_finished() && !rb.is_finished(),
        "one statement for both"
    );
    taker.batch_execute("COMMIT").await.unwrap();
    let taken = row(&db, &t, &a).await;
    assert!(taken.0 > ta as i64);

    assert_eq!(ra.await.unwrap().unwrap(), RenewOutcome::Lost);
    assert_eq!(rb.await.unwrap().unwrap(), RenewOutcome::Renewed);
    assert_eq!(
        row(&db, &t, &a).await,
        (taken.0, taken.1, false),
        "the new holder's row was touched"
    );
}

/// `renew_batch_size(usize::MAX)` ("no limit") is a valid option (at least 1), and with
/// a pool of 4 two renewal statements may run at once. The batcher must keep renewing:
/// its share of the queue per send (free slots × batch size) must not overflow and
/// stop it, which would fail every renewal of the backend from then on (every lease
/// lost at its deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_batch_size_keeps_the_batcher_renewing() {
    let opts = PostgresOptions::new(shared_url())
        .table(table("r", "unbounded"))
        .pool_size(4)
        .renew_batch_size(usize::MAX)
        .renew_batch_window(Duration::ZERO);
    let backend = PostgresBackend::connect(opts).await.unwrap();
    let ttl = Duration::from_secs(30);
    let key = Key::system(["review", "unbounded"]);
    let token = grant(&backend, &key, ttl).await;
    for _ in 0..2 {
        let renewed = backend.renew(&key, token, ttl).await;
        assert!(
            matches!(renewed, Ok(RenewOutcome::Renewed)),
            "a held lease was not renewed: {renewed:?}"
        );
    }
}

/// One statement, three leases, two of them behind row locks of committing writers: a
/// revoke (`a`) and the holder's release (`b`, the backend's own release statement);
/// `c` is free. After both commit, the one `UPDATE` re-checks `a` and `b` on their
/// newest versions: `a` is told `Revoked` and not extended, `b` is told `Lost` and not
/// revived, `c` is renewed; each answer reaches its own caller by position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_behind_a_committing_revoke_and_release_answers_each_lease() {
    let (t, app, backend) = backend_for("revoke_release", Duration::from_millis(300)).await;
    let url = shared_url();
    let db = connect(&url).await;
    let ttl = Duration::from_secs(30);
    let keys: Vec<Key> = ["a", "b", "c"]
        .iter()
        .map(|k| Key::system(["review", "revoke-release", k]))
        .collect();
    let mut tokens = Vec::new();
    for k in &keys {
        tokens.push(grant(&backend, k, ttl).await);
    }
    let before: Vec<_> = {
        let mut v = Vec::new();
        for k in &keys {
            v.push(row(&db, &t, k).await);
        }
        v
    };

    let revoker = connect(&url).await;
    revoker
        .batch_execute(&format!(
            "BEGIN; UPDATE {t} SET revoked = true WHERE key = '{}'",
            keys[0]
        ))
        .await
        .unwrap();
    let (_, release_sql) = PostgresBackend::statements(&t);
    let releaser = connect(&url).await;
    releaser.batch_execute("BEGIN").await.unwrap();
    let released = releaser
        .query(
            release_sql.as_str(),
            &[&keys[1].to_string(), &(tokens[1] as i64)],
        )
        .await
        .unwrap();
    assert_eq!(released.len(), 1);

    let renewals: Vec<_> = keys
        .iter()
        .zip(&tokens)
        .map(|(k, &token)| {
            let (backend, k) = (backend.clone(), k.clone());
            tokio::spawn(async move { backend.renew(&k, token, ttl).await })
        })
        .collect();
    wait_for_blocked_renewal(&db, &app).await;
    assert!(
        renewals.iter().all(|r| !r.is_finished()),
        "one statement for all three"
    );
    revoker.batch_execute("COMMIT").await.unwrap();
    releaser.batch_execute("COMMIT").await.unwrap();
    let mut outcomes = Vec::new();
    for r in renewals {
        outcomes.push(r.await.unwrap().unwrap());
    }
    assert_eq!(
        outcomes,
        [
            RenewOutcome::Revoked,
            RenewOutcome::Lost,
            RenewOutcome::Renewed
        ]
    );
    let (a, b, c) = (
        row(&db, &t, &keys[0]).await,
        row(&db, &t, &keys[1]).await,
        row(&db, &t, &keys[2]).await,
    );
    assert_eq!(a.1, before[0].1, "the revoked lease was extended");
    assert!(b.2, "the released lease was revived");
    assert!(c.1 > before[2].1, "the free lease was not extended");
}
