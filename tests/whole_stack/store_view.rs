//! The store's own view of the PostgreSQL keys, for the reader of a run: once a second
//! it asks the database who holds each key, and logs every change (a new token or
//! holder, a revoke, the key going free) in the history. When a key stays taken while
//! nobody acts for it (a lease left in the store by a server that went away, or one
//! whose client never heard its grant), the dump shows whose lease it was and for how
//! long, which the acts alone cannot tell.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use leases::backend::{Backend as _, PostgresBackend, PostgresOptions};
use leases::Key;

use crate::clients::Env;

/// Watches the keys of the shared store (on the database at `url`) until the clients'
/// stop time, logging each change.
pub async fn watch(env: &Env, url: String) {
    let Some(store) = env.stores.iter().find(|s| s.shared) else {
        return;
    };
    let options = PostgresOptions::new(url)
        .table("leases")
        .create_schema(false)
        .pool_size(1)
        .connect_timeout(Duration::from_secs(1))
        .statement_timeout(Duration::from_secs(1));
    let Ok(backend) = PostgresBackend::new(options) else {
        return;
    };
    let mut last: HashMap<&str, String> = HashMap::new();
    while Instant::now() < env.stop_at {
        for key in store.keys.iter().chain(&store.leader_keys) {
            let Ok(parsed) = Key::parse(key) else {
                continue;
            };
            let asked = tokio::time::timeout(Duration::from_secs(2), backend.info(&parsed));
            let now = match asked.await {
                Ok(Ok(Some(info))) => format!(
                    "held, token {} by {}{}",
                    info.token,
                    String::from_utf8_lossy(&info.metadata),
                    if info.revoked { " (revoked)" } else { "" }
                ),
                Ok(Ok(None)) => "free".to_string(),
                // The database is down or slow: say nothing.
                _ => continue,
            };
            if last.get(key.as_str()) != Some(&now) {
                env.history.event(format!("store: {key} {now}"));
                last.insert(key, now);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
