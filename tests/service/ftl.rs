//! FTL's wire contract case by case: grants, conflicts, heartbeats, release on close,
//! expiry, revoke and loss, bad input, the key limit, and clients that never read or
//! vanish.

use std::time::Duration;

use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseRequest;
use leases::service::{LeaseServer, ServeOptions};
use leases::{Key, LeaseError, Leaser};
use tonic::transport::Channel;
use tonic::Code;

use crate::support::remote::{
    channel_at, client_of, ftl_open, local, memory_manager, FtlStream, TTL,
};
use crate::{next, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_acquire_conflict_heartbeat_and_release_on_close() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = channel_at(server.local_addr()).await;
    let key = ["module", "echo", "cron"];
    let mut a = ftl_open(&ch, request(&key, Some(TTL * 2))).await.unwrap();
    assert!(next(&mut a).await.unwrap());
    // Held: another stream is refused with RESOURCE_EXHAUSTED "lease already held".
    let mut b = ftl_open(&ch, request(&key, Some(TTL * 2))).await.unwrap();
    let refused = next(&mut b).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), "lease already held");
    // Heartbeats: one empty answer per request, in order; the lease outlives its TTL.
    for _ in 0..6 {
        tokio::time::sleep(TTL / 2).await;
        a.tx.send(request(&key, Some(TTL * 2))).unwrap();
        assert!(next(&mut a).await.unwrap());
    }
    let info = client_of(&server)
        .await
        .lease_info(&Key::module("echo", ["cron"]))
        .await
        .unwrap()
        .expect("still held after 3 s of heartbeats");
    // Closing the request side (FTL's release) releases the lease at once: the call
    // ends (OK) once it is released. (Dropping the whole call instead would reset the
    // stream, which is no release: the key would be kept for its window.)
    let FtlStream { tx, mut answers } = a;
    drop(tx);
    assert!(
        matches!(answers.message().await, Ok(None)),
        "the call ends OK"
    );
    let c = client_of(&server).await;
    let mut got = None;
    for _ in 0..50 {
        match c.acquire_lease(Key::module("echo", ["cron"]), TTL).await {
            Ok(x) => {
                got = Some(x);
                break;
            }
            Err(LeaseError::Conflict) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let (lease, _ctx) = got.expect("released within 1 s of the stream closing");
    assert!(lease.token() > info.token);
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_no_heartbeat_expires_and_ends_the_stream() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = channel_at(server.local_addr()).await;
    // Like FTL's JVM runtime: one request, no renewal.
    let mut a = ftl_open(&ch, request(&["system", "jvm"], Some(TTL)))
        .await
        .unwrap();
    assert!(next(&mut a).await.unwrap());
    let ended = next(&mut a).await.unwrap_err();
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    // The key is free again.
    let c = client_of(&server).await;
    let (lease, _) = c.acquire_lease(Key::system(["jvm"]), TTL).await.unwrap();
    lease.release().await.unwrap();
    // A later request on the ended stream never re-acquires silently.
    let _ = a.tx.send(request(&["system", "jvm"], Some(TTL)));
    assert!(matches!(next(&mut a).await, Ok(false) | Err(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_revoke_and_loss_end_the_stream_at_once() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = channel_at(server.local_addr()).await;
    let mut a = ftl_open(&ch, request(&["system", "revoked"], Some(TTL * 5)))
        .await
        .unwrap();
    assert!(next(&mut a).await.unwrap());
    assert!(client_of(&server)
        .await
        .revoke(&Key::system(["revoked"]))
        .await
        .unwrap());
    let ended = next(&mut a).await.unwrap_err();
    assert_eq!(ended.code(), Code::ResourceExhausted);
    assert!(ended.message().contains("revoked"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_bad_input() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = channel_at(server.local_addr()).await;
    let cases: Vec<(AcquireLeaseRequest, Code)> = vec![
        (request(&["nope"], Some(TTL)), Code::InvalidArgument),
        (request(&[], Some(TTL)), Code::InvalidArgument),
        (request(&["module"], Some(TTL)), Code::InvalidArgument),
        (
            request(&["system", "x"], Some(TTL / 10)),
            Code::InvalidArgument,
        ),
        (
            AcquireLeaseRequest {
                key: vec!["system".into(), "x".into()],
                ttl: Some(prost_types::Duration {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
            },
            Code::InvalidArgument,
        ),
        (
            AcquireLeaseRequest {
                key: vec!["system".into(), "x".into()],
                ttl: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
            },
            Code::InvalidArgument,
        ),
        // A key longer than the crate's limit, but within the message limit.
        (
            request(&["system", &"k".repeat(5000)], Some(TTL)),
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let shown = format!("{:?}", req.key.iter().map(|k| k.len()).collect::<Vec<_>>());
        let mut s = ftl_open(&ch, req).await.unwrap();
        let e = next(&mut s).await.unwrap_err();
        assert_eq!(e.code(), code, "{shown}: {e:?}");
    }
    // An oversized message is refused by the message limit.
    let huge = request(&["system", &"k".repeat(1 << 20)], Some(TTL));
    let result = match ftl_open(&ch, huge).await {
        Ok(mut s) => next(&mut s).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let e = result.unwrap_err();
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{e:?}"
    );
    // A missing TTL takes the server's default (2 s here): still held after 1.5 s
    // without heartbeats, free after it lapses.
    let mut d = ftl_open(&ch, request(&["system", "default-ttl"], None))
        .await
        .unwrap();
    assert!(next(&mut d).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = client_of(&server).await;
    assert!(matches!(
        c.acquire_lease(Key::system(["default-ttl"]), TTL).await,
        Err(LeaseError::Conflict)
    ));
    // The service still serves.
    let (lease, _) = c
        .acquire_lease(Key::system(["after-bad-input"]), TTL)
        .await
        .unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftl_too_many_keys_on_one_stream() {
    let options = ServeOptions {
        max_keys_per_stream: 100,
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let ch = channel_at(server.local_addr()).await;
    let mut s = ftl_open(&ch, request(&["system", "many", "0"], Some(TTL * 5)))
        .await
        .unwrap();
    for i in 1..10_000 {
        if s.tx
            .send(request(&["system", "many", &i.to_string()], Some(TTL * 5)))
            .is_err()
        {
            break;
        }
    }
    let mut answered = 0;
    let end = loop {
        match next(&mut s).await {
            Ok(true) => answered += 1,
            Ok(false) => break None,
            Err(e) => break Some(e),
        }
    };
    assert_eq!(answered, 100);
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), Code::ResourceExhausted);
    assert!(end.message().contains("too many keys"), "{end:?}");
    // The stream broke (it did not end by the client's half-close): each key stays
    // taken until its heartbeat window (5 s) has run out, then all 100 are given back.
    let c = client_of(&server).await;
    assert!(
        matches!(
            c.acquire_lease(Key::system(["many", "0"]), TTL).await,
            Err(LeaseError::Conflict)
        ),
        "a key of a broken stream was given back before its window ran out"
    );
    let until = tokio::time::Instant::now() + TTL * 5 + Duration::from_secs(10);
    for i in 0..100 {
        let key = Key::system(["many", &i.to_string()]);
        let mut ok = false;
        while tokio::time::Instant::now() < until {
            match c.acquire_lease(key.clone(), TTL).await {
                Ok((lease, _)) => {
                    lease.release().await.unwrap();
                    ok = true;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(ok, "{key} was not given back after its window");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_nothing() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ch = channel_at(server.local_addr()).await;
    // Like FTL's Go runtime: heartbeats, never reads. Many of them, fast.
    let s = ftl_open(&ch, request(&["system", "unread"], Some(TTL * 3)))
        .await
        .unwrap();
    for _ in 0..20_000 {
        s.tx.send(request(&["system", "unread"], Some(TTL * 3)))
            .unwrap();
    }
    // Other streams and clients are served meanwhile, on the same connection too.
    let mut other = ftl_open(&ch, request(&["system", "reader"], Some(TTL)))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), next(&mut other))
            .await
            .unwrap()
            .unwrap()
    );
    let c = client_of(&server).await;
    let (lease, _) = tokio::time::timeout(
        Duration::from_secs(5),
        c.acquire_lease(Key::system(["x"]), TTL),
    )
    .await
    .unwrap()
    .unwrap();
    lease.release().await.unwrap();
    // And the unread stream still holds its key.
    assert!(matches!(
        c.acquire_lease(Key::system(["unread"]), TTL).await,
        Err(LeaseError::Conflict)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_keeps_its_key_until_its_window_runs_out() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    // A raw TCP connection that speaks just enough HTTP/2 to open the stream is hard to
    // build by hand; a tonic channel dropped with its runtime is the same to the
    // server: the connection closes without the stream being ended.
    let addr = server.local_addr();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ch = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut s = ftl_open(&ch, request(&["system", "vanish"], Some(TTL * 3)))
                .await
                .unwrap();
            assert!(next(&mut s).await.unwrap());
            std::mem::forget(s);
        });
        // The runtime drops here: its sockets close, nothing is sent.
    })
    .join()
    .unwrap();
    let vanished = tokio::time::Instant::now();
    let c = client_of(&server).await;
    // It may still be acting until its heartbeat window (3 s) runs out.
    assert!(matches!(
        c.acquire_lease(Key::system(["vanish"]), TTL).await,
        Err(LeaseError::Conflict)
    ));
    let mut ok = false;
    for _ in 0..300 {
        match c.acquire_lease(Key::system(["vanish"]), TTL).await {
            Ok((lease, _)) => {
                lease.release().await.unwrap();
                ok = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(
        ok,
        "a vanished client's lease (window 3 s) was not given back within 6 s"
    );
    assert!(
        vanished.elapsed() >= TTL * 2,
        "given back after {:?}, before its window could have run out",
        vanished.elapsed()
    );
}
