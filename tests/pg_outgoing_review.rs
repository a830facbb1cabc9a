//! Adversarial review of 71d49ba (a session's renewal statement takes out the leases
//! this backend let go of: `Sessions::outgoing`, `renewals::Outgoing`, `gone` in
//! `sql.rs`): races between a leave owed to a session and the same lease renewed again
//! through this backend (a re-attach, `AcquireOptions::resume`).
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leases::backend::{AcquireOutcome, Backend, PostgresBackend, PostgresOptions, RenewOutcome};
use leases::Key;
use support::pg::{connect, grant, session_of, shared_url, table, with_app};
use tokio::time::Instant;
use tokio_postgres::Client;

const TTL: Duration = Duration::from_secs(6);
/// The manager's default safety margin (TTL / 5).
const MARGIN: Duration = Duration::from_millis(1200);
const STATEMENT_TIMEOUT: Duration = Duration::from_millis(2500);

/// A backend on table `t` whose connections are named `app`, with a short statement
/// timeout (so that a leave waiting on a row lock fails) and room for several
/// renewal statements at once.
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

/// Waits until at least `n` session renewal statements (`WITH cand AS ...`)
/// of connections named `app` wait on a lock. (A leave that timed out
/// may still show as waiting for a moment: it is not counted.)
async fn waiting_locks(db: &Client, app: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = $1 AND wait_event_type = 'Lock'
                    AND query LIKE 'WITH cand AS%'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} lock waits, expected {n}"
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

/// Common start: `left` granted and renewed by `a` (attached to its session), then a
/// leave of it that fails (its row held by another transaction, the statement times
/// out), so the leave is owed to the session. Returns the session.
async fn owe_a_leave(
    url: &str,
    t: &str,
    db: &Client,
    a: &PostgresBackend,
    left: &Key,
) -> (u64, i64) {
    let tl = grant(a, left, TTL).await;
    assert_eq!(a.renew(left, tl, TTL).await.unwrap(), RenewOutcome::Renewed);
    let s = session_of(db, t, left).await.expect("attached");
    let locker = lock_row(url, t, left).await;
    assert!(a.leave(left, tl).await.is_err(), "the leave times out");
    locker.batch_execute("ROLLBACK").await.unwrap();
    (tl, s)
}

/// Attacks `gone` against a re-attach that overtakes it: a leave of `left` failed and
/// is owed; a renewal statement of the session (for a new lease `block`, whose row
/// another transaction holds, so it waits in `locked`) takes the owed leave with it.
/// While it waits, `left` is renewed again through the same backend (a resume: the
/// holder that let go, or the one it handed over to in the same process) and answered
/// Renewed. When the first statement gets its locks it finds `left` attached to the
/// session (READ COMMITTED re-check on the newest row version) and `gone` detaches it
/// with the expiry promised *before* the leave, earlier than what the resumed holder
/// was just promised (guarantee 1: another backend takes the key before that holder's
/// deadline; guarantee 3: the holder is not told).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_leave_in_flight_does_not_take_out_a_lease_resumed_meanwhile() {
    let url = shared_url();
    let t = table("outrev", "inflight");
    let app = format!("outrev_inflight_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "outrev_other").await;
    let db = connect(&url).await;
    // `block` sorts before `left`: the statement waits on `block` holding nothing else.
    let (block, left) = (
        Key::system(["outrev", "a-block"]),
        Key::system(["outrev", "b-left"]),
    );
    let (tl, s) = owe_a_leave(&url, &t, &db, &a, &left).await;
    let tb = grant(&a, &block, TTL).await;
    let locker = lock_row(&url, &t, &block).await;
    let first = {
        let (a, block) = (a.clone(), block.clone());
        tokio::spawn(async move { a.renew(&block, tb, TTL).await })
    };
    waiting_locks(&db, &app, 1).await;
    // The resume of `left`: answered Renewed, its holder's deadline counts from here.
    let start = Instant::now();
    assert_eq!(
        a.renew(&left, tl, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let promised = effective_expiry(&db, &t, &left).await;
    assert_eq!(session_of(&db, &t, &left).await, Some(s));
    locker.batch_execute("ROLLBACK").await.unwrap();
    let first = first.await.unwrap();
    eprintln!(
        "first statement: {first:?}; left now in {:?} until {:?} (promised {promised:?})",
        session_of(&db, &t, &left).await,
        effective_expiry(&db, &t, &left).await
    );
    let now_expiry = effective_expiry(&db, &t, &left).await;
    let stolen = granted_before(&b, &left, start + TTL - MARGIN).await;
    assert!(
        now_expiry >= promised && stolen.is_none(),
        "the resumed lease was promised {promised:?} but now expires at {now_expiry:?} \
         (session {:?}); another backend took it {stolen:?} before its holder's deadline",
        session_of(&db, &t, &left).await
    );
}

/// Attacks the re-owing on failure (`Outgoing`'s Drop -> `leave_later`): a statement
/// carrying an owed leave of `left` fails (it waits on a row another transaction holds
/// and times out); while it waits, `left` is renewed again through the same backend
/// (its `mode` finds no owed leave to cancel: the failing statement has it) and
/// answered Renewed. The failed statement then owes the leave again, and the next
/// renewal of the session for an unrelated lease takes `left` out with the expiry
/// promised before the leave, while its resumed holder was promised more (guarantees
/// 1 and 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_does_not_owe_again_a_leave_of_a_lease_resumed_meanwhile() {
    let url = shared_url();
    let t = table("outrev", "reowed");
    let app = format!("outrev_reowed_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "outrev_other").await;
    let db = connect(&url).await;
    let (block, left, other) = (
        Key::system(["outrev", "a-block"]),
        Key::system(["outrev", "b-left"]),
        Key::system(["outrev", "c-other"]),
    );
    let to = grant(&a, &other, TTL).await;
    assert_eq!(
        a.renew(&other, to, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let (tl, s) = owe_a_leave(&url, &t, &db, &a, &left).await;
    let tb = grant(&a, &block, TTL).await;
    let locker = lock_row(&url, &t, &block).await;
    let first = {
        let (a, block) = (a.clone(), block.clone());
        tokio::spawn(async move { a.renew(&block, tb, TTL).await })
    };
    waiting_locks(&db, &app, 1).await;
    let start = Instant::now();
    assert_eq!(
        a.renew(&left, tl, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let promised = effective_expiry(&db, &t, &left).await;
    assert_eq!(session_of(&db, &t, &left).await, Some(s));
    assert!(
        first.await.unwrap().is_err(),
        "the statement waiting on `block` times out"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The session's next renewal, for another lease.
    assert_eq!(
        a.renew(&other, to, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let now_expiry = effective_expiry(&db, &t, &left).await;
    let stolen = granted_before(&b, &left, start + TTL - MARGIN).await;
    assert!(
        now_expiry >= promised && stolen.is_none(),
        "the resumed lease was promised {promised:?} but now expires at {now_expiry:?} \
         (session {:?}); another backend took it {stolen:?} before its holder's deadline",
        session_of(&db, &t, &left).await
    );
}

/// Attacks liveness (guarantee 4) when an owed leave's row changes while the statement
/// carrying it waits for its row locks: `locked` (READ COMMITTED re-check of the join
/// with `cand`) drops a row updated after the statement's snapshot, so `gone` does not
/// take it out, yet the statement answers and the leave is no longer owed. Here the
/// change is a revoke of the lease its holder has already left: the row stays in the
/// session, and only the next renewal's `detach` takes it out, with one more TTL from
/// then. The key must be free again within TTL + statement timeout of the leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_leave_of_a_lease_revoked_meanwhile_is_not_dropped() {
    let url = shared_url();
    let t = table("outrev", "revoked");
    let app = format!("outrev_revoked_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "outrev_other").await;
    let db = connect(&url).await;
    let (block, left, other) = (
        Key::system(["outrev", "a-block"]),
        Key::system(["outrev", "b-left"]),
        Key::system(["outrev", "c-other"]),
    );
    let to = grant(&a, &other, TTL).await;
    assert_eq!(
        a.renew(&other, to, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    // The holder of `left` ends here: its leave is sent (and fails).
    let ended = Instant::now();
    let (_tl, s) = owe_a_leave(&url, &t, &db, &a, &left).await;
    let tb = grant(&a, &block, TTL).await;
    let locker = lock_row(&url, &t, &block).await;
    let first = {
        let (a, block) = (a.clone(), block.clone());
        tokio::spawn(async move { a.renew(&block, tb, TTL).await })
    };
    waiting_locks(&db, &app, 1).await;
    // An operator revokes the key (its holder has already left it).
    assert!(b.revoke(&left).await.unwrap().is_some());
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        first.await.unwrap().is_ok(),
        "the statement carrying the leave ran"
    );
    let after_first = session_of(&db, &t, &left).await;
    eprintln!(
        "after the first statement: session {after_first:?}, expires {:?}, ended {:?} ago",
        effective_expiry(&db, &t, &left).await,
        ended.elapsed()
    );
    // The backend goes on renewing its session (every TTL / 3, as the manager does)
    // while another backend waits for the key.
    let bound = ended + TTL + STATEMENT_TIMEOUT + Duration::from_millis(300);
    let mut next_renewal = Instant::now() + TTL / 3;
    let freed = loop {
        if let AcquireOutcome::Granted { .. } = b.acquire(&left, TTL, b"").await.unwrap() {
            break ended.elapsed();
        }
        if Instant::now() >= next_renewal {
            assert_eq!(
                a.renew(&other, to, TTL).await.unwrap(),
                RenewOutcome::Renewed
            );
            next_renewal += TTL / 3;
        }
        assert!(
            Instant::now() < ended + 4 * TTL,
            "`left` never freed (session {:?})",
            session_of(&db, &t, &left).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("freed after {freed:?}");
    assert!(
        ended + freed <= bound,
        "`left` (left at 0 s, its leave owed to session {s}, still in {after_first:?} after \
         the statement that carried it) was free again only {freed:?} later, past TTL + \
         statement timeout ({:?})",
        TTL + STATEMENT_TIMEOUT
    );
}

/// The same attack as `a_failed_statement_does_not_owe_again_a_leave_of_a_lease_resumed_meanwhile`,
/// through group rounds (`renew_many`, `session_round`): the round that carries the
/// owed leave fails while `left` is resumed, and the next round (of another lease only)
/// takes the resumed lease out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_round_does_not_owe_again_a_leave_of_a_lease_resumed_meanwhile() {
    let url = shared_url();
    let t = table("outrev", "reowed_round");
    let app = format!("outrev_reowed_round_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "outrev_other").await;
    let db = connect(&url).await;
    let (block, left, other) = (
        Key::system(["outrev", "a-block"]),
        Key::system(["outrev", "b-left"]),
        Key::system(["outrev", "c-other"]),
    );
    let to = grant(&a, &other, TTL).await;
    assert_eq!(
        a.renew(&other, to, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let (tl, s) = owe_a_leave(&url, &t, &db, &a, &left).await;
    let tb = grant(&a, &block, TTL).await;
    let locker = lock_row(&url, &t, &block).await;
    let first = {
        let (a, block) = (a.clone(), block.clone());
        tokio::spawn(async move { a.renew_many(&[(block, tb)], TTL).await })
    };
    waiting_locks(&db, &app, 1).await;
    let start = Instant::now();
    assert_eq!(
        a.renew(&left, tl, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let promised = effective_expiry(&db, &t, &left).await;
    assert_eq!(session_of(&db, &t, &left).await, Some(s));
    let first = first.await.unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The session's next round, for another lease.
    let next = a.renew_many(&[(other.clone(), to)], TTL).await;
    assert!(matches!(next[..], [Ok(RenewOutcome::Renewed)]), "{next:?}");
    let now_expiry = effective_expiry(&db, &t, &left).await;
    let stolen = granted_before(&b, &left, start + TTL - MARGIN).await;
    assert!(
        now_expiry >= promised && stolen.is_none(),
        "the resumed lease was promised {promised:?} but now expires at {now_expiry:?} \
         (session {:?}; the round waiting on `block` answered {first:?}); another \
         backend took it {stolen:?} before its holder's deadline",
        session_of(&db, &t, &left).await
    );
}

/// Waits until no statement of connections named `app` waits on a lock (a leave that
/// timed out may still show as waiting for a moment).
async fn no_lock_waits(db: &Client, app: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{waiting} lock waits left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The re-owed leave of a resumed lease again, built so that it can also happen
/// before 71d49ba (where owed leaves went out in a separate sweep statement, at most
/// once per TTL / 3): two leaves are owed (`zero`, `left`); the statement carrying them
/// waits on `zero`'s row (held by another transaction) and times out, while `left` is
/// resumed and answered Renewed; the next renewal of the session, for another lease,
/// after a third of the TTL, takes the resumed `left` out with the expiry promised
/// before its leave (guarantees 1 and 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_take_out_of_two_leaves_does_not_owe_again_a_resumed_one() {
    let url = shared_url();
    let t = table("outrev", "two_owed");
    let app = format!("outrev_two_owed_{}", support::pg::run_id());
    let a = backend(&url, &t, &app).await;
    let b = backend(&url, &t, "outrev_other").await;
    let db = connect(&url).await;
    let (zero, left, other) = (
        Key::system(["outrev", "a-zero"]),
        Key::system(["outrev", "b-left"]),
        Key::system(["outrev", "c-other"]),
    );
    let tz = grant(&a, &zero, TTL).await;
    let tl = grant(&a, &left, TTL).await;
    let to = grant(&a, &other, TTL).await;
    for (k, tk) in [(&zero, tz), (&left, tl), (&other, to)] {
        assert_eq!(a.renew(k, tk, TTL).await.unwrap(), RenewOutcome::Renewed);
    }
    let s = session_of(&db, &t, &left).await.expect("attached");
    // Both leaves fail (their rows held by another transaction).
    let locker = lock_row(&url, &t, &zero).await;
    locker
        .execute(
            &format!("SELECT 1 FROM {t} WHERE key = $1 FOR UPDATE"),
            &[&left.to_string()],
        )
        .await
        .unwrap();
    let (lz, ll) = tokio::join!(a.leave(&zero, tz), a.leave(&left, tl));
    assert!(lz.is_err() && ll.is_err(), "both leaves time out");
    locker.batch_execute("ROLLBACK").await.unwrap();
    no_lock_waits(&db, &app).await;
    // `zero`'s row is held again: what carries the owed leaves waits on it.
    let locker = lock_row(&url, &t, &zero).await;
    let first = {
        let (a, other) = (a.clone(), other.clone());
        tokio::spawn(async move { a.renew(&other, to, TTL).await })
    };
    let waits = Instant::now() + Duration::from_secs(5);
    while db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = $1 AND wait_event_type = 'Lock'",
            &[&app],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 1
    {
        assert!(Instant::now() < waits, "nothing waits on `zero`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    // The resume is sent while the statement carrying the leaves waits; `zero`'s row is
    // let go once that statement has failed (a backend that waits for its own exits
    // before a re-attach sends the resume's statement only then, and it carries `zero`
    // again: with the row still held it would time out too).
    let resume = {
        let (a, left) = (a.clone(), left.clone());
        tokio::spawn(async move { a.renew(&left, tl, TTL).await })
    };
    let first = first.await.unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    let resumed = resume.await.unwrap().unwrap();
    assert_eq!(resumed, RenewOutcome::Renewed);
    let promised = effective_expiry(&db, &t, &left).await;
    assert_eq!(session_of(&db, &t, &left).await, Some(s));
    // The session's next renewal for another lease, a third of the TTL after the
    // statement that carried the leaves was sent.
    tokio::time::sleep((start + TTL / 3).saturating_duration_since(Instant::now())).await;
    assert_eq!(
        a.renew(&other, to, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let now_expiry = effective_expiry(&db, &t, &left).await;
    let stolen = granted_before(&b, &left, start + TTL - MARGIN).await;
    assert!(
        now_expiry >= promised && stolen.is_none(),
        "the resumed lease was promised {promised:?} but now expires at {now_expiry:?} \
         (session {:?}; the statement waiting on `zero` answered {first:?}); another \
         backend took it {stolen:?} before its holder's deadline",
        session_of(&db, &t, &left).await
    );
}
