//! `HoldMany`: a `ClientLeaser` holds many leases on one stream of one connection, with
//! one heartbeat per group (its leases of one TTL) per TTL/4: the bytes on the wire per
//! round, two groups, a release or a revoke of one lease of a group, the stream reset or
//! its server draining, the per-stream limit, and the fallback to `Hold` streams on a
//! server that answers `UNIMPLEMENTED`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use leases::backend::Backend;
use leases::service::{LeaseServer, ServeOptions};
use leases::{
    AcquireOptions, CancelReason, ClientLeaser, ClientOptions, Key, Lease, LeaseContext,
    LeaseError, Leaser,
};

use crate::support::proxy::{Fault, FaultProxy};
use crate::support::remote::{local, manager_on, memory_manager, TTL};
use crate::support::shared_store::SharedStore;

fn url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

async fn client(urls: &[String]) -> ClientLeaser {
    let options = ClientOptions::endpoints(urls.iter().cloned())
        .unwrap()
        .min_ttl(TTL)
        .request_timeout(Duration::from_secs(5));
    ClientLeaser::connect_with(options).await.unwrap()
}

/// A memory manager, its server on `local()`, a fault proxy in front of the server, and
/// a client through the proxy.
struct Proxied {
    manager: leases::LeaseManager,
    server: LeaseServer,
    proxy: FaultProxy,
    c: ClientLeaser,
}

async fn proxied() -> Proxied {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let proxy = FaultProxy::start(server.local_addr()).await;
    let c = client(&[url(proxy.addr())]).await;
    Proxied {
        manager,
        server,
        proxy,
        c,
    }
}

/// Acquires `n` keys named `name-i` with `ttl`, 64 at a time.
async fn hold_many(
    c: &ClientLeaser,
    name: &str,
    n: usize,
    ttl: Duration,
) -> Vec<(Lease, LeaseContext)> {
    let mut held = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let got = join_all(chunk.iter().map(|i| {
            let key = Key::system(["many", name, &i.to_string()]);
            c.acquire_lease(key, ttl)
        }))
        .await;
        held.extend(got.into_iter().map(|g| g.expect("acquired")));
    }
    held
}

fn live(held: &[(Lease, LeaseContext)]) -> usize {
    held.iter()
        .filter(|(_, ctx)| ctx.reason().is_none())
        .count()
}

/// 5,000 leases of one client ride one connection (the server allows 1024 streams per
/// connection: `Hold` streams could not) and keep alive for several TTLs, while the
/// client sends less than 1 KiB per heartbeat round: one `Hold` heartbeat per lease
/// would be at least 14 bytes (an HTTP/2 frame header and a gRPC message header) each,
/// 70 KB per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_leases_one_connection_one_heartbeat_per_round() {
    let ttl = Duration::from_secs(4);
    let Proxied {
        server, proxy, c, ..
    } = proxied().await;
    let held = hold_many(&c, "five-thousand", 5000, ttl).await;
    assert_eq!(proxy.connections(), 1, "one connection");
    let before = proxy.counters();
    // Several TTLs: every lease must be renewed through its group's heartbeats.
    let window = ttl * 2;
    tokio::time::sleep(window).await;
    let after = proxy.counters();
    assert_eq!(live(&held), 5000, "every lease lives on");
    assert_eq!(proxy.connections(), 1, "still one connection");
    let rounds = (window.as_secs_f64() / (ttl / 4).as_secs_f64()) as u64;
    let up = after.to_server - before.to_server;
    println!("client to server: {up} bytes over {rounds} rounds of 5000 leases");
    assert!(
        up < 1024 * rounds,
        "{up} bytes in {rounds} heartbeat rounds: more than one heartbeat per group"
    );
    for (lease, _) in held {
        lease.release().await.unwrap();
    }
    server.shutdown().await.unwrap();
}

/// Two TTLs are two groups, each kept by its own heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ttls_are_two_groups() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let c = client(&[url(server.local_addr())]).await;
    let short = hold_many(&c, "two-short", 50, Duration::from_secs(1)).await;
    let long = hold_many(&c, "two-long", 50, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!((live(&short), live(&long)), (50, 50));
    for (lease, _) in short.into_iter().chain(long) {
        lease.release().await.unwrap();
    }
    server.shutdown().await.unwrap();
}

/// Releases of one lease of a group while its group's heartbeats are on their way (each
/// way takes 100 ms): each release is confirmed and frees its key at once, and the
/// other lease of the group lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_while_the_group_heartbeat_is_in_flight() {
    let Proxied {
        manager,
        server,
        proxy,
        c,
    } = proxied().await;
    let ttl = Duration::from_secs(2);
    let (_stay, stay_ctx) = c
        .acquire_lease(Key::system(["many", "inflight", "stay"]), ttl)
        .await
        .unwrap();
    proxy.set(Fault::Delay(Duration::from_millis(100)));
    let key = Key::system(["many", "inflight", "go"]);
    let started = tokio::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let (lease, _) = c.acquire_lease(key.clone(), ttl).await.unwrap();
        // Release at a different point of the heartbeat cycle each time.
        tokio::time::sleep(Duration::from_millis(70 * (n % 8))).await;
        lease.release().await.unwrap();
        assert!(
            manager.lease_info(&key).await.unwrap().is_none(),
            "a confirmed release freed the key"
        );
        n += 1;
    }
    assert_eq!(
        stay_ctx.reason(),
        None,
        "the other lease of the group lives on"
    );
    server.shutdown().await.unwrap();
}

/// A revoke of one lease of a group ends that lease's context only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_of_one_lease_of_a_group() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let c = client(&[url(server.local_addr())]).await;
    let ttl = Duration::from_secs(2);
    let held = hold_many(&c, "revoke", 10, ttl).await;
    let victim = held[3].0.key().clone();
    assert!(c.revoke(&victim).await.unwrap());
    let reason = tokio::time::timeout(Duration::from_secs(2), held[3].1.cancelled())
        .await
        .expect("told at once");
    assert_eq!(reason, CancelReason::Revoked);
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(live(&held), 9, "only the revoked lease ended");
    // The revoked holder has stopped, so its key is free again.
    let again = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match c.acquire_lease(victim.clone(), ttl).await {
                Ok(got) => return got,
                Err(LeaseError::Conflict) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the revoked key is free once its holder stopped");
    assert!(again.0.token() > held[3].0.token());
    server.shutdown().await.unwrap();
}

/// A revoked holder that keeps its key until it lets go of its `Lease` (as `leases run`
/// does) has its key given back on the server by the time its `release` returns, even
/// when the release takes 300 ms to get there: the lane waits for the server's
/// confirmation of a release sent after an `ended`. Its process may exit right after
/// (CI's `cli::service::revoke_stops_the_command` found the key still taken, for the
/// rest of its TTL, after such a `run` had exited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_after_a_revoke_has_reached_the_server_when_it_returns() {
    let Proxied {
        manager,
        server,
        proxy,
        c,
    } = proxied().await;
    let ttl = Duration::from_secs(10);
    let held = hold_many(&c, "revoked-release", 3, ttl).await;
    for (i, (_, ctx)) in held.iter().enumerate() {
        assert_eq!(ctx.reason(), None, "lease {i}");
    }
    let key = Key::system(["many", "revoked-release", "kept"]);
    let kept = AcquireOptions::new(ttl).keep_until_released();
    let (lease, ctx) = c.acquire_lease_with(key.clone(), kept).await.unwrap();
    assert!(manager.revoke(&key).await.unwrap());
    let reason = tokio::time::timeout(Duration::from_secs(5), ctx.cancelled())
        .await
        .expect("told at once");
    assert_eq!(reason, CancelReason::Revoked);
    // Kept until its holder lets go: still taken on the server, marked revoked.
    let info = manager
        .lease_info(&key)
        .await
        .unwrap()
        .expect("still taken");
    assert!(info.revoked);
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    let released = lease.release().await;
    assert!(matches!(released, Err(LeaseError::NotHeld)), "{released:?}");
    assert_eq!(
        manager.lease_info(&key).await.unwrap().map(|i| i.token),
        None,
        "the release returned before the server had it: the key is still taken"
    );
    proxy.set(Fault::Pass);
    assert_eq!(live(&held), 3, "the group's other leases live on");
    server.shutdown().await.unwrap();
}

/// The connection reset under 200 leases on one stream: every lease is re-attached
/// (same token, holder not told), on the memory backend through the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_reattaches_every_lease() {
    let Proxied {
        server, proxy, c, ..
    } = proxied().await;
    let held = hold_many(&c, "reset", 200, Duration::from_secs(3)).await;
    proxy.reset_all();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(live(&held), 200, "every lease re-attached");
    for (lease, _) in &held {
        let info = c.lease_info(lease.key()).await.unwrap().expect("held");
        assert_eq!(info.token, lease.token());
    }
    for (lease, _) in held {
        lease.release().await.unwrap();
    }
    server.shutdown().await.unwrap();
}

/// A server on the memory backend stopping: every lease of its stream is told at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_server_stopping_ends_every_lease() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let c = client(&[url(server.local_addr())]).await;
    let held = hold_many(&c, "stop", 100, Duration::from_secs(3)).await;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("the server stops")
        .unwrap();
    for (_, ctx) in &held {
        let reason = tokio::time::timeout(Duration::from_secs(1), ctx.cancelled())
            .await
            .expect("told at once");
        assert!(
            matches!(reason, CancelReason::Lost(_) | CancelReason::Shutdown),
            "{reason:?}"
        );
    }
}

/// A rolling restart under 100 leases of one stream: the draining server hands each over
/// and they move to the other server of the store, same tokens, holders never told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_every_lease_to_another_server() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let a = LeaseServer::start(manager_on(store.clone()).await, local())
        .await
        .unwrap();
    let b = LeaseServer::start(manager_on(store.clone()).await, local())
        .await
        .unwrap();
    let c = client(&[url(a.local_addr()), url(b.local_addr())]).await;
    // A TTL with room for 100 re-attaches on a loaded 2-core machine (the whole suite
    // runs beside this test).
    let ttl = Duration::from_secs(6);
    let held = hold_many(&c, "drain", 100, ttl).await;
    a.shutdown().await.unwrap();
    tokio::time::sleep(ttl * 2).await;
    for (lease, ctx) in &held {
        if let Some(r) = ctx.reason() {
            eprintln!("LOST {} {:?}", lease.key(), r);
        }
    }
    assert_eq!(live(&held), 100, "every lease moved");
    for (lease, _) in &held {
        let info = store.info(lease.key()).await.unwrap().expect("held");
        assert_eq!(info.token, lease.token());
    }
    for (lease, _) in held {
        lease.release().await.unwrap();
    }
    b.shutdown().await.unwrap();
}

/// A stream holds at most `max_leases_per_stream` leases: one more is a typed error, and
/// a lease released makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_stream_limit() {
    let options = ServeOptions {
        max_leases_per_stream: 3,
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let c = client(&[url(server.local_addr())]).await;
    let ttl = Duration::from_secs(2);
    let mut held = hold_many(&c, "limit", 3, ttl).await;
    let over = c
        .acquire_lease(Key::system(["many", "limit", "over"]), ttl)
        .await
        .unwrap_err();
    match &over {
        LeaseError::Backend(e) => assert!(
            e.to_string()
                .contains("too many leases on one stream (at most 3)"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    held.pop().unwrap().0.release().await.unwrap();
    // The server forgets a released lane as soon as its task has ended.
    let got = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match c
                .acquire_lease(Key::system(["many", "limit", "over"]), ttl)
                .await
            {
                Ok(got) => return got,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("room again");
    assert_eq!(got.1.reason(), None);
    server.shutdown().await.unwrap();
}

/// A server without `HoldMany` (as before it existed) answers `UNIMPLEMENTED`: the client
/// holds its leases on `Hold` streams, one per lease, and they work as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_hold_many_gets_hold_streams() {
    let options = ServeOptions {
        hold_many: false,
        ..local()
    };
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), options).await.unwrap();
    let proxy = FaultProxy::start(server.local_addr()).await;
    let c = client(&[url(proxy.addr())]).await;
    let ttl = Duration::from_secs(2);
    let held = hold_many(&c, "fallback", 20, ttl).await;
    let before = proxy.counters();
    tokio::time::sleep(ttl * 2).await;
    let up = proxy.counters().to_server - before.to_server;
    assert_eq!(live(&held), 20);
    // 20 leases heartbeating on their own streams: 8 rounds of 20 heartbeats.
    assert!(up > 20 * 8 * 14, "{up} bytes: not one heartbeat per lease");
    for (lease, _) in held {
        let key = lease.key().clone();
        lease.release().await.unwrap();
        assert!(manager.lease_info(&key).await.unwrap().is_none());
    }
    server.shutdown().await.unwrap();
}

/// A client that sends group heartbeats and does not read their answers is held back,
/// not buffered: while its answers wait unread the server reads none of its requests, so
/// HTTP/2's windows stop its sends (the server takes about its windows' worth, 2 MB,
/// not the 22 MB sent); once it reads, the server reads on and answers every heartbeat, and its
/// lease lives on. (Before: cut off with `RESOURCE_EXHAUSTED`, by a rule that also cut
/// off a reading client whose many leases ended at once, see
/// `a_drain_moves_every_lease_to_another_server`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_held_back_not_buffered() {
    use leases::proto::leases::v1::hold_many_request::Kind as In;
    use leases::proto::leases::v1::hold_many_response::Kind as Out;
    use leases::proto::leases::v1::leases_client::LeasesClient;
    use leases::proto::leases::v1::{Acquire, GroupHeartbeat, HoldManyRequest, LeaseAcquire};

    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let proxy = FaultProxy::start(server.local_addr()).await;
    let channel = crate::support::remote::channel_at(proxy.addr()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ttl = prost_types::Duration {
        seconds: 10,
        nanos: 0,
    };
    tx.send(HoldManyRequest {
        kind: Some(In::Acquire(LeaseAcquire {
            id: 1,
            acquire: Some(Acquire {
                key: "/system/many/unread".into(),
                ttl: Some(ttl),
                ..Acquire::default()
            }),
        })),
    })
    .unwrap();
    let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut answers = LeasesClient::new(channel)
        .hold_many(outgoing)
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(Out::Granted(_))), "{first:?}");
    // 11 bytes each on the wire: 22 MB in all.
    let sent = 2_000_000u64;
    for _ in 0..sent {
        let beat = In::Heartbeat(GroupHeartbeat { ttl: Some(ttl) });
        if tx.send(HoldManyRequest { kind: Some(beat) }).is_err() {
            let end = answers.message().await;
            panic!("the request stream was dropped: {end:?}");
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let taken = proxy.counters().to_server;
    assert!(
        taken < 6_000_000,
        "the server took {taken} bytes of requests from a client that reads nothing"
    );
    // Reading, the client gets its answers: far more than were waiting, so the server
    // read on.
    for i in 0..5_000u64 {
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .unwrap_or_else(|_| panic!("answer {i} within 10 s"))
            .unwrap_or_else(|status| panic!("answer {i}: {status:?}"))
            .expect("the stream goes on");
        assert!(matches!(answer.kind, Some(Out::Renewed(_))), "{answer:?}");
    }
    // (A client that stops reading for good holds up the server's graceful shutdown, as
    // on any stream whose answers cannot be sent: this one's connection is reset first,
    // and the server keeps its lease out the time left last promised, under 10 s.)
    drop((answers, tx));
    proxy.reset_all();
    server.shutdown().await.unwrap();
}

/// Review probe (`review-confirm`): holders release their leases while an operator
/// revokes the same keys, so that releases cross `ended REVOKED`s on the stream. Each
/// holder's `release()` must return within a few seconds (the client waits for a
/// second `ended RELEASED` after a crossing end; the server must send it whenever the
/// release it read ends up not answered by the lease's first `ended`), and every key
/// must be free once all have returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_crossing_revokes_return_promptly() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let c = client(&[url(server.local_addr())]).await;
    let ttl = Duration::from_secs(10);
    let n = 300;
    let held = hold_many(&c, "crossing", n, ttl).await;
    let revokes = join_all((0..n).map(|i| {
        let manager = manager.clone();
        async move {
            let key = Key::system(["many", "crossing", &i.to_string()]);
            manager.revoke(&key).await.unwrap()
        }
    }));
    let releases = join_all(held.into_iter().map(|(lease, _ctx)| async move {
        let start = tokio::time::Instant::now();
        let r = lease.release().await;
        (start.elapsed(), r)
    }));
    let (_, released) = tokio::join!(revokes, releases);
    let slow: Vec<_> = released
        .iter()
        .filter(|(took, _)| *took > Duration::from_secs(4))
        .collect();
    let crossed = released.iter().filter(|(_, r)| r.is_err()).count();
    eprintln!(
        "{n} releases: {crossed} not Ok, {} slow, e.g. {:?}",
        slow.len(),
        slow.first()
    );
    for i in 0..n {
        let key = Key::system(["many", "crossing", &i.to_string()]);
        assert_eq!(
            manager.lease_info(&key).await.unwrap().map(|i| i.token),
            None,
            "key {i} still taken after its release returned"
        );
    }
    assert!(
        slow.is_empty(),
        "{} of {n} releases crossing a revoke took over 4 s, e.g. {:?}",
        slow.len(),
        slow.first()
    );
    server.shutdown().await.unwrap();
}

/// A revoked holder's lease kept until released (`keep_until_released`, as `leases run`):
/// revokes it and waits until its holder is told.
async fn revoked_kept(
    manager: &leases::LeaseManager,
    c: &ClientLeaser,
    key: &Key,
    ttl: Duration,
) -> Lease {
    let kept = AcquireOptions::new(ttl).keep_until_released();
    let (lease, ctx) = c.acquire_lease_with(key.clone(), kept).await.unwrap();
    assert!(manager.revoke(key).await.unwrap());
    let reason = tokio::time::timeout(Duration::from_secs(5), ctx.cancelled())
        .await
        .expect("told at once");
    assert_eq!(reason, CancelReason::Revoked);
    lease
}

/// Whether `key` is free within `within`.
async fn free_within(manager: &leases::LeaseManager, key: &Key, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        if manager.lease_info(key).await.unwrap().is_none() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Review probe (`review-confirm`, held): a revoked `keep_until_released` holder whose
/// `release()` future is dropped mid-way (through a 300 ms delay, so the keeper is
/// still waiting for the server's confirmation) still has its release carried out:
/// the key is free within 3 s (its TTL is 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_future_dropped_mid_way_still_frees_a_revoked_key() {
    let Proxied {
        manager,
        server,
        proxy,
        c,
    } = proxied().await;
    let ttl = Duration::from_secs(10);
    let key = Key::system(["many", "dropped-release"]);
    let lease = revoked_kept(&manager, &c, &key, ttl).await;
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    let dropped = tokio::time::timeout(Duration::from_millis(100), lease.release()).await;
    assert!(
        dropped.is_err(),
        "returned before the confirmation: {dropped:?}"
    );
    assert!(
        free_within(&manager, &key, Duration::from_secs(3)).await,
        "the key stayed taken after the holder's release"
    );
    proxy.set(Fault::Pass);
    server.shutdown().await.unwrap();
}

/// Review probe (`review-confirm`): a revoked `keep_until_released` holder whose
/// connection was reset after it was told (the stream broke; the server keeps the key
/// for the rest of the time it promised) releases its lease once the link is back.
/// Liveness: the key should be free soon after `release()` returns (its TTL is 10 s),
/// as it is without the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_free_after_its_release_across_a_reset() {
    let Proxied {
        manager,
        server,
        proxy,
        c,
    } = proxied().await;
    let ttl = Duration::from_secs(10);
    let key = Key::system(["many", "reset-release"]);
    let lease = revoked_kept(&manager, &c, &key, ttl).await;
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Pass);
    let start = tokio::time::Instant::now();
    let released = lease.release().await;
    let took = start.elapsed();
    assert!(matches!(released, Err(LeaseError::NotHeld)), "{released:?}");
    assert!(
        free_within(&manager, &key, Duration::from_secs(2)).await,
        "release() returned after {took:?}, and the key is still taken 2 s later \
         (until the server's promise runs out)"
    );
    server.shutdown().await.unwrap();
}

/// Review probe (`review-confirm`, held): the server starts draining while a revoked
/// `keep_until_released` holder has not let go yet (its lane waits for the release).
/// The holder's release, through a 300 ms delay, still reaches the draining server and
/// is confirmed before the stream ends: `release()` returns with the key free, and the
/// drain completes right after (it waited for that lane only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_confirms_a_late_release() {
    let Proxied {
        manager,
        server,
        proxy,
        c,
    } = proxied().await;
    let ttl = Duration::from_secs(10);
    let key = Key::system(["many", "drain-release"]);
    let lease = revoked_kept(&manager, &c, &key, ttl).await;
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    let drain = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!drain.is_finished(), "drained before the lane let go");
    let start = tokio::time::Instant::now();
    let released = lease.release().await;
    let took = start.elapsed();
    assert!(matches!(released, Err(LeaseError::NotHeld)), "{released:?}");
    assert!(took < Duration::from_secs(3), "release() took {took:?}");
    assert_eq!(
        manager.lease_info(&key).await.unwrap().map(|i| i.token),
        None,
        "release() returned before the draining server had the release"
    );
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("the drain ends once the lane let go")
        .unwrap()
        .unwrap();
}

/// Review probe (`review-confirm`, held): the holder drops its `ClientLeaser` (every
/// clone) before it releases a revoked `keep_until_released` lease through a 300 ms
/// delay: the lane's stream must live on until the release is confirmed, so that
/// `release()` returns with the key free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_leaser_still_waits_for_the_confirmation() {
    let Proxied {
        manager,
        server,
        proxy,
        c,
    } = proxied().await;
    let ttl = Duration::from_secs(10);
    let key = Key::system(["many", "dropped-leaser"]);
    let lease = revoked_kept(&manager, &c, &key, ttl).await;
    drop(c);
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    let released = lease.release().await;
    assert!(matches!(released, Err(LeaseError::NotHeld)), "{released:?}");
    assert_eq!(
        manager.lease_info(&key).await.unwrap().map(|i| i.token),
        None,
        "release() returned before the server had the release"
    );
    proxy.set(Fault::Pass);
    server.shutdown().await.unwrap();
}

/// A shared store whose release of a key named `…slow…` takes 3 s.
#[derive(Clone, Default)]
struct SlowReleaseStore {
    inner: SharedStore,
}

forward_backend! {
    SlowReleaseStore => inner;
    forward: acquire, renew, revoke, info, list, subscribe_freed;
    async fn release(&self, key: &Key, token: u64) -> Result<bool, leases::BackendError> {
        if key.to_string().contains("slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        self.inner.release(key, token).await
    }
    fn shared(&self) -> bool {
        true
    }
}

/// Review probe (`review-confirm`): a holder releases its lease just as its server
/// starts draining on a shared store (through a 300 ms delay, so its release crosses
/// the server's `ended HANDED_OVER`; the server leaves such a lease in the store for
/// its holder to re-attach elsewhere). Another lane of the stream keeps it open (its
/// release is slow in the store), so the crossing release reaches the server, which
/// "confirms" it although it no longer has the lease to release. `release()` may only
/// return `Ok` if the key is then free; here it stays in the store until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_crossing_a_hand_over_is_not_ok_while_the_key_stays_taken() {
    let store: Arc<dyn Backend> = Arc::new(SlowReleaseStore::default());
    let server = LeaseServer::start(manager_on(store.clone()).await, local())
        .await
        .unwrap();
    let proxy = FaultProxy::start(server.local_addr()).await;
    let c = client(&[url(proxy.addr())]).await;
    let ttl = Duration::from_secs(10);
    let key = Key::system(["many", "handover-release"]);
    let slow = Key::system(["many", "slow"]);
    let (lease, _ctx) = c.acquire_lease(key.clone(), ttl).await.unwrap();
    let (slow_lease, _slow_ctx) = c.acquire_lease(slow.clone(), ttl).await.unwrap();
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    // Its lane stays on the server (releasing in the store) for 3 s.
    let slow_release = tokio::spawn(slow_lease.release());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let drain = tokio::spawn(server.shutdown());
    let released = lease.release().await;
    let info = store.info(&key).await.unwrap();
    assert!(
        released.is_err() || info.is_none(),
        "release() returned {released:?} while the key is still taken in the store: {info:?}"
    );
    let _ = slow_release.await;
    proxy.set(Fault::Pass);
    let _ = drain.await;
}

/// Review probe (`review-confirm`, held): a revoked `keep_until_released` lease whose
/// holder has not let go yet stays in the client's lanes (until its keeper closes it),
/// while the other leases of its group are renewed: no later `renewed` of the group may
/// move its context's deadline, and the others live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_lane_kept_for_its_release_is_never_renewed() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let c = client(&[url(server.local_addr())]).await;
    let ttl = Duration::from_secs(2);
    let held = hold_many(&c, "ended-kept", 3, ttl).await;
    let key = Key::system(["many", "ended-kept", "revoked"]);
    let kept = AcquireOptions::new(ttl).keep_until_released();
    let (lease, ctx) = c.acquire_lease_with(key.clone(), kept).await.unwrap();
    assert!(manager.revoke(&key).await.unwrap());
    tokio::time::timeout(Duration::from_secs(5), ctx.cancelled())
        .await
        .expect("told at once");
    let deadline = ctx.deadline();
    // Several group heartbeats (every TTL/4).
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(ctx.deadline(), deadline, "an ended lease's deadline moved");
    assert_eq!(live(&held), 3, "the group's other leases live on");
    let released = lease.release().await;
    assert!(matches!(released, Err(LeaseError::NotHeld)), "{released:?}");
    assert!(manager.lease_info(&key).await.unwrap().is_none());
    server.shutdown().await.unwrap();
}
