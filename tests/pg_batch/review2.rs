//! Second adversarial review of the batched renewal (3d18d7d): lock first, judge expiry
//! on the locked rows, at most half the pool running renewal statements. Each
//! interleaving is forced with row locks held by a second session and observed in
//! `pg_stat_activity`, never left to the scheduler.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend, PostgresBackend, PostgresOptions, RenewOutcome};
use leases::Key;
use tokio_postgres::Client;

use crate::support::pg::{connect, grant, run_id, shared_url, table, with_app};

/// How many statements of `app` whose text contains `like` are running on the server
/// (`blocked`: only those waiting on a lock).
async fn active(db: &Client, app: &str, like: &str, blocked: bool) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = $1 AND state = 'active' AND query LIKE $2
           AND (NOT $3 OR wait_event_type = 'Lock')",
        &[&app, &format!("%{like}%"), &blocked],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until at least `n` statements of `app` containing `like` wait on a lock.
async fn wait_blocked(db: &Client, app: &str, like: &str, n: i64) {
    for _ in 0..500 {
        if active(db, app, like, true).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} statements {like:?} of {app} blocked on a lock");
}

/// `expires_at` of `key`'s row, in µs since the epoch.
async fn expires_us(db: &Client, t: &str, key: &Key) -> i64 {
    db.query_one(
        &format!(
            "SELECT (EXTRACT(EPOCH FROM CASE WHEN l.session IS NOT NULL AND l.expires_at = 'infinity' \
             THEN s.expires_at ELSE l.expires_at END) * 1000000)::bigint \
             FROM {t} l LEFT JOIN {t}_sessions s ON s.id = l.session WHERE l.key = $1"
        ),
        &[&key.to_string()],
    )
    .await
    .unwrap()
    .get(0)
}

/// The database's clock, in µs since the epoch.
async fn db_now_us(db: &Client) -> i64 {
    db.query_one(
        "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A renewal statement whose client gave up (the statement timeout) keeps running on the
/// server when it started late: the client's timer starts before the pool hands out a
/// connection, the server's only when the statement arrives. The module docs count on
/// it ("a statement still waiting on a lock when we close its connection may commit on
/// the server up to the statement timeout later": "possibly an extension nobody knows
/// of"), and the batcher frees the lease for a retry as soon as the client gave up.
///
/// Here the stale statement `A` (leases `a` and `b`, one statement) waits on `a`'s row
/// lock; its client gives up; the retry `B` of `b` renews `b` and is told `Renewed`:
/// the holder now counts its lease from `B`'s start. Then `a`'s lock is released and
/// `A` goes on: it locks `b` (changed by `B`, so re-checked on `B`'s version: live) and
/// sets `expires_at = now() + ttl`, with `A`'s `now()`, seconds older than `B`'s. The
/// confirmed lease's expiry moves *backwards*, below what the holder was promised, and
/// another process is granted the key while the holder's renewal still says it holds
/// it: two holders (guarantee 1).
///
/// Forced order: a pool of 2 (one renewal statement at a time), both connections held
/// by revokes waiting on a row lock of a second session; `A` is queued 2 s later and
/// gets a connection only when those revokes time out (4 s), so its server-side
/// timeout ends about 2 s after its client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_renewal_the_server_still_runs_never_moves_a_confirmed_expiry_backwards() {
    let case = "stale";
    let t = table("r2", case);
    let app = format!("leases_review2_{case}_{}", run_id());
    let statement_timeout = Duration::from_secs(4);
    let opts = PostgresOptions::new(with_app(&shared_url(), &app))
        .table(t.clone())
        .pool_size(2)
        .connect_timeout(Duration::from_secs(30))
        .renew_batch_window(Duration::from_millis(200))
        .statement_timeout(statement_timeout);
    let backend = Arc::new(PostgresBackend::connect(opts).await.unwrap());
    let url = shared_url();
    let db = connect(&url).await;

    let long = Duration::from_secs(60);
    let ttl = Duration::from_secs(10);
    let a = Key::system(["review2", "stale", "a"]);
    let b = Key::system(["review2", "stale", "b"]);
    let x = Key::system(["review2", "stale", "x"]);
    let ta = grant(&backend, &a, long).await;
    let tb = grant(&backend, &b, ttl).await;
    grant(&backend, &x, long).await;
    // The backend's session for `ttl` exists already (made by another lease's renewal),
    // so that the stale renewal below is one statement under one client timer.
    let y = Key::system(["review2", "stale", "y"]);
    let ty = grant(&backend, &y, ttl).await;
    assert_eq!(
        backend.renew(&y, ty, ttl).await.unwrap(),
        RenewOutcome::Renewed
    );

    // A second session holds the row locks of `a` and `x`.
    let locker = connect(&url).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {t} WHERE key IN ('{a}', '{x}') ORDER BY key FOR UPDATE"
        ))
        .await
        .unwrap();
    // Both pooled connections wait on `x`'s lock (until their statement timeout).
    let blockers: Vec<_> = (0..2)
        .map(|_| {
            let (backend, x) = (backend.clone(), x.clone());
            tokio::spawn(async move { backend.revoke(&x).await })
        })
        .collect();
    wait_blocked(&db, &app, "revoked = true", 2).await;
    // `A`, queued well before the revokes time out: its client timer runs while it
    // waits for a connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stale = {
        let backend = backend.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            // One TTL: one session, one statement (`a` keeps its long grant).
            tokio::join!(backend.renew(&a, ta, ttl), backend.renew(&b, tb, ttl))
        })
    };
    for blocker in blockers {
        assert!(blocker.await.unwrap().is_err(), "the revokes time out");
    }
    // `A` got a connection and waits on `a`'s lock, on the server.
    wait_blocked(&db, &app, "unnest(", 1).await;
    let (ra, rb) = stale.await.unwrap();
    assert!(
        ra.is_err() && rb.is_err(),
        "the client gave up on the stale statement: {ra:?} {rb:?}"
    );

    // The renewer retries `b`, as the manager's renewer does after an error.
    let promised_from = db_now_us(&db).await;
    let retry = backend.renew(&b, tb, ttl).await;
    assert_eq!(retry.unwrap(), RenewOutcome::Renewed, "the retry renews b");
    let confirmed = expires_us(&db, &t, &b).await;
    let promised = promised_from + ttl.as_micros() as i64;
    assert!(confirmed >= promised, "the retry extended b from its start");
    assert_eq!(
        active(&db, &app, "unnest(", true).await,
        1,
        "set-up: the stale statement must still wait on the server"
    );

    // `a`'s lock goes; the stale statement goes on and commits (its answer is lost).
    locker.batch_execute("COMMIT").await.unwrap();
    for _ in 0..500 {
        if active(&db, &app, "unnest(", false).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = expires_us(&db, &t, &b).await;

    // What that means: once the row's expiry passes, another process is granted `b`
    // while its holder, told `Renewed` by the retry, counts it held until `promised`.
    let mut second_holder = None;
    if after < promised {
        while db_now_us(&db).await <= after {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rival = PostgresBackend::connect(PostgresOptions::new(url.clone()).table(t.clone()))
            .await
            .unwrap();
        let got = rival.acquire(&b, ttl, b"").await.unwrap();
        let at = db_now_us(&db).await;
        if matches!(got, AcquireOutcome::Granted { .. }) && at < promised {
            second_holder = Some((got, promised - at));
        }
    }
    assert!(
        after >= confirmed && second_holder.is_none(),
        "a confirmed renewal's expiry moved backwards: the retry (told Renewed) set b's \
         expiry to {confirmed} µs, the stale statement then set it to {after} µs \
         ({} ms earlier); a rival got {second_holder:?} (µs before the holder's \
         renewal runs out on the database's clock)",
        (confirmed - after) / 1000
    );
}

/// One caller's renewal with a TTL the database cannot represent (here `Duration::MAX`,
/// sent as `i64::MAX` ms: `now() + interval` overflows) shares its statement with other
/// leases' renewals. The error is that caller's to get; the other leases in the batch
/// must still be renewed. A statement that fails as a whole hands the error to every
/// lease in it, and their renewers' retries batch with the offender's retries again: one
/// bad call through the public `Backend` trait fails the renewals of unrelated holders
/// of the same backend until they are lost at their deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_with_an_unrepresentable_ttl_does_not_fail_the_rest_of_its_batch() {
    let opts = PostgresOptions::new(shared_url())
        .table(table("r2", "poison"))
        // Long enough that both renewals share one statement.
        .renew_batch_window(Duration::from_millis(300));
    let backend = Arc::new(PostgresBackend::connect(opts).await.unwrap());
    let ttl = Duration::from_secs(30);
    let bad = Key::system(["review2", "poison", "bad"]);
    let good = Key::system(["review2", "poison", "good"]);
    let tbad = grant(&backend, &bad, ttl).await;
    let tgood = grant(&backend, &good, ttl).await;
    let (rbad, rgood) = tokio::join!(
        backend.renew(&bad, tbad, Duration::MAX),
        backend.renew(&good, tgood, ttl)
    );
    assert!(
        matches!(rgood, Ok(RenewOutcome::Renewed)),
        "a held lease was not renewed because another lease's renewal in its batch asked \
         for an unrepresentable TTL: good got {rgood:?} (bad got {rbad:?})"
    );
}

/// Option values at the edge of their types are input a user can give: each must be a
/// typed error or work, never a panic (the crate's standard). `pool_size(usize::MAX)`
/// ("no limit"; the batcher runs half of it) and `statement_timeout(Duration::MAX)`
/// ("no limit") are tried, each in a task of its own so that a panic is reported as
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_pool_size_and_statement_timeout_do_not_panic() {
    let cases: Vec<(&str, PostgresOptions)> = vec![
        (
            "pool_size(usize::MAX)",
            PostgresOptions::new(shared_url())
                .table(table("r2", "huge_pool"))
                .pool_size(usize::MAX),
        ),
        (
            "statement_timeout(Duration::MAX)",
            PostgresOptions::new(shared_url())
                .table(table("r2", "huge_timeout"))
                .statement_timeout(Duration::MAX),
        ),
    ];
    let mut panics = Vec::new();
    for (name, opts) in cases {
        let outcome = tokio::spawn(async move {
            match PostgresBackend::connect(opts).await {
                Ok(backend) => {
                    let key = Key::system(["review2", "extreme"]);
                    format!(
                        "{:?}",
                        backend.acquire(&key, Duration::from_secs(5), b"").await
                    )
                }
                Err(e) => format!("typed error: {e}"),
            }
        })
        .await;
        if let Err(e) = outcome {
            if e.is_panic() {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panics.push(format!("{name}: {msg}"));
            }
        }
    }
    assert!(panics.is_empty(), "an option value panics: {panics:?}");
}
