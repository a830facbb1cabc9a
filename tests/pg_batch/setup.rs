//! What the batch tests share: tables and options of their own, renewing many leases at
//! once, and looks at the rows and at the renewal statements running on the server.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, PostgresBackend, PostgresOptions, RenewOutcome};
use leases::Key;
use tokio_postgres::Client;

use crate::support::pg::{run_id, shared_url, table, with_app};

/// Options on this test's own table, with a batch window long enough that renewals
/// started together always share one statement.
pub fn options(case: &str) -> PostgresOptions {
    PostgresOptions::new(shared_url())
        .table(table("b", case))
        .renew_batch_window(Duration::from_millis(400))
}

/// Renews every `(key, token)` at once (each in a task, as renewers do) and returns
/// the outcomes in order.
pub async fn renew_all(
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
pub async fn rows(db: &Client, t: &str) -> Vec<(String, i64, i64, bool)> {
    db.query(
        &format!(
            "SELECT l.key, l.token, (EXTRACT(EPOCH FROM CASE WHEN l.session IS NOT NULL AND l.expires_at = 'infinity' THEN s.expires_at ELSE l.expires_at END) * 1000000)::bigint, l.revoked \
             FROM {t} l LEFT JOIN {t}_sessions s ON s.id = l.session ORDER BY l.key"
        ),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Options on this test's own table, on connections named for the test (so that
/// `pg_stat_activity` tells its statements apart), and that name.
pub fn tagged(case: &str) -> (PostgresOptions, String) {
    let app = format!("leases_batch_{case}_{}", run_id());
    let opts = PostgresOptions::new(with_app(&shared_url(), &app)).table(table("b", case));
    (opts, app)
}

/// Waits until `n` renewal statements of `app` wait on a row lock (at most 2 s).
pub async fn until_blocked(db: &Client, app: &str, n: i64) {
    for _ in 0..100 {
        if renewal_statements(db, app).await.1 >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no renewal statement blocked on the locked row");
}

/// Renewal statements running now for this application: `(all, waiting on a lock)`.
pub async fn renewal_statements(db: &Client, app: &str) -> (i64, i64) {
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
