//! A server that misbehaves: a `Leases` server reporting absurd time left must neither
//! panic the client nor stretch its context.

use std::net::SocketAddr;
use std::time::Duration;

use leases::proto::leases::v1::hold_request::Kind as In;
use leases::proto::leases::v1::hold_response::Kind as Out;
use leases::proto::leases::v1::{HoldRequest, HoldResponse};
use leases::{AcquireOptions, Key, Leaser};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::left;
use crate::support::remote::{client_at, TTL};

/// A `Leases` server that grants every acquire with a fixed token and time left, and
/// answers every heartbeat with the same time left.
struct Liar {
    time_left: prost_types::Duration,
}

type LiarStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<HoldResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl leases::proto::leases::v1::leases_server::Leases for Liar {
    type HoldStream = LiarStream;

    async fn hold(
        &self,
        request: tonic::Request<tonic::Streaming<HoldRequest>>,
    ) -> Result<tonic::Response<LiarStream>, tonic::Status> {
        use leases::proto::leases::v1::{Granted, Renewed};
        let mut incoming = request.into_inner();
        let (tx, mut rx) = mpsc::channel(64);
        let time_left = self.time_left;
        tokio::spawn(async move {
            while let Ok(Some(m)) = incoming.message().await {
                let kind = match m.kind {
                    Some(In::Acquire(_)) => Out::Granted(Granted {
                        token: 7,
                        time_left: Some(time_left),
                    }),
                    _ => Out::Renewed(Renewed {
                        time_left: Some(time_left),
                    }),
                };
                if tx
                    .send(Ok(HoldResponse { kind: Some(kind) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
        )))
    }

    // A server from before `HoldMany`: the client falls back to `Hold` streams.
    type HoldManyStream = std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<leases::proto::leases::v1::HoldManyResponse, tonic::Status>,
                > + Send,
        >,
    >;

    async fn hold_many(
        &self,
        _: tonic::Request<tonic::Streaming<leases::proto::leases::v1::HoldManyRequest>>,
    ) -> Result<tonic::Response<Self::HoldManyStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("liar"))
    }

    async fn revoke(
        &self,
        _: tonic::Request<leases::proto::leases::v1::KeyRequest>,
    ) -> Result<tonic::Response<leases::proto::leases::v1::RevokeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("liar"))
    }

    async fn info(
        &self,
        _: tonic::Request<leases::proto::leases::v1::KeyRequest>,
    ) -> Result<tonic::Response<leases::proto::leases::v1::InfoResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("liar"))
    }

    async fn list(
        &self,
        _: tonic::Request<leases::proto::leases::v1::ListRequest>,
    ) -> Result<tonic::Response<leases::proto::leases::v1::ListResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("liar"))
    }
}

async fn start_liar(time_left: prost_types::Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(leases::proto::leases::v1::leases_server::LeasesServer::new(
                Liar { time_left },
            ))
            .serve_with_incoming(incoming),
    );
    addr
}

/// The time left comes from the network: a server (buggy, or not the lease service)
/// that reports more than the TTL, up to the largest protobuf duration, must neither
/// panic the client (instant overflow) nor stretch the holder's context beyond the
/// TTL it asked for: no honest server can promise more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reporting_absurd_time_left_neither_panics_nor_stretches_the_context() {
    for (i, time_left) in [
        prost_types::Duration {
            seconds: i64::MAX,
            nanos: 999_999_999,
        },
        prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let addr = start_liar(time_left).await;
        for wait in [None, Some(Duration::from_secs(1))] {
            let key = Key::system(["review", "liar", &i.to_string()]);
            let outcome = tokio::spawn(async move {
                let c = client_at(addr).await;
                let mut options = AcquireOptions::new(TTL);
                if let Some(w) = wait {
                    options = options.wait(w);
                }
                let (_lease, ctx) = c.acquire_lease_with(key, options).await.unwrap();
                left(&ctx)
            })
            .await;
            match outcome {
                Ok(left) => assert!(
                    left <= TTL,
                    "time left {time_left:?} (wait {wait:?}): the context runs {left:?} more, \
                     beyond the TTL {TTL:?}"
                ),
                Err(panic) => {
                    panic!("time left {time_left:?} (wait {wait:?}): the client panicked: {panic}")
                }
            }
        }
    }
}
