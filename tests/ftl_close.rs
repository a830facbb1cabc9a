//! FTL's `AcquireLease` stream, closed by its client: the call ends only once the
//! stream's leases are released, so that a client that closed its side and saw the
//! call end can count on the key being free (a JVM client's `onCompleted`, or a
//! benchmark's acquire/close cycle on the same keys).
#![cfg(feature = "server")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::backend::{AcquireOutcome, Backend, FreedKeys, MemoryBackend, RenewOutcome};
use leases::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseRequest;
use leases::service::{LeaseServer, ServeOptions};
use leases::{BackendError, Key, LeaseInfo, LeaseManager};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

/// Releases take this long (a slow database): long enough that a key not yet
/// released when the call ends is still held when the next acquire arrives.
const RELEASE_DELAY: Duration = Duration::from_secs(1);

/// A memory backend whose releases take [`RELEASE_DELAY`] (and never inline).
#[derive(Default)]
struct SlowReleases {
    inner: MemoryBackend,
}

#[async_trait]
impl Backend for SlowReleases {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        self.inner.acquire(key, ttl, metadata).await
    }
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.inner.renew(key, token, ttl).await
    }
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        tokio::time::sleep(RELEASE_DELAY).await;
        self.inner.release(key, token).await
    }
    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        self.inner.revoke(key).await
    }
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        self.inner.info(key).await
    }
    fn subscribe_freed(&self) -> FreedKeys {
        self.inner.subscribe_freed()
    }
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
    let (tx, mut rx) = mpsc::unbounded_channel();
    tx.send(request(key)).unwrap();
    let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut answers = LeaseServiceClient::new(channel.clone())
        .acquire_lease(outgoing)
        .await?
        .into_inner();
    answers.message().await?.expect("one answer");
    drop(tx);
    while answers.message().await?.is_some() {}
    Ok(())
}

#[tokio::test]
async fn a_closed_call_ends_after_its_leases_are_released() {
    let manager = LeaseManager::builder()
        .backend(Arc::new(SlowReleases::default()))
        .start()
        .await
        .unwrap();
    let server = LeaseServer::start(
        manager.clone(),
        ServeOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..ServeOptions::default()
        },
    )
    .await
    .unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let key = ["module", "m", "job"];
    for round in 0..3 {
        let started = std::time::Instant::now();
        let ended = acquire_and_close(&channel, &key).await;
        assert!(ended.is_ok(), "round {round}: {ended:?}");
        // The call waited for the release.
        assert!(started.elapsed() >= RELEASE_DELAY, "round {round}");
    }
    // And a conflict is still a conflict.
    let (tx, mut rx) = mpsc::unbounded_channel();
    tx.send(request(&key)).unwrap();
    let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut holder = LeaseServiceClient::new(channel.clone())
        .acquire_lease(outgoing)
        .await
        .unwrap()
        .into_inner();
    holder.message().await.unwrap().expect("granted");
    let refused = acquire_and_close(&channel, &key).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), "lease already held");
    drop(tx);
    drop(holder);
    server.shutdown().await.unwrap();
    manager.shutdown().await;
}
