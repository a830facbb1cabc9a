//! The sampler: a look at the lease table and `pg_stat_activity` every 200 ms, on the
//! database's clock, for the checks that hold throughout the run.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::scenario::TABLE;

/// One look at the database by the sampler.
pub struct Sample {
    pub at: std::time::SystemTime,
    /// `(key, token)` of every live lease (its session's expiry when attached to one).
    pub live: Vec<(String, u64)>,
    /// Client sessions `idle in transaction` for more than 200 ms.
    pub idle_in_tx: Vec<String>,
}

/// Samples the lease table and `pg_stat_activity` every 200 ms until `stop` is set,
/// reconnecting across the server's restart.
pub async fn sample(url: String, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut client: Option<Client> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio_postgres::connect(&url, NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                Err(_) => None,
            };
        }
        if let Some(c) = &client {
            let look = async {
                let at: std::time::SystemTime =
                    c.query_one("SELECT clock_timestamp()", &[]).await?.get(0);
                // Live as an acquire judges it: a row attached to a session (`session`
                // set, `expires_at` 'infinity') expires with its session, so one whose
                // session has expired is free although its own `expires_at` says
                // 'infinity' (reading only `expires_at` counted such a key as taken
                // until someone took it over).
                let live = c
                    .query(
                        &format!(
                            "SELECT l.key, l.token FROM {TABLE} l
                               LEFT JOIN {TABLE}_sessions s ON s.id = l.session
                              WHERE (CASE WHEN l.session IS NOT NULL AND l.expires_at = 'infinity'
                                     THEN COALESCE(s.expires_at, 'infinity')
                                     ELSE l.expires_at END) > now()"
                        ),
                        &[],
                    )
                    .await
                    .unwrap_or_default()
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                    .collect();
                let idle_in_tx = c
                    .query(
                        "SELECT usename || ' ' || application_name || ': ' || left(query, 80)
                         FROM pg_stat_activity
                         WHERE state LIKE 'idle in transaction%'
                           AND clock_timestamp() - state_change > interval '200 milliseconds'",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
                    .collect();
                Ok::<_, tokio_postgres::Error>(Sample {
                    at,
                    live,
                    idle_in_tx,
                })
            };
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), look).await {
                out.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out
}
