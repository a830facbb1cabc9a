//! A worker: waits for its job's lease, works under it (each write fenced), stops when
//! told the lease ended, and queues up again.

use std::sync::Arc;
use std::time::Duration;

use leases::{AcquireOptions, CancelReason, Key, LeaseError, Leaser};

use crate::ledger::Ledger;
use crate::story::{Clock, Error, TTL};

/// Set when the story ends, for workers whose leaser cannot say so itself (a client of
/// a lease service that is stopping only sees the service go away).
pub static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Worker `name` on `job`, until the story ends.
pub async fn worker(
    name: String,
    job: Key,
    leaser: Arc<dyn Leaser>,
    ledger: Arc<Ledger>,
    clock: Clock,
) -> Result<(), Error> {
    loop {
        let options = AcquireOptions::new(TTL)
            .metadata(format!("{name} pid={}", std::process::id()))
            .wait(Duration::from_secs(30));
        let (lease, ctx) = match leaser.acquire_lease_with(job.clone(), options).await {
            Ok(got) => got,
            Err(LeaseError::ManagerStopped) => return Ok(()),
            // The story is over (the lease service is stopping).
            Err(_) if STOPPING.load(std::sync::atomic::Ordering::SeqCst) => return Ok(()),
            Err(e) => {
                clock.say(format!("{name}: could not acquire {job}: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
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
                    match ledger.write(&job, token, &name).await {
                        Ok(Ok(())) => units += 1,
                        Ok(Err(newer)) => clock.say(format!("{name}: write refused, token {newer} seen")),
                        Err(e) => clock.say(format!("{name}: ledger unavailable: {e}")),
                    }
                }
            }
        };
        clock.say(format!(
            "{name}: told the lease on {job} ended ({reason}) after {units} units of work; stopping"
        ));
        match reason {
            CancelReason::Shutdown => return Ok(()),
            CancelReason::Lost(_) => {
                // A holder that was paused and wakes up late would try to write with its
                // old token. The ledger has seen a newer one, so the write does no harm.
                tokio::time::sleep(TTL).await;
                match ledger.write(&job, token, &name).await? {
                    Ok(()) => clock.say(format!(
                        "{name}: late write with token {token} accepted (no newer holder yet)"
                    )),
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
