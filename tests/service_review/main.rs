//! Adversarial review of the lease service and `ClientLeaser`: each test here is a
//! way the network path could break one of the four guarantees (or panic on input),
//! and checks that it does not.
//!
//! Real sockets and the real clock, like `tests/service/`; every bound is generous
//! (the verdict does not depend on the machine's speed).
#![cfg(feature = "server")]
//!
//! One binary, a module per theme: `holders` (a remote holder hears before its key goes
//! elsewhere), `input` (no panics, clear statuses for bad input), `liar` (a server that
//! misbehaves).

#[path = "../support/mod.rs"]
mod support;

mod holders;
mod input;
mod liar;

use std::time::Duration;

use leases::{Key, LeaseError, LeaseManager};

/// Tries to take `key` on `manager` every 10 ms for at most `within`; the lease and
/// how long it took, if it got it.
pub(crate) async fn grab(
    manager: &LeaseManager,
    key: &Key,
    ttl: Duration,
    within: Duration,
) -> Option<(leases::Lease, leases::LeaseContext, Duration)> {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        match manager.acquire_lease(key.clone(), ttl).await {
            Ok((lease, ctx)) => return Some((lease, ctx, start.elapsed())),
            Err(LeaseError::Conflict) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    }
    None
}

/// How long until `ctx` ends by its deadline (zero if passed), for messages.
pub(crate) fn left(ctx: &leases::LeaseContext) -> Duration {
    ctx.deadline()
        .map(|d| d.saturating_duration_since(std::time::Instant::now()))
        .unwrap_or(Duration::MAX)
}
