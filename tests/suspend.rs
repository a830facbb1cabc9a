//! A machine suspended while holding a lease (a laptop's sleep): tokio's clock does not
//! count the suspended time, the backend's does. The context must end as soon as the
//! machine wakes past the deadline. Its own test binary, because the simulated suspend
//! moves a process-wide clock.

use std::time::Duration;

use leases::backend::MemoryBackend;
use leases::{CancelReason, Key, LeaseManager, LossCause};
use std::sync::Arc;

const TTL: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn suspended_time_counts_against_the_local_deadline() {
    let m = LeaseManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .start()
        .await
        .unwrap();
    let key = Key::system(["suspend"]);
    let (_lease, ctx) = m.acquire_lease(key.clone(), TTL).await.unwrap();
    let (_lease2, ctx2) = m
        .acquire_lease(Key::system(["suspend-2"]), TTL)
        .await
        .unwrap();
    let waiting = {
        let ctx2 = ctx2.clone();
        tokio::spawn(async move { ctx2.cancelled().await })
    };
    tokio::time::sleep(TTL / 2).await;
    assert!(!ctx.is_cancelled());
    // The machine sleeps for a minute: tokio's clock stands still.
    leases::clock::simulate_suspend(Duration::from_secs(60));
    // On waking, the context has ended without anyone running...
    assert_eq!(
        ctx.reason(),
        Some(CancelReason::Lost(LossCause::DeadlineExceeded))
    );
    // ...and a task waiting on `cancelled()` wakes within a second of tokio's time.
    let started = tokio::time::Instant::now();
    let reason = waiting.await.unwrap();
    assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
    assert!(tokio::time::Instant::now() - started <= Duration::from_secs(1));

    // Short suspends that renewals outlast are forgiven once a renewal that started
    // after them is confirmed: two suspends of 1.5 s, each well within the 4 s window
    // (TTL − margin), must not add up against every later deadline.
    let (_lease3, ctx3) = m
        .acquire_lease(Key::system(["suspend-3"]), TTL)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    leases::clock::simulate_suspend(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_secs(2)).await; // one renewal (every TTL/3)
    assert!(!ctx3.is_cancelled());
    leases::clock::simulate_suspend(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        ctx3.reason(),
        None,
        "renewals kept the lease through short suspends"
    );
    m.shutdown().await;
}
