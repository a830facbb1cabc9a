//! The resource-side fence (`leases::fence`) against a real PostgreSQL: stale tokens are
//! refused and leave the data untouched, equal tokens pass, concurrent writers end with
//! the highest token's data, and a holder that lost its lease to a newer one cannot
//! write late.
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{FaultyBackend, PostgresBackend, PostgresOptions, RenewFault};
use leases::fence::{Fence, FenceError, Fenced};
use leases::{AcquireOptions, CancelReason, Key, LeaseManager, LossCause};
use support::pg::{connect, shared_url, table};
use tokio_postgres::Client;

/// A fence table and a data table of this test's own: `data (k TEXT PRIMARY KEY, v TEXT,
/// token BIGINT)`.
async fn setup(case: &str) -> (Client, Fence, String) {
    let db = connect(&shared_url()).await;
    let fence = Fence::new(table("f", case)).unwrap();
    fence.create(&db).await.unwrap();
    // Creating it again is harmless.
    fence.create(&db).await.unwrap();
    let data = table("d", case);
    db.batch_execute(&format!(
        "CREATE TABLE {data} (k TEXT PRIMARY KEY, v TEXT NOT NULL, token BIGINT NOT NULL)"
    ))
    .await
    .unwrap();
    (db, fence, data)
}

fn upsert(data: &str) -> String {
    format!(
        "INSERT INTO {data} (k, v, token) VALUES ($1, $2, $3) \
         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, token = EXCLUDED.token"
    )
}

async fn write(
    db: &Client,
    fence: &Fence,
    data: &str,
    key: &Key,
    token: u64,
    v: &str,
) -> Result<Fenced, FenceError> {
    let k = key.to_string();
    let t = token as i64;
    fence
        .write(db, key, token, &upsert(data), &[&k, &v, &t])
        .await
}

async fn value(db: &Client, data: &str, key: &Key) -> Option<(String, i64)> {
    db.query_opt(
        &format!("SELECT v, token FROM {data} WHERE k = $1"),
        &[&key.to_string()],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

#[tokio::test]
async fn a_stale_holders_write_is_refused_and_changes_nothing() {
    let (db, fence, data) = setup("stale").await;
    let key = Key::system(["fence", "stale"]);
    assert_eq!(fence.highest(&db, &key).await.unwrap(), None);

    // The first holder writes, twice (equal token: accepted).
    for v in ["a1", "a2"] {
        let got = write(&db, &fence, &data, &key, 5, v).await.unwrap();
        assert_eq!(got, Fenced::Accepted { rows: 1 });
        assert!(got.is_accepted());
    }
    assert_eq!(value(&db, &data, &key).await, Some(("a2".into(), 5)));
    assert_eq!(fence.highest(&db, &key).await.unwrap(), Some(5));

    // A newer holder writes.
    let got = write(&db, &fence, &data, &key, 9, "b").await.unwrap();
    assert_eq!(got, Fenced::Accepted { rows: 1 });

    // The old holder's late write is refused and leaves the data as the new one left it.
    let got = write(&db, &fence, &data, &key, 5, "late").await.unwrap();
    assert_eq!(got, Fenced::Refused { highest: 9 });
    assert!(!got.is_accepted());
    assert_eq!(value(&db, &data, &key).await, Some(("b".into(), 9)));
    assert_eq!(fence.highest(&db, &key).await.unwrap(), Some(9));

    // The newer holder keeps writing; another key is fenced on its own.
    let got = write(&db, &fence, &data, &key, 9, "b2").await.unwrap();
    assert_eq!(got, Fenced::Accepted { rows: 1 });
    let other = Key::system(["fence", "stale-other"]);
    let got = write(&db, &fence, &data, &other, 1, "o").await.unwrap();
    assert_eq!(got, Fenced::Accepted { rows: 1 });
    assert_eq!(value(&db, &data, &key).await, Some(("b2".into(), 9)));

    // The connection is still usable after a refusal.
    db.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn the_guard_does_not_depend_on_how_the_statement_is_written() {
    let (db, fence, data) = setup("shape").await;
    let key = Key::system(["fence", "shape"]);
    let got = write(&db, &fence, &data, &key, 3, "v3").await.unwrap();
    assert!(got.is_accepted());

    // A statement that never mentions the fence, with an OR that matches every row, and
    // one with a WITH clause of its own: both refused for a stale token, both untouched.
    let every_row = format!("UPDATE {data} SET v = $1 WHERE k = $2 OR true");
    let k = key.to_string();
    let got = fence
        .write(&db, &key, 2, &every_row, &[&"bad", &k])
        .await
        .unwrap();
    assert_eq!(got, Fenced::Refused { highest: 3 });
    let with = format!(
        "with new AS (SELECT $1::text AS v) UPDATE {data} SET v = new.v FROM new WHERE k = $2"
    );
    let got = fence
        .write(&db, &key, 2, &with, &[&"bad", &k])
        .await
        .unwrap();
    assert_eq!(got, Fenced::Refused { highest: 3 });
    assert_eq!(value(&db, &data, &key).await, Some(("v3".into(), 3)));

    // With the current token the same statements run (and count their rows).
    let got = fence.write(&db, &key, 3, &with, &[&"w", &k]).await.unwrap();
    assert_eq!(got, Fenced::Accepted { rows: 1 });
    let delete = format!("DELETE FROM {data} WHERE k = $1");
    let got = fence.write(&db, &key, 4, &delete, &[&k]).await.unwrap();
    assert_eq!(got, Fenced::Accepted { rows: 1 });
    assert_eq!(value(&db, &data, &key).await, None);
    assert_eq!(fence.highest(&db, &key).await.unwrap(), Some(4));

    // A statement that cannot follow WITH is an error, not a silent unguarded write.
    let err = fence
        .write(&db, &key, 4, &format!("TRUNCATE {data}"), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, FenceError::Postgres(_)), "{err:?}");
    // An error of the caller's statement is returned as such, and the token it carried
    // was not recorded.
    let err = fence
        .write(&db, &key, 7, &format!("UPDATE {data} SET v = 1/0"), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, FenceError::Postgres(_)), "{err:?}");
    assert_eq!(fence.highest(&db, &key).await.unwrap(), Some(4));
}

#[tokio::test]
async fn tokens_beyond_bigint_are_an_error() {
    let (db, fence, data) = setup("range").await;
    let key = Key::system(["fence", "range"]);
    for token in [1u64 << 63, u64::MAX] {
        let err = fence
            .write(&db, &key, token, &format!("DELETE FROM {data}"), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, FenceError::TokenOutOfRange(t) if t == token),
            "{err:?}"
        );
    }
    assert_eq!(fence.highest(&db, &key).await.unwrap(), None);
    // The largest token that fits works, and then refuses everything below it.
    let max = i64::MAX as u64;
    let got = fence
        .write(&db, &key, max, &format!("DELETE FROM {data}"), &[])
        .await
        .unwrap();
    assert_eq!(got, Fenced::Accepted { rows: 0 });
    let got = fence
        .write(&db, &key, max - 1, &format!("DELETE FROM {data}"), &[])
        .await
        .unwrap();
    assert_eq!(got, Fenced::Refused { highest: max });
}

#[test]
fn table_names_are_checked() {
    for bad in ["", "Fence", "1x", "a b", "x;drop table y", &"f".repeat(49)] {
        assert!(
            matches!(Fence::new(bad), Err(FenceError::InvalidTable(_))),
            "{bad:?}"
        );
    }
    let f = Fence::new("my_fence").unwrap();
    assert_eq!(f.table(), "my_fence");
    assert_eq!(
        f.schema_sql(),
        "CREATE TABLE IF NOT EXISTS my_fence (key TEXT PRIMARY KEY, token BIGINT NOT NULL)"
    );
}

#[tokio::test]
async fn in_a_transaction_the_token_commits_with_the_write() {
    let (mut db, fence, data) = setup("tx").await;
    let key = Key::system(["fence", "tx"]);
    let got = write(&db, &fence, &data, &key, 2, "v2").await.unwrap();
    assert!(got.is_accepted());

    // An accepted write that is rolled back leaves neither data nor token behind.
    let tx = db.transaction().await.unwrap();
    let got = write_tx(&tx, &fence, &data, &key, 8, "rolled back").await;
    assert_eq!(got, Fenced::Accepted { rows: 1 });
    tx.rollback().await.unwrap();
    assert_eq!(fence.highest(&db, &key).await.unwrap(), Some(2));
    assert_eq!(value(&db, &data, &key).await, Some(("v2".into(), 2)));

    // A committed one leaves both.
    let tx = db.transaction().await.unwrap();
    let got = write_tx(&tx, &fence, &data, &key, 6, "v6").await;
    assert_eq!(got, Fenced::Accepted { rows: 1 });
    tx.commit().await.unwrap();
    assert_eq!(fence.highest(&db, &key).await.unwrap(), Some(6));

    // A refusal aborts the transaction: nothing else in it commits.
    let tx = db.transaction().await.unwrap();
    let other = Key::system(["fence", "tx-other"]);
    let got = write_tx(&tx, &fence, &data, &other, 1, "other").await;
    assert_eq!(got, Fenced::Accepted { rows: 1 });
    let got = write_tx(&tx, &fence, &data, &key, 5, "stale").await;
    assert_eq!(got, Fenced::Refused { highest: 6 });
    let err = tx.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    // COMMIT of an aborted transaction rolls it back.
    tx.commit().await.unwrap();
    assert_eq!(value(&db, &data, &other).await, None);
    assert_eq!(fence.highest(&db, &other).await.unwrap(), None);
    assert_eq!(value(&db, &data, &key).await, Some(("v6".into(), 6)));
}

async fn write_tx(
    tx: &tokio_postgres::Transaction<'_>,
    fence: &Fence,
    data: &str,
    key: &Key,
    token: u64,
    v: &str,
) -> Fenced {
    let k = key.to_string();
    let t = token as i64;
    fence
        .write(tx, key, token, &upsert(data), &[&k, &v, &t])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_end_with_the_highest_tokens_data() {
    let (db, fence, data) = setup("race").await;
    drop(db);
    let key = Key::system(["fence", "race"]);
    let fence = Arc::new(fence);
    for round in 0..5u64 {
        let mut tasks = Vec::new();
        // Tokens of this round in a scrambled order; each task has its own connection.
        for i in [3u64, 7, 1, 8, 5, 2, 6, 4] {
            let (fence, data, key) = (fence.clone(), data.clone(), key.clone());
            let token = round * 10 + i;
            tasks.push(tokio::spawn(async move {
                let db = connect(&shared_url()).await;
                let mut outcomes = Vec::new();
                for n in 0..5 {
                    let v = format!("t{token}-{n}");
                    outcomes.push(write(&db, &fence, &data, &key, token, &v).await.unwrap());
                }
                (token, outcomes)
            }));
        }
        let highest = round * 10 + 8;
        let mut refused = 0;
        for t in tasks {
            let (token, outcomes) = t.await.unwrap();
            for o in outcomes {
                match o {
                    Fenced::Accepted { rows } => assert_eq!(rows, 1),
                    Fenced::Refused { highest: h } => {
                        // Refused only for a higher token, never the round's highest.
                        assert!(h > token && token < highest, "{h} <= {token}");
                        assert!(h <= highest);
                        refused += 1;
                    }
                }
            }
        }
        let db = connect(&shared_url()).await;
        let (v, t) = value(&db, &data, &key).await.unwrap();
        assert_eq!(t as u64, highest, "round {round}: {v}");
        assert!(v.starts_with(&format!("t{highest}-")), "{v}");
        assert_eq!(fence.highest(&db, &key).await.unwrap(), Some(highest));
        eprintln!("round {round}: {refused} of 40 writes refused");
    }
}

/// The real scenario: holder A's renewals hang, its lease expires, B is granted the key
/// with a larger token and writes; A's late write with its old token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_lost_its_lease_cannot_write_late() {
    let (db, fence, data) = setup("lease").await;
    let url = shared_url();
    let options = || PostgresOptions::new(url.clone()).table(table("l", "fence"));
    let backend = Arc::new(PostgresBackend::connect(options()).await.unwrap());
    let faults = Arc::new(FaultyBackend::new(backend));
    let a = LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .backend(faults.clone())
        .start()
        .await
        .unwrap();
    let b = LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .postgres(options())
        .start()
        .await
        .unwrap();
    let key = Key::system(["fence", "lease"]);
    let ttl = Duration::from_secs(1);

    let (lease_a, ctx_a) = a.acquire_lease(key.clone(), ttl).await.unwrap();
    let token_a = lease_a.token();
    assert!(!ctx_a.is_cancelled());
    let got = write(&db, &fence, &data, &key, token_a, "from A")
        .await
        .unwrap();
    assert_eq!(got, Fenced::Accepted { rows: 1 });

    // A's renewals hang: it is told it lost the lease, at its local deadline.
    faults.fail_renewals(&key, RenewFault::Stall);
    let reason = tokio::time::timeout(ttl * 3, ctx_a.cancelled())
        .await
        .expect("A is told");
    assert!(
        matches!(reason, CancelReason::Lost(LossCause::DeadlineExceeded)),
        "{reason:?}"
    );

    // B is granted the key once A's grant expires, with a larger token, and writes.
    let (lease_b, ctx_b) = b
        .acquire_lease_with(key.clone(), AcquireOptions::new(ttl).wait(ttl * 4))
        .await
        .unwrap();
    let token_b = lease_b.token();
    assert!(token_b > token_a, "{token_b} > {token_a}");
    assert!(!ctx_b.is_cancelled());
    let got = write(&db, &fence, &data, &key, token_b, "from B")
        .await
        .unwrap();
    assert_eq!(got, Fenced::Accepted { rows: 1 });

    // A was paused between its check and its write: the write arrives late, and the
    // fence refuses it.
    let got = write(&db, &fence, &data, &key, token_a, "late from A")
        .await
        .unwrap();
    assert_eq!(got, Fenced::Refused { highest: token_b });
    assert_eq!(
        value(&db, &data, &key).await,
        Some(("from B".into(), token_b as i64))
    );

    lease_b.release().await.unwrap();
    drop(lease_a);
    a.shutdown().await;
    b.shutdown().await;
}
