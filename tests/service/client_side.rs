//! A server that goes away under its clients: stopped, or silent behind a proxy.

use std::time::Duration;

use leases::service::LeaseServer;
use leases::{CancelReason, ClientLeaser, ClientOptions, Key, Leaser, LossCause};

use crate::support;
use crate::support::remote::{client_of, local, memory_manager, TTL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_is_lost_for_its_clients() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let c = client_of(&server).await;
    let (lease, ctx) = c
        .acquire_lease(Key::system(["stop"]), TTL * 3)
        .await
        .unwrap();
    server.shutdown().await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), ctx.cancelled())
        .await
        .expect("told at once");
    assert!(matches!(reason, CancelReason::Lost(_)), "{reason:?}");
    assert!(lease.release().await.is_err());
    // The server released it: the manager has no lease on the key.
    assert!(manager
        .lease_info(&Key::system(["stop"]))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_ends_the_context_at_its_deadline() {
    // A proxy between client and server that goes silent (blackhole) after the grant:
    // no answer comes, the stream does not break; the context must end by its
    // deadline, before the server's lease expires in the store.
    use support::proxy::FaultProxy;
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let proxy = FaultProxy::start(server.local_addr()).await;
    let c = ClientLeaser::connect_with(
        ClientOptions::new(format!("http://127.0.0.1:{}", proxy.port())).min_ttl(TTL),
    )
    .await
    .unwrap();
    let key = Key::system(["silent"]);
    let (_lease, ctx) = c.acquire_lease(key.clone(), TTL * 2).await.unwrap();
    let deadline = ctx.deadline().unwrap();
    proxy.set(support::proxy::Fault::Blackhole);
    let reason = tokio::time::timeout(TTL * 4, ctx.cancelled())
        .await
        .expect("ends");
    let ended_at = std::time::Instant::now();
    assert!(
        matches!(
            reason,
            CancelReason::Lost(LossCause::DeadlineExceeded)
                | CancelReason::Lost(LossCause::Disconnected(_))
        ),
        "{reason:?}"
    );
    // The server still holds the lease for at least a while after the client stopped:
    // the server only lets go a TTL after the last heartbeat it received.
    let info = manager.lease_info(&key).await.unwrap();
    assert!(
        info.is_some(),
        "the server let go before its client stopped acting (client deadline {deadline:?}, ended {ended_at:?})"
    );
}
