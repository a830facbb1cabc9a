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
    assert!(Instant::now() < promised, "the client still holds by its promise");
    let taken = store.acquire(&key, Duration::from_secs(3), b"").await.unwrap();
    assert!(
        matches!(taken, AcquireOutcome::Held { .. }),
        "the key was granted again ({taken:?}) while the re-attached client may act for \
         {:?} more",
        promised - Instant::now()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
