//! A stream that never sends a request kept a task and its connection's only slot until
//! shutdown (a papercut of issue #19); now it ends with `DEADLINE_EXCEEDED` and frees the
//! slot. One body, run on each of the two streaming protocols.

use std::fmt::Debug;
use std::time::Duration;

use futures_util::Stream;
use leases::proto::leases::v1::hold_request::Kind as In;
use leases::proto::leases::v1::leases_client::LeasesClient;
use leases::proto::leases::v1::{Acquire, HoldRequest, HoldResponse};
use leases::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
use leases::proto::xyz::block::ftl::lease::v1::{AcquireLeaseRequest, AcquireLeaseResponse};
use leases::service::{LeaseServer, ServeOptions};
use leases::LeaseManager;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::servers::{local, manager};

/// A streaming protocol of the lease service, as the silent stream's test drives it.
trait Protocol {
    type Request: Send + 'static;
    type Answer: Debug;
    /// A request for `/system/after-silence` with a TTL of 2 s.
    fn acquire_after_silence() -> Self::Request;
    /// Opens a stream on `channel` that sends `requests`; its answers.
    async fn open(
        channel: Channel,
        requests: impl Stream<Item = Self::Request> + Send + 'static,
    ) -> Streaming<Self::Answer>;
}

/// Our native protocol (`leases.v1.Leases/Hold`).
struct Native;

impl Protocol for Native {
    type Request = HoldRequest;
    type Answer = HoldResponse;

    fn acquire_after_silence() -> HoldRequest {
        HoldRequest {
            kind: Some(In::Acquire(Acquire {
                key: "/system/after-silence".into(),
                ttl: Some(two_seconds()),
                metadata: Vec::new(),
                wait: None,
                resume: None,
            })),
        }
    }

    async fn open(
        channel: Channel,
        requests: impl Stream<Item = HoldRequest> + Send + 'static,
    ) -> Streaming<HoldResponse> {
        LeasesClient::new(channel)
            .hold(requests)
            .await
            .unwrap()
            .into_inner()
    }
}

/// FTL's protocol (`xyz.block.ftl.lease.v1.LeaseService/AcquireLease`).
struct Ftl;

impl Protocol for Ftl {
    type Request = AcquireLeaseRequest;
    type Answer = AcquireLeaseResponse;

    fn acquire_after_silence() -> AcquireLeaseRequest {
        AcquireLeaseRequest {
            key: vec!["system".into(), "after-silence".into()],
            ttl: Some(two_seconds()),
        }
    }

    async fn open(
        channel: Channel,
        requests: impl Stream<Item = AcquireLeaseRequest> + Send + 'static,
    ) -> Streaming<AcquireLeaseResponse> {
        LeaseServiceClient::new(channel)
            .acquire_lease(requests)
            .await
            .unwrap()
            .into_inner()
    }
}

fn two_seconds() -> prost_types::Duration {
    prost_types::Duration {
        seconds: 2,
        nanos: 0,
    }
}

/// A server that allows one stream per connection, and a channel to it.
async fn one_stream_server() -> (LeaseManager, LeaseServer, Channel) {
    let manager = manager().await;
    let options = ServeOptions {
        max_streams_per_connection: 1,
        first_request_timeout: Duration::from_millis(300),
        ..local()
    };
    let server = LeaseServer::start(manager.clone(), options).await.unwrap();
    let addr = server.local_addr();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (manager, server, channel)
}

/// A request stream that sends `first` (if any) and then nothing until dropped.
fn requests<T: Send + 'static>(
    first: Option<T>,
) -> (
    mpsc::UnboundedSender<T>,
    impl Stream<Item = T> + Send + 'static,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some(first) = first {
        tx.send(first).unwrap();
    }
    (
        tx,
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
    )
}

/// A silent stream of protocol `P` ends with `DEADLINE_EXCEEDED`; then the connection's
/// one stream can hold a lease.
async fn a_silent_stream_ends_and_frees_its_slot<P: Protocol>() {
    let (manager, server, channel) = one_stream_server().await;
    let (_silent, outgoing) = requests::<P::Request>(None);
    let mut answers = P::open(channel.clone(), outgoing).await;
    let end = tokio::time::timeout(Duration::from_secs(5), answers.message()).await;
    match end {
        Ok(Err(status)) => assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}"),
        other => panic!("the silent stream did not end: {other:?}"),
    }
    // Its slot is free again: the connection's one stream can hold a lease.
    let (_keep, outgoing) = requests(Some(P::acquire_after_silence()));
    let mut answers = P::open(channel, outgoing).await;
    let granted = answers.message().await;
    assert!(matches!(granted, Ok(Some(_))), "{granted:?}");
    drop(answers);
    server.shutdown().await.unwrap();
    manager.shutdown().await;
}

/// On the native protocol.
#[tokio::test]
async fn a_silent_native_stream_ends_and_frees_its_slot() {
    a_silent_stream_ends_and_frees_its_slot::<Native>().await;
}

/// On FTL's protocol.
#[tokio::test]
async fn a_silent_ftl_stream_ends_and_frees_its_slot() {
    a_silent_stream_ends_and_frees_its_slot::<Ftl>().await;
}
