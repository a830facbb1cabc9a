//! Leader election on top of any [`Leaser`].
//!
//! Candidates [`campaign`](Election::campaign) for one key, each with an *identity*
//! (stored as the lease's metadata, so that others can see who leads). Whoever holds the
//! lease leads; the others follow and take over when the leader's lease ends. Each
//! candidate sees its own state through a `tokio::sync::watch` channel of
//! [`Leadership`]:
//!
//! - [`Leadership::Leader`] with the lease's fencing **token** and its
//!   [`LeaseContext`]. Lead only while the context is live, and pass the token with
//!   every write: a term's token is larger than every earlier term's.
//! - [`Leadership::Follower`] with the current leader's identity and token, when known.
//! - [`Leadership::Stopped`] once the candidate resigned, or cannot campaign any more
//!   (its leaser stopped, or it was misconfigured).
//!
//! A leader that loses its lease (renewal refused or unconfirmed, revoked) becomes a
//! follower and campaigns again after a jittered, bounded, exponential backoff.
//! [`Election::resign`] (and dropping the [`Election`]) releases the lease at once, so
//! the next leader need not wait for it to expire. An [`Observer`] only watches who
//! leads, without campaigning.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), leases::LeaseError> {
//! use std::time::Duration;
//! use leases::election::{Election, ElectionOptions, Leadership};
//! use leases::{Key, LeaseManager};
//!
//! let manager = LeaseManager::start().await?;
//! let key = Key::system(["scheduler", "leader"]);
//! let election = Election::campaign(
//!     manager.clone(),
//!     key,
//!     ElectionOptions::new("replica-a", Duration::from_secs(10)),
//! )?;
//! // Wait until elected; then lead while the context is live.
//! if let Some((token, ctx)) = election.elected().await {
//!     let work = async { /* ... writes that carry `token` ... */ };
//!     let _ = ctx.run_until_cancelled(work).await;
//! }
//! election.resign().await?;
//! # manager.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # When a leader stops leading
//!
//! The leader's term ends exactly when its lease's [`LeaseContext`] ends, which the
//! lease guarantees is *before* the backend could grant the key to anyone else
//! (guarantee 2 of the crate). The `Leader` value carries that context, and
//! [`Leadership::is_leader`] and [`Election::is_leader`] read it, so they answer `false`
//! from the instant the context ends; the channel itself is told a moment later (the
//! election's task wakes on the context's end and sends `Follower`). Check
//! `is_leader()` (or the context) right before each side effect, as with any lease.
//!
//! A `watch` channel keeps only the latest value: a reader that looks rarely can miss a
//! whole term (a leadership won and lost between two looks). Compare tokens to notice
//! that a term changed.
//!
//! # Compared with client-go and kube-lease-manager
//!
//! Kubernetes' client-go `leaderelection` calls three callbacks: `OnStartedLeading(ctx)`,
//! `OnStoppedLeading()` and `OnNewLeader(identity)`. Here they are states of one channel:
//! `Leader { token, context }` is `OnStartedLeading` (the context plays `ctx`), leaving
//! `Leader` is `OnStoppedLeading`, and a change of `Follower { leader }` (or of an
//! [`Observer`]'s value) is `OnNewLeader`. Where ours differs:
//!
//! - **Fencing.** Every term carries a token larger than every earlier term's;
//!   client-go's leader record has none (its `leaderTransitions` counter is not handed
//!   to the leader), so a paused old leader cannot be told apart from the new one.
//! - **Whose clock.** client-go followers judge the leader's expiry on their own clock
//!   (the time they last saw the record change plus the lease duration), and the leader
//!   steps down when it cannot renew within `RenewDeadline`. Here the backend's clock
//!   decides expiry, and the leader's term ends at its local deadline, one safety margin
//!   before that expiry.
//! - **One term or many.** client-go's `Run` returns after the first lost term (the
//!   usual program then exits and restarts). Ours campaigns again, after a backoff,
//!   until [`resign`](Election::resign).
//! - **Release.** client-go releases the lease on cancellation only with
//!   `ReleaseOnCancel`; ours always does (resign or drop), since a key left to expire only
//!   delays the next leader.
//! - **Polling.** client-go candidates retry every `RetryPeriod`. Ours wait inside the
//!   leaser, which wakes them when the key is released (through the backend's
//!   notifications) or expires; [`ElectionOptions::retry`] only bounds how stale a
//!   follower's view of the leader may be.
//! - **Callbacks.** client-go runs `OnNewLeader` for every change it sees, the leader
//!   included; a `watch` channel keeps only the latest state (see above).
//!
//! kube-lease-manager (a Rust crate over Kubernetes `Lease` objects) hands its holder a
//! `watch` channel of a boolean (held or not) from a background task, and judges expiry
//! on the nodes' wall clocks (the lease's last renewal time plus its duration), with a
//! grace period that bounds the clock skew it tolerates. Ours puts the fencing token,
//! the lease's context and (for followers) the leader's identity in the channel,
//! judges expiry on the backend's one clock, runs on every backend of this crate
//! (memory, PostgreSQL, or your own), and has an observer mode; it has no Kubernetes
//! backend.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::LeaseInfo;
use crate::context::LeaseContext;
use crate::error::LeaseError;
use crate::key::Key;
use crate::leaser::{AcquireOptions, Leaser, MAX_METADATA_LEN, MAX_TTL};

/// Who leads, as a follower or an observer learns it (from the lease's metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's identity (the lease's metadata, as UTF-8; invalid bytes are
    /// replaced).
    pub identity: String,
    /// The leader's fencing token: it grows with every term.
    pub token: u64,
}

impl LeaderInfo {
    fn from_info(info: LeaseInfo) -> LeaderInfo {
        LeaderInfo {
            identity: String::from_utf8_lossy(&info.metadata).into_owned(),
            token: info.token,
        }
    }
}

/// A candidate's state in an election; see the [module docs](self).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Leadership {
    /// This candidate does not lead; it campaigns (waits for the key).
    Follower {
        /// The current leader, when known: `None` while nobody leads, before the first
        /// look, after a backend error, or when the leaser cannot look leases up
        /// ([`LeaseError::Unsupported`]).
        leader: Option<LeaderInfo>,
    },
    /// This candidate leads, while `context` is live.
    Leader {
        /// The term's fencing token: pass it with every write.
        token: u64,
        /// The lease's context: the term ends when it ends.
        context: LeaseContext,
    },
    /// The campaign is over.
    Stopped {
        /// `None` after [`Election::resign`] (or a dropped [`Election`]); else why it
        /// could not go on (the leaser stopped, or the options were refused).
        error: Option<LeaseError>,
    },
}

impl Leadership {
    /// `true` while this candidate leads: the state is `Leader` and its context is
    /// live (read now, so it is `false` from the instant the lease ends).
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { context, .. } if !context.is_cancelled())
    }

    /// The term's token while this candidate leads (see [`is_leader`](Self::is_leader)).
    pub fn token(&self) -> Option<u64> {
        match self {
            Leadership::Leader { token, context } if !context.is_cancelled() => Some(*token),
            _ => None,
        }
    }

    /// The leader a follower knows of.
    pub fn leader(&self) -> Option<&LeaderInfo> {
        match self {
            Leadership::Follower { leader } => leader.as_ref(),
            _ => None,
        }
    }

    /// `true` once the campaign is over.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Leadership::Stopped { .. })
    }
}

/// How to campaign: identity, TTL, retry and backoff.
#[derive(Debug, Clone)]
pub struct ElectionOptions {
    identity: String,
    ttl: Duration,
    retry: Option<Duration>,
    backoff_min: Duration,
    backoff_max: Option<Duration>,
    seed: Option<u64>,
}

impl ElectionOptions {
    /// A candidate called `identity` (stored as the lease's metadata, at most
    /// [`MAX_METADATA_LEN`] bytes), leading with leases of `ttl`.
    pub fn new(identity: impl Into<String>, ttl: Duration) -> ElectionOptions {
        ElectionOptions {
            identity: identity.into(),
            ttl,
            retry: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: None,
            seed: None,
        }
    }

    /// How often a follower looks at who leads (default TTL/4, at least 1 ms; shorter is
    /// refused, and any longer value works: `Duration::MAX` means "never"): it bounds how stale
    /// `Follower { leader }` can be. It does not delay a takeover: a follower waits for
    /// the key inside the leaser, which wakes it at once when the key is released or
    /// expires.
    pub fn retry(mut self, retry: Duration) -> ElectionOptions {
        self.retry = Some(retry);
        self
    }

    /// The pause after a lost term or a backend error before campaigning again: it
    /// starts at `min` and doubles with each failure in a row up to `max`, and each
    /// pause is drawn at random from the upper half of that (jitter: the first pause is
    /// between `min/2` and `min`), so that candidates that failed together do not retry
    /// together. Defaults: 100 ms and the TTL. `min` must be at least 1 ms; a `max` of
    /// any length saturates.
    pub fn backoff(mut self, min: Duration, max: Duration) -> ElectionOptions {
        self.backoff_min = min;
        self.backoff_max = Some(max);
        self
    }

    /// Seeds the backoff's jitter, for reproducible tests (default: random).
    pub fn jitter_seed(mut self, seed: u64) -> ElectionOptions {
        self.seed = Some(seed);
        self
    }

    /// The identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn retry_or_default(&self) -> Duration {
        self.retry.unwrap_or((self.ttl / 4).max(MIN_PERIOD))
    }

    fn check(&self, key: &Key) -> Result<(), LeaseError> {
        key.check_len()?;
        if self.identity.len() > MAX_METADATA_LEN {
            return Err(LeaseError::MetadataTooLarge {
                len: self.identity.len(),
                max: MAX_METADATA_LEN,
            });
        }
        if self.ttl > MAX_TTL {
            return Err(LeaseError::TtlTooLong {
                ttl: self.ttl,
                max: MAX_TTL,
            });
        }
        let max = self.backoff_max.unwrap_or(self.ttl);
        if self.retry_or_default() < MIN_PERIOD
            || self.backoff_min < MIN_PERIOD
            || max < self.backoff_min
        {
            return Err(LeaseError::InvalidConfig(format!(
                "election: retry ({:?}) and backoff ({:?}..{:?}) must be at least {MIN_PERIOD:?}, with min <= max",
                self.retry_or_default(),
                self.backoff_min,
                max
            )));
        }
        Ok(())
    }
}

/// The shortest retry, backoff or observer interval: anything shorter would ask the
/// leaser without pause.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// How long a follower waits for the key in one acquire: long, since the leaser wakes it
/// when the key is freed or expires, and it looks at who leads meanwhile.
const FOLLOWER_WAIT: Duration = MAX_TTL;

fn runtime() -> Result<tokio::runtime::Handle, LeaseError> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        LeaseError::InvalidConfig("leader election needs a running tokio runtime".into())
    })
}

/// A candidate in a leader election; see the [module docs](self).
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
    /// key or identity too long, a TTL above [`MAX_TTL`], a retry or backoff below 1 ms) and
    /// outside a tokio runtime; a TTL the leaser refuses ends the campaign with
    /// `Stopped { error }` instead.
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

/// The campaign task.
struct Campaign {
    leaser: Arc<dyn Leaser>,
    key: Key,
    options: ElectionOptions,
    jitter: Jitter,
    tx: watch::Sender<Leadership>,
    stop: CancellationToken,
}

impl Campaign {
    /// Campaigns until stopped; `Err` only for a failed release at resign time.
    async fn run(mut self) -> Result<(), LeaseError> {
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

/// A small pseudo-random generator (xorshift64*) for backoff jitter: no dependency,
/// seeded at random (from std's hasher keys) unless a test fixes the seed.
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn new(seed: Option<u64>) -> Jitter {
        let seed = seed.unwrap_or_else(|| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(0x5eed);
            h.finish()
        });
        // Zero is xorshift's one fixed point.
        Jitter(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A pause drawn from the upper half of `min * 2^(failures-1)` capped at `max`.
    fn backoff(&mut self, min: Duration, max: Duration, failures: u32) -> Duration {
        let doubled = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let ceiling = doubled.min(max);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let extra = self.next() % span.saturating_add(1);
        half + Duration::from_nanos(extra)
    }
}

/// Watches who leads `key`, without campaigning; see the [module docs](self).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let mut j = Jitter::new(Some(7));
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut seen = std::collections::HashSet::new();
        for failures in 1..40 {
            let b = j.backoff(min, max, failures);
            assert!(b >= min / 2 && b <= max, "{b:?} for {failures}");
            seen.insert(b);
        }
        assert!(seen.len() > 10, "jitter varies the pauses");
        // The ceiling doubles: the 1st pause is at most min, the 4th at most 8 min.
        let mut j = Jitter::new(Some(1));
        assert!(j.backoff(min, max, 1) <= min);
        assert!(j.backoff(min, max, 4) <= min * 8);
        assert!(j.backoff(min, max, 4) >= min * 4);
    }

    #[test]
    fn options_are_checked() {
        let key = Key::system(["e"]);
        let ttl = Duration::from_secs(5);
        assert!(ElectionOptions::new("a", ttl).check(&key).is_ok());
        assert!(matches!(
            ElectionOptions::new("a".repeat(MAX_METADATA_LEN + 1), ttl).check(&key),
            Err(LeaseError::MetadataTooLarge { .. })
        ));
        assert!(matches!(
            ElectionOptions::new("a", ttl)
                .retry(Duration::ZERO)
                .check(&key),
            Err(LeaseError::InvalidConfig(_))
        ));
        assert!(matches!(
            ElectionOptions::new("a", ttl)
                .backoff(Duration::from_secs(2), Duration::from_secs(1))
                .check(&key),
            Err(LeaseError::InvalidConfig(_))
        ));
        assert!(matches!(
            ElectionOptions::new("a", MAX_TTL * 2).check(&key),
            Err(LeaseError::TtlTooLong { .. })
        ));
    }

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
