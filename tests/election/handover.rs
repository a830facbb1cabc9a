//! Three candidates on the memory backend: never two leaders at once, leadership
//! changes hands after a crash and after a resignation, and an observer sees every
//! term.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leases::election::{LeaderInfo, Observer};
use leases::{Key, LeaseManager};
use tokio::time::Instant;

use crate::candidates::{candidate, leaders, TTL};
use crate::recording::Recording;
use crate::terms::{sample_exclusion, Terms};

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
