//! Campaigns over a `FakeLeaser` (a lost term, then a new campaign), over a manager that
//! stops, and over a leaser that cannot look leases up.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::election::{Election, ElectionOptions, LeaderInfo, Leadership, Observer};
use leases::{
    AcquireOptions, FakeLeaser, Key, Lease, LeaseContext, LeaseError, LeaseManager, Leaser,
};

use crate::candidates::TTL;

#[tokio::test(start_paused = true)]
async fn a_lost_term_is_followed_by_a_new_campaign_with_backoff() {
    let fake = FakeLeaser::new();
    let key = Key::system(["election", "fake"]);
    let a = Election::campaign(fake.clone(), key.clone(), ElectionOptions::new("a", TTL)).unwrap();
    let (t1, ctx1) = a.elected().await.unwrap();
    assert_eq!(
        fake.metadata(&key),
        Some(b"a".to_vec()),
        "the identity is the metadata"
    );
    let b = Election::campaign(fake.clone(), key.clone(), ElectionOptions::new("b", TTL)).unwrap();
    let mut rb = b.subscribe();
    rb.wait_for(|s| s.leader().is_some()).await.unwrap();
    assert_eq!(
        b.leadership().leader(),
        Some(&LeaderInfo {
            identity: "a".into(),
            token: t1
        })
    );
    // `a` loses its lease: its state says so at once (the context is read), and `b`
    // (waiting for the key) leads.
    fake.lose(&key);
    assert!(ctx1.is_cancelled());
    assert!(!a.is_leader());
    let (t2, _) = b.elected().await.unwrap();
    assert!(t2 > t1);
    // `a` campaigns again and follows `b`.
    let mut ra = a.subscribe();
    ra.wait_for(|s| s.leader().is_some_and(|l| l.identity == "b"))
        .await
        .unwrap();
    // `b` resigns: `a` leads again, with a larger token.
    b.resign().await.unwrap();
    let (t3, _) = a.elected().await.unwrap();
    assert!(t3 > t2);
    // Dropping the election releases the lease.
    drop(a);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fake.holder(&key), None);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_manager_stops_the_campaign_and_bad_ttls_are_reported() {
    let manager = LeaseManager::start().await.unwrap();
    let key = Key::system(["election", "stop"]);
    let e =
        Election::campaign(manager.clone(), key.clone(), ElectionOptions::new("a", TTL)).unwrap();
    e.elected().await.unwrap();
    manager.shutdown().await;
    let mut rx = e.subscribe();
    rx.wait_for(Leadership::is_stopped).await.unwrap();
    assert!(matches!(
        e.leadership(),
        Leadership::Stopped {
            error: Some(LeaseError::ManagerStopped)
        }
    ));
    assert!(e.elected().await.is_none());
    e.resign().await.unwrap();

    let manager = LeaseManager::start().await.unwrap();
    let short = ElectionOptions::new("a", Duration::from_secs(1));
    let e = Election::campaign(manager.clone(), key, short).unwrap();
    let mut rx = e.subscribe();
    rx.wait_for(Leadership::is_stopped).await.unwrap();
    assert!(matches!(
        e.leadership(),
        Leadership::Stopped {
            error: Some(LeaseError::TtlTooShort { .. })
        }
    ));
}

/// A leaser that cannot look leases up (no `lease_info`).
struct Blind(FakeLeaser);

#[async_trait]
impl Leaser for Blind {
    async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        self.0.acquire_lease_with(key, options).await
    }
}

#[tokio::test(start_paused = true)]
async fn without_lease_info_followers_do_not_know_the_leader_and_observers_are_refused() {
    let fake = FakeLeaser::new();
    let key = Key::system(["election", "blind"]);
    assert!(matches!(
        Observer::start(Blind(fake.clone()), key.clone(), Duration::from_secs(1)).await,
        Err(LeaseError::Unsupported {
            operation: "lease_info"
        })
    ));
    let a = Election::campaign(
        Blind(fake.clone()),
        key.clone(),
        ElectionOptions::new("a", TTL),
    )
    .unwrap();
    a.elected().await.unwrap();
    let b = Election::campaign(
        Blind(fake.clone()),
        key.clone(),
        ElectionOptions::new("b", TTL),
    )
    .unwrap();
    tokio::time::sleep(TTL).await;
    assert!(matches!(
        b.leadership(),
        Leadership::Follower { leader: None }
    ));
    // The observer over the full fake sees `a`.
    let o = Observer::start(fake.clone(), key.clone(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(o.leader().map(|l| l.identity), Some("a".to_owned()));
    // A shared `dyn Leaser` works too, with the inner leaser's own `lease_info`.
    let shared: Arc<dyn Leaser> = Arc::new(fake);
    let o = Observer::start(shared, key, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(o.leader().map(|l| l.identity), Some("a".to_owned()));
}
