//! Adversarial review of the etcd backend's grant records (the change "grant records
//! keep exclusion when a resumed stale leader revokes live etcd leases early").
#![cfg(feature = "etcd")]

mod support;

use std::time::{Duration, Instant};

use leases::backend::{AcquireOutcome, Backend, EtcdBackend};
use leases::Key;
use support::etcd::{granted, revoke_behind_holder, EtcdCluster};

/// Guarantee 4 (nothing stuck) after a leader change. A holder dies (its process is
/// gone: no renewals, no release) after a leader change, so its key's grant record
/// stays behind with a term below the cluster's. Callers that try once, each in a
/// fresh process (`leases run KEY -- cmd` from cron, without `--wait`: every run is a
/// new backend), must get the key within about two TTLs of its holder's death. The wait
/// before granting such a key used to count from when *this backend* first saw the key
/// gone, in memory: every fresh backend started its own wait and answered "held", so
/// the key stayed taken for such callers forever (and for one backend trying less often
/// than once a TTL plus a minute, as that memory was forgotten after a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_key_is_granted_to_fresh_backends_trying_once_after_a_leader_change() {
    let ttl = Duration::from_secs(2);
    let mut cluster = EtcdCluster::start(1);
    let options = cluster.options("/review-stuck");
    let key = Key::system(["review", "stuck"]);

    // The holder acquires, then its process dies.
    {
        let holder = EtcdBackend::connect(options.clone()).await.unwrap();
        let got = holder.acquire(&key, ttl, b"").await.unwrap();
        assert!(matches!(got, AcquireOutcome::Granted { .. }), "{got:?}");
    }
    let died = Instant::now();

    // A leader change: the single member restarts and elects itself in a new term.
    cluster.crash_and_restart(0);

    // Wait for etcd to expire the dead holder's key (its TTL, extended by the election).
    let probe = EtcdBackend::connect(options.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !probe.free_among(std::slice::from_ref(&key)).await.unwrap()[0] {
        assert!(
            Instant::now() < deadline,
            "the dead holder's key never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = Instant::now();
    eprintln!("key expired {:?} after its holder died", gone - died);

    // Fresh backends (new processes), each trying once, every half TTL, for four TTLs.
    let mut answers = Vec::new();
    while gone.elapsed() < ttl * 4 {
        let fresh = EtcdBackend::connect(options.clone()).await.unwrap();
        let got = fresh.acquire(&key, ttl, b"").await.unwrap();
        answers.push((gone.elapsed(), got));
        if let AcquireOutcome::Granted { .. } = got {
            eprintln!("granted {:?} after the key expired", gone.elapsed());
            return;
        }
        drop(fresh);
        tokio::time::sleep(ttl / 2).await;
    }
    panic!(
        "an abandoned key, gone from etcd for {:?} (TTL {ttl:?}), was never granted to a fresh \
         backend trying once: {answers:#?}",
        gone.elapsed()
    );
}

/// "A released key never waits" (module docs of `backend/etcd/mod.rs`). A holder's etcd
/// lease is revoked early after a leader change (what a resumed stale leader does on
/// etcd 3.4.23, here by hand), and its holder, done with the key, releases it before
/// its next renewal: the release finds the key gone and used to leave its grant record
/// behind, so the next acquirer waited out a whole TTL for a holder that had knowingly
/// let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_released_by_its_holder_after_an_early_revoke_is_free_at_once() {
    let ttl = Duration::from_secs(10);
    let mut cluster = EtcdCluster::start(1);
    let options = cluster.options("/review-release");
    let key = Key::system(["review", "release"]);
    let holder = EtcdBackend::connect(options.clone()).await.unwrap();
    let token = granted(holder.acquire(&key, ttl, b"").await.unwrap());

    // A leader change, then the holder's etcd lease is revoked early.
    cluster.crash_and_restart(0);
    let etcd_key = format!("/review-release{key}").into_bytes();
    revoke_behind_holder(&cluster.endpoints()[0], etcd_key, token).await;

    // The holder lets go (the key is already gone: not held any more).
    assert!(!holder.release(&key, token).await.unwrap());

    let other = EtcdBackend::connect(options.clone()).await.unwrap();
    let got = other.acquire(&key, ttl, b"").await.unwrap();
    match got {
        AcquireOutcome::Granted { token: t } => assert!(t > token),
        held => panic!("released by its holder, yet: {held:?}"),
    }
}
