//! One contending process (this binary, started with `contender …`): it takes the keys
//! in turn through its own manager, writes through the fence while it holds one, and logs
//! what it does on the database's clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leases::backend::PostgresOptions;
use leases::fence::Fenced;
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, Leaser};
use tokio_postgres::{Client, NoTls};

use crate::scenario::{fence, key, KEYS, STATEMENT_TIMEOUT, TTL};
use crate::support::rng::XorShift;

/// A log connection that reconnects when it breaks; logging never blocks for long.
struct Log {
    url: String,
    name: String,
    client: Option<Client>,
}

impl Log {
    async fn client(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let connect = tokio_postgres::connect(&self.url, NoTls);
            self.client = match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok((client, conn))) => {
                    tokio::spawn(conn);
                    Some(client)
                }
                _ => None,
            };
        }
        self.client.as_ref()
    }

    /// Records an event; returns whether it was recorded.
    async fn event(&mut self, key: &Key, token: u64, kind: &str) -> bool {
        let (name, k, t) = (self.name.clone(), key.to_string(), token as i64);
        let Some(c) = self.client().await else {
            return false;
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&name, &k, &t, &kind];
        let insert = c.execute(
            "INSERT INTO events (proc, key, token, kind) VALUES ($1, $2, $3, $4)",
            &params,
        );
        matches!(
            tokio::time::timeout(Duration::from_secs(1), insert).await,
            Ok(Ok(_))
        )
    }

    /// The holder's side effect: a write guarded by the fence (`leases::fence`), which
    /// records whether the fence accepted it. An accepted write is the fenced statement
    /// itself; a refused one changed nothing, so it is recorded afterwards.
    async fn work(&mut self, key: &Key, token: u64) -> Option<bool> {
        self.fenced(key, token, "work").await
    }

    /// A fenced write recorded as `kind` (`work`, or `late` for a lost holder's write).
    async fn fenced(&mut self, key: &Key, token: u64, kind: &str) -> Option<bool> {
        let (name, k, t) = (self.name.clone(), key.to_string(), token as i64);
        let c = self.client().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&name, &k, &t, &kind];
        let fence = fence();
        let write = fence.write(
            c,
            key,
            token,
            "INSERT INTO events (proc, key, token, kind, accepted)
             VALUES ($1, $2, $3, $4, true)",
            &params,
        );
        match tokio::time::timeout(Duration::from_secs(1), write).await {
            Ok(Ok(Fenced::Accepted { .. })) => Some(true),
            Ok(Ok(Fenced::Refused { .. })) => {
                let insert = c.execute(
                    "INSERT INTO events (proc, key, token, kind, accepted)
                     VALUES ($1, $2, $3, $4, false)",
                    &params,
                );
                match tokio::time::timeout(Duration::from_secs(1), insert).await {
                    Ok(Ok(_)) => Some(false),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

pub async fn contender(url: String, name: String, seconds: u64, via: String) {
    // The manager logs in as a role of its own, so that the orchestrator can cut this
    // process off from the database, and through this process's fault proxy (`via`);
    // the event log uses the shared role, directly.
    let manager_url = via.replacen("postgres://postgres@", &format!("postgres://{name}@"), 1);
    let manager = LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .postgres(
            PostgresOptions::new(manager_url)
                .pool_size(3)
                .connect_timeout(Duration::from_secs(1))
                .statement_timeout(STATEMENT_TIMEOUT),
        )
        .start()
        .await
        .expect("manager starts");
    let leaser: Arc<dyn Leaser> = Arc::new(manager.clone());
    let mut log = Log {
        url,
        name: name.clone(),
        client: None,
    };
    let mut rng = XorShift::new(u64::from(std::process::id()));
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let k = key(rng.below(KEYS as u64) as usize);
        // Half the attempts wait for the key, half poll it, so that keys are tried at
        // every moment of a lease's life, not only when it ends.
        let polling = rng.below(2) == 0;
        let mut opts = AcquireOptions::new(TTL).metadata(name.clone());
        if !polling {
            opts = opts.wait(TTL);
        }
        let (lease, ctx) = match leaser.acquire_lease_with(k.clone(), opts).await {
            Ok(got) => got,
            Err(LeaseError::Conflict | LeaseError::WaitTimedOut { .. }) => {
                if polling {
                    tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
                }
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let token = lease.token();
        log.event(&k, token, "got").await;
        let hold_until = Instant::now() + Duration::from_millis(300 + rng.below(2500));
        while Instant::now() < hold_until && Instant::now() < end {
            // Check the lease right before each side effect.
            if ctx.is_cancelled() {
                break;
            }
            log.work(&k, token).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match ctx.reason() {
            Some(reason) => {
                let kind = match reason {
                    CancelReason::Lost(_) => "lost",
                    CancelReason::Revoked => "revoked",
                    _ => "ended",
                };
                for _ in 0..20 {
                    if log.event(&k, token, kind).await {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                drop(lease);
                if kind == "lost" {
                    // A holder paused between its check and its write writes late: do
                    // so once, 1.5 TTL after the loss, when the key has usually changed
                    // hands. The fence decides; the checker judges its answer.
                    let mut late = Log {
                        url: log.url.clone(),
                        name: name.clone(),
                        client: None,
                    };
                    let k = k.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(TTL * 3 / 2).await;
                        late.fenced(&k, token, "late").await;
                    });
                }
            }
            None => {
                let released = lease.release().await.is_ok();
                log.event(
                    &k,
                    token,
                    if released {
                        "released"
                    } else {
                        "release-failed"
                    },
                )
                .await;
            }
        }
    }
    manager.shutdown().await;
}
