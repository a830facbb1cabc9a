//! An adversarial review of the etcd backend's group rounds (`src/backend/etcd/rounds.rs`)
//! and single renewals: each test is a finding (failed before its fix) or a probe that
//! held.
//!
//! Uses `LEASES_ETCD_ENDPOINTS` when set, else a throwaway cluster (see
//! `support/etcd.rs`); a missing etcd is a failure, never a skip.
#![cfg(feature = "etcd")]

mod support;

use std::time::{Duration, Instant};

use leases::backend::etcd_wire as pb;
use leases::backend::{AcquireOutcome, Backend, EtcdBackend, EtcdOptions, RenewOutcome};
use leases::Key;
use support::etcd::{granted, run_id, shared_endpoints};

const TTL: Duration = Duration::from_secs(2);

fn prefix() -> String {
    format!("/leases-groups-review-{}", run_id())
}

fn options() -> EtcdOptions {
    EtcdOptions::new(shared_endpoints())
        .prefix(prefix())
        .request_timeout(Duration::from_secs(3))
}

/// Finding 2. A group round and a single renewal of the same lease on one backend
/// instance may overlap (a lease handed over and re-attached through the same manager
/// while a round that still has it runs). The one that started first could finish last,
/// and each set the lease's `live_until` (how long this instance keeps its key from the
/// cleanup of keys nobody holds) to *its own* start + TTL: moved back to the older
/// start, the cleanup deleted the key (with its grant record: free to anyone at once)
/// before the TTL promised by the newer renewal, whose holder acts until that start +
/// TTL − margin. The older call is started (its start read) and held at its first
/// request while the newer one runs, then let finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_that_started_before_a_confirmed_renewal_does_not_shorten_the_key() {
    overlap("round", true).await;
}

/// Finding 2, the other way round: a single renewal that started before a confirmed
/// group round and finishes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_started_before_a_confirmed_round_does_not_shorten_the_key() {
    overlap("single", false).await;
}

/// The older call (a round of the lease when `round_first`, else its single renewal)
/// starts, then the newer one (the other kind) starts a second later and is confirmed,
/// then the older one finishes; another instance must not be granted the key before the
/// newer one's start + TTL.
async fn overlap(tag: &str, round_first: bool) {
    let a = EtcdBackend::connect(options()).await.unwrap();
    let other_instance = EtcdBackend::connect(options()).await.unwrap();
    let key = Key::system(["groups_review", "overlap", tag, "key"]);
    let other = Key::system(["groups_review", "overlap", tag, "other"]);
    let t = granted(a.acquire(&key, TTL, b"").await.unwrap());
    let u = granted(a.acquire(&other, TTL, b"").await.unwrap());
    let leases = [(key.clone(), t)];
    let round = || async { a.renew_many(&leases, TTL).await.pop().unwrap() };
    let single = || async { a.renew(&key, t, TTL).await };
    // The older call starts (reads its start, sends its first request) and waits there.
    let mut older: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = if round_first {
        Box::pin(round())
    } else {
        Box::pin(single())
    };
    tokio::select! {
        biased;
        _ = &mut older => panic!("the older call answered at once"),
        () = std::future::ready(()) => {}
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The newer call, started a second later, is confirmed first: the key is promised
    // until at least `s2 + TTL`.
    let s2 = Instant::now();
    let newer = if round_first {
        single().await
    } else {
        round().await
    };
    assert_eq!(newer.unwrap(), RenewOutcome::Renewed);
    // Then the older one finishes.
    assert_eq!(older.await.unwrap(), RenewOutcome::Renewed);
    // The group goes on (rounds of its other lease, each with its keep-alive and the
    // cleanup before it); another instance tries to take the key meanwhile.
    let promised = s2 + TTL;
    loop {
        let now = Instant::now();
        if now + Duration::from_millis(100) >= promised {
            break;
        }
        let r = a.renew_many(&[(other.clone(), u)], TTL).await;
        assert!(matches!(r[..], [Ok(RenewOutcome::Renewed)]), "{r:?}");
        let got = other_instance.acquire(&key, TTL, b"").await.unwrap();
        let answered = Instant::now();
        if let AcquireOutcome::Granted { token } = got {
            other_instance.release(&key, token).await.unwrap();
            assert!(
                answered >= promised,
                "granted to another instance {:?} before the promised expiry of a \
                 confirmed renewal",
                promised - answered
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.release(&key, t).await.unwrap();
    a.release(&other, u).await.unwrap();
}

/// Finding 3. The etcd lease a group's keys ride on revoked by hand (`etcdctl lease
/// revoke`): etcd deletes its keys, their grant records stay, and the next acquire of
/// one of them found the key gone and the etcd lease the record names gone too, which
/// read as "its holder's time ran out" (what a dead process leaves): granted at once
/// (seen 1.59 s early), while the holder whose round was just confirmed acts until that
/// round's start + TTL − margin, learning only at its next round (TTL/3). Fixed with
/// each group's marker lease (see "Keys deleted by hand" in the etcd module docs): it
/// outlives the group's etcd lease unless that expired, so the acquire waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_etcd_lease_revoked_by_hand_does_not_free_its_keys_before_the_holders_deadline() {
    let a = EtcdBackend::connect(options()).await.unwrap();
    let other_instance = EtcdBackend::connect(options()).await.unwrap();
    let key = Key::system(["groups_review", "lease_revoked", "key"]);
    let t = granted(a.acquire(&key, TTL, b"").await.unwrap());
    let start = Instant::now();
    let answers = a.renew_many(&[(key.clone(), t)], TTL).await;
    assert!(
        matches!(answers[..], [Ok(RenewOutcome::Renewed)]),
        "{answers:?}"
    );
    // The holder's context would end at `start + TTL - margin` (margin TTL/5 by
    // default); nobody else may be granted the key before.
    let deadline = start + TTL - TTL / 5;
    // An operator revokes the etcd lease the key rides on.
    let channel = support::etcd::channel(&shared_endpoints()[0]).await;
    let ek = format!("{}{key}", prefix()).into_bytes();
    let kv = pb::kv_client::KvClient::new(channel.clone())
        .range(pb::RangeRequest {
            key: ek,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .pop()
        .unwrap();
    assert_ne!(kv.lease, 0);
    pb::lease_client::LeaseClient::new(channel)
        .lease_revoke(pb::LeaseRevokeRequest { id: kv.lease })
        .await
        .unwrap();
    let got = other_instance.acquire(&key, TTL, b"").await.unwrap();
    let answered = Instant::now();
    if let AcquireOutcome::Granted { token } = got {
        other_instance.release(&key, token).await.unwrap();
        assert!(
            answered >= deadline,
            "granted to another instance {:?} before the holder's deadline",
            deadline - answered
        );
    }
}

/// What finding 3's fix must not cost: a key whose holder *died* (its instance gone, its
/// keep-alives stopped) is granted once its etcd lease expires, without the TTL's wait
/// of a revoked one. The marker is kept alive before the etcd lease, so it expires
/// first; an acquire that found it alive would wait a whole TTL more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_key_is_granted_when_its_etcd_lease_expires() {
    // Longer than the other tests' TTL, for room between the two outcomes.
    let ttl = TTL * 2;
    let key = Key::system(["groups_review", "dead_holder", "key"]);
    let last_round = {
        let a = EtcdBackend::connect(options()).await.unwrap();
        let t = granted(a.acquire(&key, ttl, b"").await.unwrap());
        let start = Instant::now();
        let answers = a.renew_many(&[(key.clone(), t)], ttl).await;
        assert!(
            matches!(answers[..], [Ok(RenewOutcome::Renewed)]),
            "{answers:?}"
        );
        start
    }; // dropped: no more keep-alives, as if its process died
    let other_instance = EtcdBackend::connect(options()).await.unwrap();
    let granted_at = loop {
        if let AcquireOutcome::Granted { token } =
            other_instance.acquire(&key, ttl, b"").await.unwrap()
        {
            let at = Instant::now();
            other_instance.release(&key, token).await.unwrap();
            break at;
        }
        assert!(
            last_round.elapsed() < ttl * 6,
            "the dead holder's key was not granted within 6 TTLs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The etcd lease (of the TTL, in whole seconds) expires a TTL after the last
    // keep-alive, which the last round sent (etcd looks for expired leases every
    // 500 ms): the key is granted soon after. A wait, had one started, would end a
    // whole TTL after the key was first seen gone, so never before two TTLs.
    let since = granted_at - last_round;
    assert!(
        since < ttl * 2,
        "the dead holder's key was granted {since:?} after its last renewal: a revoked \
         etcd lease's wait was applied to an expired one"
    );
}
