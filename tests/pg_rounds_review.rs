//! Adversarial review of PostgreSQL group rounds (`renew_many`, branch `pgfast`): races
//! that the count argument of `src/backend/postgres/rounds.rs` does not cover.
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend, PostgresBackend, PostgresOptions, RenewOutcome};
use leases::Key;
use support::pg::{
    connect, grant, hold_session, rounds_backend as backend, session_of, shared_url, table,
    with_app,
};
use tokio::time::Instant;
use tokio_postgres::Client;

const TTL: Duration = Duration::from_secs(3);
/// The manager's default safety margin (TTL / 5).
const MARGIN: Duration = Duration::from_millis(600);

/// One group round of `leases`: each outcome (errors fail the test).
async fn round(b: &PostgresBackend, leases: &[(Key, u64)]) -> Vec<RenewOutcome> {
    support::pg::round(b, leases, TTL).await
}

/// `n` leases granted by `b` and renewed once (so attached to its session).
async fn held(b: &PostgresBackend, name: &str, n: usize) -> Vec<(Key, u64)> {
    support::pg::held_in_session(b, "rounds-review", name, n, TTL).await
}

/// Waits until at least `n` statements of connections named `app` wait on a lock.
async fn waiting_locks(db: &Client, app: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(4);
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

/// After a round confirmed `key` (held with `token`) at `start`, its holder may act
/// until `start + TTL - MARGIN`: tries to take the key through `other` until then, and
/// returns how long after `start` it was granted, if it was.
async fn granted_before_deadline(
    other: &PostgresBackend,
    key: &Key,
    start: Instant,
) -> Option<Duration> {
    let deadline = start + TTL - MARGIN;
    while Instant::now() < deadline {
        if let AcquireOutcome::Granted { .. } = other.acquire(key, TTL, b"").await.unwrap() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// FINDING 1: a revoked lease confirmed `Renewed` by a group round, and then granted
/// to someone else before the deadline that confirmation gave its holder.
///
/// The round counts the session's rows on its snapshot, revoked ones included, and
/// trusts that its own `detach` takes every revoked row it counted out of the session
/// (and names it, kind 6). But `detach` judges the rows `locked` returns, i.e. their
/// *newest* versions: when another renewal statement of the same session (here the
/// batcher's per-lease statement for another lease; every `session_renew` and
/// `session_round` detaches all the session's revoked rows) locked the revoked row
/// first and detaches it after the round's snapshot, the round's `detach` finds it no
/// longer in the session and names nothing, while its count (old snapshot) still
/// includes it. The count equals K, nothing is detached "for" the member, so the
/// revoked member is answered `Renewed`. The per-lease statement would have answered
/// `Revoked` (its `members` read the revoked flag on the snapshot).
///
/// Worse, the row the other statement detached keeps the expiry *that* statement read
/// (its start + TTL): the key can be granted elsewhere at about that instant, while the
/// holder, confirmed by the round that started later, acts until round start + TTL −
/// margin. Here the other statement waits 1.5 s on the session row (any concurrent
/// acquire `FOR SHARE` or renewal does this in production), so the key is granted to
/// backend `b` about 1.5 s after the round started, with the holder's deadline at
/// 2.4 s: two holders for ~0.9 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_detached_by_a_concurrent_renewal_is_not_confirmed_by_a_round() {
    let url = shared_url();
    let t = table("roundsrev", "revdetach");
    let app = format!("{t}_a");
    let (a, b) = (
        backend(&with_app(&url, &app), &t).await,
        backend(&url, &t).await,
    );
    let db = connect(&url).await;
    let leases = held(&a, "revdetach", 3).await;
    let s = session_of(&db, &t, &leases[0].0).await.unwrap();
    // An operator revokes lease 0.
    assert_eq!(b.revoke(&leases[0].0).await.unwrap(), Some(leases[0].1));
    // A per-lease renewal of lease 2 (any renewal statement of the session) locks the
    // session's revoked row, lease 0, then waits on the session row.
    let holder = hold_session(&url, &t, s).await;
    let single = {
        let (a, key, token) = (a.clone(), leases[2].0.clone(), leases[2].1);
        tokio::spawn(async move { a.renew(&key, token, TTL).await })
    };
    waiting_locks(&db, &app, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The group round starts now: its snapshot sees lease 0 revoked in the session; it
    // waits for lease 0's row lock.
    let start = Instant::now();
    let renewing = {
        let (a, leases) = (a.clone(), leases.clone());
        tokio::spawn(async move { round(&a, &leases).await })
    };
    waiting_locks(&db, &app, 2).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let single = single.await.unwrap().unwrap();
    assert_eq!(single, RenewOutcome::Renewed);
    let outcomes = renewing.await.unwrap();
    if outcomes[0] == RenewOutcome::Renewed {
        let taken = granted_before_deadline(&b, &leases[0].0, start).await;
        panic!(
            "a revoked lease was confirmed Renewed by a group round started at {start:?} \
             (outcomes {outcomes:?}); its holder may act until +{:?}; another backend was \
             granted the key at {taken:?} after the round started",
            TTL - MARGIN
        );
    }
    assert_eq!(outcomes[0], RenewOutcome::Revoked);
}

/// FINDING 1, second trigger: the statement that detaches the revoked row first is
/// another *group round* of the same session (a second manager, or a second TTL group
/// rounding to the same milliseconds, on one backend object; or a round whose future
/// the manager dropped at its bound and that still runs in its task). That round names
/// the revoked row (kind 6) and, as it is not one of its leases, forgets it; the round
/// of the lease's own group, whose snapshot still saw it in the session, answers it
/// `Renewed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_detached_by_another_group_round_is_not_confirmed() {
    let url = shared_url();
    let t = table("roundsrev", "revround");
    let app = format!("{t}_a");
    let (a, b) = (
        backend(&with_app(&url, &app), &t).await,
        backend(&url, &t).await,
    );
    let db = connect(&url).await;
    let leases = held(&a, "revround", 3).await;
    let s = session_of(&db, &t, &leases[0].0).await.unwrap();
    assert_eq!(b.revoke(&leases[0].0).await.unwrap(), Some(leases[0].1));
    let holder = hold_session(&url, &t, s).await;
    // The other group (lease 2 only) locks the revoked row and waits on the session.
    let other = {
        let (a, mine) = (a.clone(), vec![leases[2].clone()]);
        tokio::spawn(async move { round(&a, &mine).await })
    };
    waiting_locks(&db, &app, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Lease 0's group (leases 0 and 1).
    let start = Instant::now();
    let renewing = {
        let (a, mine) = (a.clone(), leases[..2].to_vec());
        tokio::spawn(async move { round(&a, &mine).await })
    };
    waiting_locks(&db, &app, 2).await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(other.await.unwrap(), vec![RenewOutcome::Renewed]);
    let outcomes = renewing.await.unwrap();
    if outcomes[0] == RenewOutcome::Renewed {
        let taken = granted_before_deadline(&b, &leases[0].0, start).await;
        panic!(
            "a revoked lease was confirmed Renewed by its group's round (outcomes \
             {outcomes:?}); its holder may act until +{:?}; another backend was granted \
             the key at {taken:?} after the round started",
            TTL - MARGIN
        );
    }
    assert_eq!(outcomes[0], RenewOutcome::Revoked);
}

/// PROBE (held): a table without the new partial index `<table>_session` (made by the
/// previous version, used by a backend with `create_schema(false)`): rounds are still
/// right (a lease released elsewhere is Lost, the others Renewed), the count only goes
/// without its index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_a_table_without_the_session_index_still_reports_a_release() {
    let url = shared_url();
    let t = table("roundsrev", "noindex");
    let (made, b) = (backend(&url, &t).await, backend(&url, &t).await);
    b.check().await.unwrap();
    made.check().await.unwrap();
    let db = connect(&url).await;
    db.batch_execute(&format!("DROP INDEX {t}_session"))
        .await
        .unwrap();
    let a = Arc::new(
        PostgresBackend::connect(
            PostgresOptions::new(&url)
                .table(&t)
                .renew_batch_size(10)
                .create_schema(false),
        )
        .await
        .unwrap(),
    );
    let leases = held(&a, "noindex", 4).await;
    assert!(b.release(&leases[1].0, leases[1].1).await.unwrap());
    let outcomes = round(&a, &leases).await;
    assert_eq!(
        outcomes,
        vec![
            RenewOutcome::Renewed,
            RenewOutcome::Lost,
            RenewOutcome::Renewed,
            RenewOutcome::Renewed
        ]
    );
}

/// PROBE (held): a revoked lease of one group, detached (and forgotten) by another
/// group's round of the same session with no race: its own group's next round answers
/// it Revoked, and it is not kept in the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_a_revoked_lease_detached_by_another_group_is_revoked_at_its_own_round() {
    let url = shared_url();
    let t = table("roundsrev", "revseq");
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let db = connect(&url).await;
    let leases = held(&a, "revseq", 3).await;
    assert_eq!(b.revoke(&leases[0].0).await.unwrap(), Some(leases[0].1));
    assert_eq!(round(&a, &leases[2..]).await, vec![RenewOutcome::Renewed]);
    assert_eq!(session_of(&db, &t, &leases[0].0).await, None);
    assert_eq!(
        round(&a, &leases[..2]).await,
        vec![RenewOutcome::Revoked, RenewOutcome::Renewed]
    );
}

/// PROBE (held): a lease re-attached *into* this backend's session by a resume on the
/// same backend (from another backend's session) while a member was released
/// elsewhere: the count is K again, but the re-attached lease is counted as a member
/// (answered before the round) and the released one is Lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_a_resume_into_the_session_does_not_hide_a_release() {
    let url = shared_url();
    let t = table("roundsrev", "resume");
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let leases = held(&a, "resume", 3).await;
    let theirs = {
        let key = Key::system(["rounds-review", "resume", "theirs"]);
        let token = grant(&b, &key, TTL).await;
        assert_eq!(
            round(&b, &[(key.clone(), token)]).await,
            vec![RenewOutcome::Renewed]
        );
        (key, token)
    };
    assert!(b.release(&leases[1].0, leases[1].1).await.unwrap());
    // Re-attached here by a resume (one lease, per-lease), not one of the group's.
    assert_eq!(
        a.renew(&theirs.0, theirs.1, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let outcomes = round(&a, &leases).await;
    assert_eq!(
        outcomes,
        vec![
            RenewOutcome::Renewed,
            RenewOutcome::Lost,
            RenewOutcome::Renewed
        ]
    );
}
