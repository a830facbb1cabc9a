//! The etcd backend: the conformance suite on a throwaway 3-member cluster, and what is
//! particular to etcd (grouped etcd leases, cleanup of keys nobody holds, an
//! unreachable cluster).
//!
//! Uses `LEASES_ETCD_ENDPOINTS` when set, else starts a throwaway cluster (see
//! `support/etcd.rs`); a missing etcd is a failure, never a skip.
#![cfg(feature = "etcd")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use leases::backend::{
    AcquireOutcome, Backend, EtcdBackend, EtcdOptions, FaultyBackend, RenewOutcome,
};
use leases::{Key, LeaseError, LeaseManager};
use support::etcd::{granted, manager, run_id, shared_endpoints, EtcdCluster};

/// etcd leases are whole seconds: a TTL of whole seconds maps onto them exactly.
const TTL: Duration = Duration::from_secs(2);

fn options() -> EtcdOptions {
    EtcdOptions::new(shared_endpoints())
        .prefix(format!("/leases-test-{}", run_id()))
        .request_timeout(Duration::from_secs(2))
}

struct EtcdEnv {
    case: String,
}

#[async_trait]
impl leases::testing::conformance::Env for EtcdEnv {
    async fn manager(&self) -> LeaseManager {
        manager(options(), TTL).await
    }

    async fn faulty_manager(&self) -> (LeaseManager, Arc<FaultyBackend>) {
        let etcd = EtcdBackend::connect(options()).await.unwrap();
        leases::testing::conformance::faulty_manager_on(Arc::new(etcd), TTL).await
    }

    fn ttl(&self) -> Duration {
        TTL
    }

    fn key(&self, name: &str) -> Key {
        Key::system(["conformance", &self.case, name])
    }
}

leases::conformance_tests!(
    |case: &'static str| async move {
        EtcdEnv {
            case: case.to_string(),
        }
    },
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_create_revisions_and_keep_growing_across_backends() {
    let a = EtcdBackend::connect(options()).await.unwrap();
    let b = EtcdBackend::connect(options()).await.unwrap();
    let key = Key::system(["tokens", "x"]);
    let mut last = 0;
    for i in 0..6 {
        let backend = if i % 2 == 0 { &a } else { &b };
        let t = granted(backend.acquire(&key, TTL, b"").await.unwrap());
        assert!(t > last, "{t} after {last}");
        assert!(matches!(
            a.acquire(&key, TTL, b"").await.unwrap(),
            AcquireOutcome::Held { .. }
        ));
        assert_eq!(
            backend.renew(&key, t, TTL).await.unwrap(),
            RenewOutcome::Renewed
        );
        assert_eq!(
            backend.renew(&key, t + 1, TTL).await.unwrap(),
            RenewOutcome::Lost
        );
        assert!(!backend.release(&key, t + 1).await.unwrap());
        assert!(backend.release(&key, t).await.unwrap());
        assert_eq!(
            backend.renew(&key, t, TTL).await.unwrap(),
            RenewOutcome::Lost
        );
        last = t;
    }
}

/// Many keys of one TTL share one etcd lease; renewals of them are confirmed by shared
/// keep-alives; a key whose holder stopped renewing is deleted before the group's next
/// keep-alive after its TTL, although the group lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_nobody_renews_does_not_ride_on_its_group() {
    let b = EtcdBackend::connect(options()).await.unwrap();
    let kept = Key::system(["group", "kept"]);
    let abandoned = Key::system(["group", "abandoned"]);
    let t1 = granted(b.acquire(&kept, TTL, b"").await.unwrap());
    let _t2 = granted(b.acquire(&abandoned, TTL, b"").await.unwrap());
    // Renew only `kept`, for three TTLs.
    let until = Instant::now() + TTL * 3;
    while Instant::now() < until {
        assert_eq!(
            b.renew(&kept, t1, TTL).await.unwrap(),
            RenewOutcome::Renewed
        );
        tokio::time::sleep(TTL / 3).await;
    }
    assert!(b.info(&kept).await.unwrap().is_some());
    assert_eq!(
        b.info(&abandoned).await.unwrap(),
        None,
        "the abandoned key lingers"
    );
    assert!(b.release(&kept, t1).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_revoke_from_another_backend() {
    let a = EtcdBackend::connect(options()).await.unwrap();
    let b = EtcdBackend::connect(options()).await.unwrap();
    let key = Key::system(["revoke", "remote"]);
    let t = granted(a.acquire(&key, TTL, b"meta").await.unwrap());
    let info = b.info(&key).await.unwrap().unwrap();
    assert_eq!((info.token, info.ttl, info.revoked), (t, TTL, false));
    assert_eq!(info.metadata, b"meta");
    assert_eq!(b.revoke(&key).await.unwrap(), Some(t));
    assert!(b.info(&key).await.unwrap().unwrap().revoked);
    assert_eq!(a.renew(&key, t, TTL).await.unwrap(), RenewOutcome::Revoked);
    assert!(matches!(
        b.acquire(&key, TTL, b"").await.unwrap(),
        AcquireOutcome::Held { .. }
    ));
    assert!(a.release(&key, t).await.unwrap());
    assert_eq!(b.revoke(&key).await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_backend_error_within_the_request_timeout() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for port in [closed, silent_port] {
        let opts = EtcdOptions::new([format!("http://127.0.0.1:{port}")])
            .connect_timeout(Duration::from_millis(500))
            .request_timeout(Duration::from_secs(1));
        let m = manager(opts.clone(), TTL).await;
        let started = Instant::now();
        let err = m
            .acquire_lease(Key::system(["unreachable"]), TTL)
            .await
            .unwrap_err();
        assert!(matches!(err, LeaseError::Backend(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(matches!(m.check().await, Err(LeaseError::Backend(_))));
        m.shutdown().await;
        assert!(matches!(
            EtcdBackend::connect(opts).await,
            Err(LeaseError::Backend(_))
        ));
    }
    drop(silent);
}

#[tokio::test]
async fn choosing_two_backends_is_a_config_error() {
    let r = LeaseManager::builder()
        .etcd(EtcdOptions::new(["http://127.0.0.1:1"]))
        .backend(Arc::new(leases::backend::MemoryBackend::new()))
        .start()
        .await;
    assert!(matches!(r, Err(LeaseError::InvalidConfig(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_up_front() {
    let m = manager(options(), TTL).await;
    m.check().await.unwrap();
    m.shutdown().await;
    assert!(matches!(m.check().await, Err(LeaseError::ManagerStopped)));
}

/// With etcd's auth on, a backend with the right user works (and re-authenticates when
/// its token is refused); without a user, or with a wrong password, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let cluster = EtcdCluster::start(1);
    cluster.enable_auth("root", "s3cret");
    let base = || cluster.options("/auth");
    let b = EtcdBackend::connect(base().user("root", "s3cret"))
        .await
        .unwrap();
    let key = Key::system(["auth"]);
    let t = granted(b.acquire(&key, TTL, b"").await.unwrap());
    assert_eq!(b.renew(&key, t, TTL).await.unwrap(), RenewOutcome::Renewed);
    assert!(b.release(&key, t).await.unwrap());
    for refused in [base(), base().user("root", "wrong")] {
        assert!(matches!(
            EtcdBackend::connect(refused).await,
            Err(LeaseError::Backend(_))
        ));
    }
}

/// etcd's simple auth tokens expire when unused for `--auth-token-ttl` (here 1 s, so
/// every renewal finds its token refused). A manager re-authenticates: its renewals go
/// on across a member restart (the holder is not lost), and its watch comes back with a
/// fresh token, so a waiter is woken by the release, not by the holder's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_auth_token_is_replaced_for_renewals_and_the_watch() {
    let mut cluster = EtcdCluster::start_args(1, &["--auth-token-ttl", "1"]);
    cluster.enable_auth("root", "pw");
    let endpoint = cluster.endpoints()[0].clone();
    let token = auth_token(&endpoint).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = range_with_token(&endpoint, &token).await;
    assert!(
        refused.is_err_and(|s| s.message().contains("invalid auth token")),
        "precondition: a token unused for 2 s is refused"
    );

    let options = cluster.options("/auth-expiry").user("root", "pw");
    // Renewals every TTL/3 (about 7 s): each one finds its token expired.
    let ttl = Duration::from_secs(20);
    let manager = || async {
        LeaseManager::builder()
            .etcd(options.clone())
            .start()
            .await
            .unwrap()
    };
    let (a, b) = (manager().await, manager().await);
    let key = Key::system(["auth", "expiry"]);
    let (lease, ctx) = a
        .acquire_lease_with(key.clone(), leases::AcquireOptions::new(ttl))
        .await
        .unwrap();
    // A waiter, whose backend watches with its first token (expired in a second).
    let waiter = tokio::spawn({
        let key = key.clone();
        async move {
            let opts = leases::AcquireOptions::new(ttl).wait(ttl * 3);
            b.acquire_lease_with(key, opts).await.map(|(l, _)| l)
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The restart ends the watch: it must reconnect, and its token has expired.
    cluster.crash_and_restart(0);
    tokio::time::sleep(ttl / 2).await;
    assert!(
        !ctx.is_cancelled(),
        "the holder was lost over a refused token"
    );
    let info = a
        .lease_info(&key)
        .await
        .expect("info with a fresh token")
        .expect("still held");
    assert_eq!(info.token, lease.token());

    let released_at = Instant::now();
    lease.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the waiter is woken by the release, not by the TTL")
        .unwrap()
        .unwrap();
    assert!(got.token() > info.token);
    eprintln!(
        "waiter granted {:?} after the release",
        released_at.elapsed()
    );
    a.shutdown().await;
}

async fn auth_token(endpoint: &str) -> String {
    use leases::backend::etcd_wire as pb;
    let channel = support::etcd::channel(endpoint).await;
    pb::auth_client::AuthClient::new(channel)
        .authenticate(pb::AuthenticateRequest {
            name: "root".into(),
            password: "pw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

async fn range_with_token(endpoint: &str, token: &str) -> Result<(), tonic::Status> {
    use leases::backend::etcd_wire as pb;
    let channel = support::etcd::channel(endpoint).await;
    let mut req = tonic::Request::new(pb::RangeRequest {
        key: b"/auth-expiry".to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert("token", token.parse().unwrap());
    pb::kv_client::KvClient::new(channel)
        .range(req)
        .await
        .map(drop)
}

/// A cluster that serves clients over TLS only: the backend verifies the members'
/// certificate against the CA it is given, and refuses one from another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verified_against_the_given_ca() {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cluster = EtcdCluster::start_tls(1, &ck.cert.pem(), &ck.signing_key.serialize_pem());
    let base = || cluster.options("/tls");
    // The member may still be electing itself: try for a while.
    let mut backend = None;
    for _ in 0..50 {
        match EtcdBackend::connect(base().ca_certificate_pem(ck.cert.pem())).await {
            Ok(b) => {
                backend = Some(b);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let b = backend.expect("a TLS connection verified against the CA");
    let key = Key::system(["tls"]);
    let t = granted(b.acquire(&key, TTL, b"").await.unwrap());
    assert!(b.release(&key, t).await.unwrap());
    // https without a CA is a configuration error; another CA is refused.
    assert!(matches!(
        EtcdBackend::new(base()),
        Err(LeaseError::InvalidConfig(_))
    ));
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    assert!(matches!(
        EtcdBackend::connect(base().ca_certificate_pem(other.cert.pem())).await,
        Err(LeaseError::Backend(_))
    ));
}
