//! Input no server or client may panic on: very long waits, malformed native `Hold`
//! requests (each with its clear status), unread streams, abandoned waits.

use std::net::SocketAddr;
use std::time::Duration;

use leases::proto::leases::v1::hold_request::Kind as In;
use leases::proto::leases::v1::hold_response::Kind as Out;
use leases::proto::leases::v1::leases_client::LeasesClient;
use leases::proto::leases::v1::{Acquire, Heartbeat, HoldRequest, HoldResponse};
use leases::service::LeaseServer;
use leases::{AcquireOptions, Key, Leaser};
use tokio::sync::mpsc;
use tonic::Code;

use crate::grab;
use crate::support::remote::{channel_at, client_at, local, memory_manager, TTL};

/// `AcquireOptions::wait` takes any duration; the client adds it to its request
/// timeout and sends it as the call's `grpc-timeout`. A very long wait (on a free key:
/// granted at once) must not panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_long_wait_does_not_panic_the_client() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let addr = server.local_addr();
    for (i, wait) in [
        Duration::from_secs(1_000_000_000_000),
        Duration::MAX,
        Duration::from_secs(u64::MAX),
    ]
    .into_iter()
    .enumerate()
    {
        // In a task of its own, so that a panic is reported as this case's failure.
        let key = Key::system(["review", "long-wait", &i.to_string()]);
        let outcome = tokio::spawn(async move {
            let c = client_at(addr).await;
            match c
                .acquire_lease_with(key, AcquireOptions::new(TTL).wait(wait))
                .await
            {
                Ok((lease, _ctx)) => lease.release().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) | Ok(Err(_)) => {}
            Err(panic) => panic!("wait {wait:?}: the client panicked: {panic}"),
        }
    }
}

// ------------------------------------------------------- checked and sound ---

async fn hold_stream(
    addr: SocketAddr,
    first: HoldRequest,
) -> (
    mpsc::UnboundedSender<HoldRequest>,
    Result<tonic::Streaming<HoldResponse>, tonic::Status>,
) {
    let ch = channel_at(addr).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tx.send(first).unwrap();
    let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let answers = LeasesClient::new(ch)
        .hold(outgoing)
        .await
        .map(|r| r.into_inner());
    (tx, answers)
}

fn acquire(
    key: &str,
    ttl: Option<prost_types::Duration>,
    wait: Option<prost_types::Duration>,
) -> HoldRequest {
    HoldRequest {
        kind: Some(In::Acquire(Acquire {
            key: key.into(),
            ttl,
            metadata: Vec::new(),
            wait,
            resume: None,
        })),
    }
}

fn pd(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

/// Malformed native `Hold` input gets a clear status, never a panic or a hang, and
/// the service keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_bad_input_gets_clear_statuses() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let addr = server.local_addr();
    let cases: Vec<(&str, HoldRequest, Code)> = vec![
        (
            "heartbeat first",
            HoldRequest {
                kind: Some(In::Heartbeat(Heartbeat {})),
            },
            Code::InvalidArgument,
        ),
        (
            "empty request",
            HoldRequest { kind: None },
            Code::InvalidArgument,
        ),
        (
            "no ttl",
            acquire("/system/x", None, None),
            Code::InvalidArgument,
        ),
        (
            "negative ttl",
            acquire("/system/x", pd(-1, 0), None),
            Code::InvalidArgument,
        ),
        (
            "bad nanos",
            acquire("/system/x", pd(1, -5), None),
            Code::InvalidArgument,
        ),
        (
            "huge ttl",
            acquire("/system/x", pd(i64::MAX, 999_999_999), None),
            Code::InvalidArgument,
        ),
        (
            "short ttl",
            acquire("/system/x", pd(0, 1), None),
            Code::InvalidArgument,
        ),
        (
            "bad key",
            acquire("nope", pd(1, 0), None),
            Code::InvalidArgument,
        ),
        (
            "empty key",
            acquire("", pd(1, 0), None),
            Code::InvalidArgument,
        ),
        (
            "negative wait",
            acquire("/system/x", pd(1, 0), pd(-1, 0)),
            Code::InvalidArgument,
        ),
    ];
    for (what, first, code) in cases {
        let (_tx, answers) = hold_stream(addr, first).await;
        let status = match answers {
            Err(s) => s,
            Ok(mut a) => tokio::time::timeout(Duration::from_secs(5), a.message())
                .await
                .unwrap_or_else(|_| panic!("{what}: no answer within 5 s"))
                .expect_err(what),
        };
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }
    // A huge wait on a free key is granted at once (no overflow in the server).
    let (tx, answers) = hold_stream(
        addr,
        acquire("/system/huge-wait", pd(1, 0), pd(i64::MAX, 999_999_999)),
    )
    .await;
    let mut answers = answers.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first.kind, Some(Out::Granted(_))), "{first:?}");
    drop(tx);
    // The service still serves.
    let c = client_at(addr).await;
    let (lease, _) = c
        .acquire_lease(Key::system(["review", "after"]), TTL)
        .await
        .unwrap();
    lease.release().await.unwrap();
}

/// A native client that sends heartbeats and never reads its answers is treated as
/// gone after 64 unread: its stream must end with the documented status
/// (`RESOURCE_EXHAUSTED`), readable once the client does read, not just stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_native_stream_ends_with_its_status() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let (tx, answers) = hold_stream(
        server.local_addr(),
        acquire("/system/review/unread", pd(30, 0), None),
    )
    .await;
    let mut answers = answers.unwrap();
    // Far more answers than the connection's buffers and windows hold.
    for _ in 0..300_000 {
        if tx
            .send(HoldRequest {
                kind: Some(In::Heartbeat(Heartbeat {})),
            })
            .is_err()
        {
            break;
        }
    }
    // Give the server time to fill everything up and give up on us.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The grant and the heartbeats answered before the cut.
    let (renewed, end) = crate::support::remote::answers_to_end(&mut answers).await;
    assert!(
        renewed < 300_000,
        "the server answered every heartbeat: the limit never hit"
    );
    match end {
        Some(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        None => panic!("after {renewed} answers the stream ended without its status"),
    }
}

/// A caller that gives up on an acquire that waits (its future is dropped) leaves no
/// lease behind: when the holder releases, the key is free for the next one, not
/// granted to a stream nobody reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_waiting_acquire_leaves_no_ghost_holder() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let c = client_at(server.local_addr()).await;
    let key = Key::system(["review", "ghost"]);
    let ttl = TTL * 10;
    let (holder, _hctx) = c.acquire_lease(key.clone(), ttl).await.unwrap();
    let waiting = c.acquire_lease_with(
        key.clone(),
        AcquireOptions::new(ttl).wait(Duration::from_secs(8)),
    );
    assert!(tokio::time::timeout(Duration::from_millis(300), waiting)
        .await
        .is_err());
    holder.release().await.unwrap();
    // Nobody holds the key: it is free within a moment, not after the ghost's TTL.
    let got = grab(&manager, &key, TTL, Duration::from_secs(3)).await;
    assert!(
        got.is_some(),
        "a dropped waiting acquire left a ghost holder of {key}"
    );
}
