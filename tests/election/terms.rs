//! What the test saw of each leadership term, on the backend's clock (tokio's paused
//! clock), and a sampler of how many candidates lead at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leases::election::Leadership;
use leases::LeaseContext;
use tokio::time::Instant;

/// One leadership term as the test saw it.
#[derive(Debug, Clone)]
pub(crate) struct Term {
    pub(crate) identity: String,
    /// When the candidate's channel first showed `Leader` with this token.
    pub(crate) shown: Instant,
    /// When the lease's context ended.
    pub(crate) ctx_end: Option<Instant>,
    /// When the candidate's channel first showed anything else afterwards.
    pub(crate) watch_end: Option<Instant>,
}

pub(crate) type Terms = Arc<Mutex<BTreeMap<u64, Term>>>;

/// Follows one candidate's channel, recording its terms.
pub(crate) fn follow(
    identity: &str,
    mut rx: tokio::sync::watch::Receiver<Leadership>,
    terms: Terms,
) {
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

pub(crate) fn watch_context(token: u64, context: LeaseContext, terms: Terms) {
    tokio::spawn(async move {
        context.cancelled().await;
        terms.lock().unwrap().get_mut(&token).unwrap().ctx_end = Some(Instant::now());
    });
}

/// Looks every 50 ms (of paused time) at how many candidates lead: returns the number
/// of looks and the most leaders seen at once.
pub(crate) fn sample_exclusion(
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
