//! The candidate's handle, [`Election`]: starts the campaign task, shows its state, and
//! resigns.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::campaign::Campaign;
use super::jitter::Jitter;
use super::leadership::Leadership;
use super::options::{runtime, ElectionOptions};
use crate::context::LeaseContext;
use crate::error::LeaseError;
use crate::key::Key;
use crate::leaser::Leaser;

/// A candidate in a leader election; see the [module docs](crate::election).
///
/// Campaigns in a task of its own from [`campaign`](Election::campaign) until
/// [`resign`](Election::resign) or until dropped; both release a held lease at once.
#[derive(Debug)]
pub struct Election {
    key: Key,
    identity: String,
    state: watch::Receiver<Leadership>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), LeaseError>>>,
}

impl Election {
    /// Starts campaigning for `key` through `leaser` (a
    /// [`LeaseManager`](crate::LeaseManager) clone, say). The state starts as
    /// `Follower { leader: None }`. Fails at once for options no leaser could accept (a
    /// key or identity too long, a TTL above [`MAX_TTL`](crate::MAX_TTL), a retry or
    /// backoff below 1 ms) and outside a tokio runtime; a TTL the leaser refuses ends the
    /// campaign with `Stopped { error }` instead.
    pub fn campaign<L: Leaser + 'static>(
        leaser: L,
        key: Key,
        options: ElectionOptions,
    ) -> Result<Election, LeaseError> {
        options.check(&key)?;
        let runtime = runtime()?;
        let (tx, state) = watch::channel(Leadership::Follower { leader: None });
        let stop = CancellationToken::new();
        let campaign = Campaign {
            leaser: Arc::new(leaser),
            key: key.clone(),
            jitter: Jitter::new(options.seed),
            options: options.clone(),
            tx,
            stop: stop.clone(),
        };
        let task = runtime.spawn(campaign.run());
        Ok(Election {
            key,
            identity: options.identity,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The key campaigned for.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// A receiver of this candidate's [`Leadership`], for another task.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }

    /// The current state.
    pub fn leadership(&self) -> Leadership {
        self.state.borrow().clone()
    }

    /// `true` while this candidate leads (see [`Leadership::is_leader`]).
    pub fn is_leader(&self) -> bool {
        self.state.borrow().is_leader()
    }

    /// Waits until this candidate leads, and returns the term's token and context;
    /// `None` once the campaign is over. Cancel-safe.
    pub async fn elected(&self) -> Option<(u64, LeaseContext)> {
        let mut rx = self.state.clone();
        loop {
            {
                let state = rx.borrow_and_update();
                match &*state {
                    Leadership::Leader { token, context } if !context.is_cancelled() => {
                        return Some((*token, context.clone()))
                    }
                    Leadership::Stopped { .. } => return None,
                    _ => {}
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Stops campaigning. A leader first shows `Stopped` (so it is no longer leader) and
    /// then releases its lease, at once, so that another candidate can lead without
    /// waiting for it to expire (client-go's `ReleaseOnCancel`). Returns when the
    /// release is done; an error only if the release failed (the lease then expires
    /// within its TTL). Dropping an `Election` does the same without waiting.
    pub async fn resign(mut self) -> Result<(), LeaseError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => Err(e),
                // A campaign that had failed already resigns fine; a panicked one has
                // dropped its lease, which released it.
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        // The task releases the lease and ends on its own.
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn campaign_needs_a_runtime() {
        let fake = crate::FakeLeaser::new();
        let opts = ElectionOptions::new("a", Duration::from_secs(5));
        assert!(matches!(
            Election::campaign(fake, Key::system(["e"]), opts),
            Err(LeaseError::InvalidConfig(_))
        ));
    }
}
