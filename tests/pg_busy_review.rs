//! Adversarial review of caf2036 (`State.exits`, `Mode::Busy`, kind 7 `missed`): can a
//! renewal of a lease slip past a statement of this backend that takes the same lease
//! out of its session, so its holder is told Renewed and the lease then ends earlier
//! than promised? Does an exit that ended leave the lease renewable again?
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leases::backend::{AcquireOutcome, Backend, PostgresBackend, PostgresOptions, RenewOutcome};
use leases::Key;
use support::pg::{connect, grant, hold_session, session_of, shared_url, table, with_app};
use tokio::time::Instant;
use tokio_postgres::Client;

const TTL: Duration = Duration::from_secs(6);
/// The manager's default safety margin (TTL / 5).
const MARGIN: Duration = Duration::from_millis(1200);
const STATEMENT_TIMEOUT: Duration = Duration::from_millis(2500);

async fn backend(url: &str, t: &str, app: &str) -> Arc<PostgresBackend> {
    let options = PostgresOptions::new(with_app(url, app))
        .table(t)
        .statement_timeout(STATEMENT_TIMEOUT)
        .pool_size(8);
    Arc::new(PostgresBackend::connect(options).await.unwrap())
}

/// The expiry of `key`'s row as acquire judges it (its session's when attached).
async fn effective_expiry(db: &Client, t: &str, key: &Key) -> SystemTime {
    db.query_one(
        &format!(
            "SELECT CASE WHEN l.session IS NOT NULL AND l.expires_at = 'infinity'
                    THEN s.expires_at ELSE l.expires_at END
             FROM {t} l LEFT JOIN {t}_sessions s ON s.id = l.session WHERE l.key = $1"
        ),
        &[&key.to_string()],
    )
    .await
    .unwrap()
    .get(0)
}

/// A transaction on a connection of its own holding `key`'s row (`FOR UPDATE`) until
/// the caller sends `ROLLBACK`.
async fn lock_row(url: &str, t: &str, key: &Key) -> Client {
    let locker = connect(url).await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .execute(
            &format!("SELECT 1 FROM {t} WHERE key = $1 FOR UPDATE"),
            &[&key.to_string()],
        )
        .await
        .unwrap();
    locker
}

/// Waits until at least `n` statements starting with `prefix` of connections named
/// `app` wait on a lock.
async fn waiting(db: &Client, app: &str, prefix: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = $1 AND wait_event_type = 'Lock'
                    AND query LIKE $2",
                &[&app, &format!("{prefix}%")],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} lock waits on {prefix}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tries to take `key` through `other` until `deadline` (the holder's local deadline):
/// how long before that deadline it was granted, if it was.
async fn granted_before(other: &PostgresBackend, key: &Key, deadline: Instant) -> Option<Duration> {
    while Instant::now() + Duration::from_millis(50) < deadline {
        if let AcquireOutcome::Granted { .. } = other.acquire(key, TTL, b"").await.unwrap() {
            return Some(deadline - Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Attacks the gap between `mode()` and an exit beginning: a renewal of an attached
/// lease (a member: the resume of a handed-over lease on the same server, which finds
/// no hold listed and renews through the backend) is in flight, waiting on the session
/// row, when a leave of the same `(key, token)` begins (the old stream's `Hold` dropped
/// after its listing: `Hold::drop` -> `leave`). The leave waits on the session row too
/// (`FOR SHARE` in its sub-select). The renewal commits first and answers Renewed (its
/// snapshot predates the leave); the leave then detaches the row with the expiry
/// promised *before* the renewal. The holder told Renewed has a deadline (start of that
/// renewal + TTL - margin) later than the row's expiry: another backend can take the
/// key before it (guarantee 1), and the holder is never told (guarantee 3). `Busy` only
/// guards renewals that *start* while an exit is in flight.
///
/// Reachability through the manager (not shown here): `on_leave` ends the holder in the
/// table and spawns the leave in the same step, and a resume is refused (`Conflict`)
/// while the old holder is in the table, so the resume's renewal reads its mode before
/// the leave's `forget_exiting` only if the spawned leave task has not been polled by
/// then (after the resume's `info` round trip and the batch window): a scheduling race.
/// Directly on the `Backend` (any caller that leaves a lease with a renewal of it in
/// flight) it is deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_begun_while_a_renewal_is_in_flight_does_not_cut_short_what_it_promised() {
    let url = shared_url();
    let t = table("busyrev", "inflight");
    let app = format!("busyrev_inflight_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "busyrev_other").await;
    let db = connect(&url).await;
    let key = Key::system(["busyrev", "inflight"]);
    let token = grant(&a, &key, TTL).await;
    assert_eq!(
        a.renew(&key, token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let s = session_of(&db, &t, &key).await.expect("attached");
    // Far enough from the last confirmed renewal that its expiry is earlier than the
    // next renewal's deadline by more than the scheduling noise.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let holder = hold_session(&url, &t, s).await;
    let start = Instant::now();
    let renewal = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.renew(&key, token, TTL).await })
    };
    waiting(&db, &app, "WITH cand AS", 1).await;
    let leave = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.leave(&key, token).await })
    };
    waiting(&db, &app, "UPDATE", 1).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let renewed = renewal.await.unwrap();
    let left = leave.await.unwrap();
    eprintln!("renewal: {renewed:?}, leave: {left:?}");
    if renewed.as_ref().ok() != Some(&RenewOutcome::Renewed) {
        // Not promised anything: nothing to break.
        return;
    }
    let deadline = start + TTL - MARGIN;
    let expiry = effective_expiry(&db, &t, &key).await;
    let now = SystemTime::now();
    eprintln!(
        "row expires in {:?}, holder's deadline in {:?}",
        expiry.duration_since(now).unwrap_or_default(),
        deadline - Instant::now()
    );
    let early = granted_before(&b, &key, deadline).await;
    assert!(
        early.is_none(),
        "the holder told Renewed is still within its deadline ({:?} left) when another \
         backend is granted the key",
        early.unwrap()
    );
}

/// Attacks the wait in `renew` (`Sessions::exits_ended`) and the `exits` count: a
/// leave waits on the lease's row (held by another transaction) for a second, within
/// the statement timeout; a resume of the same lease through the same backend comes in
/// meanwhile. It must wait for the leave, then re-attach (Renewed), and stay
/// protected until its deadline: no other backend takes the key before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_behind_a_slow_leave_waits_and_stays_held() {
    let url = shared_url();
    let t = table("busyrev", "slowleave");
    let app = format!("busyrev_slowleave_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "busyrev_other").await;
    let db = connect(&url).await;
    let key = Key::system(["busyrev", "slowleave"]);
    let token = grant(&a, &key, TTL).await;
    assert_eq!(
        a.renew(&key, token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let locker = lock_row(&url, &t, &key).await;
    let leave = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.leave(&key, token).await })
    };
    waiting(&db, &app, "UPDATE", 1).await;
    let start = Instant::now();
    let resume = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.renew(&key, token, TTL).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    leave.await.unwrap().unwrap();
    let resumed = resume.await.unwrap();
    eprintln!("resume: {resumed:?} after {:?}", start.elapsed());
    assert_eq!(resumed.unwrap(), RenewOutcome::Renewed);
    let deadline = start + TTL - MARGIN;
    let early = granted_before(&b, &key, deadline).await;
    assert!(
        early.is_none(),
        "granted to another backend {:?} before the resumed holder's deadline",
        early.unwrap()
    );
}

/// Attacks a leak of the `exits` count: a leave that fails (its row held past the
/// statement timeout) must not leave the lease `Busy` for ever. The same lease renewed
/// again through the backend afterwards is Renewed (a re-attach that also drops the
/// owed leave), at once and not with `Unavailable`, and stays held until its deadline;
/// later renewals keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leave_does_not_leave_the_lease_busy() {
    let url = shared_url();
    let t = table("busyrev", "failedleave");
    let app = format!("busyrev_failedleave_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "busyrev_other").await;
    let key = Key::system(["busyrev", "failedleave"]);
    let token = grant(&a, &key, TTL).await;
    assert_eq!(
        a.renew(&key, token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let locker = lock_row(&url, &t, &key).await;
    assert!(a.leave(&key, token).await.is_err(), "the leave times out");
    locker.batch_execute("ROLLBACK").await.unwrap();
    let start = Instant::now();
    assert_eq!(
        a.renew(&key, token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the renewal waited {:?}",
        start.elapsed()
    );
    let mut deadline = start + TTL - MARGIN;
    for _ in 0..3 {
        let early = granted_before(&b, &key, Instant::now() + Duration::from_secs(2)).await;
        assert!(early.is_none(), "granted to another backend");
        let at = Instant::now();
        assert_eq!(
            a.renew(&key, token, TTL).await.unwrap(),
            RenewOutcome::Renewed
        );
        deadline = at + TTL - MARGIN;
    }
    let early = granted_before(&b, &key, deadline).await;
    assert!(early.is_none(), "granted before the deadline");
}

/// Attacks `Busy` in a group round (rounds.rs count proof): a round over two attached
/// leases, one of which a leave (waiting on its row, held by another transaction) is
/// taking out. The busy one must be answered `Unavailable`, the other Renewed, and the
/// round's count must not mistake the exiting lease for a lost member: after the leave,
/// the other lease stays renewed by rounds and no other backend takes it before its
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_round_beside_a_leave_in_flight_answers_busy_and_keeps_the_rest() {
    let url = shared_url();
    let t = table("busyrev", "round");
    let app = format!("busyrev_round_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "busyrev_other").await;
    let db = connect(&url).await;
    let one = Key::system(["busyrev", "round", "1"]);
    let two = Key::system(["busyrev", "round", "2"]);
    let t1 = grant(&a, &one, TTL).await;
    let t2 = grant(&a, &two, TTL).await;
    let both = vec![(one.clone(), t1), (two.clone(), t2)];
    for r in a.renew_many(&both, TTL).await {
        assert_eq!(r.unwrap(), RenewOutcome::Renewed);
    }
    let locker = lock_row(&url, &t, &one).await;
    let leave = {
        let (a, key) = (a.clone(), one.clone());
        tokio::spawn(async move { a.leave(&key, t1).await })
    };
    waiting(&db, &app, "UPDATE", 1).await;
    // The round's session update waits behind the leave (which holds the session row
    // `FOR SHARE` while it waits for the lease row): the row is let go after a second,
    // well within the statement timeout, and both answer.
    let round = {
        let (a, both) = (a.clone(), both.clone());
        tokio::spawn(async move {
            let at = Instant::now();
            let answers = a.renew_many(&both, TTL).await;
            (answers, at)
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    leave.await.unwrap().unwrap();
    let (answers, at) = round.await.unwrap();
    eprintln!("round beside the leave: {answers:?} in {:?}", at.elapsed());
    assert!(answers[0].is_err(), "the exiting lease is not renewed");
    assert_eq!(answers[1].as_ref().unwrap(), &RenewOutcome::Renewed);
    assert!(
        granted_before(&b, &two, at + TTL - MARGIN - Duration::from_secs(3))
            .await
            .is_none(),
        "the other lease of the round was cut short"
    );
    let mut deadline = Instant::now();
    for _ in 0..3 {
        let at = Instant::now();
        let answers = a.renew_many(&[(two.clone(), t2)], TTL).await;
        assert_eq!(answers[0].as_ref().unwrap(), &RenewOutcome::Renewed);
        deadline = at + TTL - MARGIN;
        assert!(
            granted_before(&b, &two, Instant::now() + Duration::from_secs(1))
                .await
                .is_none()
        );
    }
    assert!(granted_before(&b, &two, deadline).await.is_none());
}

/// Attacks a dropped leave future (the `exits` count ended in `LeaveUnlessDone::drop`
/// while its statement still runs on the server): a leave waits on its lease's row
/// (held by another transaction) and is aborted; the row is let go, so the abandoned
/// statement goes on and commits; the same lease is renewed again through the backend
/// right after the abort (a resume). It must be Renewed only if the abandoned leave
/// cannot then cut it short: no other backend takes the key before the resumed
/// holder's deadline (guarantee 1), and the lease is not left Busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_an_abandoned_leave_is_not_cut_short_by_it() {
    let url = shared_url();
    let t = table("busyrev", "abandoned");
    let app = format!("busyrev_abandoned_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "busyrev_other").await;
    let db = connect(&url).await;
    let key = Key::system(["busyrev", "abandoned"]);
    let token = grant(&a, &key, TTL).await;
    assert_eq!(
        a.renew(&key, token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    // Far from the last confirmed renewal, so that the abandoned leave's expiry is
    // well before a new renewal's deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let locker = lock_row(&url, &t, &key).await;
    let leave = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.leave(&key, token).await })
    };
    waiting(&db, &app, "UPDATE", 1).await;
    leave.abort();
    let _ = leave.await;
    let start = Instant::now();
    let resume = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.renew(&key, token, TTL).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    let resumed = resume.await.unwrap();
    eprintln!("resume: {resumed:?} after {:?}", start.elapsed());
    if resumed.as_ref().ok() != Some(&RenewOutcome::Renewed) {
        return;
    }
    let deadline = start + TTL - MARGIN;
    let early = granted_before(&b, &key, deadline).await;
    assert!(
        early.is_none(),
        "granted to another backend {:?} before the resumed holder's deadline",
        early.unwrap()
    );
}

/// The first probe's gap in a group round (`rounds.rs`: modes are read when the round
/// starts): a round over an attached lease is in flight, waiting on the session row,
/// when a leave of the same lease begins and waits on the session row too. The round
/// commits first and answers Renewed; the leave then detaches the row with the expiry
/// promised before the round: another backend can take the key before the deadline
/// the round gave (guarantee 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_begun_while_a_group_round_is_in_flight_does_not_cut_short_what_it_promised() {
    let url = shared_url();
    let t = table("busyrev", "roundinflight");
    let app = format!("busyrev_roundinflight_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "busyrev_other").await;
    let db = connect(&url).await;
    let key = Key::system(["busyrev", "roundinflight"]);
    let token = grant(&a, &key, TTL).await;
    let lease = vec![(key.clone(), token)];
    assert_eq!(
        a.renew_many(&lease, TTL).await[0].as_ref().unwrap(),
        &RenewOutcome::Renewed
    );
    let s = session_of(&db, &t, &key).await.expect("attached");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let holder = hold_session(&url, &t, s).await;
    let start = Instant::now();
    let round = {
        let (a, lease) = (a.clone(), lease.clone());
        tokio::spawn(async move { a.renew_many(&lease, TTL).await })
    };
    waiting(&db, &app, "WITH cand AS", 1).await;
    let leave = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.leave(&key, token).await })
    };
    waiting(&db, &app, "UPDATE", 1).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let renewed = round.await.unwrap().remove(0);
    let left = leave.await.unwrap();
    eprintln!("round: {renewed:?}, leave: {left:?}");
    if renewed.as_ref().ok() != Some(&RenewOutcome::Renewed) {
        return;
    }
    let deadline = start + TTL - MARGIN;
    let early = granted_before(&b, &key, deadline).await;
    assert!(
        early.is_none(),
        "the holder told Renewed is still within its deadline ({:?} left) when another \
         backend is granted the key",
        early.unwrap()
    );
}
