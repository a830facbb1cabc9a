//! Candidates, each on a manager of its own over the shared recording backend.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::FaultyBackend;
use leases::election::{Election, ElectionOptions};
use leases::{Key, LeaseManager};

use crate::recording::Recording;
use crate::terms::{follow, Terms};

pub(crate) const TTL: Duration = Duration::from_secs(5);

pub(crate) struct Candidate {
    pub(crate) identity: String,
    pub(crate) faults: Arc<FaultyBackend>,
    pub(crate) manager: LeaseManager,
    pub(crate) election: Option<Election>,
}

pub(crate) async fn candidate(
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

pub(crate) fn leaders(cs: &[Candidate]) -> Vec<usize> {
    (0..cs.len())
        .filter(|&i| cs[i].election.as_ref().is_some_and(|e| e.is_leader()))
        .collect()
}
