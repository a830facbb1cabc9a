//! `LeaseManager::shutdown` returns only after every give-back it started has finished
//! (issue #19, item 9): a process that exits when `shutdown` returns must not leave a
//! key taken by nobody for a TTL.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leases::backend::Backend;
use leases::{AcquireOptions, Key, LeaseManager};
use support::slowed::{Op, Slowed};

/// A store whose releases take half a second, or a second for keys under
/// `/system/slow` (a slow database).
fn slow_releases() -> Slowed {
    Slowed::new(|op, key| {
        let slow = key.to_string().starts_with("/system/slow");
        (op == Op::Release).then(|| Duration::from_millis(if slow { 1000 } else { 500 }))
    })
}

/// A waiter whose attempt is granted while `shutdown` runs (its manager is releasing
/// its other lease, slowly): the grant is given back, and `shutdown` waits for that
/// release too.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_grant_it_gives_back() {
    let backend = Arc::new(slow_releases());
    let start = || LeaseManager::builder().backend(backend.clone()).start();
    let (elsewhere, manager) = (start().await.unwrap(), start().await.unwrap());
    let key = Key::system(["shutdown", "give-back"]);
    let ttl = Duration::from_secs(30);
    // Another process holds `key`; ours holds a key whose release is slow, and waits
    // for `key` (an attempt waiting on the store, not a local waiter).
    let (theirs, _ctx) = elsewhere.acquire_lease(key.clone(), ttl).await.unwrap();
    let (_ours, _ctx) = manager
        .acquire_lease(Key::system(["slow"]), ttl)
        .await
        .unwrap();
    let waiter = {
        let manager = manager.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let options = AcquireOptions::new(ttl).wait(Duration::from_secs(60));
            manager.acquire_lease_with(key, options).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // They let go of `key` (500 ms) while we shut down (releasing ours takes 1 s): our
    // waiter is granted `key` while the supervisor is stopping.
    let released = tokio::spawn(async move { theirs.release().await });
    manager.shutdown().await;
    let left = backend.info(&key).await.unwrap();
    assert!(
        left.is_none(),
        "shutdown returned while the give-back of a grant it refused was still running: \
         {left:?}"
    );
    released.await.unwrap().unwrap();
    assert!(
        waiter.await.unwrap().is_err(),
        "the waiter hears the manager stopped"
    );
}
