//! FTL's `AcquireLease` stream, closed by its client: the call ends only once the
//! stream's leases are released, so that a client that closed its side and saw the
//! call end can count on the key being free (a JVM client's `onCompleted`, or a
//! benchmark's acquire/close cycle on the same keys).
#![cfg(feature = "server")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseRequest;
use leases::service::LeaseServer;
use leases::LeaseManager;
use support::remote::{channel_at, ftl_open, loopback, FtlStream};
use support::slowed::{Op, Slowed};
use tonic::transport::Channel;
use tonic::Code;

/// Releases take this long (a slow database): long enough that a key not yet
/// released when the call ends is still held when the next acquire arrives.
const RELEASE_DELAY: Duration = Duration::from_secs(1);

/// A memory backend whose releases take [`RELEASE_DELAY`] (and never inline).
fn slow_releases() -> Slowed {
    Slowed::new(|op, _| (op == Op::Release).then_some(RELEASE_DELAY))
}

fn request(key: &[&str]) -> AcquireLeaseRequest {
    AcquireLeaseRequest {
        key: key.iter().map(|s| s.to_string()).collect(),
        ttl: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
    }
}

/// One FTL call: sends the request, reads its answer, closes its side and reads the
/// call to its end. The status it ended with (OK included).
async fn acquire_and_close(channel: &Channel, key: &[&str]) -> Result<(), tonic::Status> {
    let FtlStream { tx, mut answers } = ftl_open(channel, request(key)).await?;
    answers.message().await?.expect("one answer");
    drop(tx);
    while answers.message().await?.is_some() {}
    Ok(())
}

#[tokio::test]
async fn a_closed_call_ends_after_its_leases_are_released() {
    let manager = LeaseManager::builder()
        .backend(Arc::new(slow_releases()))
        .start()
        .await
        .unwrap();
    let server = LeaseServer::start(manager.clone(), loopback())
        .await
        .unwrap();
    let channel = channel_at(server.local_addr()).await;
    let key = ["module", "m", "job"];
    for round in 0..3 {
        let started = std::time::Instant::now();
        let ended = acquire_and_close(&channel, &key).await;
        assert!(ended.is_ok(), "round {round}: {ended:?}");
        // The call waited for the release.
        assert!(started.elapsed() >= RELEASE_DELAY, "round {round}");
    }
    // And a conflict is still a conflict.
    let FtlStream {
        tx,
        answers: mut holder,
    } = ftl_open(&channel, request(&key)).await.unwrap();
    holder.message().await.unwrap().expect("granted");
    let refused = acquire_and_close(&channel, &key).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), "lease already held");
    drop(tx);
    drop(holder);
    server.shutdown().await.unwrap();
    manager.shutdown().await;
}
