//! The remote-holder rule (issue #19): however a lease held for a client of the lease
//! service ends, the server gives the key back only when the client has surely heard
//! (its own release: the native `release` message, FTL's half-close) or when the time
//! it was promised has passed. Each test here is one way the key was freed too early
//! on main before the rule was one mechanism: a revoke through another server, a
//! second revoke, an HTTP/2 `RST_STREAM` of any code taken for a clean end, and a slow
//! acquire that stopped an FTL stream reading its other keys' heartbeats.
//!
//! Real sockets and the real clock; every bound is a lower bound the server must
//! respect whatever the machine's speed (the time a promise was made is measured from
//! before the request was sent, so the server's own promise can only be later).
#![cfg(feature = "server")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use leases::backend::{Backend, MemoryBackend};
use leases::service::LeaseServer;
use leases::{AcquireOptions, Key, LeaseError, Leaser};
use support::remote::{
    client_at, ftl_request, granted_at, local, manager_on, raw_hold, RawStream, FTL, TTL,
};
use support::slowed::{Op, Slowed};
use tokio::time::Instant;

// --------------------------------------------------------------- resets -----

/// Defect 3 (native): `RST_STREAM(NO_ERROR)` reached the handler as a clean end of the
/// request stream and the server released at once, while the client had been promised
/// its time left. `CANCEL` is checked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_hold_stream_keeps_the_key_until_its_promise() {
    for (i, reason) in [
        h2::Reason::NO_ERROR,
        h2::Reason::CANCEL,
        h2::Reason::INTERNAL_ERROR,
    ]
    .into_iter()
    .enumerate()
    {
        let manager = manager_on(Arc::new(MemoryBackend::new())).await;
        let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
        let key = Key::system(["reset", "native", &i.to_string()]);
        let (mut s, promised) = raw_hold(server.local_addr(), &key, TTL * 3).await;
        s.reset(reason);
        let at = granted_at(&manager, &key, TTL * 10).await;
        assert!(
            at >= promised,
            "RST_STREAM({reason:?}): the key was granted {:?} before the promise to the \
             reset client ran out",
            promised - at
        );
        server.shutdown().await.unwrap();
    }
}

/// Defect 3 (FTL): a reset FTL stream (any code) released at once; only the client's
/// half-close is FTL's release. The client may act until the heartbeat window of its
/// last request has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_ftl_stream_keeps_the_key_until_its_window_runs_out() {
    for (i, reason) in [h2::Reason::NO_ERROR, h2::Reason::CANCEL]
        .into_iter()
        .enumerate()
    {
        let manager = manager_on(Arc::new(MemoryBackend::new())).await;
        let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
        let key = Key::system(["reset", "ftl", &i.to_string()]);
        let mut s = RawStream::open(server.local_addr(), FTL).await;
        let sent = Instant::now();
        s.send(&ftl_request(&key, TTL * 2));
        let _: leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseResponse =
            s.next().await.expect("the acquire's answer");
        s.reset(reason);
        let at = granted_at(&manager, &key, TTL * 10).await;
        assert!(
            at >= sent + TTL * 2,
            "RST_STREAM({reason:?}): the key was granted {:?} after the reset FTL \
             client's last request, within its 2 s window",
            at - sent
        );
        server.shutdown().await.unwrap();
    }
}

/// FTL's release is a half-close, even when a reset follows at once (FTL's Go runtime
/// closes its request side, then its response side): the keys go back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ftl_half_close_then_reset_is_still_a_release() {
    let manager = manager_on(Arc::new(MemoryBackend::new())).await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let key = Key::system(["reset", "ftl-release"]);
    let mut s = RawStream::open(server.local_addr(), FTL).await;
    s.send(&ftl_request(&key, TTL * 30));
    let _: leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseResponse =
        s.next().await.expect("the acquire's answer");
    let closed = Instant::now();
    s.send.send_data(Bytes::new(), true).unwrap();
    // Let the half-close reach the wire first (h2 drops frames still queued when the
    // stream is reset; FTL's Go runtime writes its half-close before it resets).
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.reset(h2::Reason::CANCEL);
    let at = granted_at(&manager, &key, TTL * 20).await;
    assert!(
        at - closed < TTL * 10,
        "a released key (window 30 s) came back only after {:?}",
        at - closed
    );
    server.shutdown().await.unwrap();
}

// -------------------------------------------------------------- revokes -----

/// Defect 1: revoked through another server on the same store, the key was given back
/// by the holder's server as soon as its renewal saw `Revoked`, while the remote
/// holder (which had not heard yet) had been promised more time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_through_another_server_keeps_the_key_until_the_holder_hears() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let a = manager_on(store.clone()).await;
    let b = manager_on(store.clone()).await;
    let server_a = LeaseServer::start(a.clone(), local()).await.unwrap();
    let server_b = LeaseServer::start(b.clone(), local()).await.unwrap();
    let key = Key::system(["revoke", "elsewhere"]);
    // A holder that never reads again: it has not heard of anything after its grant.
    let (_s, promised) = raw_hold(server_a.local_addr(), &key, TTL * 4).await;
    let admin_b = client_at(server_b.local_addr()).await;
    assert!(admin_b.revoke(&key).await.unwrap());
    let at = granted_at(&b, &key, TTL * 20).await;
    assert!(
        at >= promised,
        "two holders: granted through the other server {:?} before the revoked remote \
         holder's promise ran out",
        promised - at
    );
}

/// Defect 2: a second revoke through the same server found the remote holder's
/// context already ended, no longer counted it as a holder, and freed the key at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_revoke_keeps_the_key_until_the_holder_hears() {
    let manager = manager_on(Arc::new(MemoryBackend::new())).await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let key = Key::system(["revoke", "twice"]);
    let (_s, promised) = raw_hold(server.local_addr(), &key, TTL * 4).await;
    let admin = client_at(server.local_addr()).await;
    assert!(admin.revoke(&key).await.unwrap());
    assert!(
        admin.revoke(&key).await.unwrap(),
        "the key is still taken by the remote holder"
    );
    let at = granted_at(&manager, &key, TTL * 20).await;
    assert!(
        at >= promised,
        "two holders: granted {:?} before the twice-revoked remote holder's promise ran out",
        promised - at
    );
}

/// A `ClientLeaser` holder that keeps its key until it releases it
/// (`keep_until_released`, as `leases run` does): after a revoke the key stays taken
/// while the holder still holds its `Lease` (up to its deadline), and goes back as
/// soon as it lets go. Without the option, the key goes back as soon as the client
/// has heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_holder_gives_the_key_back_when_it_lets_go() {
    let manager = manager_on(Arc::new(MemoryBackend::new())).await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let c = client_at(server.local_addr()).await;
    let kept = Key::system(["revoke", "kept"]);
    let options = AcquireOptions::new(TTL * 6).keep_until_released();
    let (lease, ctx) = c.acquire_lease_with(kept.clone(), options).await.unwrap();
    assert!(c.revoke(&kept).await.unwrap());
    let reason = tokio::time::timeout(TTL * 5, ctx.cancelled())
        .await
        .unwrap();
    assert_eq!(reason, leases::CancelReason::Revoked);
    // Still held by us: nobody gets it while we have not let go.
    tokio::time::sleep(TTL).await;
    assert!(matches!(
        manager.acquire_lease(kept.clone(), TTL).await,
        Err(LeaseError::Conflict)
    ));
    let let_go = Instant::now();
    drop(lease);
    let at = granted_at(&manager, &kept, TTL * 20).await;
    assert!(
        at - let_go < TTL * 2,
        "the key came back {:?} after its holder let go",
        at - let_go
    );

    let plain = Key::system(["revoke", "plain"]);
    let (_lease, ctx) = c.acquire_lease(plain.clone(), TTL * 6).await.unwrap();
    let revoked = Instant::now();
    assert!(c.revoke(&plain).await.unwrap());
    let _ = tokio::time::timeout(TTL * 5, ctx.cancelled())
        .await
        .unwrap();
    let at = granted_at(&manager, &plain, TTL * 20).await;
    assert!(
        at - revoked < TTL * 3,
        "a revoked holder that has heard gives the key back at once; it came back after {:?}",
        at - revoked
    );
}

// ---------------------------------------------------------- FTL liveness -----

/// Defect 6: a slow acquire of one key (3 s) stopped the FTL stream reading, so the
/// heartbeats of its other keys (window 2 s) were not read and they lapsed with
/// `RESOURCE_EXHAUSTED`. The stream must keep reading while an acquire runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_acquire_does_not_stop_an_ftl_stream_reading() {
    let slow = Key::system(["ftl", "slow"]);
    let slowed = slow.clone();
    let backend =
        Slowed::new(move |op, key| (op == Op::Acquire && *key == slowed).then_some(TTL * 3));
    let manager = manager_on(Arc::new(backend)).await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let fast = Key::system(["ftl", "fast"]);
    let mut s = RawStream::open(server.local_addr(), FTL).await;
    type Answer = leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseResponse;
    s.send(&ftl_request(&fast, TTL * 2));
    let _: Answer = s.next().await.expect("fast is granted");
    s.send(&ftl_request(&slow, TTL * 6));
    // Heartbeats of `fast` every TTL/2 for 4 s, as FTL's runtimes send them.
    for _ in 0..8 {
        tokio::time::sleep(TTL / 2).await;
        s.send(&ftl_request(&fast, TTL * 2));
    }
    // Every answer comes, in order: slow's, then the heartbeats'.
    for i in 0..9 {
        let answer: Option<Answer> = tokio::time::timeout(TTL * 5, s.next()).await.unwrap();
        assert!(
            answer.is_some(),
            "the stream ended after {i} answers: a heartbeat was not read while the slow \
             acquire ran (trailers: {:?})",
            s.body.trailers().await
        );
    }
    assert!(matches!(
        manager.acquire_lease(fast.clone(), TTL).await,
        Err(LeaseError::Conflict)
    ));
}
