//! Batched renewals on PostgreSQL: one statement renews many leases, and each holder is
//! told exactly its own lease's outcome; a statement that fails fails all its leases.
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend, PostgresBackend, PostgresOptions, RenewOutcome};
use leases::{CancelReason, Key, LeaseManager, LossCause};
use support::pg::{run_id, shared_url};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A table of this test's own, so that tests do not see each other's rows and locks.
fn table(case: &str) -> String {
    format!("b_{}_{case}", run_id())
}

/// Options on this test's own table, with a batch window long enough that renewals
/// started together always share one statement.
fn options(case: &str) -> PostgresOptions {
    PostgresOptions::new(shared_url())
        .table(table(case))
        .renew_batch_window(Duration::from_millis(400))
}

async fn grant(backend: &PostgresBackend, key: &Key, ttl: Duration) -> u64 {
    match backend.acquire(key, ttl, b"").await.unwrap() {
        AcquireOutcome::Granted { token } => token,
        held => panic!("{key} should be free: {held:?}"),
    }
}

/// Renews every `(key, token)` at once (each in a task, as renewers do) and returns
/// the outcomes in order.
async fn renew_all(
    backend: &Arc<PostgresBackend>,
    leases: &[(Key, u64)],
    ttl: Duration,
) -> Vec<Result<RenewOutcome, leases::BackendError>> {
    let tasks: Vec<_> = leases
        .iter()
        .map(|(key, token)| {
            let (backend, key, token) = (backend.clone(), key.clone(), *token);
            tokio::spawn(async move { backend.renew(&key, token, ttl).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    outcomes
}

/// `(key, token, expires_at as µs since the epoch, revoked)` of every row.
async fn rows(db: &Client, t: &str) -> Vec<(String, i64, i64, bool)> {
    db.query(
        &format!(
            "SELECT key, token, (EXTRACT(EPOCH FROM expires_at) * 1000000)::bigint, revoked \
             FROM {t} ORDER BY key"
        ),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// In one batch, a revoked lease is told `Revoked`, a taken-over, a released and an
/// expired lease are told `Lost`, and every other lease is renewed, by that one
/// statement (they all get the same new expiry, the transaction's `now()` + TTL).
/// Nothing else changes: the new holder's lease and the revoked one are not extended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_tells_each_lease_its_own_outcome() {
    let case = "outcomes";
    let t = table(case);
    let backend = Arc::new(PostgresBackend::connect(options(case)).await.unwrap());
    let db = connect(&shared_url()).await;
    let ttl = Duration::from_secs(30);
    let short = Duration::from_millis(300);
    let keys: Vec<Key> = (0..12)
        .map(|i| Key::system(["batch", &format!("k{i:02}")]))
        .collect();
    let mut leases = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        // k05 (to be taken over) and k08 (to expire) get a short TTL.
        let ttl = if i == 5 || i == 8 { short } else { ttl };
        leases.push((key.clone(), grant(&backend, key, ttl).await));
    }
    assert_eq!(backend.revoke(&keys[2]).await.unwrap(), Some(leases[2].1));
    assert!(backend.release(&keys[7], leases[7].1).await.unwrap());
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let newer = grant(&backend, &keys[5], ttl).await;
    assert!(newer > leases[5].1);
    let before = rows(&db, &t).await;

    let outcomes = renew_all(&backend, &leases, ttl).await;

    let after = rows(&db, &t).await;
    let mut renewed_expiries = HashSet::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let expected = match i {
            2 => RenewOutcome::Revoked,
            5 | 7 | 8 => RenewOutcome::Lost,
            _ => RenewOutcome::Renewed,
        };
        assert_eq!(outcome.unwrap(), expected, "k{i:02}");
        if expected == RenewOutcome::Renewed {
            assert!(after[i].2 > before[i].2, "k{i:02} was not extended");
            renewed_expiries.insert(after[i].2);
        } else {
            assert_eq!(after[i], before[i], "k{i:02} must not change");
        }
    }
    assert_eq!(
        renewed_expiries.len(),
        1,
        "the renewals did not share one statement: {renewed_expiries:?}"
    );
    assert_eq!(after[5].1 as u64, newer, "the new holder keeps k05");
}

/// A batch whose statement times out (one of its rows is locked by another session
/// past the statement timeout) fails every renewal in it, the ones whose rows were free
/// too, and renews none of them: the statement is rolled back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_times_out_fails_every_lease_in_it() {
    let case = "timeout";
    let t = table(case);
    let timeout = Duration::from_secs(1);
    let backend = Arc::new(
        PostgresBackend::connect(options(case).statement_timeout(timeout))
            .await
            .unwrap(),
    );
    let ttl = Duration::from_secs(30);
    let mut leases = Vec::new();
    for i in 0..8 {
        let key = Key::system(["batch-timeout", &i.to_string()]);
        let token = grant(&backend, &key, ttl).await;
        leases.push((key, token));
    }
    let db = connect(&shared_url()).await;
    let before = rows(&db, &t).await;
    let locker = connect(&shared_url()).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {t} WHERE key = '{}' FOR UPDATE",
            leases[3].0
        ))
        .await
        .unwrap();

    let outcomes = renew_all(&backend, &leases, ttl).await;
    // The row stays locked past the server's own statement timeout: the renewers may
    // give up first (their bound counts from the renew call, the server's from the
    // statement's start), and a statement still waiting on the lock when it is released
    // would go on and commit. The scenario is a lock held *past* the timeout.
    tokio::time::sleep(timeout * 2).await;
    locker.batch_execute("COMMIT").await.unwrap();

    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(outcome.is_err(), "lease {i}: {outcome:?}");
    }
    assert_eq!(
        rows(&db, &t).await,
        before,
        "a failed batch renewed something"
    );
    // Once the lock is gone, the same leases renew (the backend recovered).
    let outcomes = renew_all(&backend, &leases, ttl).await;
    assert!(outcomes
        .into_iter()
        .all(|o| o.unwrap() == RenewOutcome::Renewed));
}

async fn manager(options: PostgresOptions) -> LeaseManager {
    LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .postgres(options)
        .start()
        .await
        .unwrap()
}

/// Through the manager: of leases held together (so renewed in shared statements), the
/// one revoked and the one taken over (its row's token replaced, as a new holder's
/// would be) are told `Revoked` and `Lost` at their next renewal; the rest stay live
/// over several more renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_of_one_batch_are_told_exactly_their_own_loss() {
    let case = "manager";
    let t = table(case);
    let m = manager(options(case)).await;
    let ttl = Duration::from_millis(1500);
    let mut held = Vec::new();
    for i in 0..10 {
        let key = Key::system(["batch-manager", &i.to_string()]);
        held.push(m.acquire_lease(key, ttl).await.unwrap());
    }
    let db = connect(&shared_url()).await;
    db.batch_execute(&format!(
        "UPDATE {t} SET revoked = true WHERE key = '{}';
         UPDATE {t} SET token = nextval('{t}_token_seq') WHERE key = '{}'",
        held[3].0.key(),
        held[6].0.key()
    ))
    .await
    .unwrap();
    let revoked = tokio::time::timeout(ttl, held[3].1.cancelled())
        .await
        .expect("told at the next renewal");
    assert_eq!(revoked, CancelReason::Revoked);
    let lost = tokio::time::timeout(ttl, held[6].1.cancelled())
        .await
        .expect("told at the next renewal");
    assert_eq!(lost, CancelReason::Lost(LossCause::RenewalRefused));
    // Three more renewal rounds: everyone else stays.
    tokio::time::sleep(ttl * 3 / 2).await;
    for (i, (_, ctx)) in held.iter().enumerate() {
        if i != 3 && i != 6 {
            assert!(!ctx.is_cancelled(), "lease {i}: {:?}", ctx.reason());
        }
    }
    m.shutdown().await;
}

/// A renewer that stops waiting while its renewal is queued or in flight leaves no
/// connection behind: the statement is the batcher's, not the caller's, so no session
/// is left `idle in transaction` and the pool keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_given_up_mid_batch_leave_nothing_behind() {
    let case = "cancel";
    let t = table(case);
    let url = shared_url();
    let (opts, app) = tagged(case);
    let opts = opts
        .renew_batch_window(Duration::from_millis(200))
        .statement_timeout(Duration::from_secs(2));
    let backend = Arc::new(PostgresBackend::connect(opts).await.unwrap());
    let ttl = Duration::from_secs(30);
    let mut leases = Vec::new();
    for i in 0..6 {
        let key = Key::system(["batch-cancel", &i.to_string()]);
        let token = grant(&backend, &key, ttl).await;
        leases.push((key, token));
    }
    let locker = connect(&url).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {t} WHERE key = '{}' FOR UPDATE",
            leases[0].0
        ))
        .await
        .unwrap();
    // Give up while queued (50 ms, the batch waits 200 ms) and while in flight (the
    // statement waits on the lock).
    for give_up in [Duration::from_millis(50), Duration::from_millis(600)] {
        let tasks: Vec<_> = leases
            .iter()
            .map(|(key, token)| {
                let (backend, key, token) = (backend.clone(), key.clone(), *token);
                tokio::spawn(async move {
                    tokio::time::timeout(give_up, backend.renew(&key, token, ttl)).await
                })
            })
            .collect();
        for t in tasks {
            assert!(
                t.await.unwrap().is_err(),
                "the renewal should still be waiting"
            );
        }
    }
    locker.batch_execute("COMMIT").await.unwrap();
    // Let whatever was sent finish.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let db = connect(&url).await;
    let stuck: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stuck, 0);
    let outcomes = renew_all(&backend, &leases, ttl).await;
    assert!(outcomes
        .into_iter()
        .all(|o| o.unwrap() == RenewOutcome::Renewed));
}

/// Options on this test's own table, on connections named for the test (so that
/// `pg_stat_activity` tells its statements apart), and that name.
fn tagged(case: &str) -> (PostgresOptions, String) {
    let app = format!("leases_batch_{case}_{}", run_id());
    let url = shared_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let opts = PostgresOptions::new(format!("{url}{sep}application_name={app}")).table(table(case));
    (opts, app)
}

/// Waits until `n` renewal statements of `app` wait on a row lock (at most 2 s).
async fn until_blocked(db: &Client, app: &str, n: i64) {
    for _ in 0..100 {
        if renewal_statements(db, app).await.1 >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no renewal statement blocked on the locked row");
}

/// Renewal statements running now for this application: `(all, waiting on a lock)`.
async fn renewal_statements(db: &Client, app: &str) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock')
             FROM pg_stat_activity
             WHERE application_name = $1 AND state = 'active' AND query LIKE '%unnest(%' AND query LIKE '%UPDATE%'",
            &[&app],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// When renewals pile up (here: their rows are locked), at most half the pool runs
/// renewal statements, so an acquire still gets a connection at once; and a lease whose
/// renewal is still running (its renewer gave up and tried again) is not sent in a
/// second statement beside it, but after it. Every renewal then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_that_pile_up_leave_acquires_a_connection_and_never_run_a_lease_twice() {
    let case = "pileup";
    let t = table(case);
    let url = shared_url();
    let (opts, app) = tagged(case);
    let opts = opts
        .pool_size(2)
        .renew_batch_window(Duration::ZERO)
        .statement_timeout(Duration::from_secs(4));
    let backend = Arc::new(PostgresBackend::connect(opts).await.unwrap());
    let ttl = Duration::from_secs(30);
    let a = Key::system(["batch-pileup", "a"]);
    let c = Key::system(["batch-pileup", "c"]);
    let ta = grant(&backend, &a, ttl).await;
    let tc = grant(&backend, &c, ttl).await;
    let db = connect(&url).await;
    let locker = connect(&url).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {t} WHERE key IN ('{a}', '{c}') FOR UPDATE"
        ))
        .await
        .unwrap();

    let renew = |key: &Key, token: u64| {
        let (backend, key) = (backend.clone(), key.clone());
        tokio::spawn(async move { backend.renew(&key, token, ttl).await })
    };
    // A's renewal takes the one renewal slot (pool of 2) and blocks on the lock.
    let first_a = renew(&a, ta);
    until_blocked(&db, &app, 1).await;
    // C's renewal is due at once, but must wait in the queue, not at the pool.
    let renew_c = renew(&c, tc);
    // A's renewer gives up and tries again while its statement still runs.
    first_a.abort();
    let second_a = renew(&a, ta);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        renewal_statements(&db, &app).await,
        (1, 1),
        "only one renewal statement may run with a pool of 2"
    );
    let d = Key::system(["batch-pileup", "d"]);
    let acquired = backend.acquire(&d, ttl, b"").await;
    assert!(
        matches!(acquired, Ok(AcquireOutcome::Granted { .. })),
        "an acquire must get the other connection while renewals wait: {acquired:?}"
    );
    assert_eq!(renewal_statements(&db, &app).await, (1, 1));

    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(renew_c.await.unwrap().unwrap(), RenewOutcome::Renewed);
    assert_eq!(second_a.await.unwrap().unwrap(), RenewOutcome::Renewed);
}

/// With free statement slots (a pool of 4: two renewal statements at once), a lease
/// whose renewal statement is still running is still not sent again beside it: the
/// retry waits for that statement and then renews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_renewal_waits_for_its_running_statement() {
    let case = "retry";
    let t = table(case);
    let url = shared_url();
    let (opts, app) = tagged(case);
    let opts = opts
        .pool_size(4)
        .renew_batch_window(Duration::ZERO)
        .statement_timeout(Duration::from_secs(4));
    let backend = Arc::new(PostgresBackend::connect(opts).await.unwrap());
    let ttl = Duration::from_secs(30);
    let a = Key::system(["batch-retry", "a"]);
    let ta = grant(&backend, &a, ttl).await;
    let db = connect(&url).await;
    let locker = connect(&url).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {t} WHERE key = '{a}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let renew = || {
        let (backend, key) = (backend.clone(), a.clone());
        tokio::spawn(async move { backend.renew(&key, ta, ttl).await })
    };
    let first = renew();
    until_blocked(&db, &app, 1).await;
    first.abort();
    let second = renew();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        renewal_statements(&db, &app).await,
        (1, 1),
        "the same lease in two running statements"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(second.await.unwrap().unwrap(), RenewOutcome::Renewed);
}

/// A renewal that waits in the queue longer than a statement may take (here behind two
/// statements that each run into the statement timeout, one slot, one lease a
/// statement) is not failed for it: it keeps its place and is renewed when its turn
/// comes, well within its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_queued_behind_slow_statements_keeps_its_place() {
    let case = "queued";
    let t = table(case);
    let url = shared_url();
    let timeout = Duration::from_secs(2);
    let (opts, app) = tagged(case);
    let opts = opts
        .pool_size(2)
        .renew_batch_size(1)
        .renew_batch_window(Duration::ZERO)
        .statement_timeout(timeout);
    let backend = Arc::new(PostgresBackend::connect(opts).await.unwrap());
    let ttl = Duration::from_secs(30);
    let mut leases = Vec::new();
    for name in ["a1", "a2", "c"] {
        let key = Key::system(["batch-queued", name]);
        let token = grant(&backend, &key, ttl).await;
        leases.push((key, token));
    }
    let db = connect(&url).await;
    let locker = connect(&url).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {t} WHERE key IN ('{}', '{}') FOR UPDATE",
            leases[0].0, leases[1].0
        ))
        .await
        .unwrap();
    let renew = |(key, token): (Key, u64)| {
        let backend = backend.clone();
        tokio::spawn(async move {
            let answer = backend.renew(&key, token, ttl).await;
            (answer, std::time::Instant::now())
        })
    };
    let started = std::time::Instant::now();
    let a1 = renew(leases[0].clone());
    until_blocked(&db, &app, 1).await;
    let a2 = renew(leases[1].clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = renew(leases[2].clone());
    let (a1, _) = a1.await.unwrap();
    let (a2, _) = a2.await.unwrap();
    let (c, c_done) = c.await.unwrap();
    locker.batch_execute("COMMIT").await.unwrap();
    assert!(a1.is_err() && a2.is_err(), "{a1:?} {a2:?}");
    assert_eq!(
        c.unwrap(),
        RenewOutcome::Renewed,
        "the queued renewal must wait for its turn, not fail"
    );
    assert!(
        c_done - started >= timeout * 2,
        "c was renewed before both slow statements ended: the queue was not in order"
    );
}

/// The order in which five renewals ran: `x`, whose row is locked for `hold`, then
/// `a0`..`a3`, queued in that order behind it (one statement slot, one lease a
/// statement). Each statement extends from its own `now()`, so the rows' expiries give
/// the order the statements ran in.
async fn served_order(case: &str, ttl: Duration, hold: Duration) -> Vec<String> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let t = table(case);
    let url = shared_url();
    let (opts, app) = tagged(case);
    let opts = opts
        .pool_size(2)
        .renew_batch_size(1)
        .renew_batch_window(Duration::ZERO)
        .statement_timeout(Duration::from_secs(4));
    let backend = Arc::new(PostgresBackend::connect(opts).await.unwrap());
    let mut leases = Vec::new();
    for name in ["x", "a0", "a1", "a2", "a3"] {
        let key = Key::system(["batch-order", name]);
        let token = grant(&backend, &key, ttl).await;
        leases.push((key, token));
    }
    let db = connect(&url).await;
    let locker = connect(&url).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {t} WHERE key = '{}' FOR UPDATE",
            leases[0].0
        ))
        .await
        .unwrap();
    let blocked = {
        let (backend, (key, token)) = (backend.clone(), leases[0].clone());
        tokio::spawn(async move { backend.renew(&key, token, ttl).await })
    };
    until_blocked(&db, &app, 1).await;
    // Queue a0..a3 in this order: a renewal is queued by its future's first poll.
    let mut queued = Vec::new();
    for (key, token) in leases[1..].iter().cloned() {
        let backend = backend.clone();
        let mut renewal = Box::pin(async move { backend.renew(&key, token, ttl).await });
        let first = renewal
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(
            matches!(first, Poll::Pending),
            "answered before it was sent"
        );
        queued.push(tokio::spawn(renewal));
    }
    tokio::time::sleep(hold).await;
    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(blocked.await.unwrap().unwrap(), RenewOutcome::Renewed);
    for q in queued {
        assert_eq!(q.await.unwrap().unwrap(), RenewOutcome::Renewed);
    }
    let mut after = rows(&db, &t).await;
    after.sort_by_key(|r| r.2);
    after
        .into_iter()
        .map(|r| r.0.rsplit('/').next().unwrap().to_string())
        .collect()
}

/// Renewals that waited less than a sixth of their TTL are served oldest first; once the
/// oldest has waited longer (the database is not keeping up), newest first: an
/// overloaded database then loses the oldest waiting renewals' leases instead of
/// delaying every renewal alike until all holders reach their deadlines together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_queue_is_served_newest_first_and_a_prompt_one_oldest_first() {
    // TTL 30 s: waiting 0.8 s is prompt (under 5 s).
    let prompt = served_order("fifo", Duration::from_secs(30), Duration::from_millis(800)).await;
    assert_eq!(prompt, ["x", "a0", "a1", "a2", "a3"]);
    // TTL 3 s: waiting 0.8 s is late (over 0.5 s).
    let late = served_order("lifo", Duration::from_secs(3), Duration::from_millis(800)).await;
    assert_eq!(late, ["x", "a3", "a2", "a1", "a0"]);
}
