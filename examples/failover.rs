//! Failover, told as a timeline.
//!
//! Four workers compete for two jobs on the in-memory backend. For each job one worker
//! holds the lease and works; the other waits. Then:
//! - an operator revokes the billing job's lease: its holder is told at once and stops,
//!   and the waiting worker takes over with a larger fencing token;
//! - the emails job's renewals stall (as if its database connection hung): its holder
//!   is told at its local deadline, before the lease expires, and the waiting worker
//!   takes over once it has expired. The stale holder then tries one late write, and
//!   the fenced ledger refuses it;
//! - everything shuts down cleanly.
//!
//! Run it with `cargo run --example failover`. It takes about eight seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leases::backend::{Backend, FaultyBackend, MemoryBackend, RenewFault};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, Leaser};
use tokio::time::Instant;

/// Short, so that the story fits in seconds; production leases use MIN_TTL (5 s) or more.
const TTL: Duration = Duration::from_secs(1);

/// A resource that remembers the highest fencing token per job and refuses lower ones:
/// what makes a stale holder harmless.
#[derive(Default)]
struct Ledger {
    highest: Mutex<HashMap<Key, u64>>,
    writes: Mutex<Vec<(Key, u64, String)>>,
}

impl Ledger {
    fn write(&self, key: &Key, token: u64, who: &str) -> Result<(), u64> {
        let mut highest = self.highest.lock().unwrap();
        let seen = highest.entry(key.clone()).or_insert(0);
        if token < *seen {
            return Err(*seen);
        }
        *seen = token;
        self.writes
            .lock()
            .unwrap()
            .push((key.clone(), token, who.to_string()));
        Ok(())
    }
}

struct Clock(Instant);

impl Clock {
    fn say(&self, what: impl AsRef<str>) {
        println!(
            "[{:5.2}s] {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

async fn worker(
    name: String,
    job: Key,
    leaser: Arc<dyn Leaser>,
    ledger: Arc<Ledger>,
    clock: Arc<Clock>,
) {
    loop {
        let options = AcquireOptions::new(TTL)
            .metadata(name.clone())
            .wait(Duration::from_secs(30));
        let (lease, ctx) = match leaser.acquire_lease_with(job.clone(), options).await {
            Ok(got) => got,
            Err(LeaseError::ManagerStopped) => return,
            Err(e) => {
                clock.say(format!("{name}: could not acquire {job}: {e}"));
                return;
            }
        };
        let token = lease.token();
        clock.say(format!("{name}: acquired {job} with token {token}"));
        let mut units = 0;
        let reason = loop {
            tokio::select! {
                reason = ctx.cancelled() => break reason,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    // Check the context right before the side effect, and fence it.
                    if ctx.is_cancelled() { continue; }
                    match ledger.write(&job, token, &name) {
                        Ok(()) => units += 1,
                        Err(newer) => clock.say(format!("{name}: write refused, token {newer} seen")),
                    }
                }
            }
        };
        clock.say(format!(
            "{name}: told the lease on {job} ended ({reason}) after {units} units of work; stopping"
        ));
        match reason {
            CancelReason::Shutdown => return,
            CancelReason::Lost(_) => {
                // A holder that was paused and wakes up late would try to write with its
                // old token. The ledger has seen a newer one by now (or will refuse it
                // once the new holder writes), so the late write cannot do harm.
                tokio::time::sleep(TTL).await;
                match ledger.write(&job, token, &name) {
                    Ok(()) => clock.say(format!("{name}: late write with token {token} accepted (no newer holder yet)")),
                    Err(newer) => clock.say(format!(
                        "{name}: late write with stale token {token} refused: the ledger has seen {newer}"
                    )),
                }
            }
            _ => {}
        }
        // Queue up again as a standby.
        drop(lease);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clock = Arc::new(Clock(Instant::now()));
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    // The fault injector lets the story stall one job's renewals.
    let faults = Arc::new(FaultyBackend::new(memory));
    let manager = LeaseManager::builder()
        .min_ttl(TTL)
        .backend(faults.clone())
        .start()
        .await?;
    let leaser: Arc<dyn Leaser> = Arc::new(manager.clone());
    let ledger = Arc::new(Ledger::default());
    let billing = Key::system(["jobs", "billing"]);
    let emails = Key::system(["jobs", "emails"]);
    clock.say(format!(
        "manager started: in-memory backend, TTL {TTL:?}, renewal every {:?}, safety margin {:?}",
        TTL / 3,
        manager.safety_margin(TTL)
    ));

    let mut workers = Vec::new();
    for (i, job) in [&billing, &billing, &emails, &emails]
        .into_iter()
        .enumerate()
    {
        workers.push(tokio::spawn(worker(
            format!("worker-{}", i + 1),
            job.clone(),
            leaser.clone(),
            ledger.clone(),
            clock.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = manager
        .lease_info(&billing)
        .await?
        .expect("billing is held");
    clock.say(format!(
        "operator: revoking {billing} (held by {} with token {})",
        String::from_utf8_lossy(&info.metadata),
        info.token
    ));
    manager.revoke(&billing).await?;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = manager.lease_info(&emails).await?.expect("emails is held");
    clock.say(format!(
        "fault: renewals of {emails} stall (held by {} with token {})",
        String::from_utf8_lossy(&info.metadata),
        info.token
    ));
    faults.fail_renewals(&emails, RenewFault::Stall);
    tokio::time::sleep(TTL / 2).await;
    // The stalled renewal is still hanging; later holders' renewals will work again.
    faults.heal_renewals(&emails);

    tokio::time::sleep(Duration::from_secs(3)).await;
    clock.say("shutting down");
    manager.shutdown().await;
    for w in workers {
        w.await?;
    }

    println!("\nwho wrote, in order (key, token, worker):");
    let writes = ledger.writes.lock().unwrap();
    let mut last: HashMap<&Key, (u64, &str)> = HashMap::new();
    for (key, token, who) in writes.iter() {
        match last.get(key) {
            Some((t, w)) if *t == *token && *w == who.as_str() => {}
            _ => println!("  {key}  {token}  {who}"),
        }
        if let Some((t, _)) = last.get(key) {
            assert!(token >= t, "fencing tokens only grow");
        }
        last.insert(key, (*token, who.as_str()));
    }
    println!("every job changed hands with a larger token; nothing was written by two holders");
    Ok(())
}
