//! The etcd backend's group rounds (`Backend::renew_many`: one scan of the lease keys
//! and the group's keep-alive per round, no read per key): what a round must see — a
//! revoke, a key deleted by hand (told to its holder before anyone else is granted the
//! key), a re-attach through another instance, a key deleted and granted again — and,
//! ignored by default, the requests per held lease per minute, per key against grouped.
//!
//! Uses `LEASES_ETCD_ENDPOINTS` when set, else a throwaway cluster (see
//! `support/etcd.rs`); a missing etcd is a failure, never a skip.
#![cfg(feature = "etcd")]

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leases::backend::etcd_wire as pb;
use leases::backend::{AcquireOutcome, Backend, EtcdBackend, EtcdOptions, RenewOutcome};
use leases::{AcquireOptions, CancelReason, Key, LeaseManager, LossCause};
use support::etcd::{granted, manager, run_id, shared_endpoints, EtcdCluster};

const TTL: Duration = Duration::from_secs(2);

fn prefix() -> String {
    format!("/leases-groups-{}", run_id())
}

fn options() -> EtcdOptions {
    EtcdOptions::new(shared_endpoints())
        .prefix(prefix())
        .request_timeout(Duration::from_secs(2))
}

/// Deletes a lease key by hand (as `etcdctl del` would), and its grant record too when
/// `record` (as `etcdctl del --prefix` of the whole prefix would).
async fn delete_by_hand(key: &Key, record: bool) {
    let channel = support::etcd::channel(&shared_endpoints()[0]).await;
    let mut kv = pb::kv_client::KvClient::new(channel);
    let ek = format!("{}{key}", prefix()).into_bytes();
    let mut keys = vec![ek.clone()];
    if record {
        let mut r = prefix().into_bytes();
        r.extend_from_slice(b"\0g");
        r.extend_from_slice(key.to_string().as_bytes());
        keys.push(r);
    }
    for k in keys {
        let resp = kv
            .txn(pb::TxnRequest {
                compare: vec![],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: k,
                            range_end: Vec::new(),
                        },
                    )),
                }],
                failure: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        let deleted = match &resp.responses[0].response {
            Some(pb::response_op::Response::ResponseDeleteRange(d)) => d.deleted,
            other => panic!("{other:?}"),
        };
        assert_eq!(deleted, 1);
    }
}

fn ok(answers: Vec<Result<RenewOutcome, leases::BackendError>>) -> Vec<RenewOutcome> {
    answers.into_iter().map(|a| a.unwrap()).collect()
}

/// More leases than one transaction reads (128): a round with them scans the prefix
/// instead of reading its keys.
const PAD: usize = 130;

/// `n` leases of `backend` to pad its rounds with (`tag` keeps their keys apart).
async fn padding(backend: &EtcdBackend, tag: &str, n: usize) -> Vec<(Key, u64)> {
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let acquires = chunk.iter().map(|i| async move {
            let k = Key::system(["groups", "pad", tag, &i.to_string()]);
            let t = granted(backend.acquire(&k, TTL, b"").await.unwrap());
            (k, t)
        });
        out.extend(futures_util::future::join_all(acquires).await);
    }
    out
}

/// One round of `leases` and the padding `pad` (all renewed): the answers for `leases`.
async fn round(b: &EtcdBackend, leases: &[(Key, u64)], pad: &[(Key, u64)]) -> Vec<RenewOutcome> {
    let mut all = leases.to_vec();
    all.extend_from_slice(pad);
    let mut got = ok(b.renew_many(&all, TTL).await);
    let rest = got.split_off(leases.len());
    assert!(rest.iter().all(|o| *o == RenewOutcome::Renewed), "{rest:?}");
    got
}

/// A revoke of one lease of a group being renewed is answered `Revoked` at the next
/// round; the others go on. A round of few leases reads their keys in one transaction;
/// one of more scans the prefix: both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_of_one_lease_in_a_group_is_seen_in_the_next_round() {
    revoke_in_a_round(0).await;
    revoke_in_a_round(PAD).await;
}

async fn revoke_in_a_round(pad: usize) {
    let a = EtcdBackend::connect(options()).await.unwrap();
    let b = EtcdBackend::connect(options()).await.unwrap();
    let tag = format!("revoke{pad}");
    let pad = padding(&a, &tag, pad).await;
    let keys: Vec<Key> = (0..3)
        .map(|i| Key::system(["groups", &tag, &i.to_string()]))
        .collect();
    let mut leases = Vec::new();
    for k in &keys {
        leases.push((k.clone(), granted(a.acquire(k, TTL, b"").await.unwrap())));
    }
    use RenewOutcome::*;
    assert_eq!(round(&a, &leases, &pad).await, [Renewed; 3]);
    assert_eq!(b.revoke(&keys[1]).await.unwrap(), Some(leases[1].1));
    assert_eq!(round(&a, &leases, &pad).await, [Renewed, Revoked, Renewed]);
    assert_eq!(round(&a, &leases, &pad).await, [Renewed, Revoked, Renewed]);
    for (k, t) in leases.iter().chain(&pad) {
        a.release(k, *t).await.unwrap();
    }
}

/// The same through managers: the revoked holder is told, the others are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_holder_among_others_is_told_within_a_round() {
    let keys: Vec<Key> = (0..3)
        .map(|i| Key::system(["groups", "revoke-m", &i.to_string()]))
        .collect();
    let (ma, mb) = (manager(options(), TTL).await, manager(options(), TTL).await);
    let mut held = Vec::new();
    for k in &keys {
        held.push(ma.acquire_lease(k.clone(), TTL).await.unwrap());
    }
    mb.revoke(&keys[1]).await.unwrap();
    tokio::time::timeout(TTL, held[1].1.cancelled())
        .await
        .expect("the revoked holder is told within a round");
    assert_eq!(held[1].1.reason(), Some(CancelReason::Revoked));
    tokio::time::sleep(TTL).await;
    assert!(!held[0].1.is_cancelled() && !held[2].1.is_cancelled());
    ma.shutdown().await;
    mb.shutdown().await;
}

/// A held key deleted by hand (`etcdctl del`, the grant record left) is reported lost
/// to its holder before another instance is granted it: the acquire finds the key gone
/// while its etcd lease lives, and waits out the holder's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_by_hand_is_lost_to_its_holder_before_anyone_is_granted_it() {
    deleted_by_hand(0).await;
    deleted_by_hand(PAD).await;
}

/// With `pad` more leases held beside the key (so that the holder's rounds scan).
async fn deleted_by_hand(pad: usize) {
    let (ma, mb) = (manager(options(), TTL).await, manager(options(), TTL).await);
    let padding = futures_util::future::join_all((0..pad).map(|i| {
        let k = Key::system(["groups", "deleted-pad", &i.to_string()]);
        ma.acquire_lease(k, TTL)
    }))
    .await;
    let padding: Vec<_> = padding.into_iter().map(Result::unwrap).collect();
    for i in 0..2 {
        let key = Key::system(["groups", &format!("deleted{pad}"), &i.to_string()]);
        let (lease_a, ctx_a) = ma.acquire_lease(key.clone(), TTL).await.unwrap();
        // Mid-round for the second: the holder has renewed once.
        tokio::time::sleep(TTL / 2 * i).await;
        delete_by_hand(&key, false).await;
        let deleted_at = Instant::now();
        let opts = AcquireOptions::new(TTL).wait(TTL * 4);
        let (lease_b, _ctx_b) = mb.acquire_lease_with(key.clone(), opts).await.unwrap();
        let late = deleted_at.elapsed();
        assert!(
            ctx_a.is_cancelled(),
            "pad {pad}, try {i}: granted {late:?} after the delete while the holder is live"
        );
        assert_eq!(
            ctx_a.reason(),
            Some(CancelReason::Lost(LossCause::RenewalRefused))
        );
        assert!(lease_b.token() > lease_a.token());
        eprintln!("pad {pad}, try {i}: granted {late:?} after the delete");
        lease_b.release().await.unwrap();
        drop(lease_a);
    }
    assert!(padding.iter().all(|(_, ctx)| !ctx.is_cancelled()));
    ma.shutdown().await;
    mb.shutdown().await;
}

/// A lease re-attached through another instance (which adopts it) is lost at the old
/// instance's next round, and renewed by the new one's rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_re_attached_elsewhere_is_lost_at_the_old_instances_next_round() {
    re_attached(0).await;
    re_attached(PAD).await;
}

async fn re_attached(pad: usize) {
    let a = EtcdBackend::connect(options()).await.unwrap();
    let b = EtcdBackend::connect(options()).await.unwrap();
    let tag = format!("moved{pad}");
    let (pad_a, pad_b) = (
        padding(&a, &format!("{tag}a"), pad).await,
        padding(&b, &format!("{tag}b"), pad).await,
    );
    let key = Key::system(["groups", &tag, "moved"]);
    let other = Key::system(["groups", &tag, "stays"]);
    let t = granted(a.acquire(&key, TTL, b"").await.unwrap());
    let u = granted(a.acquire(&other, TTL, b"").await.unwrap());
    let leases = [(key.clone(), t), (other.clone(), u)];
    use RenewOutcome::*;
    assert_eq!(round(&a, &leases, &pad_a).await, [Renewed, Renewed]);
    // The re-attach: b renews a lease it never acquired (and adopts it).
    assert_eq!(round(&b, &leases[..1], &pad_b).await, [Renewed]);
    assert_eq!(round(&a, &leases, &pad_a).await, [Lost, Renewed]);
    assert_eq!(round(&b, &leases[..1], &pad_b).await, [Renewed]);
    assert_eq!(round(&a, &leases[1..], &pad_a).await, [Renewed]);
    assert!(b.release(&key, t).await.unwrap());
    assert!(a.release(&other, u).await.unwrap());
    for (k, t) in &pad_a {
        a.release(k, *t).await.unwrap();
    }
    for (k, t) in &pad_b {
        b.release(k, *t).await.unwrap();
    }
}

/// A key deleted (with its grant record, as a delete of the whole prefix would) and
/// granted again to the same instance: the old token's lease is lost, the new one's
/// renewed, in one round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_and_granted_again_to_the_same_instance_loses_the_old_token() {
    granted_again(0).await;
    granted_again(PAD).await;
}

async fn granted_again(pad: usize) {
    let a = EtcdBackend::connect(options()).await.unwrap();
    let tag = format!("again{pad}");
    let pad = padding(&a, &tag, pad).await;
    let key = Key::system(["groups", &tag, "key"]);
    let t1 = granted(a.acquire(&key, TTL, b"").await.unwrap());
    use RenewOutcome::*;
    assert_eq!(round(&a, &[(key.clone(), t1)], &pad).await, [Renewed]);
    delete_by_hand(&key, true).await;
    let t2 = granted(a.acquire(&key, TTL, b"").await.unwrap());
    assert!(t2 > t1);
    let both = [(key.clone(), t1), (key.clone(), t2)];
    assert_eq!(round(&a, &both, &pad).await, [Lost, Renewed]);
    assert_eq!(round(&a, &both, &pad).await, [Lost, Renewed]);
    // And a key deleted with nothing in its place: lost.
    delete_by_hand(&key, true).await;
    assert_eq!(round(&a, &both[1..], &pad).await, [Lost]);
    // A key deleted by hand alone is not granted at once, even to the same instance.
    let t3 = granted(a.acquire(&key, TTL, b"").await.unwrap());
    assert_eq!(round(&a, &[(key.clone(), t3)], &pad).await, [Renewed]);
    delete_by_hand(&key, false).await;
    assert!(matches!(
        a.acquire(&key, TTL, b"").await.unwrap(),
        AcquireOutcome::Held { .. }
    ));
    assert_eq!(round(&a, &[(key.clone(), t3)], &pad).await, [Lost]);
    for (k, t) in &pad {
        a.release(k, *t).await.unwrap();
    }
}

/// An etcd backend whose `renew_many` is the trait's default (each lease's `renew`):
/// the per-key renewal, for the request counts.
struct PerKey(EtcdBackend);

forward_backend! {
    PerKey => 0;
    forward: acquire, renew, release, revoke, info, subscribe_freed;
    fn shared(&self) -> bool {
        true
    }
}

/// gRPC messages received by the members so far, by method, summed over members.
fn messages(ports: &[u16]) -> HashMap<String, f64> {
    let mut by_method = HashMap::new();
    for &port in ports {
        let body = support::etcd::http(port, "GET", "/metrics", "").unwrap_or_default();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
                continue;
            };
            let Some(method) = rest
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *by_method.entry(method.to_string()).or_insert(0.0) += value;
        }
    }
    by_method
}

/// Requests per held lease per minute (all gRPC messages the members received, by
/// method), per key (`renew` for each lease) against grouped (`renew_many`), same run:
/// `LEASES_HELD` leases (default 10000) of TTL `LEASES_TTL_SECS` (default 30) held by
/// one manager for `LEASES_WINDOW_SECS` (default 60) on a 3-member cluster;
/// `LEASES_MODES=grouped` or `per-key` for one of the two.
///
/// `cargo test --release --all-features --test etcd_groups -- --ignored --nocapture requests`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes long"]
async fn requests_per_held_lease_per_minute() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env("LEASES_HELD", 10_000) as usize;
    let ttl = Duration::from_secs(env("LEASES_TTL_SECS", 30));
    let window = Duration::from_secs(env("LEASES_WINDOW_SECS", 60));
    let cluster = EtcdCluster::start(3);
    let ports = cluster.client_ports();
    println!("| renewal | leases held | TTL | window | requests per lease per minute | by method | lost |");
    println!("|---|---|---|---|---|---|---|");
    let modes = std::env::var("LEASES_MODES").unwrap_or_default();
    let modes: Vec<bool> = match modes.as_str() {
        "grouped" => vec![true],
        "per-key" => vec![false],
        _ => vec![false, true],
    };
    for grouped in modes {
        let name = if grouped { "grouped" } else { "per key" };
        let prefix = format!("/measure-{name}").replace(' ', "-");
        let etcd = EtcdBackend::connect(
            cluster
                .options(&prefix)
                .request_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        let backend: Arc<dyn Backend> = if grouped {
            Arc::new(etcd)
        } else {
            Arc::new(PerKey(etcd))
        };
        let m = LeaseManager::builder()
            .min_ttl(Duration::from_secs(1))
            .backend(backend)
            .start()
            .await
            .unwrap();
        let started = Instant::now();
        let mut held = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
            let acquires = chunk.iter().map(|i| {
                let m = m.clone();
                let key = Key::system(["held".to_string(), i.to_string()]);
                async move { m.acquire_lease(key, ttl).await.unwrap() }
            });
            held.extend(futures_util::future::join_all(acquires).await);
        }
        eprintln!("{name}: {n} acquired in {:?}", started.elapsed());
        // Into the steady state: every lease renewed at least once.
        tokio::time::sleep(ttl / 2).await;
        let before = messages(&ports);
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let after = messages(&ports);
        let minutes = t0.elapsed().as_secs_f64() / 60.0;
        let mut by: Vec<(String, f64)> = after
            .iter()
            .map(|(k, v)| (k.clone(), (v - before.get(k).unwrap_or(&0.0)).max(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        by.sort_by(|a, b| a.0.cmp(&b.0));
        let total: f64 = by.iter().map(|(_, v)| v).sum();
        let per = |v: f64| v / n as f64 / minutes;
        let detail: Vec<String> = by
            .iter()
            .map(|(k, v)| format!("{k} {:.5}", per(*v)))
            .collect();
        let lost = held.iter().filter(|(_, ctx)| ctx.is_cancelled()).count();
        println!(
            "| {name} | {n} | {ttl:?} | {window:?} | {:.5} | {} | {lost} |",
            per(total),
            detail.join(", ")
        );
        let mut held = held.into_iter().map(|(lease, _)| lease).collect::<Vec<_>>();
        while !held.is_empty() {
            let chunk: Vec<_> = held.drain(..held.len().min(256)).collect();
            futures_util::future::join_all(chunk.into_iter().map(|l| l.release())).await;
        }
        m.shutdown().await;
        // Per key, a big group's renewals (one read each, all at once) can outrun the
        // cluster on a small machine: counted, not a failure of this measurement.
        if grouped {
            assert_eq!(lost, 0, "{name}: leases lost");
        }
    }
}
