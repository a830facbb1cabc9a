//! The etcd backend on a throwaway 3-member cluster (127.0.0.1): pairs/s with 1 and 8
//! clients and acquire latency, beside (e), the backend's two transactions (create the
//! key on a pre-granted etcd lease and its grant record if both are absent; delete both
//! if the create revision is the token) sent
//! with the bare gRPC client, no actors: the floor of the etcd backend. Then the renewal
//! traffic per held lease, counted by the members themselves (`/metrics`: gRPC messages
//! received, by method), for a whole-second TTL and for one just under it (whose etcd
//! lease is rounded up, so renewals of a group can share keep-alives).

#[path = "../../tests/support/etcd.rs"]
#[allow(dead_code)]
mod etcd_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use leases::backend::etcd_wire as pb;
use leases::backend::EtcdOptions;
use leases::{Key, LeaseManager};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use tonic::transport::Channel;

use crate::args::Sizes;
use crate::contenders::{Ours, Subject, TTL};
use crate::report::ratio;
use crate::throughput::pairs;

/// The backend's transactions, sent directly: the floor (e).
struct RawEtcd {
    kv: KvClient<Channel>,
    lease: i64,
}

impl RawEtcd {
    async fn new(endpoint: &str) -> RawEtcd {
        let channel = etcd_support::channel(endpoint).await;
        let lease = LeaseClient::new(channel.clone())
            .lease_grant(pb::LeaseGrantRequest {
                ttl: TTL.as_secs() as i64,
                id: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .id;
        RawEtcd {
            kv: KvClient::new(channel),
            lease,
        }
    }
}

/// Where the backend keeps a key's grant record: beside the lease keys, not under them.
fn grant_record(key: &[u8]) -> Vec<u8> {
    let mut r = b"/bench-raw\0g".to_vec();
    r.extend_from_slice(&key[b"/bench-raw".len()..]);
    r
}

fn compare_create(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
    }
}

#[async_trait]
impl Subject for RawEtcd {
    type Held = (Vec<u8>, i64);
    async fn acquire(&self, key: &Key) -> Option<Self::Held> {
        let k = format!("/bench-raw{key}").into_bytes();
        let put = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: k.clone(),
                // The size of the backend's value with no metadata.
                value: vec![0; 34],
                lease: self.lease,
                ignore_lease: false,
            })),
        };
        let record = grant_record(&k);
        let put_record = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: record.clone(),
                // The size of the backend's grant record.
                value: vec![0; 25],
                lease: 0,
                ignore_lease: false,
            })),
        };
        let get = |key: &[u8]| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        };
        let resp = self
            .kv
            .clone()
            .txn(pb::TxnRequest {
                compare: vec![compare_create(&k, 0), compare_create(&record, 0)],
                success: vec![put, put_record],
                failure: vec![get(&k), get(&record)],
            })
            .await
            .unwrap()
            .into_inner();
        resp.succeeded
            .then(|| (k, resp.header.map(|h| h.revision).unwrap_or(0)))
    }
    async fn release(&self, (k, token): Self::Held) {
        let delete = |key: Vec<u8>| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                },
            )),
        };
        self.kv
            .clone()
            .txn(pb::TxnRequest {
                compare: vec![compare_create(&k, token)],
                success: vec![delete(grant_record(&k)), delete(k.clone())],
                failure: vec![],
            })
            .await
            .unwrap();
    }
    fn alive(_: &Self::Held) -> bool {
        true
    }
}

async fn manager(endpoints: Vec<String>, prefix: &str) -> LeaseManager {
    let options = EtcdOptions::new(endpoints).prefix(prefix);
    etcd_support::manager(options, Duration::from_secs(1)).await
}

/// gRPC messages received by the members so far, by method, summed over members.
fn messages(ports: &[u16]) -> HashMap<String, f64> {
    let mut by_method = HashMap::new();
    for &port in ports {
        let body = etcd_support::http(port, "GET", "/metrics", "").unwrap_or_default();
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

/// Holds `n` leases of `ttl` for `window` and prints the messages per held lease per
/// minute.
async fn renewal_traffic(
    endpoints: &[String],
    ports: &[u16],
    ttl: Duration,
    n: usize,
    window: Duration,
) {
    let m = manager(endpoints.to_vec(), "/bench-renew").await;
    let mut held = Vec::new();
    for i in 0..n {
        let key = Key::system(["held".to_string(), format!("{ttl:?}"), i.to_string()]);
        held.push(m.acquire_lease(key, ttl).await.unwrap());
    }
    // Let the acquires' renewal timers spread into their steady state.
    tokio::time::sleep(ttl / 2).await;
    let before = messages(ports);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let after = messages(ports);
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let per = |method: &str| {
        (after.get(method).unwrap_or(&0.0) - before.get(method).unwrap_or(&0.0)).max(0.0)
            / n as f64
            / minutes
    };
    let lost = held.iter().filter(|(_, ctx)| ctx.is_cancelled()).count();
    let renewals = 60.0 / (ttl.as_secs_f64() / 3.0);
    println!(
        "| {ttl:?} | {n} | {renewals:.1} | {:.2} | {:.2} | {:.2} | {lost} |",
        per("Range"),
        per("LeaseKeepAlive"),
        per("Txn")
    );
    for (lease, _) in held {
        lease.release().await.unwrap();
    }
    m.shutdown().await;
}

pub async fn etcd_section(s: &Sizes) {
    let cluster = etcd_support::EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    println!(
        "\n## etcd backend (throwaway 3-member cluster on 127.0.0.1, {:.0} s per cell)\n",
        s.secs
    );
    println!("| implementation | pairs/s, 1 client | pairs/s, 8 clients | acquire p50 (1 client) | acquire p99 | vs (e), 8 clients |");
    println!("|---|---|---|---|---|---|");
    let m = manager(endpoints.clone(), "/bench").await;
    let warm = m.acquire_lease(Key::system(["warm"]), TTL).await.unwrap();
    warm.0.release().await.unwrap();
    let ours = Arc::new(Ours(m.clone()));
    let raw = Arc::new(RawEtcd::new(&endpoints[0]).await);
    let e1 = pairs(raw.clone(), 1, s.secs).await;
    let e8 = pairs(raw.clone(), 8, s.secs).await;
    let o1 = pairs(ours.clone(), 1, s.secs).await;
    let o8 = pairs(ours.clone(), 8, s.secs).await;
    for (name, one, many) in [
        ("leases (etcd)", &o1, &o8),
        ("(e) same transactions, bare gRPC client", &e1, &e8),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} µs | {:.0} µs | {} |",
            one.per_sec,
            many.per_sec,
            one.p50.as_secs_f64() * 1e6,
            one.p99.as_secs_f64() * 1e6,
            ratio(many.per_sec, e8.per_sec)
        );
    }
    m.shutdown().await;

    println!("\nRenewal traffic: gRPC messages the members received per held lease per minute, by method.\n");
    println!("| TTL | leases held | renewals per lease per minute | Range | LeaseKeepAlive | Txn | lost |");
    println!("|---|---|---|---|---|---|---|");
    let ports = cluster.client_ports();
    let n = s.pg_held.min(2000);
    let window = s.pg_window;
    renewal_traffic(&endpoints, &ports, Duration::from_secs(3), n, window).await;
    renewal_traffic(&endpoints, &ports, Duration::from_millis(2500), n, window).await;
    drop(cluster);
}
