//! Adversarial review of `review-memory` (the claim box, the boxed `serve_hold`, the
//! event log's end recording, the lazy wait woken by an earlier deadline): re-attach
//! claims racing each other, a break, and a release, on the memory backend.

use std::time::Duration;

use leases::proto::leases::v1::ended::Reason;
use leases::proto::leases::v1::hold_many_request::Kind as ManyIn;
use leases::proto::leases::v1::hold_many_response::Kind as ManyOut;
use leases::proto::leases::v1::hold_request::Kind as In;
use leases::proto::leases::v1::hold_response::Kind as Out;
use leases::proto::leases::v1::{
    Acquire, HoldManyRequest, HoldRequest, HoldResponse, LeaseRelease, Release,
};
use leases::service::LeaseServer;
use leases::{Key, LeaseManager};
use tonic::Code;

use crate::support::remote::{
    group_heartbeat, lane_acquire, local, memory_manager, next_many, raw_heartbeats, raw_hold,
    raw_resume, RawStream,
};

const MANY: &str = "/leases.v1.Leases/HoldMany";

async fn token_of(manager: &LeaseManager, key: &Key) -> Option<u64> {
    manager.lease_info(key).await.unwrap().map(|i| i.token)
}

/// Waits up to `within` for `key` to be free on `manager`; whether it is.
async fn freed_within(manager: &LeaseManager, key: &Key, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        if token_of(manager, key).await.is_none() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_hold(s: &mut RawStream) -> Option<Out> {
    tokio::time::timeout(Duration::from_secs(10), s.next::<HoldResponse>())
        .await
        .expect("an answer within 10 s")
        .and_then(|m| m.kind)
}

/// Sends `release` on a `Hold` stream and reads its `ended RELEASED`.
async fn release(s: &mut RawStream) {
    s.send(&HoldRequest {
        kind: Some(In::Release(Release {})),
    });
    match next_hold(s).await {
        Some(Out::Ended(e)) => assert_eq!(e.reason, Reason::Released as i32, "{e:?}"),
        other => panic!("a release answered with {other:?}"),
    }
}

/// Whether a `Hold` stream still holds its lease: a heartbeat is answered `renewed`.
async fn alive(s: &mut RawStream) -> bool {
    s.send(&HoldRequest {
        kind: Some(In::Heartbeat(leases::proto::leases::v1::Heartbeat {})),
    });
    matches!(next_hold(s).await, Some(Out::Renewed(_)))
}

/// Attacks the claim box (`handover::ClaimBox`): four re-attaches (`resume`) of one
/// lease at once on four `Hold` streams of the server that holds it. Their claims land
/// in the holding stream's box (or the box of the stream that took it over); the one
/// handed the hold lists it anew, and `Listed::drop` must refuse every claim left
/// behind (not leave it waiting for ever). Checks: every re-attach is answered within
/// 10 s, every grant has the lease's token, exactly one stream holds it at the end (the
/// first stream is told `CANCELLED`), and its `release` frees the key. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resumes_are_all_answered_and_leave_one_holder() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(3);
    for round in 0..8 {
        let key = Key::system(["review", "memory", "resumes", &round.to_string()]);
        let (mut first, _) = raw_hold(addr, &key, ttl).await;
        let token = token_of(&manager, &key).await.expect("held");
        let tries: Vec<_> = (0..4)
            .map(|_| {
                let key = key.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        raw_resume(addr, &key, ttl, token),
                    )
                    .await
                })
            })
            .collect();
        let mut granted = Vec::new();
        let mut refused = Vec::new();
        for t in tries {
            match t.await.unwrap().expect("a re-attach answered within 10 s") {
                Ok((s, again, _)) => {
                    assert_eq!(again, token, "round {round}: a re-attach got another token");
                    granted.push(s);
                }
                Err(status) => refused.push(status.code()),
            }
        }
        assert!(!granted.is_empty(), "round {round}: nobody took it over");
        for code in &refused {
            assert!(
                matches!(code, Code::Unavailable | Code::FailedPrecondition),
                "round {round}: refused with {code:?}"
            );
        }
        assert_eq!(next_hold(&mut first).await, None, "round {round}");
        assert_eq!(
            first.status().await.code(),
            Code::Cancelled,
            "round {round}"
        );
        let mut holders = Vec::new();
        for mut s in granted {
            if alive(&mut s).await {
                holders.push(s);
            }
        }
        assert_eq!(
            holders.len(),
            1,
            "round {round}: streams holding the lease at once (refused: {refused:?})"
        );
        assert_eq!(token_of(&manager, &key).await, Some(token));
        release(&mut holders[0]).await;
        assert!(
            freed_within(&manager, &key, Duration::from_secs(2)).await,
            "round {round}: released, yet held"
        );
    }
    server.shutdown().await.unwrap();
}

/// Attacks the boxed give-back of a broken stream (`hold_on` -> `give_back_listed`, its
/// claim read from the box, `Hold::watch_end`): a `Hold` stream reset by its client,
/// re-attached on another stream of the same server 300 ms later, is handed over whole
/// (same token), is not freed when the first stream's promise passes (heartbeated for
/// three TTLs), and its `release` frees the key at once. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_gives_its_lease_whole_to_a_reattach() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(2);
    let key = Key::system(["review", "memory", "broken"]);
    let (mut old, _) = raw_hold(addr, &key, ttl).await;
    let token = token_of(&manager, &key).await.expect("held");
    old.reset(h2::Reason::CANCEL);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut s, again, _) = raw_resume(addr, &key, ttl, token)
        .await
        .expect("re-attached");
    assert_eq!(again, token);
    raw_heartbeats(&mut [&mut s], ttl * 3, ttl / 4)
        .await
        .expect("the re-attached lease lives on its heartbeats");
    assert_eq!(
        token_of(&manager, &key).await,
        Some(token),
        "the key was freed under its re-attached holder"
    );
    release(&mut s).await;
    assert!(freed_within(&manager, &key, Duration::from_secs(1)).await);
    server.shutdown().await.unwrap();
}

/// Attacks `Exit::Released` after the loop and `Listed::drop` refusing late claims: a
/// lane's `release` on a `HoldMany` stream sent at the same instant as a re-attach of
/// the same lease on a second `HoldMany` stream, twenty rounds. Either the re-attach is
/// granted (same token; then the key stays held, with the second stream as its only
/// holder, until that stream releases it) or it is refused (then the key is free within
/// a second). Never both, never a hang. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_racing_a_reattach_on_another_stream_leaves_one_answer() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(3);
    let mut outcomes = (0, 0);
    for round in 0..20u64 {
        let key = Key::system(["review", "memory", "release-race", &round.to_string()]);
        let mut first = RawStream::open(addr, MANY).await;
        first.send(&lane_acquire(1, &key, ttl, None));
        let token = match next_many(&mut first).await {
            Some(ManyOut::Granted(g)) => g.granted.unwrap().token,
            other => panic!("{other:?}"),
        };
        let mut second = RawStream::open(addr, MANY).await;
        // Both go out back to back.
        first.send(&HoldManyRequest {
            kind: Some(ManyIn::Release(LeaseRelease { id: 1 })),
        });
        second.send(&lane_acquire(7, &key, ttl, Some(token)));
        let resumed = match next_many(&mut second).await {
            Some(ManyOut::Granted(g)) => {
                assert_eq!(g.granted.unwrap().token, token, "round {round}");
                true
            }
            Some(ManyOut::Failed(f)) => {
                assert!(
                    f.code == Code::FailedPrecondition as i32 || f.code == Code::Unavailable as i32,
                    "round {round}: {f:?}"
                );
                false
            }
            other => panic!("round {round}: {other:?}"),
        };
        // The first stream answers the release (or the move) for lane 1.
        match next_many(&mut first).await {
            Some(ManyOut::Ended(e)) => {
                assert_eq!(e.id, 1);
                assert_eq!(e.ended.unwrap().reason, Reason::Released as i32);
            }
            Some(ManyOut::Failed(f)) => {
                assert!(resumed, "round {round}: {f:?} though the re-attach failed");
                assert_eq!(f.code, Code::Cancelled as i32, "round {round}: {f:?}");
            }
            other => panic!("round {round}: {other:?}"),
        }
        if resumed {
            outcomes.0 += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                token_of(&manager, &key).await,
                Some(token),
                "round {round}: re-attached, yet freed by the other stream's release"
            );
            second.send(&HoldManyRequest {
                kind: Some(ManyIn::Release(LeaseRelease { id: 7 })),
            });
            match next_many(&mut second).await {
                Some(ManyOut::Ended(e)) => {
                    assert_eq!(e.ended.unwrap().reason, Reason::Released as i32)
                }
                other => panic!("round {round}: {other:?}"),
            }
        } else {
            outcomes.1 += 1;
        }
        assert!(
            freed_within(&manager, &key, Duration::from_secs(1)).await,
            "round {round} (re-attached: {resumed}): released, yet held"
        );
    }
    eprintln!(
        "re-attached {} times, refused {} times",
        outcomes.0, outcomes.1
    );
    server.shutdown().await.unwrap();
}

/// Attacks the boxed `begin` (its `kept` guards and early give-backs) on a `HoldMany`
/// lane: a re-attach of a lease held on a broken `Hold` stream, on a lane whose client
/// goes away before the grant can be read (the whole `HoldMany` stream is reset right
/// after the acquire). The lease must keep its first promise (not be freed while the
/// first client may act) and, being a re-attach, must not be released at once; a third
/// re-attach afterwards still finds it with the same token. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattach_on_a_lane_gone_at_once_keeps_the_lease_whole() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(3);
    let key = Key::system(["review", "memory", "lane-gone"]);
    let (mut old, promised) = raw_hold(addr, &key, ttl).await;
    let token = token_of(&manager, &key).await.expect("held");
    old.reset(h2::Reason::CANCEL);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut lane = RawStream::open(addr, MANY).await;
    lane.send(&lane_acquire(3, &key, ttl, Some(token)));
    lane.reset(h2::Reason::CANCEL);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio::time::Instant::now() < promised);
    assert_eq!(
        token_of(&manager, &key).await,
        Some(token),
        "freed while the first client's promise runs"
    );
    let (mut s, again, _) = raw_resume(addr, &key, ttl, token)
        .await
        .expect("still there to re-attach");
    assert_eq!(again, token);
    release(&mut s).await;
    assert!(freed_within(&manager, &key, Duration::from_secs(1)).await);
    server.shutdown().await.unwrap();
}

#[path = "../support/http_wire.rs"]
mod http_wire;

/// The kinds and tokens of the event log's events (`GET /v1/events`) on `key`.
async fn events_of(addr: std::net::SocketAddr, key: &Key) -> Vec<(String, u64)> {
    let reply = http_wire::call(addr, "GET", "/v1/events", None, None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = key.to_string();
    reply.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == key.as_str())
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["token"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// The events on `key` once `want.len()` of them are there (within a second), and after
/// a further 500 ms (so that a second record of an end shows).
async fn settled_events(addr: std::net::SocketAddr, key: &Key, want: usize) -> Vec<(String, u64)> {
    for _ in 0..50 {
        if events_of(addr, key).await.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    events_of(addr, key).await
}

fn kinds(token: u64, kinds: &[&str]) -> Vec<(String, u64)> {
    kinds.iter().map(|k| (k.to_string(), token)).collect()
}

/// Attacks `EndLog` moving with a hold handed over (`Hold::noted_end`): a lease held on
/// a `Hold` stream, re-attached on a second stream of the same server (the hold, with
/// its log, moves), then revoked: the second stream's loop sees the end and records it.
/// The log must tell `granted`, `revoked` once each, and nothing for the release that
/// follows. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_tells_a_handed_over_lease_end_once() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(3);
    let key = Key::system(["review", "memory", "events", "moved"]);
    let (mut first, _) = raw_hold(addr, &key, ttl).await;
    let token = token_of(&manager, &key).await.expect("held");
    let (mut s, _, _) = raw_resume(addr, &key, ttl, token).await.expect("moved");
    assert_eq!(next_hold(&mut first).await, None);
    assert!(manager.revoke(&key).await.unwrap());
    match next_hold(&mut s).await {
        Some(Out::Ended(e)) => assert_eq!(e.reason, Reason::Revoked as i32, "{e:?}"),
        other => panic!("{other:?}"),
    }
    s.send(&HoldRequest {
        kind: Some(In::Release(Release {})),
    });
    assert!(freed_within(&manager, &key, Duration::from_secs(1)).await);
    let got = settled_events(addr, &key, 2).await;
    assert_eq!(got, kinds(token, &["granted", "revoked"]));
    server.shutdown().await.unwrap();
}

/// Attacks `Hold::watch_end` in `give_back_listed` followed by a hand-over: a `Hold`
/// stream reset by its client (its give-back leaves the end to a task), the lease then
/// re-attached on a second stream (its hold moves with no log), revoked there (that
/// stream sees the end: must not record it again) and released. The log must tell
/// `granted`, `revoked` once each. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_tells_the_end_of_a_lease_moved_after_a_break_once() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(3);
    let key = Key::system(["review", "memory", "events", "broken"]);
    let (mut first, _) = raw_hold(addr, &key, ttl).await;
    let token = token_of(&manager, &key).await.expect("held");
    first.reset(h2::Reason::CANCEL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut s, _, _) = raw_resume(addr, &key, ttl, token).await.expect("moved");
    assert!(manager.revoke(&key).await.unwrap());
    match next_hold(&mut s).await {
        Some(Out::Ended(e)) => assert_eq!(e.reason, Reason::Revoked as i32, "{e:?}"),
        other => panic!("{other:?}"),
    }
    s.send(&HoldRequest {
        kind: Some(In::Release(Release {})),
    });
    assert!(freed_within(&manager, &key, Duration::from_secs(1)).await);
    let got = settled_events(addr, &key, 2).await;
    assert_eq!(got, kinds(token, &["granted", "revoked"]));
    server.shutdown().await.unwrap();
}

/// Attacks the end recorded for leases whose stream never sees their context end: a
/// `Hold` stream's client releases (`Exit::Released`, the release's own watcher), a
/// `HoldMany` lane's client releases, and a `Hold` stream broken and left to its
/// promise (given back by `let_go` after the promise). Each must tell `granted` and
/// `released` once. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_tells_releases_and_give_backs_once() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(1);
    let (a, b, c) = (
        Key::system(["review", "memory", "events", "released"]),
        Key::system(["review", "memory", "events", "lane"]),
        Key::system(["review", "memory", "events", "given-back"]),
    );
    let (mut sa, _) = raw_hold(addr, &a, ttl).await;
    let ta = token_of(&manager, &a).await.unwrap();
    let mut many = RawStream::open(addr, MANY).await;
    many.send(&lane_acquire(1, &b, ttl, None));
    let tb = match next_many(&mut many).await {
        Some(ManyOut::Granted(g)) => g.granted.unwrap().token,
        other => panic!("{other:?}"),
    };
    let (mut sc, promised) = raw_hold(addr, &c, ttl).await;
    let tc = token_of(&manager, &c).await.unwrap();
    sc.reset(h2::Reason::CANCEL);
    release(&mut sa).await;
    many.send(&HoldManyRequest {
        kind: Some(ManyIn::Release(LeaseRelease { id: 1 })),
    });
    assert!(matches!(
        next_many(&mut many).await,
        Some(ManyOut::Ended(_))
    ));
    tokio::time::sleep_until(promised + Duration::from_millis(300)).await;
    assert!(freed_within(&manager, &c, Duration::from_secs(2)).await);
    assert_eq!(
        settled_events(addr, &a, 2).await,
        kinds(ta, &["granted", "released"])
    );
    assert_eq!(
        settled_events(addr, &b, 2).await,
        kinds(tb, &["granted", "released"])
    );
    assert_eq!(
        settled_events(addr, &c, 2).await,
        kinds(tc, &["granted", "released"])
    );
    server.shutdown().await.unwrap();
}

/// Attacks where the lane's guards (`kept`: `DoneGuard`, `StreamGuard`) are dropped in
/// the boxed `serve_hold`: a lane closed without release (given back by the rule),
/// then released: its confirmation (`ended RELEASED` after a `close`) must come only
/// once the server has let go of the key, and the `close`d key must be kept until then.
/// Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_after_a_close_is_confirmed_once_the_key_is_free() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(2);
    let key = Key::system(["review", "memory", "close-release"]);
    let mut s = RawStream::open(addr, MANY).await;
    s.send(&lane_acquire(1, &key, ttl, None));
    let token = match next_many(&mut s).await {
        Some(ManyOut::Granted(g)) => g.granted.unwrap().token,
        other => panic!("{other:?}"),
    };
    s.send(&HoldManyRequest {
        kind: Some(ManyIn::Close(leases::proto::leases::v1::LeaseClose {
            id: 1,
        })),
    });
    // The close ends the lane's requests: it tells the client how (a `failed`).
    match next_many(&mut s).await {
        Some(ManyOut::Failed(f)) => assert_eq!(f.id, 1, "{f:?}"),
        Some(ManyOut::Ended(e)) => assert_eq!(e.id, 1, "{e:?}"),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        token_of(&manager, &key).await,
        Some(token),
        "freed at the close"
    );
    s.send(&HoldManyRequest {
        kind: Some(ManyIn::Release(LeaseRelease { id: 1 })),
    });
    match next_many(&mut s).await {
        Some(ManyOut::Ended(e)) => {
            assert_eq!(e.id, 1);
            assert_eq!(e.ended.unwrap().reason, Reason::Released as i32);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        token_of(&manager, &key).await,
        None,
        "the release was confirmed before the key was given back"
    );
    server.shutdown().await.unwrap();
}

/// Attacks `begin`'s early give-back of a re-attached lease that had already ended (the
/// release said again, as `ClientLeaser` does after a break): a lane's lease revoked
/// (its client told), its `HoldMany` stream then broken; on a new stream, `acquire`
/// with `resume` followed at once by `release`. The new lane answers `failed
/// FAILED_PRECONDITION` and then confirms the release (`ended RELEASED`) only once the
/// key is free; the key is kept until then. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_said_again_on_a_new_lane_is_confirmed_once_the_key_is_free() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(3);
    let key = Key::system(["review", "memory", "said-again"]);
    let mut s = RawStream::open(addr, MANY).await;
    s.send(&lane_acquire(1, &key, ttl, None));
    let token = match next_many(&mut s).await {
        Some(ManyOut::Granted(g)) => g.granted.unwrap().token,
        other => panic!("{other:?}"),
    };
    assert!(manager.revoke(&key).await.unwrap());
    match next_many(&mut s).await {
        Some(ManyOut::Ended(e)) => {
            assert_eq!(e.ended.unwrap().reason, Reason::Revoked as i32)
        }
        other => panic!("{other:?}"),
    }
    s.reset(h2::Reason::CANCEL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        token_of(&manager, &key).await,
        Some(token),
        "freed at the break"
    );
    let mut again = RawStream::open(addr, MANY).await;
    again.send(&lane_acquire(5, &key, ttl, Some(token)));
    again.send(&HoldManyRequest {
        kind: Some(ManyIn::Release(LeaseRelease { id: 5 })),
    });
    match next_many(&mut again).await {
        Some(ManyOut::Failed(f)) => {
            assert_eq!(f.id, 5);
            assert_eq!(f.code, Code::FailedPrecondition as i32, "{f:?}");
        }
        other => panic!("{other:?}"),
    }
    match next_many(&mut again).await {
        Some(ManyOut::Ended(e)) => {
            assert_eq!(e.id, 5);
            assert_eq!(e.ended.unwrap().reason, Reason::Released as i32);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        token_of(&manager, &key).await,
        None,
        "the release was confirmed before the key was given back"
    );
    server.shutdown().await.unwrap();
}

/// Attacks the HTTP keeper's claim box and its end log: a lease acquired over HTTP,
/// re-attached on a native `Hold` stream of the same server (the keeper hands its hold
/// over, log and all), renewed there past the HTTP grant's TTL, then released: the key
/// is free at once, the HTTP keeper no longer answers for it (`410`), and the log tells
/// `granted` and `released` once each. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_lease_reattached_natively_moves_whole_and_ends_once() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(2);
    let key = Key::system(["review", "memory", "http-moved"]);
    let body = serde_json::json!({ "key": key.to_string(), "ttl_ms": 2000 }).to_string();
    let got = http_wire::call(addr, "POST", "/v1/acquire", None, Some(body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.body);
    let token: u64 = got.body["token"].as_str().unwrap().parse().unwrap();
    let (mut s, again, _) = raw_resume(addr, &key, ttl, token)
        .await
        .expect("re-attached from the HTTP keeper");
    assert_eq!(again, token);
    raw_heartbeats(&mut [&mut s], ttl * 2, ttl / 4)
        .await
        .expect("lives on the native stream");
    assert_eq!(token_of(&manager, &key).await, Some(token));
    let beat =
        serde_json::json!({ "key": key.to_string(), "token": token.to_string() }).to_string();
    let beat = http_wire::call(addr, "POST", "/v1/heartbeat", None, Some(beat.as_bytes()))
        .await
        .unwrap();
    assert_ne!(
        beat.status, 200,
        "the HTTP keeper still answers: {}",
        beat.body
    );
    release(&mut s).await;
    assert!(freed_within(&manager, &key, Duration::from_millis(500)).await);
    assert_eq!(
        settled_events(addr, &key, 2).await,
        kinds(token, &["granted", "released"])
    );
    server.shutdown().await.unwrap();
}

/// Attacks the claim box on `HoldMany` lanes with the demultiplexer answering the
/// holder's group (`Inbox::answer` / `unshare` before the hand-over): a lease held on a
/// lane whose group is heartbeated, re-attached by three lanes of three other
/// `HoldMany` streams at once, ten rounds. Every re-attach is answered, grants carry
/// the token, the first stream is told `failed CANCELLED`, exactly one lane holds the
/// lease at the end (its group heartbeat is answered with time left; the others were
/// told `failed`), and its release frees the key. Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resumes_on_lanes_leave_one_holder() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(3);
    for round in 0..10 {
        let key = Key::system(["review", "memory", "lane-resumes", &round.to_string()]);
        let mut first = RawStream::open(addr, MANY).await;
        first.send(&lane_acquire(1, &key, ttl, None));
        let token = match next_many(&mut first).await {
            Some(ManyOut::Granted(g)) => g.granted.unwrap().token,
            other => panic!("{other:?}"),
        };
        first.send(&group_heartbeat(ttl));
        assert!(matches!(
            next_many(&mut first).await,
            Some(ManyOut::Renewed(_))
        ));
        let mut others = Vec::new();
        for _ in 0..3 {
            others.push(RawStream::open(addr, MANY).await);
        }
        for s in others.iter_mut() {
            s.send(&lane_acquire(2, &key, ttl, Some(token)));
        }
        first.send(&group_heartbeat(ttl));
        let mut granted = Vec::new();
        for (i, s) in others.iter_mut().enumerate() {
            match next_many(s).await {
                Some(ManyOut::Granted(g)) => {
                    assert_eq!(g.granted.unwrap().token, token, "round {round}");
                    granted.push(i);
                }
                Some(ManyOut::Failed(f)) => assert!(
                    f.code == Code::Unavailable as i32 || f.code == Code::FailedPrecondition as i32,
                    "round {round}: {f:?}"
                ),
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert!(!granted.is_empty(), "round {round}: nobody took it over");
        // The first stream: told the lease moved, before a `renewed` of its group.
        let mut told = false;
        for _ in 0..3 {
            match next_many(&mut first).await {
                Some(ManyOut::Failed(f)) => {
                    assert_eq!(f.code, Code::Cancelled as i32, "round {round}: {f:?}");
                    told = true;
                    break;
                }
                Some(ManyOut::Renewed(_)) => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert!(
            told,
            "round {round}: the first stream was not told the lease moved"
        );
        // Which of the granted lanes still holds it: those it moved on from were told
        // `failed CANCELLED` (read before their group's `renewed`).
        let mut holders = Vec::new();
        for &i in &granted {
            let s = &mut others[i];
            s.send(&group_heartbeat(ttl));
            match next_many(s).await {
                Some(ManyOut::Renewed(r)) => {
                    let left = Duration::try_from(r.time_left.unwrap()).unwrap();
                    if left > Duration::ZERO {
                        holders.push(i);
                    }
                }
                Some(ManyOut::Failed(f)) => {
                    assert_eq!(f.code, Code::Cancelled as i32, "round {round}: {f:?}");
                    assert!(matches!(next_many(s).await, Some(ManyOut::Renewed(_))));
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(
            holders.len(),
            1,
            "round {round}: holders {holders:?} of {granted:?}"
        );
        assert_eq!(token_of(&manager, &key).await, Some(token), "round {round}");
        let s = &mut others[holders[0]];
        s.send(&HoldManyRequest {
            kind: Some(ManyIn::Release(LeaseRelease { id: 2 })),
        });
        match next_many(s).await {
            Some(ManyOut::Ended(e)) => {
                assert_eq!(e.ended.unwrap().reason, Reason::Released as i32)
            }
            other => panic!("round {round}: {other:?}"),
        }
        assert!(
            freed_within(&manager, &key, Duration::from_secs(1)).await,
            "round {round}: released, yet held"
        );
    }
    server.shutdown().await.unwrap();
}

/// Attacks a claim arriving as the broken stream's promise runs out (the give-back's
/// `sleep_until(promised)` against `claims.recv()`, then `Listed::drop` refusing a late
/// claim): a `Hold` stream reset by its client, re-attached on another stream of the
/// same server from 40 ms before to 40 ms after its promise, twelve rounds. Either the
/// re-attach is granted with the token (then the key stays held with it until released)
/// or refused (`FAILED_PRECONDITION` or `UNAVAILABLE`; then the key is free, and nobody
/// else got the same token). Holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattach_at_the_edge_of_the_promise_is_whole_or_refused() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(1);
    let mut seen = (0, 0);
    for round in 0..12i64 {
        let key = Key::system(["review", "memory", "edge", &round.to_string()]);
        let (mut old, promised) = raw_hold(addr, &key, ttl).await;
        let token = token_of(&manager, &key).await.expect("held");
        old.reset(h2::Reason::CANCEL);
        let offset = Duration::from_millis((round.unsigned_abs() % 6) * 16);
        let at = if round % 2 == 0 {
            promised.checked_sub(offset).unwrap()
        } else {
            promised + offset
        };
        tokio::time::sleep_until(at).await;
        match raw_resume(addr, &key, ttl, token).await {
            Ok((mut s, again, _)) => {
                seen.0 += 1;
                assert_eq!(again, token, "round {round}");
                raw_heartbeats(&mut [&mut s], ttl * 2, ttl / 4)
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(token_of(&manager, &key).await, Some(token), "round {round}");
                release(&mut s).await;
                assert!(freed_within(&manager, &key, Duration::from_secs(1)).await);
            }
            Err(status) => {
                seen.1 += 1;
                assert!(
                    matches!(status.code(), Code::FailedPrecondition | Code::Unavailable),
                    "round {round}: {status:?}"
                );
                if status.code() == Code::FailedPrecondition {
                    assert!(
                        freed_within(&manager, &key, Duration::from_secs(1)).await,
                        "round {round}: refused as gone, yet held"
                    );
                }
            }
        }
    }
    eprintln!("granted {}, refused {}", seen.0, seen.1);
    server.shutdown().await.unwrap();
}

/// Attacks the order of the event log when an end is recorded by a task spawned at the
/// give-back (`Hold::release` -> `Hold::watch_end`) while the next holder's grant is
/// recorded at once by its stream: a `Hold` stream's client releases a key another
/// `Hold` stream is waiting for (`wait`), twenty rounds. The log must tell the first
/// lease's `released` before the second one's `granted` (the console's timeline reads
/// them in order: "events tell grants and ends ... in order"). Holds (20 of 20 rounds;
/// a race by design, as before the change: the end is recorded by a task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_tells_a_release_before_the_grant_it_lets_in() {
    let manager = memory_manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let addr = server.local_addr();
    let ttl = Duration::from_secs(3);
    let mut flipped = Vec::new();
    for round in 0..20 {
        let key = Key::system(["review", "memory", "order", &round.to_string()]);
        let (mut a, _) = raw_hold(addr, &key, ttl).await;
        let ta = token_of(&manager, &key).await.expect("held");
        let mut b = RawStream::open(addr, "/leases.v1.Leases/Hold").await;
        b.send(&HoldRequest {
            kind: Some(In::Acquire(Acquire {
                key: key.to_string(),
                ttl: Some(ttl.try_into().unwrap()),
                metadata: Vec::new(),
                wait: Some(Duration::from_secs(5).try_into().unwrap()),
                resume: None,
            })),
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        release(&mut a).await;
        let tb = match next_hold(&mut b).await {
            Some(Out::Granted(g)) => g.token,
            other => panic!("round {round}: {other:?}"),
        };
        let got = settled_events(addr, &key, 3).await;
        let want = vec![
            ("granted".to_string(), ta),
            ("released".to_string(), ta),
            ("granted".to_string(), tb),
        ];
        if got != want {
            flipped.push((round, got));
        }
        release(&mut b).await;
    }
    assert!(flipped.is_empty(), "out of order: {flipped:?}");
    server.shutdown().await.unwrap();
}
