//! The campaign task: acquires the key (waiting inside the leaser while someone else
//! leads), leads while the lease's context is live, backs off after a lost term or a
//! backend error, and releases at once when the candidate resigns.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::jitter::Jitter;
use super::leadership::{LeaderInfo, Leadership};
use super::options::ElectionOptions;
use crate::error::LeaseError;
use crate::key::Key;
use crate::leaser::{AcquireOptions, Leaser, MAX_TTL};

/// How long a follower waits for the key in one acquire: long, since the leaser wakes it
/// when the key is freed or expires, and it looks at who leads meanwhile.
const FOLLOWER_WAIT: Duration = MAX_TTL;

/// The campaign task.
pub(super) struct Campaign {
    pub(super) leaser: Arc<dyn Leaser>,
    pub(super) key: Key,
    pub(super) options: ElectionOptions,
    pub(super) jitter: Jitter,
    pub(super) tx: watch::Sender<Leadership>,
    pub(super) stop: CancellationToken,
}

impl Campaign {
    /// Campaigns until stopped; `Err` only for a failed release at resign time.
    pub(super) async fn run(mut self) -> Result<(), LeaseError> {
        let key = self.key.clone();
        let identity = self.options.identity.clone();
        let retry = self.options.retry_or_default();
        let mut failures: u32 = 0;
        // The first try does not wait, so that a follower learns at once who leads.
        let mut wait = None;
        loop {
            let mut acquire =
                AcquireOptions::new(self.options.ttl).metadata(identity.as_bytes().to_vec());
            if let Some(w) = wait {
                acquire = acquire.wait(w);
            }
            // If we stop while the acquire runs, the future is dropped; a grant that
            // arrives then comes back to the manager, which releases it. While it
            // waits, look at who leads every `retry`.
            let attempt = {
                let acquire = self.leaser.acquire_lease_with(key.clone(), acquire);
                tokio::pin!(acquire);
                let mut looks = tokio::time::interval_at(crate::clock::after(retry), retry);
                looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => break None,
                        attempt = &mut acquire => break Some(attempt),
                        _ = looks.tick(), if wait.is_some() => self.publish_leader().await,
                    }
                }
            };
            let Some(attempt) = attempt else { break };
            match attempt {
                Ok((lease, ctx)) => {
                    let token = lease.token();
                    failures = 0;
                    tracing::info!(%key, token, %identity, "elected leader");
                    self.tx.send_replace(Leadership::Leader {
                        token,
                        context: ctx.clone(),
                    });
                    let resigned = tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => true,
                        _ = ctx.cancelled() => false,
                    };
                    if resigned {
                        // Not leader any more before the key is free for anyone else.
                        self.tx.send_replace(Leadership::Stopped { error: None });
                        tracing::info!(%key, token, %identity, "resigned");
                        return match lease.release().await {
                            Ok(()) | Err(LeaseError::NotHeld) => Ok(()),
                            Err(e) => Err(e),
                        };
                    }
                    let reason = ctx.reason();
                    // Already ended: dropping it releases nothing.
                    drop(lease);
                    self.tx.send_replace(Leadership::Follower { leader: None });
                    tracing::warn!(%key, token, %identity, ?reason, "leadership lost; campaigning again");
                    failures = failures.saturating_add(1);
                    if !self.pause(failures).await {
                        break;
                    }
                    wait = None;
                }
                Err(LeaseError::Conflict | LeaseError::WaitTimedOut { .. }) => {
                    failures = 0;
                    self.publish_leader().await;
                    wait = Some(FOLLOWER_WAIT);
                }
                Err(error @ (LeaseError::Backend(_) | LeaseError::NotHeld)) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%key, %identity, %error, "campaign attempt failed; backing off");
                    if !self.pause(failures).await {
                        break;
                    }
                    wait = None;
                }
                Err(error) => {
                    tracing::warn!(%key, %identity, %error, "campaign stopped");
                    self.tx
                        .send_replace(Leadership::Stopped { error: Some(error) });
                    return Ok(());
                }
            }
        }
        self.tx.send_replace(Leadership::Stopped { error: None });
        Ok(())
    }

    /// Looks up who leads (errors count as "not known") and shows it as a follower's
    /// state, telling receivers only if it changed.
    async fn publish_leader(&self) {
        let leader = match self.leaser.lease_info(&self.key).await {
            Ok(info) => info.map(LeaderInfo::from_info),
            Err(LeaseError::Unsupported { .. }) => None,
            Err(error) => {
                tracing::debug!(key = %self.key, %error, "could not look up the leader");
                None
            }
        };
        self.tx.send_if_modified(|state| match state {
            Leadership::Follower { leader: known } if *known == leader => false,
            // Never over a newer state: only a follower's view is refreshed here.
            Leadership::Follower { .. } => {
                *state = Leadership::Follower { leader };
                true
            }
            _ => false,
        });
    }

    /// Sleeps the backoff for the `failures`-th failure in a row; `false` if stopped
    /// meanwhile.
    async fn pause(&mut self, failures: u32) -> bool {
        let min = self.options.backoff_min;
        let max = self.options.backoff_max.unwrap_or(self.options.ttl);
        let pause = self.jitter.backoff(min, max, failures);
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

impl Drop for Campaign {
    /// Every way the campaign ends shows as `Stopped`: a task that ends without saying
    /// so (it panicked, or its runtime shut down) must not leave its candidate a
    /// `Follower` forever.
    fn drop(&mut self) {
        self.tx.send_if_modified(|state| {
            if state.is_stopped() {
                return false;
            }
            *state = Leadership::Stopped {
                error: Some(LeaseError::InvalidConfig(
                    "the campaign task ended unexpectedly".into(),
                )),
            };
            true
        });
    }
}
