//! Leader election on the memory backend, on paused time: never two leaders at once
//! (judged on the backend's clock, which is tokio's paused clock here), leadership
//! changes hands after a crash and after a resignation, and an observer sees every
//! term. Also the election over a `FakeLeaser` and over a leaser that cannot look
//! leases up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leases::backend::{
    AcquireOutcome, Backend, FaultyBackend, FreedKeys, LeaseInfo, MemoryBackend, RenewOutcome,
};
use leases::election::{Election, ElectionOptions, LeaderInfo, Leadership, Observer};
use leases::{
    AcquireOptions, BackendError, FakeLeaser, Key, Lease, LeaseContext, LeaseError, LeaseManager,
    Leaser,
};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(5);

/// The memory backend, recording the instant (on its own clock: tokio's) of every
/// grant, by token; and, at the grant itself, which candidates still said they lead.
#[derive(Default)]
struct Recording {
    inner: MemoryBackend,
    grants: Mutex<Vec<(u64, Instant)>>,
    /// The candidates' channels, looked at in the middle of each grant.
    candidates: Mutex<Vec<tokio::sync::watch::Receiver<Leadership>>>,
    /// Grants made while a candidate's state said it led.
    violations: Mutex<Vec<String>>,
}

#[async_trait]
impl Backend for Recording {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        let outcome = self.inner.acquire(key, ttl, metadata).await?;
        if let AcquireOutcome::Granted { token } = outcome {
            self.grants.lock().unwrap().push((token, Instant::now()));
            for rx in self.candidates.lock().unwrap().iter() {
                let state = rx.borrow();
                if state.is_leader() {
                    self.violations
                        .lock()
                        .unwrap()
                        .push(format!("{token} granted while {:?} led", *state));
                }
            }
        }
        Ok(outcome)
    }
    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.inner.renew(key, token, ttl).await
    }
    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        self.inner.release(key, token).await
    }
    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        self.inner.revoke(key).await
    }
    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        self.inner.info(key).await
    }
    fn subscribe_freed(&self) -> FreedKeys {
        self.inner.subscribe_freed()
    }
}

/// One leadership term as the test saw it.
#[derive(Debug, Clone)]
struct Term {
    identity: String,
    /// When the candidate's channel first showed `Leader` with this token.
    shown: Instant,
    /// When the lease's context ended.
    ctx_end: Option<Instant>,
    /// When the candidate's channel first showed anything else afterwards.
    watch_end: Option<Instant>,
}

type Terms = Arc<Mutex<BTreeMap<u64, Term>>>;

/// Follows one candidate's channel, recording its terms.
fn follow(identity: &str, mut rx: tokio::sync::watch::Receiver<Leadership>, terms: Terms) {
    let identity = identity.to_owned();
    tokio::spawn(async move {
        let mut leading: Option<u64> = None;
        loop {
            let state = rx.borrow_and_update().clone();
            let now = Instant::now();
            let token = match &state {
                Leadership::Leader { token, .. } => Some(*token),
                _ => None,
            };
            if leading.is_some() && leading != token {
                let t = leading.take().unwrap();
                terms
                    .lock()
                    .unwrap()
                    .get_mut(&t)
                    .unwrap()
                    .watch_end
                    .get_or_insert(now);
            }
            if let Leadership::Leader { token, context } = state {
                if leading != Some(token) {
                    leading = Some(token);
                    let previous = terms.lock().unwrap().insert(
                        token,
                        Term {
                            identity: identity.clone(),
                            shown: now,
                            ctx_end: None,
                            watch_end: None,
                        },
                    );
                    assert!(previous.is_none(), "token {token} led twice");
                    watch_context(token, context, terms.clone());
                }
            }
            if rx.changed().await.is_err() {
                if let Some(t) = leading {
                    terms
                        .lock()
                        .unwrap()
                        .get_mut(&t)
                        .unwrap()
                        .watch_end
                        .get_or_insert(Instant::now());
                }
                return;
            }
        }
    });
}

fn watch_context(token: u64, context: LeaseContext, terms: Terms) {
    tokio::spawn(async move {
        context.cancelled().await;
        terms.lock().unwrap().get_mut(&token).unwrap().ctx_end = Some(Instant::now());
    });
}

struct Candidate {
    identity: String,
    faults: Arc<FaultyBackend>,
    manager: LeaseManager,
    election: Option<Election>,
}

async fn candidate(
    backend: &Arc<Recording>,
    identity: &str,
    key: &Key,
    seed: u64,
    terms: &Terms,
) -> Candidate {
    let faults = Arc::new(FaultyBackend::new(backend.clone()));
    let manager = LeaseManager::builder()
        .backend(faults.clone())
        .start()
        .await
        .unwrap();
    let options = ElectionOptions::new(identity, TTL)
        .retry(Duration::from_secs(1))
        .backoff(Duration::from_millis(200), Duration::from_secs(2))
        .jitter_seed(seed);
    let election = Election::campaign(manager.clone(), key.clone(), options).unwrap();
    follow(identity, election.subscribe(), terms.clone());
    Candidate {
        identity: identity.to_owned(),
        faults,
        manager,
        election: Some(election),
    }
}

fn leaders(cs: &[Candidate]) -> Vec<usize> {
    (0..cs.len())
        .filter(|&i| cs[i].election.as_ref().is_some_and(|e| e.is_leader()))
        .collect()
}

/// Looks every 50 ms (of paused time) at how many candidates lead: returns the number
/// of looks and the most leaders seen at once.
fn sample_exclusion(
    elections: Vec<tokio::sync::watch::Receiver<Leadership>>,
) -> Arc<Mutex<(u32, usize)>> {
    let samples = Arc::new(Mutex::new((0, 0)));
    let record = samples.clone();
    tokio::spawn(async move {
        loop {
            let leading = elections
                .iter()
                .filter(|rx| rx.borrow().is_leader())
                .count();
            {
                let mut r = record.lock().unwrap();
                r.0 += 1;
                r.1 = r.1.max(leading);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    samples
}

#[tokio::test(start_paused = true)]
async fn one_leader_at_a_time_handover_after_crash_and_resign() {
    let backend = Arc::new(Recording::default());
    let key = Key::system(["election", "memory"]);
    let terms: Terms = Arc::default();
    let mut cs = Vec::new();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        cs.push(candidate(&backend, id, &key, i as u64 + 1, &terms).await);
    }
    // An observer on a manager of its own, sharing the store.
    let watcher = LeaseManager::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    let observer = Observer::start(watcher.clone(), key.clone(), Duration::from_millis(250))
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<Option<LeaderInfo>>>> = Arc::default();
    {
        let (seen, mut rx) = (seen.clone(), observer.subscribe());
        tokio::spawn(async move {
            loop {
                let v = rx.borrow_and_update().clone();
                seen.lock().unwrap().push(v);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    *backend.candidates.lock().unwrap() = cs
        .iter()
        .map(|c| c.election.as_ref().unwrap().subscribe())
        .collect();
    let samples = sample_exclusion(
        cs.iter()
            .map(|c| c.election.as_ref().unwrap().subscribe())
            .collect(),
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = leaders(&cs);
    assert_eq!(first.len(), 1, "exactly one leader: {first:?}");
    let l1 = first[0];
    let t1 = cs[l1]
        .election
        .as_ref()
        .unwrap()
        .leadership()
        .token()
        .unwrap();
    // The followers know who leads.
    for (i, c) in cs.iter().enumerate() {
        if i != l1 {
            let state = c.election.as_ref().unwrap().leadership();
            assert_eq!(
                state.leader(),
                Some(&LeaderInfo {
                    identity: cs[l1].identity.clone(),
                    token: t1
                }),
                "follower {} sees the leader",
                c.identity
            );
        }
    }

    // Crash the leader: its process stops reaching the store (no release). Its term
    // ends at its local deadline; another candidate leads once the lease expires.
    cs[l1].faults.set_down(true);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = leaders(&cs);
    assert_eq!(
        second.len(),
        1,
        "exactly one leader after the crash: {second:?}"
    );
    let l2 = second[0];
    assert_ne!(l2, l1, "leadership changed hands");
    let t2 = cs[l2]
        .election
        .as_ref()
        .unwrap()
        .leadership()
        .token()
        .unwrap();
    assert!(t2 > t1, "a larger token: {t2} > {t1}");
    assert!(
        !cs[l1].election.as_ref().unwrap().is_leader(),
        "the crashed candidate knows it does not lead"
    );

    // The third candidate, waiting for the key all along, has looked again at who leads.
    let l3 = 3 - l1 - l2;
    assert_eq!(
        cs[l3].election.as_ref().unwrap().leadership().leader(),
        Some(&LeaderInfo {
            identity: cs[l2].identity.clone(),
            token: t2
        }),
        "a waiting follower's view of the leader is refreshed"
    );

    // The second leader resigns: the third candidate leads at once (no expiry wait).
    let resigned_at = Instant::now();
    cs[l2].election.take().unwrap().resign().await.unwrap();
    let e3 = cs[l3].election.as_ref().unwrap();
    let (t3, _) = tokio::time::timeout(Duration::from_millis(100), e3.elected())
        .await
        .expect("the last follower leads at once after a resignation")
        .unwrap();
    assert!(t3 > t2);
    assert!(Instant::now() - resigned_at < Duration::from_millis(100));

    // The first one recovers; the third crashes; the first leads again.
    cs[l1].faults.set_down(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leaders(&cs), vec![l3], "the recovered candidate follows");
    assert_eq!(
        cs[l1]
            .election
            .as_ref()
            .unwrap()
            .leadership()
            .leader()
            .map(|l| l.token),
        Some(t3)
    );
    cs[l3].faults.set_down(true);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        leaders(&cs),
        vec![l1],
        "the recovered candidate leads again"
    );
    let t4 = cs[l1]
        .election
        .as_ref()
        .unwrap()
        .leadership()
        .token()
        .unwrap();
    assert!(t4 > t3);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Everyone stops.
    for c in &mut cs {
        if let Some(e) = c.election.take() {
            e.resign().await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(
        *backend.violations.lock().unwrap(),
        Vec::<String>::new(),
        "at every grant, no candidate's state said it led"
    );
    // The terms, on the backend's clock: each ends (its context, and its channel)
    // no later than the next grant.
    let grants = backend.grants.lock().unwrap().clone();
    let terms = terms.lock().unwrap().clone();
    let granted: Vec<u64> = grants.iter().map(|(t, _)| *t).collect();
    assert_eq!(granted, vec![t1, t2, t3, t4], "four grants, in token order");
    assert_eq!(
        terms.keys().copied().collect::<Vec<_>>(),
        granted,
        "each grant was a term"
    );
    for pair in grants.windows(2) {
        let ((prev, _), (next, next_grant)) = (pair[0], pair[1]);
        let term = &terms[&prev];
        let ctx_end = term.ctx_end.expect("every term ended");
        let watch_end = term.watch_end.expect("every term's channel moved on");
        assert!(
            ctx_end <= next_grant,
            "term {prev} overlaps the grant of {next}: {term:?}"
        );
        assert!(
            watch_end <= next_grant,
            "term {prev}'s channel still said leader at the next grant"
        );
    }
    for ((token, grant), term) in grants.iter().zip(terms.values()) {
        assert!(
            term.shown >= *grant && term.ctx_end.unwrap() >= term.shown,
            "{token}: {term:?}"
        );
    }
    // The crashes ended the terms a safety margin (TTL/5) before the next grant.
    let margin = TTL / 5;
    let after_crash = |prev: u64, next: u64| {
        let next_grant = grants.iter().find(|(t, _)| *t == next).unwrap().1;
        next_grant - terms[&prev].ctx_end.unwrap()
    };
    assert!(after_crash(t1, t2) >= margin, "{:?}", after_crash(t1, t2));
    assert!(after_crash(t3, t4) >= margin, "{:?}", after_crash(t3, t4));
    assert_eq!(
        terms
            .values()
            .map(|t| t.identity.as_str())
            .collect::<Vec<_>>(),
        vec![
            cs[l1].identity.as_str(),
            cs[l2].identity.as_str(),
            cs[l3].identity.as_str(),
            cs[l1].identity.as_str()
        ]
    );

    // The observer saw every term, in order, with the right identity.
    let seen = seen.lock().unwrap().clone();
    let mut observed: Vec<(u64, String)> = Vec::new();
    for v in seen.iter().flatten() {
        if observed.last().map(|(t, _)| *t) != Some(v.token) {
            observed.push((v.token, v.identity.clone()));
        }
    }
    let expected: Vec<(u64, String)> = terms
        .iter()
        .map(|(t, term)| (*t, term.identity.clone()))
        .collect();
    assert_eq!(
        observed, expected,
        "the observer saw every change: {seen:?}"
    );
    assert_eq!(
        observer.leader(),
        None,
        "nobody leads after everyone resigned"
    );
    // The observer ends with its leaser: its channel closes.
    let mut rx = observer.subscribe();
    watcher.shutdown().await;
    tokio::time::timeout(Duration::from_secs(1), async {
        while rx.changed().await.is_ok() {}
    })
    .await
    .expect("the observer's channel closes when its manager stops");
    let (looks, most) = *samples.lock().unwrap();
    assert!(looks > 500, "{looks} looks");
    assert_eq!(most, 1, "at most one leader at every look");
    for c in &cs {
        c.manager.shutdown().await;
    }
}

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
