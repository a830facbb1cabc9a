//! An adversarial review of re-attaching (`acquire` with `resume`): interleavings of a
//! re-attach with what the old stream, the old server and the store do meanwhile, each
//! a way the guarantees could break.
//!
//! Raw HTTP/2 streams (so that a test decides exactly what a client sends and when its
//! stream ends), servers on one [`SharedStore`], the store checked directly.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend};
use leases::service::LeaseServer;
use leases::Key;
use tokio::time::Instant;

use crate::support::remote::{local, manager_on, raw_hold, raw_resume};
use crate::support::shared_store::SharedStore;

async fn server_on(store: &Arc<dyn Backend>) -> LeaseServer {
    let manager = manager_on(store.clone()).await;
    LeaseServer::start(manager, local()).await.unwrap()
}

/// The token of the live lease on `key` in `store`, if any.
async fn holder(store: &Arc<dyn Backend>, key: &Key) -> Option<u64> {
    store.info(key).await.unwrap().map(|i| i.token)
}

/// A re-attach through another server with a longer TTL than the lease was held with:
/// the new server promises the client the longer TTL, but the old server, which keeps
/// renewing its orphan until its own (shorter) promise runs out, renews the store with
/// the old TTL after the re-attach, cutting the store's expiry below what the client was
/// promised. The key must stay taken until the re-attached client's promise has run
/// out (or the re-attach must be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattach_with_a_longer_ttl_is_never_cut_short_by_the_old_server() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let key = Key::system(["review", "longer-ttl"]);
    let (mut old, _) = raw_hold(a.local_addr(), &key, Duration::from_secs(3)).await;
    let token = holder(&store, &key).await.expect("held");
    old.reset(h2::Reason::CANCEL);
    let resumed = raw_resume(b.local_addr(), &key, Duration::from_secs(30), token).await;
    let Ok((_s, again, promised)) = resumed else {
        // Refusing a re-attach whose TTL differs from the lease's is a fine answer.
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
        return;
    };
    assert_eq!(again, token);
    // Server A renews its orphan (TTL 3 s, every 1 s) until its promise (under 3 s) runs
    // out, then leaves it; server B renews first 10 s after the re-attach. Look between.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        Instant::now() < promised,
        "the client still holds by its promise"
    );
    let taken = store
        .acquire(&key, Duration::from_secs(3), b"")
        .await
        .unwrap();
    assert!(
        matches!(taken, AcquireOutcome::Held { .. }),
        "the key was granted again ({taken:?}) while the re-attached client may act for \
         {:?} more",
        promised - Instant::now()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// FTL's protocol cannot re-attach: a draining server on a shared store must not let go
/// of an FTL client's key before the time it promised that client (the heartbeat window
/// from its last request, `Held::promised` in src/service/ftl/mod.rs), as it did before
/// re-attaching existed. Leaving it in the store at once relies on the store holding it
/// that long, which it does not when renewals are slow: the store's expiry is at least
/// a window after the last renewal's *start* plus half a window, less the renewal's
/// round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_keeps_its_promise_to_an_ftl_client() {
    const WINDOW: Duration = Duration::from_secs(2);
    let store = SharedStore::default();
    let slow: Arc<dyn Backend> = Arc::new(store.answering_renewals_after(Duration::from_secs(1)));
    let a = LeaseServer::start(manager_on(slow).await, local())
        .await
        .unwrap();
    let key = Key::system(["review", "ftl-drain"]);
    let channel = crate::support::remote::channel_at(a.local_addr()).await;
    let request = crate::support::remote::ftl_request(&key, WINDOW);
    let mut s = crate::support::remote::ftl_open(&channel, request.clone())
        .await
        .expect("acquired");
    assert!(crate::next(&mut s).await.unwrap(), "acquired");
    // The store holds the key for 1.5 windows, renewed a half window after each renewal
    // answers (here 1 s after it took effect). Heartbeat until the store's lease is
    // nearest to its expiry, then drain.
    let at = loop {
        s.tx.send(request.clone()).unwrap();
        let sent = Instant::now();
        let left = store.info(&key).await.unwrap().expect("held").expires_in;
        if left < WINDOW - Duration::from_millis(600) {
            break sent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Let the server read that heartbeat, then drain (well before the next renewal,
    // which takes effect 2 s after the last: the store then had at most 1.4 s left).
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.shutdown().await.unwrap();
    // The client may act until `at + WINDOW` (at least: the server read that request
    // after it was sent). Nobody may be granted the key before.
    loop {
        let now = Instant::now();
        if now >= at + WINDOW {
            break;
        }
        let taken = store
            .acquire(&key, Duration::from_secs(3), b"")
            .await
            .unwrap();
        assert!(
            matches!(taken, AcquireOutcome::Held { .. }),
            "the key was granted again ({taken:?}) {:?} before the FTL client's promise ran out",
            at + WINDOW - now
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On etcd, each backend instance remembers until when the holders of the keys it
/// acquired can be live, and deletes a key whose holder can no longer be (before a
/// keep-alive of its group: "Keys nobody holds" in src/backend/etcd/mod.rs). A server
/// whose client re-attached its lease through another server only leaves the lease
/// (`Lease::leave`, nothing goes to the backend), so its backend still remembers the key
/// with the time of its own last renewal, and deletes it from etcd (same nonce) while
/// the client holds it through the other server: anyone may then be granted it.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_the_old_server_never_deletes_a_lease_reattached_elsewhere() {
    use crate::support::etcd::EtcdCluster;
    use leases::backend::EtcdBackend;
    const HOLD: Duration = Duration::from_secs(3);
    let cluster = EtcdCluster::start(1);
    let options = cluster.options("/review-reattach");
    let etcd = || async {
        Arc::new(EtcdBackend::connect(options.clone()).await.unwrap()) as Arc<dyn Backend>
    };
    let (store_a, store_b, probe) = (etcd().await, etcd().await, etcd().await);
    let a = LeaseServer::start(manager_on(store_a).await, local())
        .await
        .unwrap();
    let b = LeaseServer::start(manager_on(store_b).await, local())
        .await
        .unwrap();
    let key = Key::system(["review", "etcd-moved"]);
    let other = Key::system(["review", "etcd-stays"]);
    // Server A holds the key and another one of the same TTL (so its group of that TTL
    // lives on, kept alive for the other key).
    let (mut moved, _) = raw_hold(a.local_addr(), &key, HOLD).await;
    let (mut stays, _) = raw_hold(a.local_addr(), &other, HOLD).await;
    let token = holder(&probe, &key).await.expect("held");
    // The key's stream on A breaks; its client re-attaches through B.
    moved.reset(h2::Reason::CANCEL);
    let (mut s, again, _) = raw_resume(b.local_addr(), &key, HOLD, token)
        .await
        .expect("re-attached through the other server");
    assert_eq!(again, token);
    // A lets go of its orphan once its promise has run out (under HOLD); its group lives
    // on for the other key. The client heartbeats through B all along.
    let heard = crate::support::remote::raw_heartbeats(
        &mut [&mut s, &mut stays],
        HOLD * 4,
        Duration::from_millis(500),
    )
    .await;
    let now = holder(&probe, &key).await;
    assert_eq!(
        now,
        Some(token),
        "the key was freed (deleted by the old server) under its re-attached holder, \
         who heard {heard:?}"
    );
    assert_eq!(heard, Ok(()));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
