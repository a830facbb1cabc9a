//! [`Observer`]: watches who leads, without campaigning.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::leadership::LeaderInfo;
use super::options::{runtime, MIN_PERIOD};
use crate::error::LeaseError;
use crate::key::Key;
use crate::leaser::Leaser;

/// Watches who leads `key`, without campaigning; see the [module docs](crate::election).
///
/// Polls [`Leaser::lease_info`] every `interval`; its value changes when the leader
/// (identity or token) changes. A term shorter than the interval may go unseen. A
/// backend error keeps the last value (and is logged); any other error (the leaser
/// stopped) ends the observer, and its channel closes (`changed()` returns `Err`).
#[derive(Debug)]
pub struct Observer {
    state: watch::Receiver<Option<LeaderInfo>>,
    stop: CancellationToken,
}

impl Observer {
    /// Looks once (failing with [`LeaseError::Unsupported`] for a leaser that cannot
    /// look leases up, or any other error of that first look), then keeps looking every
    /// `interval` (at least 1 ms) in a task of its own until stopped or dropped.
    pub async fn start<L: Leaser + 'static>(
        leaser: L,
        key: Key,
        interval: Duration,
    ) -> Result<Observer, LeaseError> {
        if interval < MIN_PERIOD {
            return Err(LeaseError::InvalidConfig(format!(
                "observer: the interval must be at least {MIN_PERIOD:?}"
            )));
        }
        let runtime = runtime()?;
        let first = leaser.lease_info(&key).await?.map(LeaderInfo::from_info);
        let (tx, state) = watch::channel(first);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let looked = tokio::select! {
                    biased;
                    _ = stopped.cancelled() => return,
                    looked = leaser.lease_info(&key) => looked,
                };
                match looked {
                    Ok(info) => {
                        let leader = info.map(LeaderInfo::from_info);
                        tx.send_if_modified(|known| {
                            if *known == leader {
                                false
                            } else {
                                *known = leader;
                                true
                            }
                        });
                    }
                    Err(error @ LeaseError::Backend(_)) => {
                        tracing::warn!(%key, %error, "observer could not look up the leader")
                    }
                    Err(error) => {
                        // The leaser stopped (or cannot look any more): so do we, which
                        // closes the channel.
                        tracing::info!(%key, %error, "observer stopped");
                        return;
                    }
                }
            }
        });
        Ok(Observer { state, stop })
    }

    /// A receiver of the current leader (`None` while nobody leads).
    pub fn subscribe(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.state.clone()
    }

    /// The leader as last seen.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.state.borrow().clone()
    }

    /// Stops looking (as dropping it does).
    pub fn stop(self) {}
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
