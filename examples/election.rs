//! Leader election: three replicas campaign for one key; one leads; it is killed; another
//! leads with a larger fencing token; that one resigns and the last leads at once.
//!
//!     cargo run --example election
//!
//! The replicas live in one process, each with a lease manager of its own on one shared
//! memory backend, as three processes would share a database. Each reaches the store
//! through a `FaultyBackend`, so that the example can *kill* one: from that moment
//! nothing it sends reaches the store (no renewal, no release), as if its process had
//! died, and its manager and election are dropped. Its lease then expires on the store's
//! clock and a follower, waiting for the key, takes over. An observer (which does not
//! campaign) prints every leader it sees. The example checks the outcome itself and
//! exits non-zero if it is wrong.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{FaultyBackend, MemoryBackend};
use leases::election::{Election, ElectionOptions, Leadership, Observer};
use leases::{Key, LeaseManager};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(2);

struct Replica {
    name: &'static str,
    faults: Arc<FaultyBackend>,
    manager: LeaseManager,
    election: Election,
    printer: tokio::task::JoinHandle<()>,
}

fn say(start: Instant, who: &str, what: impl std::fmt::Display) {
    println!("{:>6} ms  {who:<9} {what}", start.elapsed().as_millis());
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let store = Arc::new(MemoryBackend::new());
    let key = Key::system(["example", "leader"]);

    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b", "replica-c"] {
        let faults = Arc::new(FaultyBackend::new(store.clone()));
        let manager = LeaseManager::builder()
            .min_ttl(Duration::from_secs(1))
            .backend(faults.clone())
            .start()
            .await?;
        let options = ElectionOptions::new(name, TTL).retry(Duration::from_millis(500));
        let election = Election::campaign(manager.clone(), key.clone(), options)?;
        // Print this replica's view of the election as it changes.
        let mut rx = election.subscribe();
        let printer = tokio::spawn(async move {
            loop {
                let state = rx.borrow_and_update().clone();
                match state {
                    Leadership::Leader { token, .. } => {
                        say(start, name, format!("LEADS, token {token}"))
                    }
                    Leadership::Follower { leader: Some(l) } => say(
                        start,
                        name,
                        format!("follows {} (token {})", l.identity, l.token),
                    ),
                    Leadership::Follower { leader: None } => say(start, name, "campaigns"),
                    Leadership::Stopped { error: None } => say(start, name, "resigned"),
                    Leadership::Stopped { error: Some(e) } => {
                        say(start, name, format!("stopped: {e}"))
                    }
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        replicas.push(Replica {
            name,
            faults,
            manager,
            election,
            printer,
        });
    }

    // An observer on a manager of its own: it only watches who leads.
    let watcher = LeaseManager::builder()
        .backend(store.clone())
        .start()
        .await?;
    let observer =
        Observer::start(watcher.clone(), key.clone(), Duration::from_millis(100)).await?;
    let mut seen = observer.subscribe();
    tokio::spawn(async move {
        loop {
            match seen.borrow_and_update().clone() {
                Some(l) => say(
                    start,
                    "observer",
                    format!("leader is {} (token {})", l.identity, l.token),
                ),
                None => say(start, "observer", "nobody leads"),
            }
            if seen.changed().await.is_err() {
                return;
            }
        }
    });

    // Someone leads.
    let first = wait_for_leader(&replicas, None).await;
    let first_token = token(&replicas[first])?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Kill the leader: nothing it sends reaches the store any more, and it is gone.
    let dead = replicas.remove(first);
    say(
        start,
        dead.name,
        "KILLED (no release; its lease must expire)",
    );
    dead.faults.set_down(true);
    dead.printer.abort();
    drop(dead.election);
    drop(dead.manager);

    let second = wait_for_leader(&replicas, Some(first_token)).await;
    let second_token = token(&replicas[second])?;
    say(
        start,
        "check",
        format!(
            "{} took over with token {second_token} > {first_token}",
            replicas[second].name
        ),
    );
    if second_token <= first_token {
        return Err("the new leader's token is not larger".into());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The new leader resigns: its lease is released at once, and the last replica leads
    // without waiting for an expiry.
    let resigning = replicas.remove(second);
    say(start, resigning.name, "resigns");
    let resigned_at = Instant::now();
    resigning.election.resign().await?;
    let third = wait_for_leader(&replicas, Some(second_token)).await;
    let third_token = token(&replicas[third])?;
    let handover = resigned_at.elapsed();
    say(
        start,
        "check",
        format!(
            "{} leads with token {third_token}, {handover:?} after the resignation",
            replicas[third].name
        ),
    );
    if third_token <= second_token || handover > TTL / 2 {
        return Err("the handover after a resignation was not immediate".into());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    for r in replicas {
        r.election.resign().await?;
        r.manager.shutdown().await;
    }
    resigning.manager.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(observer);
    watcher.shutdown().await;
    println!("ok: three terms, tokens {first_token} < {second_token} < {third_token}");
    Ok(())
}

/// Waits until exactly one replica leads with a token larger than `after`, and returns
/// its index.
/// The replica's token while it leads; an error if it does not.
fn token(replica: &Replica) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(replica.election.leadership().token().ok_or("no token")?)
}

async fn wait_for_leader(replicas: &[Replica], after: Option<u64>) -> usize {
    loop {
        let leaders: Vec<usize> = (0..replicas.len())
            .filter(|&i| {
                replicas[i]
                    .election
                    .leadership()
                    .token()
                    .is_some_and(|t| after.is_none_or(|a| t > a))
            })
            .collect();
        assert!(leaders.len() <= 1, "two leaders at once");
        if let Some(&i) = leaders.first() {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
