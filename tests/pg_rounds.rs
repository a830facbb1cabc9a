//! PostgreSQL group rounds (`renew_many`): one statement per session when nothing
//! changed, and each way a lease leaves its session reported at the next round, never
//! confirmed as renewed; rounds racing a revoke, a release and a takeover.
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
};
use tokio_postgres::Client;

const TTL: Duration = Duration::from_secs(3);

/// One group round of `leases`: each outcome (errors fail the test).
async fn round(b: &PostgresBackend, leases: &[(Key, u64)]) -> Vec<RenewOutcome> {
    support::pg::round(b, leases, TTL).await
}

/// `n` leases granted by `b` and renewed once (so attached to its session).
async fn held(b: &PostgresBackend, name: &str, n: usize) -> Vec<(Key, u64)> {
    support::pg::held_in_session(b, "rounds", name, n, TTL).await
}

/// A round of `leases` after one of them left (`gone`): that one is answered `want`,
/// the others renewed; and the round after that is one statement again.
async fn reported(b: &PostgresBackend, leases: &[(Key, u64)], gone: usize, want: RenewOutcome) {
    let outcomes = round(b, leases).await;
    for (i, o) in outcomes.iter().enumerate() {
        if i == gone {
            assert_eq!(*o, want, "the lease that left its session");
        } else {
            assert_eq!(*o, RenewOutcome::Renewed, "lease {i}");
        }
    }
    let rest: Vec<(Key, u64)> = leases
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != gone)
        .map(|(_, l)| l.clone())
        .collect();
    let before = b.renew_statements();
    assert!(round(b, &rest)
        .await
        .iter()
        .all(|o| *o == RenewOutcome::Renewed));
    assert_eq!(
        b.renew_statements() - before,
        1,
        "one statement once settled"
    );
}

/// With nothing changed, a round of 50 leases (five statements' worth at
/// `renew_batch_size(10)`) is one statement, and every lease stays attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_round_is_one_statement() {
    let url = shared_url();
    let t = table("rounds", "one");
    let a = backend(&url, &t).await;
    let db = connect(&url).await;
    let before = a.renew_statements();
    let leases = held(&a, "one", 50).await;
    assert_eq!(a.renew_statements() - before, 5, "the first round attaches");
    for _ in 0..3 {
        let before = a.renew_statements();
        assert!(round(&a, &leases)
            .await
            .iter()
            .all(|o| *o == RenewOutcome::Renewed));
        assert_eq!(a.renew_statements() - before, 1);
    }
    let s = session_of(&db, &t, &leases[0].0).await.unwrap();
    for (key, _) in &leases {
        assert_eq!(session_of(&db, &t, key).await, Some(s));
    }
    // A few new leases join the round: still one statement, and they are attached.
    let mut more = leases.clone();
    for i in 0..3 {
        let key = Key::system(["rounds", "one", "late", &i.to_string()]);
        let token = grant(&a, &key, TTL).await;
        more.push((key, token));
    }
    let before = a.renew_statements();
    assert!(round(&a, &more)
        .await
        .iter()
        .all(|o| *o == RenewOutcome::Renewed));
    assert_eq!(a.renew_statements() - before, 1);
    assert_eq!(session_of(&db, &t, &more[52].0).await, Some(s));
    // This backend's own release and leave keep the count right: still one statement.
    assert!(a.release(&more[0].0, more[0].1).await.unwrap());
    a.leave(&more[1].0, more[1].1).await.unwrap();
    let before = a.renew_statements();
    assert!(round(&a, &more[2..])
        .await
        .iter()
        .all(|o| *o == RenewOutcome::Renewed));
    assert_eq!(a.renew_statements() - before, 1);
}

/// Released through another backend (by key and token): Lost at the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_released_elsewhere_is_lost_at_the_next_round() {
    let url = shared_url();
    let t = table("rounds", "released");
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let leases = held(&a, "released", 5).await;
    assert!(b.release(&leases[2].0, leases[2].1).await.unwrap());
    reported(&a, &leases, 2, RenewOutcome::Lost).await;
}

/// Revoked (by anyone): Revoked at the next round, and out of the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_is_revoked_at_the_next_round() {
    let url = shared_url();
    let t = table("rounds", "revoked");
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let db = connect(&url).await;
    let leases = held(&a, "revoked", 5).await;
    assert_eq!(b.revoke(&leases[1].0).await.unwrap(), Some(leases[1].1));
    reported(&a, &leases, 1, RenewOutcome::Revoked).await;
    assert_eq!(session_of(&db, &t, &leases[1].0).await, None);
}

/// A revoked lease that is not in the round (another group's) is taken out of the
/// session by it, and its own next renewal says Revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_of_another_round_is_revoked_at_its_own() {
    let url = shared_url();
    let t = table("rounds", "other");
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let leases = held(&a, "other", 4).await;
    assert_eq!(b.revoke(&leases[3].0).await.unwrap(), Some(leases[3].1));
    assert!(round(&a, &leases[..3])
        .await
        .iter()
        .all(|o| *o == RenewOutcome::Renewed));
    assert_eq!(round(&a, &leases[3..]).await, vec![RenewOutcome::Revoked]);
}

/// Re-attached by another backend (a client resumed it elsewhere): Lost here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_reattached_elsewhere_is_lost_at_the_next_round() {
    let url = shared_url();
    let t = table("rounds", "moved");
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let db = connect(&url).await;
    let leases = held(&a, "moved", 5).await;
    let sa = session_of(&db, &t, &leases[0].0).await.unwrap();
    assert_eq!(
        b.renew(&leases[4].0, leases[4].1, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let sb = session_of(&db, &t, &leases[4].0).await.unwrap();
    assert_ne!(sa, sb);
    reported(&a, &leases, 4, RenewOutcome::Lost).await;
    assert_eq!(
        session_of(&db, &t, &leases[4].0).await,
        Some(sb),
        "still b's"
    );
}

/// A row deleted by hand, and one an older version renewed (a finite expiry, the
/// session left as it was): each is Lost at the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_changed_by_hand_are_lost_at_the_next_round() {
    let url = shared_url();
    let t = table("rounds", "hand");
    let a = backend(&url, &t).await;
    let db = connect(&url).await;
    let leases = held(&a, "hand", 5).await;
    db.execute(
        &format!("DELETE FROM {t} WHERE key = $1"),
        &[&leases[0].0.to_string()],
    )
    .await
    .unwrap();
    reported(&a, &leases, 0, RenewOutcome::Lost).await;
    let leases = leases[1..].to_vec();
    db.execute(
        &format!("UPDATE {t} SET expires_at = now() + interval '1 minute' WHERE key = $1"),
        &[&leases[3].0.to_string()],
    )
    .await
    .unwrap();
    reported(&a, &leases, 3, RenewOutcome::Lost).await;
}

/// A session that expired (a frozen process) and a lease taken over meanwhile: every
/// lease of the round is Lost, none renewed, and the key stays with its new holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_takeover_the_whole_round_is_lost() {
    let url = shared_url();
    let t = table("rounds", "takeover");
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let db = connect(&url).await;
    let leases = held(&a, "takeover", 3).await;
    let s = session_of(&db, &t, &leases[0].0).await.unwrap();
    db.execute(
        &format!("UPDATE {t}_sessions SET expires_at = now() - interval '1 second' WHERE id = $1"),
        &[&s],
    )
    .await
    .unwrap();
    let taken = match b.acquire(&leases[0].0, TTL, b"").await.unwrap() {
        AcquireOutcome::Granted { token } => token,
        held => panic!("the expired lease should be free: {held:?}"),
    };
    assert!(taken > leases[0].1);
    assert!(round(&a, &leases)
        .await
        .iter()
        .all(|o| *o == RenewOutcome::Lost));
    let info = b.info(&leases[0].0).await.unwrap().unwrap();
    assert_eq!(info.token, taken);
}

/// A round of `n` leases of backend `a`, spawned while its session row `s` is held by
/// `holder` (until it commits), with another backend `b` on table `t`.
struct Race {
    a: Arc<PostgresBackend>,
    b: Arc<PostgresBackend>,
    leases: Vec<(Key, u64)>,
    holder: Client,
    renewing: tokio::task::JoinHandle<Vec<RenewOutcome>>,
    t: String,
    s: i64,
}

async fn race(name: &str, n: usize) -> Race {
    let url = shared_url();
    let t = table("rounds", name);
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let db = connect(&url).await;
    let leases = held(&a, name, n).await;
    let s = session_of(&db, &t, &leases[0].0).await.unwrap();
    let holder = hold_session(&url, &t, s).await;
    let renewing = {
        let (a, leases) = (a.clone(), leases.clone());
        tokio::spawn(async move { round(&a, &leases).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    Race {
        a,
        b,
        leases,
        holder,
        renewing,
        t,
        s,
    }
}

/// A round waiting on its session row while one of its leases is revoked and another
/// released elsewhere: each is answered renewed (the change came after the round's
/// snapshot) or as it ended, never renewed at the round after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_racing_a_revoke_and_a_release() {
    let Race {
        a,
        b,
        leases,
        holder,
        renewing,
        ..
    } = race("race", 4).await;
    assert_eq!(b.revoke(&leases[0].0).await.unwrap(), Some(leases[0].1));
    assert!(b.release(&leases[1].0, leases[1].1).await.unwrap());
    holder.batch_execute("COMMIT").await.unwrap();
    let first = renewing.await.unwrap();
    assert!(matches!(
        first[0],
        RenewOutcome::Renewed | RenewOutcome::Revoked
    ));
    assert!(matches!(
        first[1],
        RenewOutcome::Renewed | RenewOutcome::Lost
    ));
    assert_eq!(&first[2..], &[RenewOutcome::Renewed, RenewOutcome::Renewed]);
    let next = round(&a, &leases).await;
    assert_eq!(next[0], RenewOutcome::Revoked);
    assert_eq!(next[1], RenewOutcome::Lost);
    assert_eq!(&next[2..], &[RenewOutcome::Renewed, RenewOutcome::Renewed]);
}

/// A takeover that waits for a committing round (the session row `FOR SHARE` behind the
/// round's update) sees the extension and takes nothing; a round that comes after the
/// session expired revives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_racing_a_takeover() {
    // The session expires while the round waits for its row: the round's
    // compare-and-set re-checks the newest version and renews nothing.
    let Race {
        b,
        leases,
        holder,
        renewing,
        t,
        s,
        ..
    } = race("taker", 2).await;
    holder
        .execute(
            &format!(
                "UPDATE {t}_sessions SET expires_at = now() - interval '1 second' WHERE id = $1"
            ),
            &[&s],
        )
        .await
        .unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    assert!(renewing
        .await
        .unwrap()
        .iter()
        .all(|o| *o == RenewOutcome::Lost));
    let taken = grant(&b, &leases[0].0, TTL).await;
    assert!(taken > leases[0].1);
    assert!(
        b.info(&leases[1].0).await.unwrap().is_none(),
        "expired with its session"
    );
}

/// A round whose future is dropped mid-statement leaves no lease kept alive for ever:
/// its new leases are either attached (and renewed by the next round) or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_round_leaves_its_bookkeeping_right() {
    let url = shared_url();
    let t = table("rounds", "dropped");
    let a = backend(&url, &t).await;
    let db = connect(&url).await;
    let mut leases = held(&a, "dropped", 3).await;
    let s = session_of(&db, &t, &leases[0].0).await.unwrap();
    let key = Key::system(["rounds", "dropped", "new"]);
    let token = grant(&a, &key, TTL).await;
    leases.push((key.clone(), token));
    let holder = hold_session(&url, &t, s).await;
    // Given up while the statement waits on the session row.
    let cut = tokio::time::timeout(Duration::from_millis(200), round(&a, &leases)).await;
    assert!(cut.is_err());
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        session_of(&db, &t, &key).await,
        Some(s),
        "the attach went through"
    );
    let before = a.renew_statements();
    assert!(round(&a, &leases)
        .await
        .iter()
        .all(|o| *o == RenewOutcome::Renewed));
    assert_eq!(a.renew_statements() - before, 1, "and it is a member here");
    // Nobody renews them any more: they leave the session within about a TTL and
    // then expire, while the session goes on for another lease.
    let other = held(&a, "dropped-other", 1).await;
    let deadline = tokio::time::Instant::now() + TTL * 4;
    loop {
        assert_eq!(round(&a, &other).await, vec![RenewOutcome::Renewed]);
        if a.info(&key).await.unwrap().is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a lease nobody renews was kept alive"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Through a manager, with one lease a statement (`renew_batch_size(1)`): many leases
/// held for several rounds, none lost, and the rounds after the first are one
/// statement each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_keeps_its_leases_through_rounds() {
    let url = shared_url();
    let t = table("rounds", "manager");
    let b = Arc::new(
        PostgresBackend::connect(PostgresOptions::new(&url).table(&t).renew_batch_size(1))
            .await
            .unwrap(),
    );
    let m = leases::LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .backend(b.clone())
        .start()
        .await
        .unwrap();
    let mut held = Vec::new();
    for i in 0..300 {
        let key = Key::system(["rounds", "manager", &i.to_string()]);
        held.push(m.acquire_lease(key, TTL).await.unwrap());
    }
    tokio::time::sleep(TTL * 2).await;
    let before = b.renew_statements();
    tokio::time::sleep(TTL * 2).await;
    let statements = b.renew_statements() - before;
    // Six rounds (every TTL/3), one statement each; a few more if a round's count
    // was taken while another attached.
    assert!(
        statements <= 10,
        "{statements} renewal statements in six rounds"
    );
    let ended: Vec<_> = held
        .iter()
        .filter_map(|(l, ctx)| ctx.reason().map(|r| (l.key().to_string(), r)))
        .collect();
    assert!(ended.is_empty(), "leases ended while held: {ended:?}");
    m.shutdown().await;
}
