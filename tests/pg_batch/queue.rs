//! The batcher's queue: at most half the pool runs renewal statements (acquires keep the
//! rest), a lease is never in two running statements, a queued renewal keeps its place,
//! and a late queue is served newest first.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend, PostgresBackend, RenewOutcome};
use leases::Key;

use crate::setup::{renewal_statements, tagged, until_blocked};
use crate::support::pg::{connect, grant, shared_url, table};

/// When renewals pile up (here: their rows are locked), at most half the pool runs
/// renewal statements, so an acquire still gets a connection at once; and a lease whose
/// renewal is still running (its renewer gave up and tried again) is not sent in a
/// second statement beside it, but after it. Every renewal then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_that_pile_up_leave_acquires_a_connection_and_never_run_a_lease_twice() {
    let case = "pileup";
    let t = table("b", case);
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
    let t = table("b", case);
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
    let t = table("b", case);
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
    let t = table("b", case);
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
    // With sessions every lease's expiry is its session's: the order in which the
    // renewals were served shows in the order their first renewals attached the rows.
    db.batch_execute(&format!(
        "CREATE TABLE {t}_served (n BIGSERIAL, key TEXT);
         CREATE FUNCTION {t}_served() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO {t}_served (key) VALUES (NEW.key); RETURN NEW; END $$;
         CREATE TRIGGER {t}_served AFTER UPDATE OF session ON {t}
         FOR EACH ROW WHEN (NEW.session IS NOT NULL) EXECUTE FUNCTION {t}_served();"
    ))
    .await
    .unwrap();
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
    db.query(&format!("SELECT key FROM {t}_served ORDER BY n"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.get::<_, String>(0)
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
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
