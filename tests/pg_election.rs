//! Leader election on PostgreSQL: two candidates (each with a manager of its own, as two
//! processes would have) on one table, and an observer. The leader is killed (its
//! manager stops reaching the database, without releasing), then the next leader's
//! manager is shut down: leadership changes hands each time with a larger token, never
//! two leaders at once, and the observer sees every term.
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use leases::backend::{FaultyBackend, PostgresBackend, PostgresOptions};
use leases::election::{Election, ElectionOptions, LeaderInfo, Leadership, Observer};
use leases::{Key, LeaseManager};
use support::pg::{connect, db_now, shared_url, table};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(1);

/// A term as a candidate's channel showed it, with times on the local monotonic clock
/// and on the database's clock.
#[derive(Debug, Clone)]
struct Term {
    token: u64,
    identity: String,
    /// The grant, on the database's clock (the row's `acquired_at`).
    granted_db: SystemTime,
    shown: Instant,
    /// When the channel stopped saying leader: locally, and an upper bound on the
    /// database's clock (a query made right after).
    ended: Option<(Instant, SystemTime)>,
}

type Terms = Arc<Mutex<Vec<Term>>>;

/// Follows a candidate's channel, recording its terms.
fn track(
    identity: &str,
    mut rx: tokio::sync::watch::Receiver<Leadership>,
    table: String,
    key: Key,
    terms: Terms,
) {
    let identity = identity.to_owned();
    tokio::spawn(async move {
        let db = connect(&shared_url()).await;
        let mut leading: Option<u64> = None;
        loop {
            let state = rx.borrow_and_update().clone();
            let token = state.token();
            if leading.is_some() && leading != token {
                let t = leading.take().unwrap();
                let ended = (Instant::now(), db_now(&db).await);
                let mut terms = terms.lock().unwrap();
                let term = terms.iter_mut().find(|x| x.token == t).unwrap();
                term.ended = Some(ended);
            }
            if let Some(t) = token {
                if leading != Some(t) {
                    leading = Some(t);
                    let shown = Instant::now();
                    // The row is ours while we lead; the key is bound as a `Key`.
                    let row = db
                        .query_one(
                            &format!("SELECT token, acquired_at FROM {table} WHERE key = $1"),
                            &[&key],
                        )
                        .await
                        .unwrap();
                    assert_eq!(row.get::<_, i64>(0) as u64, t, "the row holds our token");
                    terms.lock().unwrap().push(Term {
                        token: t,
                        identity: identity.clone(),
                        granted_db: row.get(1),
                        shown,
                        ended: None,
                    });
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

struct Candidate {
    faults: Arc<FaultyBackend>,
    manager: LeaseManager,
    election: Option<Election>,
}

async fn candidate(
    options: PostgresOptions,
    identity: &str,
    key: &Key,
    t: &Terms,
    table: &str,
) -> Candidate {
    let backend = PostgresBackend::connect(options).await.unwrap();
    let faults = Arc::new(FaultyBackend::new(Arc::new(backend)));
    let manager = LeaseManager::builder()
        .min_ttl(TTL)
        .backend(faults.clone())
        .start()
        .await
        .unwrap();
    let options = ElectionOptions::new(identity, TTL)
        .retry(Duration::from_millis(200))
        .backoff(Duration::from_millis(50), Duration::from_millis(500));
    let election = Election::campaign(manager.clone(), key.clone(), options).unwrap();
    track(
        identity,
        election.subscribe(),
        table.to_owned(),
        key.clone(),
        t.clone(),
    );
    Candidate {
        faults,
        manager,
        election: Some(election),
    }
}

fn election(c: &Candidate) -> &Election {
    c.election.as_ref().unwrap()
}

async fn leads_within(c: &Candidate, within: Duration) -> u64 {
    tokio::time::timeout(within, election(c).elected())
        .await
        .expect("leads in time")
        .expect("still campaigning")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_campaigners_one_leader_and_handovers() {
    let table = table("l", "election");
    let options = || {
        PostgresOptions::new(shared_url())
            .table(table.clone())
            .pool_size(4)
            .connect_timeout(Duration::from_secs(2))
    };
    let key = Key::system(["election", "pg"]);
    let terms: Terms = Arc::default();
    let mut cs = vec![
        candidate(options(), "a", &key, &terms, &table).await,
        candidate(options(), "b", &key, &terms, &table).await,
    ];
    let watcher = LeaseManager::builder()
        .min_ttl(TTL)
        .postgres(options())
        .start()
        .await
        .unwrap();
    let observer = Observer::start(watcher.clone(), key.clone(), Duration::from_millis(50))
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<LeaderInfo>>> = Arc::default();
    {
        let (seen, mut rx) = (seen.clone(), observer.subscribe());
        tokio::spawn(async move {
            loop {
                if let Some(v) = rx.borrow_and_update().clone() {
                    seen.lock().unwrap().push(v);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    // Never two leaders, looked at every 5 ms.
    let most = Arc::new(Mutex::new(0usize));
    let sampler = {
        let rxs: Vec<_> = cs.iter().map(|c| election(c).subscribe()).collect();
        let most = most.clone();
        tokio::spawn(async move {
            loop {
                let n = rxs.iter().filter(|rx| rx.borrow().is_leader()).count();
                {
                    let mut m = most.lock().unwrap();
                    *m = (*m).max(n);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Someone leads.
    let t1 = tokio::select! {
        t = leads_within(&cs[0], Duration::from_secs(10)) => t,
        t = leads_within(&cs[1], Duration::from_secs(10)) => t,
    };
    let l1 = if election(&cs[0]).is_leader() { 0 } else { 1 };
    let l2 = 1 - l1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        election(&cs[l2]).leadership().leader().map(|l| l.token),
        Some(t1),
        "the follower knows who leads"
    );

    // Kill the leader: its manager stops reaching the database, without releasing.
    cs[l1].faults.set_down(true);
    let t2 = leads_within(&cs[l2], TTL * 5).await;
    assert!(t2 > t1, "{t2} > {t1}");
    assert!(!election(&cs[l1]).is_leader());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The killed one comes back and follows.
    cs[l1].faults.set_down(false);
    let mut rx = election(&cs[l1]).subscribe();
    tokio::time::timeout(
        TTL * 5,
        rx.wait_for(|s| s.leader().is_some_and(|l| l.token == t2)),
    )
    .await
    .expect("follows the new leader")
    .unwrap();

    // Shut the new leader's manager down: the first one leads again.
    cs[l2].manager.shutdown().await;
    let t3 = leads_within(&cs[l1], TTL * 5).await;
    assert!(t3 > t2, "{t3} > {t2}");
    let mut rx = election(&cs[l2]).subscribe();
    rx.wait_for(Leadership::is_stopped).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cs[l1].election.take().unwrap().resign().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sampler.abort();

    let terms = terms.lock().unwrap().clone();
    assert_eq!(
        terms.iter().map(|t| t.token).collect::<Vec<_>>(),
        vec![t1, t2, t3],
        "{terms:#?}"
    );
    let ids = ["a", "b"];
    assert_eq!(
        terms
            .iter()
            .map(|t| t.identity.as_str())
            .collect::<Vec<_>>(),
        vec![ids[l1], ids[l2], ids[l1]]
    );
    assert_eq!(*most.lock().unwrap(), 1, "never two leaders at a look");
    // The killed leader's term ended, by the database's clock, before the next grant
    // (with a safety margin between them; the end is measured late, so this is strict).
    let (end1_local, end1_db) = terms[0].ended.expect("the first term ended");
    assert!(
        end1_db <= terms[1].granted_db,
        "term {t1} still led at {end1_db:?}, after {t2} was granted at {:?}",
        terms[1].granted_db
    );
    assert!(end1_local <= terms[1].shown);
    // After the shutdown the key was released at once; the handover is faster than
    // a database round trip can measure, so it is judged on the local clock shared by
    // both candidates, and on token order on the database.
    let (end2_local, _) = terms[1].ended.expect("the second term ended");
    assert!(end2_local <= terms[2].shown);
    assert!(terms[1].granted_db <= terms[2].granted_db);
    assert!(
        terms[2].ended.is_some(),
        "the resignation ended the last term"
    );

    // The observer saw every term, in order.
    let mut observed: Vec<u64> = Vec::new();
    for v in seen.lock().unwrap().iter() {
        if observed.last() != Some(&v.token) {
            observed.push(v.token);
        }
    }
    assert_eq!(observed, vec![t1, t2, t3]);

    for c in &cs {
        c.manager.shutdown().await;
    }
    watcher.shutdown().await;
}
