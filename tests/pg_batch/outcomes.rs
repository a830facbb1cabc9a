//! What one batch tells each lease: its own outcome; a statement that fails or times
//! out fails all its leases and renews none; a renewer that gives up leaves nothing
//! behind.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, PostgresBackend, RenewOutcome};
use leases::{CancelReason, Key, LossCause};

use crate::setup::{options, renew_all, rows, tagged};
use crate::support::pg::{connect, grant, manager, shared_url, table};

/// In one batch, a revoked lease is told `Revoked`, a taken-over, a released and an
/// expired lease are told `Lost`, and every other lease is renewed, by that one
/// statement (they all get the same new expiry, the transaction's `now()` + TTL).
/// Nothing else changes: the new holder's lease and the revoked one are not extended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_tells_each_lease_its_own_outcome() {
    let case = "outcomes";
    let t = table("b", case);
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
    let t = table("b", case);
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

/// Through the manager: of leases held together (so renewed in shared statements), the
/// one revoked and the one taken over (its row's token replaced, as a new holder's
/// would be) are told `Revoked` and `Lost` at their next renewal; the rest stay live
/// over several more renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_of_one_batch_are_told_exactly_their_own_loss() {
    let case = "manager";
    let t = table("b", case);
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
    let t = table("b", case);
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
