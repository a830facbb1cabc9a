//! Adversarial review of `HoldMany` (branch `hold`): raw-protocol clients that follow the
//! deadline rule of `docs/protocol.md` exactly, and odd input.

use std::time::Duration;

use leases::proto::leases::v1::hold_many_request::Kind as In;
use leases::proto::leases::v1::hold_many_response::Kind as Out;
use leases::proto::leases::v1::{
    HoldManyRequest, HoldManyResponse, LeaseAcquire, LeaseClose, LeaseRelease,
};
use leases::service::LeaseServer;
use leases::Key;
use tokio::time::Instant;
use tonic::Code;

use crate::support::remote::{
    granted_at, group_heartbeat, lane_acquire, local, memory_manager, next_many, RawStream,
};

const PATH: &str = "/leases.v1.Leases/HoldMany";

fn left(d: Option<prost_types::Duration>) -> Duration {
    Duration::try_from(d.unwrap()).unwrap()
}

/// Acquires `key(i)` for each `i` in `0..n` on `s` (ids `0..n`) and reads every grant.
async fn acquire_all(s: &mut RawStream, n: u64, key: impl Fn(u64) -> Key, ttl: Duration) {
    for i in 0..n {
        s.send(&lane_acquire(i, &key(i), ttl, None));
    }
    let mut granted = 0;
    while granted < n {
        match next_many(s).await {
            Some(Out::Granted(_)) => granted += 1,
            None => panic!("after {granted} grants: {:?}", s.status().await),
            other => panic!("after {granted} grants: {other:?}"),
        }
    }
}

/// Reads `n` `ended` answers (`what` ended them), then checks that a group heartbeat of
/// `ttl` is still answered with time left: the stream was not cut off.
async fn ends_then_renewed(s: &mut RawStream, n: u64, what: &str, ttl: Duration) {
    let mut ended = 0;
    while ended < n {
        match next_many(s).await {
            Some(Out::Ended(_)) => ended += 1,
            Some(other) => panic!("after {ended} ends: {other:?}"),
            None => panic!(
                "after {ended} of {n} {what} read, the stream ended: {:?}",
                s.status().await
            ),
        }
    }
    s.send(&group_heartbeat(ttl));
    match next_many(s).await {
        Some(Out::Renewed(r)) => assert!(left(r.time_left) > Duration::ZERO),
        None => panic!("the stream ended: {:?}", s.status().await),
        other => panic!("{other:?}"),
    }
}

/// Probe (held on `hold`): a revoke of one lease of a two-lease group while the group's
/// heartbeat is on its way, at a different point each time. A raw client that applies
/// the deadline rule exactly (a `renewed` applies to a lease only if its `ended` did
/// not come first) may act on the revoked key until its deadline; the key must not be
/// granted to anyone else before that (the client never releases it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_racing_the_group_heartbeat_never_lets_a_second_holder_in_early() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(1);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let stay = Key::system(["review", "race", "stay"]);
    s.send(&lane_acquire(1000, &stay, ttl, None));
    assert!(matches!(next_many(&mut s).await, Some(Out::Granted(_))));
    for i in 0..8u64 {
        let key = Key::system(["review", "race", &i.to_string()]);
        let sent = Instant::now();
        s.send(&lane_acquire(i, &key, ttl, None));
        let mut deadline = loop {
            match next_many(&mut s).await {
                Some(Out::Granted(g)) if g.id == i => {
                    break sent + left(g.granted.unwrap().time_left);
                }
                Some(_) => {}
                None => panic!("stream ended"),
            }
        };
        tokio::time::sleep(Duration::from_millis(i * 7)).await;
        let revoker = {
            let manager = manager.clone();
            let key = key.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(i * 300)).await;
                manager.revoke(&key).await.unwrap()
            })
        };
        let hb = Instant::now();
        s.send(&group_heartbeat(ttl));
        let mut ended = false;
        loop {
            match next_many(&mut s).await {
                Some(Out::Ended(e)) if e.id == i => ended = true,
                Some(Out::Failed(f)) if f.id == i => ended = true,
                Some(Out::Renewed(r)) => {
                    if !ended {
                        deadline = deadline.max(hb + left(r.time_left));
                    }
                    break;
                }
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        assert!(revoker.await.unwrap());
        let at = granted_at(&manager, &key, Duration::from_secs(5)).await;
        assert!(
            at >= deadline,
            "round {i}: the key went to another holder {:?} before the raw client's deadline",
            deadline - at
        );
        // Keep the stay lane alive.
        s.send(&group_heartbeat(ttl));
    }
    server.shutdown().await.unwrap();
}

/// Probe (held on `hold`): odd input on a `HoldMany` stream is answered, not a panic:
/// a heartbeat of a TTL no lease has (answered with no time left), a release and a
/// close of ids never used, an acquire without its `Acquire` (failed), then a real
/// lease, then an id reused while its lease is live (the stream ends with
/// `INVALID_ARGUMENT`, as documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_input_is_answered() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let odd = Duration::from_nanos(1_000_000_001);
    s.send(&group_heartbeat(odd));
    match next_many(&mut s).await {
        Some(Out::Renewed(r)) => assert_eq!(left(r.time_left), Duration::ZERO),
        other => panic!("{other:?}"),
    }
    // A release of an id the stream does not hold is confirmed (see
    // `a_release_after_an_end_is_confirmed_once_the_key_is_given_back`); a close of one
    // is not answered.
    s.send(&HoldManyRequest {
        kind: Some(In::Release(LeaseRelease { id: 77 })),
    });
    match next_many(&mut s).await {
        Some(Out::Ended(e)) => assert_eq!(e.id, 77),
        other => panic!("{other:?}"),
    }
    s.send(&HoldManyRequest {
        kind: Some(In::Close(LeaseClose { id: u64::MAX })),
    });
    s.send(&HoldManyRequest {
        kind: Some(In::Acquire(LeaseAcquire {
            id: 5,
            acquire: None,
        })),
    });
    match next_many(&mut s).await {
        Some(Out::Failed(f)) => assert_eq!(f.id, 5),
        other => panic!("{other:?}"),
    }
    let key = Key::system(["review", "odd"]);
    s.send(&lane_acquire(u64::MAX, &key, Duration::from_secs(1), None));
    match next_many(&mut s).await {
        Some(Out::Granted(g)) => assert_eq!(g.id, u64::MAX),
        other => panic!("{other:?}"),
    }
    s.send(&lane_acquire(u64::MAX, &key, Duration::from_secs(1), None));
    while next_many(&mut s).await.is_some() {}
    assert_eq!(s.status().await.code(), Code::InvalidArgument);
    server.shutdown().await.unwrap();
}

/// A client that releases most of its leases at once and reads every answer as fast as
/// it comes must not be cut off as one "that does not read its answers": the limit is
/// 64 answers plus two per lease of the stream, and the released leases' `ended`s count
/// against a limit that shrinks as those very leases are let go. Here: 2,100 leases on
/// one stream, 2,000 released at once, the answers read at once; the 100 others must
/// live on (a cut-off breaks every lease of the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_most_leases_at_once_does_not_cut_off_a_reading_client() {
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    let ttl = Duration::from_secs(10);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let n = 2_100u64;
    let released = 2_000u64;
    let key = |i: u64| Key::system(["review", "mass", &i.to_string()]);
    acquire_all(&mut s, n, key, ttl).await;
    for i in 0..released {
        s.send(&HoldManyRequest {
            kind: Some(In::Release(LeaseRelease { id: i })),
        });
    }
    ends_then_renewed(&mut s, released, "releases (read at once)", ttl).await;
    server.shutdown().await.unwrap();
}

/// Exclusion end to end through `ClientLeaser`s: a holder keeps 40 leases of one group
/// on one `HoldMany` stream through a faulty proxy (delays, a half-open link, a
/// blackhole, resets), while a contender connected directly waits for each key. When
/// the contender is granted a key, the holder's context for it must have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contender_never_gets_a_key_while_the_holders_context_lives() {
    use leases::{AcquireOptions, ClientLeaser, ClientOptions, Leaser};
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let proxy = crate::support::proxy::FaultProxy::start(server.local_addr()).await;
    let connect = |url: String| async move {
        let options = ClientOptions::endpoints([url])
            .unwrap()
            .min_ttl(crate::support::remote::TTL)
            .request_timeout(Duration::from_secs(3));
        ClientLeaser::connect_with(options).await.unwrap()
    };
    let holder = connect(format!("http://{}", proxy.addr())).await;
    let contender = connect(format!("http://{}", server.local_addr())).await;
    let ttl = Duration::from_secs(1);
    let mut held = Vec::new();
    for i in 0..40 {
        let key = Key::system(["review", "excl", &i.to_string()]);
        let (lease, ctx) = holder.acquire_lease(key.clone(), ttl).await.unwrap();
        held.push((key, lease, ctx));
    }
    let checks = held.iter().map(|(key, _, ctx)| {
        let contender = contender.clone();
        let key = key.clone();
        let ctx = ctx.clone();
        async move {
            let options = AcquireOptions::new(ttl).wait(Duration::from_secs(30));
            match contender.acquire_lease_with(key.clone(), options).await {
                Ok((_lease, _c)) => {
                    let live = ctx.reason().is_none();
                    (key, Some(live))
                }
                Err(_) => (key, None),
            }
        }
    });
    let faults = async {
        use crate::support::proxy::Fault;
        for (fault, secs) in [
            (Fault::Delay(Duration::from_millis(150)), 2.0),
            (Fault::HalfOpen, 1.5),
            (Fault::Pass, 1.0),
            (Fault::Delay(Duration::from_millis(400)), 2.0),
            (Fault::Pass, 1.0),
            (Fault::Blackhole, 2.0),
            (Fault::Reset, 0.5),
            (Fault::Pass, 1.0),
        ] {
            proxy.set(fault);
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
    };
    let (results, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(40),
            futures_util::future::join_all(checks)
        ),
        faults
    );
    let results = results.expect("every contender done within 40 s");
    let bad: Vec<_> = results
        .iter()
        .filter(|(_, r)| *r == Some(true))
        .map(|(k, _)| k.to_string())
        .collect();
    let got = results.iter().filter(|(_, r)| r.is_some()).count();
    eprintln!("contender got {got} of 40 keys");
    assert!(
        bad.is_empty(),
        "granted while the holder's context lived: {bad:?}"
    );
    drop(held);
    server.shutdown().await.unwrap();
}

/// Captured log lines (this test binary's global subscriber, set by the first test that
/// asks).
fn captured() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOG: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct W(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || W(log))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
}

/// FINDING, fixed (failed on `hold`: 5 runs of 5 with these 1,000 waiters; with 500, 4
/// of 5, two of them as RESOURCE_EXHAUSTED with leases lost; now a waited grant shares
/// the group's next heartbeat, `Mux::confirm` in `client/many.rs`): a `ClientLeaser` whose
/// many waited acquires of one TTL are granted at once (their holder released them
/// together) confirms each grant with a group heartbeat of its own (`acquire.rs` sends
/// a heartbeat after a waited grant; `many.rs` turns each into `beat(ttl)`, a group
/// heartbeat at once). That is a burst of heartbeats of one group, each of which the
/// server answers only once every lane of the group has answered it, so they pile up:
/// - either more than 64 are outstanding on the server and it cuts the stream off with
///   RESOURCE_EXHAUSTED "the client does not read its answers" (a client that reads
///   everything at once): the waited acquires still in their confirm step FAIL with
///   that error (their keys granted on the server stay taken until the promised time:
///   ghosts), and every lease already held on the stream is LOST (`keep.rs` does not
///   count RESOURCE_EXHAUSTED as a break, so it ends the context instead of
///   re-attaching);
/// - or a group heartbeat waits more than TTL/3 for its answer and the client breaks
///   the whole stream itself: every lease of the stream re-attaches at once.
/// Safety holds (contexts end early, keys stay taken), but following its own protocol
/// a well-behaved client loses every lease of its stream and its acquires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_waited_grants_does_not_get_the_stream_cut_off() {
    use leases::{AcquireOptions, ClientLeaser, ClientOptions, Leaser};
    let log = captured();
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let options = ClientOptions::endpoints([format!("http://{}", server.local_addr())])
        .unwrap()
        .min_ttl(crate::support::remote::TTL)
        .request_timeout(Duration::from_secs(5));
    let c = ClientLeaser::connect_with(options).await.unwrap();
    let ttl = Duration::from_secs(2);
    let (_stay, stay_ctx) = c
        .acquire_lease(Key::system(["review", "burst", "stay"]), ttl)
        .await
        .unwrap();
    let n = 1000;
    let keys: Vec<Key> = (0..n)
        .map(|i| Key::system(["review", "burst", &i.to_string()]))
        .collect();
    let mut first = Vec::new();
    for key in &keys {
        first.push(manager.acquire_lease(key.clone(), ttl).await.unwrap());
    }
    let waiters: Vec<_> = keys
        .iter()
        .map(|key| {
            let c = c.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let options = AcquireOptions::new(ttl).wait(Duration::from_secs(20));
                c.acquire_lease_with(key, options).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    futures_util::future::join_all(first.into_iter().map(|(lease, _)| lease.release())).await;
    let mut held = Vec::new();
    let mut failed = Vec::new();
    for w in waiters {
        match w.await.unwrap() {
            Ok(got) => held.push(got),
            Err(e) => failed.push(e.to_string()),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    let broke: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("re-attaching"))
        .filter_map(|l| l.split("why=").nth(1))
        .collect();
    let whys: std::collections::BTreeSet<&str> = broke.iter().copied().collect();
    assert!(
        failed.is_empty() && broke.is_empty(),
        "{} of {n} waited acquires failed (e.g. {:?}); {} leases' stream broke and they \
         re-attached, why: {whys:?}; the holder's other lease: {:?}",
        failed.len(),
        failed.first(),
        broke.len(),
        stay_ctx.reason()
    );
    server.shutdown().await.unwrap();
}

/// A burst of ends the client reads late must not cut off the leases it still holds
/// (found by CI: `many::a_drain_moves_every_lease_to_another_server` lost 11 of 100
/// leases on a loaded machine, "the client does not read its answers"): the unread
/// limit was 64 plus two per lease *of the stream*, so each lease ended shrank the limit
/// while its own `ended` still waited unread. Here a raw client with HTTP/2's default
/// 64 KiB window holds 3,000 leases on one stream, and an operator revokes 2,900 of them
/// while the client reads nothing for a moment: the `ended`s fill its window and wait.
/// Once it reads, it must find every `ended`, and its 100 other leases must live on.
/// (On an idle machine this passed before the fix too: the transport took the `ended`s
/// as fast as they came. `many::a_drain_moves_every_lease_to_another_server` failed 3
/// runs of 8 beside three spinning processes before it, and passed 10 of 10 after.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_revokes_read_late_does_not_cut_off_the_other_leases() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(10);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let n = 3_000u64;
    let revoked = 2_900u64;
    let key = |i: u64| Key::system(["review", "revoked-late", &i.to_string()]);
    acquire_all(&mut s, n, key, ttl).await;
    futures_util::future::join_all((0..revoked).map(|i| {
        let manager = manager.clone();
        async move { assert!(manager.revoke(&key(i)).await.unwrap()) }
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ends_then_renewed(&mut s, revoked, "revokes", ttl).await;
    server.shutdown().await.unwrap();
}

/// Held (review of the flow control, rev3): a raw client sends 300 group heartbeats and
/// then releases one of its two leases, all without reading (so the group's rounds and
/// the unread answers pile up, and the server stops reading for a while). Once it
/// reads, the demultiplexer must have woken and read on (no deadlock after
/// `read.notified()`): every heartbeat is answered, the release is confirmed and its key
/// is free, and the other lease is still renewed with time left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_a_release_sent_unread_are_all_answered_once_read() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(10);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let gone = Key::system(["review", "unread", "gone"]);
    let stay = Key::system(["review", "unread", "stay"]);
    s.send(&lane_acquire(1, &gone, ttl, None));
    s.send(&lane_acquire(2, &stay, ttl, None));
    for _ in 0..2 {
        assert!(matches!(next_many(&mut s).await, Some(Out::Granted(_))));
    }
    let beats = 300;
    for _ in 0..beats {
        s.send(&group_heartbeat(ttl));
    }
    s.send(&HoldManyRequest {
        kind: Some(In::Release(LeaseRelease { id: 1 })),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut renewed, mut released) = (0, false);
    while renewed < beats || !released {
        match next_many(&mut s).await {
            Some(Out::Renewed(_)) => renewed += 1,
            Some(Out::Ended(e)) if e.id == 1 => released = true,
            other => panic!("after {renewed} renewed: {other:?}"),
        }
    }
    granted_at(&manager, &gone, Duration::from_secs(1)).await;
    s.send(&group_heartbeat(ttl));
    match next_many(&mut s).await {
        Some(Out::Renewed(r)) => assert!(left(r.time_left) > ttl / 2),
        other => panic!("{other:?}"),
    }
    s.send(&HoldManyRequest {
        kind: Some(In::Release(LeaseRelease { id: 2 })),
    });
    assert!(matches!(next_many(&mut s).await, Some(Out::Ended(e)) if e.id == 2));
    server.shutdown().await.unwrap();
}

/// A `release` that comes after a lease's `ended` (its holder has stopped) is confirmed
/// with a second `ended { id, RELEASED }` once the server has let go of the lease, so
/// that a client can wait for it before it goes away; a release answered by its first
/// `ended` gets no second one; and a release of an id the stream no longer holds is
/// confirmed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_after_an_end_is_confirmed_once_the_key_is_given_back() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(10);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let key = |i: u64| Key::system(["review", "confirm", &i.to_string()]);
    acquire_all(&mut s, 3, key, ttl).await;
    let release = |id| HoldManyRequest {
        kind: Some(In::Release(LeaseRelease { id })),
    };
    let reason = |o: Option<Out>| match o {
        Some(Out::Ended(e)) => (e.id, e.ended.unwrap().reason),
        other => panic!("{other:?}"),
    };
    use leases::proto::leases::v1::ended::Reason;
    assert!(manager.revoke(&key(0)).await.unwrap());
    assert_eq!(reason(next_many(&mut s).await), (0, Reason::Revoked as i32));
    // Told, not yet given back: the server keeps it until the holder says it stopped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(manager.lease_info(&key(0)).await.unwrap().is_some());
    s.send(&release(0));
    assert_eq!(
        reason(next_many(&mut s).await),
        (0, Reason::Released as i32)
    );
    assert_eq!(
        manager.lease_info(&key(0)).await.unwrap().map(|i| i.token),
        None,
        "confirmed before the key was given back"
    );
    // An ordinary release: one `ended`, then nothing more for it.
    s.send(&release(1));
    assert_eq!(
        reason(next_many(&mut s).await),
        (1, Reason::Released as i32)
    );
    s.send(&group_heartbeat(ttl));
    match next_many(&mut s).await {
        Some(Out::Renewed(r)) => assert!(left(r.time_left) > ttl / 2),
        other => panic!("a second `ended` for an ordinary release: {other:?}"),
    }
    // Ids the stream holds no more (released, or never used) are confirmed at once.
    s.send(&release(1));
    assert_eq!(
        reason(next_many(&mut s).await),
        (1, Reason::Released as i32)
    );
    s.send(&release(77));
    assert_eq!(
        reason(next_many(&mut s).await),
        (77, Reason::Released as i32)
    );
    // The lease left untouched lives on.
    s.send(&group_heartbeat(ttl));
    assert!(matches!(next_many(&mut s).await, Some(Out::Renewed(_))));
    assert!(manager.lease_info(&key(2)).await.unwrap().is_some());
    server.shutdown().await.unwrap();
}

/// The group heartbeats a server answers for its leases without waking their tasks
/// (`Inbox::answer`) move what each lease's task keeps the key by: a client told
/// `renewed` 6.5 s after its grant, that then breaks its stream (no release), keeps its
/// key until that answer's time left has run out, not only its grant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promise_answered_for_a_group_keeps_the_key_after_a_break() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    // The manager renews every TTL/3 (3 s): a heartbeat 6.5 s after the grant is
    // answered from a renewal at least 6 s after it.
    let ttl = Duration::from_secs(9);
    let key = Key::system(["review", "group-promise"]);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let asked = Instant::now();
    s.send(&lane_acquire(1, &key, ttl, None));
    let by_grant = match next_many(&mut s).await {
        Some(Out::Granted(g)) => asked + left(g.granted.unwrap().time_left),
        other => panic!("{other:?}"),
    };
    tokio::time::sleep_until(asked + Duration::from_millis(6500)).await;
    let sent = Instant::now();
    s.send(&group_heartbeat(ttl));
    let promised = match next_many(&mut s).await {
        Some(Out::Renewed(r)) => sent + left(r.time_left),
        other => panic!("{other:?}"),
    };
    assert!(
        promised > by_grant + Duration::from_secs(3),
        "the heartbeat's answer promised {:?} past the grant's only",
        promised.saturating_duration_since(by_grant)
    );
    drop(s);
    // Past everything the grant promised, before what the heartbeat's answer did.
    tokio::time::sleep_until(by_grant + Duration::from_millis(1500)).await;
    assert!(
        manager.lease_info(&key).await.unwrap().is_some(),
        "the key went back before the time left answered for its group ran out"
    );
    let back = granted_at(&manager, &key, Duration::from_secs(20)).await;
    assert!(back >= promised, "given back {:?} early", promised - back);
    server.shutdown().await.unwrap();
}

/// A group with no heartbeat for its TTL loses its leases (`LOST`), while another
/// group of the stream, heartbeated every TTL/4 and answered by the server without
/// waking its leases' tasks, lives on for three TTLs: those answers count as the
/// lease's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_group_is_lost_and_a_heartbeated_one_lives() {
    use leases::proto::leases::v1::ended::Reason;
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let (kept_ttl, silent_ttl) = (Duration::from_secs(2), Duration::from_secs(3));
    let kept = Key::system(["review", "silence", "kept"]);
    let silent = Key::system(["review", "silence", "silent"]);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    s.send(&lane_acquire(1, &kept, kept_ttl, None));
    s.send(&lane_acquire(2, &silent, silent_ttl, None));
    for _ in 0..2 {
        assert!(matches!(next_many(&mut s).await, Some(Out::Granted(_))));
    }
    let start = Instant::now();
    let mut lost_at = None;
    let mut renewed = 0;
    while start.elapsed() < kept_ttl * 3 {
        s.send(&group_heartbeat(kept_ttl));
        let until = Instant::now() + kept_ttl / 4;
        loop {
            let Ok(answer) = tokio::time::timeout_at(until, next_many(&mut s)).await else {
                break;
            };
            match answer {
                Some(Out::Renewed(r)) => {
                    assert!(left(r.time_left) > kept_ttl / 2, "{r:?}");
                    renewed += 1;
                }
                Some(Out::Ended(e)) => {
                    assert_eq!(e.id, 2, "the heartbeated lease ended: {e:?}");
                    assert_eq!(e.ended.unwrap().reason, Reason::Lost as i32);
                    lost_at = Some(start.elapsed());
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let lost_at = lost_at.expect("the silent group's lease ended");
    assert!(
        lost_at >= silent_ttl - Duration::from_millis(500),
        "{lost_at:?}"
    );
    assert!(renewed >= 10, "{renewed} renewed");
    assert!(manager.lease_info(&kept).await.unwrap().is_some());
    server.shutdown().await.unwrap();
}

/// Review probe (`review-confirm`): a raw client releases 300 leases while an operator
/// revokes the same keys, so that releases cross `ended REVOKED`s. For every lease the
/// answers must be one `ended RELEASED` (the release won), or an `ended` of another
/// reason followed by one `ended RELEASED` (the release crossed it, or came after it:
/// the client cannot tell, and waits for the confirmation), never an end left
/// unconfirmed nor a third `ended`; and every key must be free once confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_crossing_revokes_are_each_confirmed_once() {
    use leases::proto::leases::v1::ended::Reason;
    use std::collections::HashMap;
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(10);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let n = 300u64;
    let key = |i: u64| Key::system(["review", "crossing", &i.to_string()]);
    acquire_all(&mut s, n, key, ttl).await;
    let revokes = {
        let manager = manager.clone();
        tokio::spawn(async move {
            futures_util::future::join_all((0..n).map(|i| {
                let manager = manager.clone();
                async move { manager.revoke(&key(i)).await.unwrap() }
            }))
            .await
        })
    };
    for i in 0..n {
        s.send(&HoldManyRequest {
            kind: Some(In::Release(LeaseRelease { id: i })),
        });
    }
    revokes.await.unwrap();
    let mut ends: HashMap<u64, Vec<i32>> = HashMap::new();
    let done = |ends: &HashMap<u64, Vec<i32>>| {
        (0..n).all(|i| {
            ends.get(&i)
                .is_some_and(|e| e.last() == Some(&(Reason::Released as i32)))
        })
    };
    let until = Instant::now() + Duration::from_secs(8);
    while !done(&ends) {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next::<HoldManyResponse>()).await {
            Ok(Some(HoldManyResponse {
                kind: Some(Out::Ended(e)),
            })) => ends.entry(e.id).or_default().push(e.ended.unwrap().reason),
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    let unconfirmed: Vec<_> = (0..n)
        .filter(|i| {
            ends.get(i)
                .is_none_or(|e| e.last() != Some(&(Reason::Released as i32)))
        })
        .map(|i| (i, ends.get(&i).cloned()))
        .collect();
    let crossed = ends.values().filter(|e| e.len() == 2).count();
    eprintln!("{crossed} of {n} releases were answered after another end");
    assert!(
        unconfirmed.is_empty(),
        "{} of {n} ends never confirmed, e.g. {:?}",
        unconfirmed.len(),
        unconfirmed.first()
    );
    // Nothing more for these ids: a heartbeat is answered next.
    s.send(&group_heartbeat(ttl));
    match next_many(&mut s).await {
        Some(Out::Renewed(_)) => {}
        other => panic!("a third `ended`? {other:?}"),
    }
    for i in 0..n {
        assert_eq!(
            manager.lease_info(&key(i)).await.unwrap().map(|l| l.token),
            None
        );
    }
    server.shutdown().await.unwrap();
}

/// Review probe (`review-confirm`, held): a raw client that reuses an id once the
/// server confirmed the release of its earlier lease (against the doc's "unique for the
/// life of the stream", but accepted by the server) gets no stale `ended` for the new
/// lease: it lives on and is renewed, and its own release is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_after_the_confirmation_gets_no_stale_end() {
    use leases::proto::leases::v1::ended::Reason;
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(10);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let old = Key::system(["review", "reuse", "old"]);
    let new = Key::system(["review", "reuse", "new"]);
    let reason = |o: Option<Out>| match o {
        Some(Out::Ended(e)) => (e.id, e.ended.unwrap().reason),
        other => panic!("{other:?}"),
    };
    s.send(&lane_acquire(1, &old, ttl, None));
    assert!(matches!(next_many(&mut s).await, Some(Out::Granted(_))));
    assert!(manager.revoke(&old).await.unwrap());
    assert_eq!(reason(next_many(&mut s).await), (1, Reason::Revoked as i32));
    s.send(&HoldManyRequest {
        kind: Some(In::Release(LeaseRelease { id: 1 })),
    });
    assert_eq!(
        reason(next_many(&mut s).await),
        (1, Reason::Released as i32)
    );
    s.send(&lane_acquire(1, &new, ttl, None));
    assert!(matches!(next_many(&mut s).await, Some(Out::Granted(g)) if g.id == 1));
    for _ in 0..3 {
        s.send(&group_heartbeat(ttl));
        match next_many(&mut s).await {
            Some(Out::Renewed(r)) => assert!(left(r.time_left) > ttl / 2),
            other => panic!("a stale answer for the reused id: {other:?}"),
        }
    }
    assert!(manager.lease_info(&new).await.unwrap().is_some());
    s.send(&HoldManyRequest {
        kind: Some(In::Release(LeaseRelease { id: 1 })),
    });
    assert_eq!(
        reason(next_many(&mut s).await),
        (1, Reason::Released as i32)
    );
    s.send(&group_heartbeat(ttl));
    assert!(matches!(next_many(&mut s).await, Some(Out::Renewed(_))));
    assert_eq!(
        manager.lease_info(&new).await.unwrap().map(|l| l.token),
        None
    );
    server.shutdown().await.unwrap();
}

/// Review helper (`review-fastpath`): acquires `key` (TTL 9 s) on a fresh `HoldMany`
/// stream, heartbeats its group 6.5 s after the grant (answered by the demultiplexer, from
/// a renewal at least 6 s after the grant), and returns the stream, the grant's promise
/// and the heartbeat's (send instant + time left).
async fn held_past_its_grant(
    server: &LeaseServer,
    key: &Key,
    ttl: Duration,
) -> (RawStream, Instant, Instant) {
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let asked = Instant::now();
    s.send(&lane_acquire(1, key, ttl, None));
    let by_grant = match next_many(&mut s).await {
        Some(Out::Granted(g)) => asked + left(g.granted.unwrap().time_left),
        other => panic!("{other:?}"),
    };
    tokio::time::sleep_until(asked + Duration::from_millis(6500)).await;
    let sent = Instant::now();
    s.send(&group_heartbeat(ttl));
    let promised = match next_many(&mut s).await {
        Some(Out::Renewed(r)) => sent + left(r.time_left),
        other => panic!("{other:?}"),
    };
    assert!(promised > by_grant + Duration::from_secs(3));
    (s, by_grant, promised)
}

/// Review probe (`review-fastpath`): a lane closed without release (`close{id}`: the
/// task reads the end of its requests) after a group heartbeat answered by the
/// demultiplexer keeps its key until that answer's time left has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_closed_after_an_answered_group_heartbeat_keeps_its_promise() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(9);
    let key = Key::system(["review", "fastpath", "close"]);
    let (mut s, by_grant, promised) = held_past_its_grant(&server, &key, ttl).await;
    s.send(&HoldManyRequest {
        kind: Some(In::Close(LeaseClose { id: 1 })),
    });
    tokio::time::sleep_until(by_grant + Duration::from_millis(1500)).await;
    assert!(
        manager.lease_info(&key).await.unwrap().is_some(),
        "the key went back before the time left answered for its group ran out"
    );
    let back = granted_at(&manager, &key, Duration::from_secs(20)).await;
    assert!(back >= promised, "given back {:?} early", promised - back);
    drop(s);
    server.shutdown().await.unwrap();
}

/// Review probe (`review-fastpath`): a server that stops (memory store: the lease ends
/// `SHUTDOWN`, and the server keeps its promises before it releases) after a group
/// heartbeat answered by the demultiplexer keeps the key until that answer's time left
/// has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_keeps_a_promise_answered_for_a_group() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(9);
    let key = Key::system(["review", "fastpath", "stop"]);
    let (s, by_grant, promised) = held_past_its_grant(&server, &key, ttl).await;
    let stopped = tokio::spawn(server.shutdown());
    tokio::time::sleep_until(by_grant + Duration::from_millis(1500)).await;
    assert!(
        manager.lease_info(&key).await.unwrap().is_some(),
        "the key went back before the time left answered for its group ran out"
    );
    let back = granted_at(&manager, &key, Duration::from_secs(20)).await;
    assert!(back >= promised, "given back {:?} early", promised - back);
    drop(s);
    stopped.await.unwrap().unwrap();
}

/// Review probe (`review-fastpath`): a lease re-attached (`resume`) on a lane of a new
/// `HoldMany` stream, after its first stream broke, lives on group heartbeats every
/// TTL/4 for three TTLs (answered by the demultiplexer: they count against silence),
/// and is lost once its group goes silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_lane_lives_on_group_heartbeats_and_is_lost_without() {
    use leases::proto::leases::v1::ended::Reason;
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(2);
    let key = Key::system(["review", "fastpath", "resume"]);
    let mut first = RawStream::open(server.local_addr(), PATH).await;
    first.send(&lane_acquire(1, &key, ttl, None));
    let token = match next_many(&mut first).await {
        Some(Out::Granted(g)) => g.granted.unwrap().token,
        other => panic!("{other:?}"),
    };
    drop(first);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let mut resume = lane_acquire(7, &key, ttl, None);
    if let Some(In::Acquire(a)) = &mut resume.kind {
        a.acquire.as_mut().unwrap().resume = Some(token);
    }
    s.send(&resume);
    match next_many(&mut s).await {
        Some(Out::Granted(g)) => assert_eq!(g.granted.unwrap().token, token),
        other => panic!("{other:?}"),
    }
    let start = Instant::now();
    let mut renewed = 0;
    while start.elapsed() < ttl * 3 {
        s.send(&group_heartbeat(ttl));
        let until = Instant::now() + ttl / 4;
        while let Ok(answer) = tokio::time::timeout_at(until, next_many(&mut s)).await {
            match answer {
                Some(Out::Renewed(r)) => {
                    assert!(left(r.time_left) > ttl / 4, "{r:?}");
                    renewed += 1;
                }
                other => panic!("the heartbeated, resumed lease: {other:?}"),
            }
        }
    }
    assert!(renewed >= 10, "{renewed} renewed");
    let silent = Instant::now();
    match next_many(&mut s).await {
        Some(Out::Ended(e)) => {
            assert_eq!(e.id, 7);
            assert_eq!(e.ended.unwrap().reason, Reason::Lost as i32);
            assert!(silent.elapsed() >= ttl / 2, "{:?}", silent.elapsed());
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await.unwrap();
}

/// Review probe (`review-fastpath`): 200 leases of one group on a raw client that
/// follows the deadline rule exactly (a `renewed` applies to the leases granted before
/// its heartbeat was sent and not ended before it came), heartbeated every 100 ms while
/// an operator revokes half of the keys one by one; then every lease is closed without
/// release and the stream broken. No key may be granted to anyone else before the
/// deadline the raw client computed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_under_group_heartbeats_never_let_a_second_holder_in_early() {
    use std::collections::{HashMap, HashSet, VecDeque};
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(2);
    let n = 200u64;
    let key = |i: u64| Key::system(["review", "fastpath", "load", &i.to_string()]);
    let mut s = RawStream::open(server.local_addr(), PATH).await;
    let mut deadline: HashMap<u64, Instant> = HashMap::new();
    let mut granted: HashSet<u64> = HashSet::new();
    let mut ended: HashSet<u64> = HashSet::new();
    let asked = Instant::now();
    for i in 0..n {
        s.send(&lane_acquire(i, &key(i), ttl, None));
    }
    while granted.len() < n as usize {
        match next_many(&mut s).await {
            Some(Out::Granted(g)) => {
                deadline.insert(g.id, asked + left(g.granted.unwrap().time_left));
                granted.insert(g.id);
            }
            other => panic!("{other:?}"),
        }
    }
    let revoker = {
        let manager = manager.clone();
        tokio::spawn(async move {
            for i in (0..n).filter(|i| i % 2 == 0) {
                tokio::time::sleep(Duration::from_millis(13)).await;
                manager.revoke(&key(i)).await.unwrap();
            }
        })
    };
    let mut sends: VecDeque<(Instant, Vec<u64>)> = VecDeque::new();
    let mut apply =
        |out: Out, sends: &mut VecDeque<(Instant, Vec<u64>)>, ended: &mut HashSet<u64>| match out {
            Out::Renewed(r) => {
                let (sent, ids) = sends.pop_front().expect("a renewed per heartbeat");
                let until = sent + left(r.time_left);
                for id in ids {
                    if !ended.contains(&id) {
                        let d = deadline.get_mut(&id).unwrap();
                        *d = (*d).max(until);
                    }
                }
            }
            Out::Ended(e) => {
                ended.insert(e.id);
            }
            Out::Failed(f) => {
                ended.insert(f.id);
            }
            other => panic!("{other:?}"),
        };
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        let live: Vec<u64> = granted.difference(&ended).copied().collect();
        sends.push_back((Instant::now(), live));
        s.send(&group_heartbeat(ttl));
        let until = Instant::now() + Duration::from_millis(100);
        while let Ok(answer) = tokio::time::timeout_at(until, next_many(&mut s)).await {
            apply(answer.expect("the stream lives"), &mut sends, &mut ended);
        }
    }
    revoker.await.unwrap();
    // Every answer still owed, then close everything without release and break.
    while !sends.is_empty() {
        apply(
            next_many(&mut s).await.expect("the stream lives"),
            &mut sends,
            &mut ended,
        );
    }
    for i in 0..n {
        s.send(&HoldManyRequest {
            kind: Some(In::Close(LeaseClose { id: i })),
        });
    }
    drop(s);
    let waits: Vec<_> = (0..n)
        .map(|i| {
            let manager = manager.clone();
            let d = deadline[&i];
            tokio::spawn(async move {
                let at = granted_at(&manager, &key(i), Duration::from_secs(20)).await;
                assert!(
                    at >= d,
                    "lease {i}: the key went to another holder {:?} before the raw \
                     client's deadline",
                    d - at
                );
            })
        })
        .collect();
    for w in waits {
        w.await.unwrap();
    }
    server.shutdown().await.unwrap();
}

/// Review probe (`review-fastpath`): a lease re-attached (`resume`) on a second
/// `HoldMany` stream while its first stream heartbeats its group every 100 ms (answered
/// by the demultiplexer): the first stream is told `failed { CANCELLED }` for it, and no
/// `renewed` that came after that is applied to it by the deadline rule; the lease keeps
/// its token and lives on the second stream's group heartbeats for three TTLs, while the
/// first stream's empty group is answered with no time left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_over_while_its_group_is_heartbeated_moves_whole() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let ttl = Duration::from_secs(2);
    let key = Key::system(["review", "fastpath", "takeover"]);
    let mut first = RawStream::open(server.local_addr(), PATH).await;
    first.send(&lane_acquire(1, &key, ttl, None));
    let token = match next_many(&mut first).await {
        Some(Out::Granted(g)) => g.granted.unwrap().token,
        other => panic!("{other:?}"),
    };
    let mut second = RawStream::open(server.local_addr(), PATH).await;
    let mut resume = lane_acquire(9, &key, ttl, None);
    if let Some(In::Acquire(a)) = &mut resume.kind {
        a.acquire.as_mut().unwrap().resume = Some(token);
    }
    let start = Instant::now();
    let (mut moved, mut cancelled) = (false, false);
    let mut renewed_second = 0;
    while start.elapsed() < ttl * 3 {
        if !moved && start.elapsed() > Duration::from_millis(700) {
            second.send(&resume);
            match next_many(&mut second).await {
                Some(Out::Granted(g)) => assert_eq!(g.granted.unwrap().token, token),
                other => panic!("{other:?}"),
            }
            moved = true;
        }
        first.send(&group_heartbeat(ttl));
        match next_many(&mut first).await {
            Some(Out::Failed(f)) => {
                assert_eq!(f.id, 1);
                assert_eq!(f.code, Code::Cancelled as i32, "{f:?}");
                assert!(moved && !cancelled);
                cancelled = true;
                assert!(matches!(next_many(&mut first).await, Some(Out::Renewed(_))));
            }
            Some(Out::Renewed(r)) => {
                if cancelled {
                    assert_eq!(left(r.time_left), Duration::ZERO, "{r:?}");
                }
            }
            other => panic!("{other:?}"),
        }
        if moved {
            second.send(&group_heartbeat(ttl));
            match next_many(&mut second).await {
                Some(Out::Renewed(r)) => {
                    assert!(
                        left(r.time_left) > ttl / 4,
                        "{r:?} at {:?}, renewed {renewed_second}",
                        start.elapsed()
                    );
                    renewed_second += 1;
                }
                other => panic!("the re-attached lease: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cancelled, "the first stream was never told the lease moved");
    assert!(renewed_second >= 10, "{renewed_second}");
    let info = manager.lease_info(&key).await.unwrap().expect("held");
    assert_eq!(info.token, token);
    server.shutdown().await.unwrap();
}
