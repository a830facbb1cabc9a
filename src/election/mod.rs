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
//!
//! [`Leaser`]: crate::Leaser
//! [`LeaseContext`]: crate::LeaseContext

mod campaign;
mod candidate;
mod jitter;
mod leadership;
mod observer;
mod options;

pub use candidate::Election;
pub use leadership::{LeaderInfo, Leadership};
pub use observer::Observer;
pub use options::ElectionOptions;
