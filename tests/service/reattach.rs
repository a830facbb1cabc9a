//! Re-attaching a lease (`acquire` with `resume`): on the same server after a broken
//! stream, through another server of the same store, from a server that drains; and
//! what the old server must never do meanwhile (free a key its client re-attached).
//!
//! Raw HTTP/2 streams, so that a test decides exactly how a stream ends; the store is
//! checked directly ([`Backend::info`]) for who holds the key.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, MemoryBackend};
use leases::proto::leases::v1::ended::Reason;
use leases::proto::leases::v1::hold_request::Kind as In;
use leases::proto::leases::v1::hold_response::Kind as Out;
use leases::proto::leases::v1::{HoldRequest, HoldResponse, Release};
use leases::service::LeaseServer;
use leases::Key;
use tonic::Code;

use crate::support::remote::{local, manager_on, raw_hold, raw_resume, RawStream, TTL};
use crate::support::shared_store::SharedStore;

/// The TTL the leases here are held with.
const HOLD: Duration = Duration::from_secs(3);

/// The token of the live lease on `key` in `store`, if any.
async fn holder(store: &Arc<dyn Backend>, key: &Key) -> Option<u64> {
    store.info(key).await.unwrap().map(|i| i.token)
}

/// Heartbeats on `s` every HOLD/4 for `for_`, each answered `renewed`.
async fn keep(s: &mut RawStream, for_: Duration) {
    let heard = crate::support::remote::raw_heartbeats(&mut [s], for_, HOLD / 4).await;
    heard.unwrap_or_else(|other| panic!("a heartbeat answered {other}"));
}

/// Releases on `s`, confirmed.
async fn release(s: &mut RawStream) {
    s.send(&HoldRequest {
        kind: Some(In::Release(Release {})),
    });
    loop {
        match s.next::<HoldResponse>().await {
            Some(HoldResponse {
                kind: Some(Out::Ended(e)),
            }) => {
                assert_eq!(e.reason, Reason::Released as i32, "{e:?}");
                return;
            }
            Some(_) => {}
            None => panic!("the release was not confirmed"),
        }
    }
}

/// The `ended` answer that ends `s`.
async fn ended(s: &mut RawStream) -> leases::proto::leases::v1::Ended {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next::<HoldResponse>())
            .await
            .expect("an answer within 10 s")
        {
            Some(HoldResponse {
                kind: Some(Out::Ended(e)),
            }) => return e,
            Some(_) => {}
            None => panic!("the stream ended without `ended`"),
        }
    }
}

async fn server_on(store: &Arc<dyn Backend>) -> LeaseServer {
    let manager = manager_on(store.clone()).await;
    LeaseServer::start(manager, local()).await.unwrap()
}

/// A client whose stream broke (reset) re-attaches on the same server: same token; the
/// old stream's promise running out frees nothing; its release frees the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_reattaches_on_the_same_server() {
    for store in [
        Arc::new(MemoryBackend::new()) as Arc<dyn Backend>,
        Arc::new(SharedStore::default()),
    ] {
        let server = server_on(&store).await;
        let key = Key::system(["reattach", "same"]);
        let (mut old, _) = raw_hold(server.local_addr(), &key, HOLD).await;
        let token = holder(&store, &key).await.expect("held");
        old.reset(h2::Reason::CANCEL);
        let (mut s, again, _) = raw_resume(server.local_addr(), &key, HOLD, token)
            .await
            .expect("re-attached");
        assert_eq!(again, token, "a re-attached lease keeps its token");
        // Past the old stream's promise and a whole TTL more: still ours.
        keep(&mut s, HOLD * 2).await;
        assert_eq!(holder(&store, &key).await, Some(token));
        release(&mut s).await;
        assert_eq!(holder(&store, &key).await, None, "released at once");
        server.shutdown().await.unwrap();
    }
}

/// A resume takes the lease over from a stream of the same server that still lives (its
/// client lost it on its side only): that stream ends, the new one holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_takes_over_a_live_stream() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let server = server_on(&store).await;
    let key = Key::system(["reattach", "live"]);
    let (mut old, _) = raw_hold(server.local_addr(), &key, HOLD).await;
    let token = holder(&store, &key).await.unwrap();
    let (mut s, again, _) = raw_resume(server.local_addr(), &key, HOLD, token)
        .await
        .expect("re-attached");
    assert_eq!(again, token);
    assert!(old.next::<HoldResponse>().await.is_none());
    let status = old.status().await;
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    keep(&mut s, HOLD).await;
    release(&mut s).await;
    assert_eq!(holder(&store, &key).await, None);
    server.shutdown().await.unwrap();
}

/// Through another server of the same store: the lease moves, and the server whose
/// stream broke never frees it, neither when its promise runs out nor later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_server_never_frees_a_lease_reattached_elsewhere() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let key = Key::system(["reattach", "elsewhere"]);
    let (mut old, _) = raw_hold(a.local_addr(), &key, HOLD).await;
    let token = holder(&store, &key).await.unwrap();
    old.reset(h2::Reason::CANCEL);
    let (mut s, again, _) = raw_resume(b.local_addr(), &key, HOLD, token)
        .await
        .expect("re-attached through the other server");
    assert_eq!(again, token);
    // Server A's promise runs out within HOLD: it lets go without releasing.
    keep(&mut s, HOLD * 3).await;
    assert_eq!(
        holder(&store, &key).await,
        Some(token),
        "the key was freed under its re-attached holder"
    );
    release(&mut s).await;
    assert_eq!(holder(&store, &key).await, None);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A draining server (shutdown) on a shared store hands its clients over at once
/// (`HANDED_OVER`), without waiting out their promises, and frees nothing: the client
/// re-attaches through another server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_hands_its_leases_over() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let key = Key::system(["reattach", "drain"]);
    let (mut old, _) = raw_hold(a.local_addr(), &key, Duration::from_secs(30)).await;
    let token = holder(&store, &key).await.unwrap();
    let started = tokio::time::Instant::now();
    let drained = tokio::spawn(a.shutdown());
    let e = ended(&mut old).await;
    assert_eq!(e.reason, Reason::HandedOver as i32, "{e:?}");
    drained.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the drain waited {:?}, as if for the 30 s promise",
        started.elapsed()
    );
    assert_eq!(holder(&store, &key).await, Some(token), "left in the store");
    // A lease keeps its TTL: a re-attach with another is refused, and changes nothing.
    let refused = raw_resume(b.local_addr(), &key, HOLD, token).await;
    let status = refused.err().expect("another TTL is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (mut s, again, _) = raw_resume(b.local_addr(), &key, Duration::from_secs(30), token)
        .await
        .expect("re-attached through the other server");
    assert_eq!(again, token);
    keep(&mut s, HOLD).await;
    release(&mut s).await;
    b.shutdown().await.unwrap();
}

/// On the memory backend the leases die with their server: a stopping server says
/// `SHUTDOWN`, not `HANDED_OVER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_server_that_stops_does_not_hand_over() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let server = server_on(&store).await;
    let key = Key::system(["reattach", "memory"]);
    let (mut old, _) = raw_hold(server.local_addr(), &key, HOLD).await;
    let stopped = tokio::spawn(server.shutdown());
    let e = ended(&mut old).await;
    assert_eq!(e.reason, Reason::Shutdown as i32, "{e:?}");
    stopped.await.unwrap().unwrap();
}

/// A resume of a lease that has ended, or with another token, is refused with
/// `FAILED_PRECONDITION` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_lease_that_is_not_held_is_refused() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let server = server_on(&store).await;
    let key = Key::system(["reattach", "gone"]);
    let (mut s, _) = raw_hold(server.local_addr(), &key, HOLD).await;
    let token = holder(&store, &key).await.unwrap();
    for wrong in [token + 1, token - 1] {
        let refused = raw_resume(server.local_addr(), &key, HOLD, wrong).await;
        let status = refused.err().expect("a wrong token is refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
    assert_eq!(holder(&store, &key).await, Some(token));
    release(&mut s).await;
    let refused = raw_resume(server.local_addr(), &key, HOLD, token).await;
    let status = refused.err().expect("a released lease is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(holder(&store, &key).await, None);
    // TTL is the managers' minimum; HOLD must be above it.
    assert!(HOLD > TTL);
    server.shutdown().await.unwrap();
}

/// A resume through a server where someone else waits for the key: the lease is live in
/// the store, so that server takes it back at once, and the waiter waits on. (Found by
/// the whole-stack checker, issue #21: a holder whose server restarted could not
/// re-attach through a server where a contender waited, and lost its live lease, as a
/// leader would on every rolling restart while its standbys wait through the others.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_the_other_server_does_not_block_a_resume() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (server_on(&store).await, server_on(&store).await);
    let key = Key::system(["reattach", "waiter"]);
    let (mut old, _) = raw_hold(a.local_addr(), &key, HOLD).await;
    let token = holder(&store, &key).await.unwrap();
    let waiter = {
        let (addr, key) = (b.local_addr(), key.clone());
        tokio::spawn(async move {
            let c = crate::support::remote::client_at(addr).await;
            let options = leases::AcquireOptions::new(HOLD).wait(Duration::from_secs(30));
            leases::Leaser::acquire_lease_with(&c, key, options).await
        })
    };
    // The waiter is waiting through B.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    old.reset(h2::Reason::CANCEL);
    let (mut s, again, _) = raw_resume(b.local_addr(), &key, HOLD, token)
        .await
        .expect("re-attached through the server the waiter waits on");
    assert_eq!(again, token);
    keep(&mut s, HOLD * 2).await;
    assert_eq!(holder(&store, &key).await, Some(token));
    assert!(!waiter.is_finished(), "the waiter got a key that was held");
    release(&mut s).await;
    // Now the waiter gets it.
    let (lease, _ctx) = waiter.await.unwrap().expect("the waiter got the key");
    assert!(lease.token() > token);
    lease.release().await.unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
