//! `ClientLeaser` across servers: a held lease re-attaches when its stream breaks or its
//! server drains, and its holder does not notice; when no server takes it back, the
//! holder is told (at once if a server says it is gone, else at its deadline).

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, MemoryBackend};
use leases::service::LeaseServer;
use leases::{CancelReason, ClientLeaser, ClientOptions, Key, Leaser, LossCause};

use crate::support::proxy::{Fault, FaultProxy};
use crate::support::remote::{local, manager_on, TTL};
use crate::support::shared_store::SharedStore;
use crate::support::status_server::StatusServer;

/// The TTL the leases here are held with.
const HOLD: Duration = Duration::from_secs(3);

async fn server_on(store: &Arc<dyn Backend>) -> LeaseServer {
    let manager = manager_on(store.clone()).await;
    LeaseServer::start(manager, local()).await.unwrap()
}

async fn client(urls: &[String]) -> ClientLeaser {
    let options = ClientOptions::endpoints(urls.iter().cloned())
        .unwrap()
        .min_ttl(TTL)
        .request_timeout(Duration::from_secs(2));
    ClientLeaser::connect_with(options).await.unwrap()
}

fn url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

/// The token of the live lease on `key` in `store`, if any.
async fn holder(store: &Arc<dyn Backend>, key: &Key) -> Option<u64> {
    store.info(key).await.unwrap().map(|i| i.token)
}

/// A rolling restart: the server holding the lease drains; the lease moves to the other
/// server and lives on, same token, holder never told, for several TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_its_servers_drain() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let c = client(&[url(a.local_addr()), url(b.local_addr())]).await;
    let key = Key::system(["client", "drain"]);
    let (lease, ctx) = c.acquire_lease(key.clone(), HOLD).await.unwrap();
    a.shutdown().await.unwrap();
    tokio::time::sleep(HOLD * 3).await;
    assert_eq!(ctx.reason(), None, "the holder was told of a drain");
    assert_eq!(holder(&store, &key).await, Some(lease.token()));
    assert!(ctx.deadline().unwrap() > std::time::Instant::now());
    lease.release().await.unwrap();
    assert_eq!(holder(&store, &key).await, None);
    b.shutdown().await.unwrap();
}

/// The connection breaks (every connection reset) while the one server lives: the lease
/// re-attaches on a new connection to the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_a_reset_connection() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let server = server_on(&store).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let c = client(&[url(proxy.addr())]).await;
    let key = Key::system(["client", "reset"]);
    let (lease, ctx) = c.acquire_lease(key.clone(), HOLD).await.unwrap();
    for _ in 0..3 {
        proxy.reset_all();
        tokio::time::sleep(HOLD).await;
    }
    assert_eq!(ctx.reason(), None, "the holder was told of a reset");
    assert_eq!(holder(&store, &key).await, Some(lease.token()));
    lease.release().await.unwrap();
    assert_eq!(holder(&store, &key).await, None);
    server.shutdown().await.unwrap();
}

/// A server that says the lease is gone (here it expired in the store while its
/// server drained) ends the holder's context at once, not at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reattach_is_a_loss_at_once() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let c = client(&[url(a.local_addr()), url(b.local_addr())]).await;
    let key = Key::system(["client", "refused"]);
    let (lease, ctx) = c
        .acquire_lease(key.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    // As if the lease had expired: gone from the store.
    assert!(store.release(&key, lease.token()).await.unwrap());
    let drained = tokio::time::Instant::now();
    a.shutdown().await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), ctx.cancelled())
        .await
        .expect("told well before the 30 s deadline");
    assert!(
        matches!(reason, CancelReason::Lost(LossCause::Remote(_))),
        "{reason:?}"
    );
    assert!(drained.elapsed() < Duration::from_secs(10));
    b.shutdown().await.unwrap();
}

/// No server takes the lease back (both silent): the holder is told by its deadline,
/// and the store still holds the lease then (nothing freed it under the holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_server_to_take_it_the_lease_ends_at_its_deadline() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let (pa, pb) = (
        FaultProxy::start(a.local_addr()).await,
        FaultProxy::start(b.local_addr()).await,
    );
    let c = client(&[url(pa.addr()), url(pb.addr())]).await;
    let key = Key::system(["client", "silent"]);
    let (lease, ctx) = c.acquire_lease(key.clone(), HOLD).await.unwrap();
    let token = lease.token();
    pa.set(Fault::Blackhole);
    pb.set(Fault::Blackhole);
    let reason = tokio::time::timeout(HOLD * 2, ctx.cancelled())
        .await
        .expect("told by the deadline");
    assert!(matches!(reason, CancelReason::Lost(_)), "{reason:?}");
    assert_eq!(
        holder(&store, &key).await,
        Some(token),
        "the lease left the store before its holder was told"
    );
    drop(lease);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Acquires and one-shot calls go to the next server when one cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_move_on_to_a_server_that_answers() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let c = client(&[url(a.local_addr()), url(b.local_addr())]).await;
    a.shutdown().await.unwrap();
    let key = Key::system(["client", "next"]);
    let (lease, _ctx) = c.acquire_lease(key.clone(), HOLD).await.unwrap();
    let info = c.lease_info(&key).await.unwrap().expect("held");
    assert_eq!(info.token, lease.token());
    assert_eq!(c.list("/system/client/", 0).await.unwrap().len(), 1);
    lease.release().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A server that cancels calls, says it is not serving or fails them without a code (as
/// one whose connection closes under a request does: CI met "operation was canceled"
/// and "transport error" right after a server's shutdown) passes each kind of call on
/// to the next server: acquire, info and
/// list, each from a fresh client whose first server is that one. A revoke moves on
/// only past `UNAVAILABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_move_on_from_a_server_that_cancels_them() {
    for code in [
        tonic::Code::Cancelled,
        tonic::Code::Unavailable,
        tonic::Code::Unknown,
    ] {
        let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
        let b = server_on(&store).await;
        let first = StatusServer::start(code, "operation was canceled").await;
        let urls = [url(first.addr()), url(b.local_addr())];
        let key = Key::system(["client", "cancelled"]);
        let (lease, ctx) = client(&urls)
            .await
            .acquire_lease(key.clone(), HOLD)
            .await
            .unwrap_or_else(|e| panic!("acquire past {code:?}: {e}"));
        let info = client(&urls).await.lease_info(&key).await;
        let info = info.unwrap_or_else(|e| panic!("info past {code:?}: {e}"));
        assert_eq!(info.map(|i| i.token), Some(lease.token()));
        let listed = client(&urls).await.list("/system/client/", 0).await;
        assert_eq!(listed.unwrap().len(), 1, "list past {code:?}");
        // A revoke moves on only past `UNAVAILABLE`: after the other two it may have
        // been carried out (tests/service/cancel_review.rs), and it says so.
        let revoked = client(&urls).await.revoke(&key).await;
        if code == tonic::Code::Unavailable {
            assert!(revoked.unwrap(), "revoke past {code:?}");
            let reason = tokio::time::timeout(HOLD, ctx.cancelled()).await;
            assert_eq!(reason.ok(), Some(CancelReason::Revoked), "{code:?}");
        } else {
            let e = revoked.expect_err("a revoke that may have run is not sent again");
            assert!(e.to_string().contains("operation was canceled"), "{e}");
            assert_eq!(ctx.reason(), None, "{code:?}");
            assert_eq!(holder(&store, &key).await, Some(lease.token()));
        }
        assert!(first.calls() >= 4, "{code:?}: {} calls", first.calls());
        drop(lease);
        b.shutdown().await.unwrap();
    }
}

/// A server that goes silent (its link blackholed: no error, no answer) is left for
/// another before the lease's deadline: the holder notices nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_left_for_another_in_time() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let pa = FaultProxy::start(a.local_addr()).await;
    let c = client(&[url(pa.addr()), url(b.local_addr())]).await;
    let key = Key::system(["client", "stall"]);
    let (lease, ctx) = c.acquire_lease(key.clone(), HOLD).await.unwrap();
    pa.set(Fault::Blackhole);
    tokio::time::sleep(HOLD * 3).await;
    assert_eq!(ctx.reason(), None, "the holder was told of a silent server");
    assert_eq!(holder(&store, &key).await, Some(lease.token()));
    lease.release().await.unwrap();
    assert_eq!(holder(&store, &key).await, None);
    // Its silent link would hold a graceful stop up: just drop it.
    drop(a);
    b.shutdown().await.unwrap();
}

/// A grant whose server drains between granting it and answering the heartbeat that
/// confirms it (an acquire with `wait` confirms its grant with one round trip) is
/// re-attached through another server, not dropped: the acquire succeeds with that
/// grant's token, and the key is not left taken with nobody to hold it until it
/// expires. (Found by the whole-stack checker, issue #21: such a drop during a rolling
/// restart left a key free of holders but taken for a whole TTL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_handed_over_before_its_confirmation_is_reattached() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    // A is far: every chunk takes 1 s each way.
    let far = FaultProxy::start(a.local_addr()).await;
    let options = ClientOptions::endpoints([url(far.addr()), url(b.local_addr())])
        .unwrap()
        .min_ttl(TTL)
        .request_timeout(Duration::from_secs(10));
    let c = ClientLeaser::connect_with(options).await.unwrap();
    // A first call, so that the connection to A is up before the delay.
    let key = Key::system(["client", "confirm"]);
    assert!(c.lease_info(&key).await.unwrap().is_none());
    far.set(Fault::Delay(Duration::from_secs(1)));
    let acquire = {
        let (c, key) = (c.clone(), key.clone());
        let options = leases::AcquireOptions::new(HOLD).wait(Duration::from_secs(5));
        tokio::spawn(async move { c.acquire_lease_with(key, options).await })
    };
    // A grants at about 1 s; the client hears it at 2 s and its heartbeat would reach
    // A at 3 s: A drains in between.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let token = holder(&store, &key).await.expect("granted by A");
    let drained = tokio::spawn(a.shutdown());
    let (lease, ctx) = acquire
        .await
        .unwrap()
        .expect("the grant re-attached through B");
    assert_eq!(lease.token(), token, "the grant A made, not a new one");
    drained.await.unwrap().unwrap();
    tokio::time::sleep(HOLD * 2).await;
    assert_eq!(ctx.reason(), None);
    assert_eq!(holder(&store, &key).await, Some(token));
    lease.release().await.unwrap();
    assert_eq!(holder(&store, &key).await, None);
    b.shutdown().await.unwrap();
}
