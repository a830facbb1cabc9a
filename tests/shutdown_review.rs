//! Adversarial review of `LeaseManager::shutdown` after 4b2d774 (shutdown waits for the
//! backend I/O it started): the whole shutdown must stay within its timeout.
//!
//! Paused tokio time: the verdict does not depend on the machine's speed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leases::{Key, LeaseManager};
use support::slowed::{Op, Slowed};
use tokio::time::Instant;

/// A store whose releases never answer (a database behind a black-holed link).
fn stuck_releases() -> Slowed {
    Slowed::new(|op, _| (op == Op::Release).then_some(Duration::MAX))
}

/// `shutdown_timeout(T)`: "how long shutdown waits for the backend to release held
/// leases"; the new comment in `shutdown` says the wait for in-flight I/O is "all within
/// the shutdown timeout". With a store that never answers a release, one lease still
/// held (released by `on_shutdown`, bounded by T) and one release already in flight (a
/// dropped `Lease`), shutdown waits T in the supervisor and then T again for the
/// in-flight release, because the second deadline is taken only after the first wait.
#[tokio::test(start_paused = true)]
async fn shutdown_with_a_stuck_store_stays_within_its_timeout() {
    let timeout = Duration::from_secs(5);
    let manager = LeaseManager::builder()
        .backend(Arc::new(stuck_releases()))
        .shutdown_timeout(timeout)
        .start()
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let (_held, _ctx) = manager
        .acquire_lease(Key::system(["held"]), ttl)
        .await
        .unwrap();
    let (dropped, _ctx2) = manager
        .acquire_lease(Key::system(["dropped"]), ttl)
        .await
        .unwrap();
    // Its release is sent to the store in a task (counted in flight) and never answers.
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(10)).await;

    let started = Instant::now();
    manager.shutdown().await;
    let took = started.elapsed();
    // One timeout, plus a little for the actor to stop.
    let bound = timeout + Duration::from_secs(1);
    assert!(
        took <= bound,
        "shutdown hang: LeaseManager::shutdown took {took:?} with shutdown_timeout {timeout:?} \
         ({:?} beyond the timeout): the wait for in-flight backend I/O starts its own \
         timeout after the supervisor's release wait has already used one",
        took - timeout
    );
}
