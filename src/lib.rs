//! # leases
//!
//! Many workers agree on who may do a task right now. A worker acquires a *lease* on a
//! [`Key`] for a TTL; while it holds the lease nobody else can; the lease is renewed in
//! the background; and when renewal fails the holder is told at once, through its
//! [`LeaseContext`], *before* anyone else can take the key over.
//!
//! The API follows the `leases` package of the Go project FTL ([`Key::system`] and
//! [`Key::module`] for `SystemKey`/`ModuleKey`, [`Key::parse`] for `ParseLeaseKey`,
//! [`Leaser::acquire_lease`], [`Lease::release`], [`LeaseError::Conflict`] for
//! `ErrConflict`, [`FakeLeaser`], [`Lease::noop`] for `NoopLease`, [`MIN_TTL`] of 5 s),
//! and fixes its known faults: every key string parses back to its key, release never
//! panics, every lease carries a fencing token, and loss is reported early.
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use leases::{CancelReason, Key, LeaseError, LeaseManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), LeaseError> {
//! let manager = LeaseManager::start().await?; // in-memory backend
//! let key = Key::system(["jobs", "nightly-report"]);
//!
//! let (lease, ctx) = manager.acquire_lease(key.clone(), Duration::from_secs(10)).await?;
//! assert!(matches!(
//!     manager.acquire_lease(key.clone(), Duration::from_secs(10)).await,
//!     Err(LeaseError::Conflict)
//! ));
//!
//! // Do the work while the context is live; pass the token to every write.
//! assert!(!ctx.is_cancelled());
//! let token = lease.token();
//! # let _ = token;
//!
//! lease.release().await?;
//! assert_eq!(ctx.reason(), Some(CancelReason::Released));
//! manager.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//!
//! The public API, then the files behind it (a file is about one idea, a folder about
//! one layer; `docs/development.md` lists every file):
//!
//! - [`key`] (`key/`): [`Key`], its canonical string form and [`KeyError`].
//! - [`Leaser`] (`leaser.rs`): the trait every lease source implements,
//!   [`AcquireOptions`], [`MIN_TTL`].
//! - [`Lease`] (`lease.rs`): the handle that releases a lease.
//! - [`LeaseContext`] (`context/`): how a holder learns that its lease ended, and why
//!   ([`CancelReason`], [`LeaseEnded`], in `reason.rs`); the most safety-critical code
//!   in the crate. Its deadline is judged on a suspend-aware clock (`clock.rs`).
//! - [`LeaseManager`] (`manager/`): the handle and its builder; the supervisor actor that
//!   owns the lease table, how a holder ends and when its key goes back; the backend
//!   calls it runs in tasks; the renewal groups (a manager's leases of one TTL, renewed
//!   together by one backend call every TTL/3); the renewal actor, one per held lease,
//!   that ends the lease's context when its group says its renewal is over.
//! - [`backend`] (`backend/`): the [`Backend`](backend::Backend) trait and its contract
//!   (`mod.rs`), the in-process [`MemoryBackend`](backend::MemoryBackend) (the default),
//!   `PostgresBackend` (`postgres/`, feature `postgres`: leases shared by processes and
//!   machines through one table), `EtcdBackend` (`etcd/`, feature `etcd`: leases in an
//!   etcd cluster, on etcd leases kept alive one per TTL group), and `FaultyBackend`
//!   (feature `test-util`), which injects faults.
//! - [`actors`]: the ractor-facing API in one place (messages to the manager, the
//!   supervision tree, lease ends as actor messages).
//! - [`FakeLeaser`] (`fake.rs`): for unit tests of code that takes a `dyn Leaser`.
//! - `fence` (`fence.rs`, feature `postgres`): refuse stale tokens on the resource
//!   side, for data kept in PostgreSQL.
//! - `testing` (feature `test-util`): the conformance kits that prove any backend, and
//!   any [`Leaser`], keeps the guarantees below.
//! - `service` (`service/`, feature `server`): the lease service, `leases serve`: FTL's
//!   gRPC `LeaseService` (wire-compatible with FTL's runtimes) and a native service with
//!   tokens, waiting, revoke, info and list; `proto` holds the generated code.
//! - `ClientLeaser` (`client/`, feature `client`): a [`Leaser`] whose leases come from
//!   the lease service over gRPC, with the same guarantees (its context ends at a
//!   deadline computed from when each confirmed heartbeat was *sent*, so before the
//!   server's own deadline).
//! - [`election`] (`election/`): leader election on any [`Leaser`]: candidates with
//!   identities, leadership (with the term's fencing token) through a `watch` channel,
//!   resign, campaigning again after a loss, and an observer of who leads.
//! - [`metrics`] (`metrics/`): what the manager records through the `metrics`
//!   facade (a table of names and labels), and with feature `prometheus` an endpoint
//!   in the Prometheus text format.
//!
//! ## Guarantees
//!
//! 1. **Exclusion.** At no instant do two holders of one key both have a live
//!    `LeaseContext`, judged on the backend's clock.
//! 2. **Early loss.** If a renewal cannot be confirmed, the holder's context ends at the
//!    *local deadline*: start of the last confirmed renewal + TTL − safety margin, on the
//!    monotonic clock. The backend's expiry is at least TTL after that start, so the
//!    context ends at least one safety margin before anyone else could be granted the
//!    key. The margin defaults to TTL/5 and is set with
//!    [`LeaseManagerBuilder::safety_margin`]. The context carries the deadline and reads
//!    the clock itself, so it reports the loss even if the renewal actor has not run
//!    (for example right after the process was frozen).
//! 3. **Fencing.** Every grant carries a token ([`Lease::token`]) strictly greater than
//!    every earlier token of that key. A resource that remembers the highest token it
//!    has accepted can refuse a stale holder.
//! 4. **No silent loss.** Release, renewal failure, revocation and shutdown each end the
//!    context with a [`CancelReason`]. Dropping a [`Lease`] releases it; dropping every
//!    [`LeaseManager`] handle shuts the manager down.
//!
//! ## Leader election and metrics
//!
//! [`election`] elects one leader among candidates on any [`Leaser`]: each candidate
//! sees its [`Leadership`](election::Leadership) (leader with the term's fencing token
//! and context, follower with the current leader's identity, or stopped) through a
//! `tokio::sync::watch` channel, campaigns again after a lost term, and releases at
//! once when it resigns; an [`Observer`](election::Observer) only watches who leads.
//! The module docs compare it with client-go's leaderelection and kube-lease-manager.
//!
//! The manager records leases held, acquires by outcome, renewal latency, losses by
//! cause and backend errors through the `metrics` facade; [`metrics`] lists the names
//! and labels in a table, and with feature `prometheus` serves them in the Prometheus
//! text format. Tracing spans `lease.acquire` and `lease.release` carry the key and the
//! token; `lease.renew` (one per group call) the TTL and the number of leases.
//!
//! ## What a lease does not protect against
//!
//! A lease tells a holder when to stop; it cannot stop it. A holder that is paused
//! (a long GC, a stopped VM, `SIGSTOP`, a swap storm) *between* checking its context and
//! writing can wake up after its lease expired and someone else took over, and write
//! anyway. No lease library can prevent that on its own. **Fencing tokens** can: send
//! [`Lease::token`] with every write, and have the resource (a database row, a storage
//! bucket, a queue) remember the highest token it has accepted for the key and refuse
//! anything lower. The stale holder's token is smaller than the new holder's, so its late
//! write is refused.
//!
//! The early-loss guarantee also assumes the local monotonic clock and the backend's
//! clock run at nearly the same rate (drift over one TTL well below the safety margin)
//! and that the process is not paused for longer than the margin between the deadline
//! check and the context being ended. Choose the margin with your worst pauses in mind.
//!
//! **Clocks.** The local deadline counts time the machine spent *suspended* (a
//! laptop's sleep): on Linux it adds the growth of `CLOCK_BOOTTIME − CLOCK_MONOTONIC`,
//! so a context held across a suspend ends as soon as the machine wakes past its
//! deadline. Elsewhere suspended time is not counted, and only fencing protects a
//! holder across a suspend. A backend that judges expiry on a wall clock (PostgreSQL's
//! `now()`) must not have that clock *stepped forward* by more than the safety margin:
//! leases would expire early there while their holders' contexts are still live. Slew
//! the database's clock (NTP, chrony), or choose a margin larger than any step.
//!
//! **Timeouts and cancellation.** Every backend call may be cut off (a timeout, a
//! caller that gives up, a shutdown). Whatever that leaves behind stays safe: a
//! connection left mid-statement is closed, never reused; an acquire whose answer was
//! lost may leave a grant that nobody holds, which keeps the key taken for at most one
//! TTL and then expires; a grant the manager cannot hand over (it is stopping, the
//! caller left) is given back at once; a renewal whose answer was lost counts as
//! failed, so the holder is still told at its deadline. The PostgreSQL backend's module
//! docs list each await point and what a timeout there leaves behind.
//!
//! Revoking a lease held by another manager does not free the key at once: the holder
//! learns at its next renewal (within TTL/3) and then gives the key back, so revocation
//! never makes two holders.
//!
//! Waiters ([`AcquireOptions::wait`]) are served first come, first served among the
//! callers of one manager; managers sharing a backend compete without an order.
//!
//! The memory backend lives and dies with its process: leases do not survive a restart
//! (its tokens still grow across restarts, see
//! [`MemoryBackend`](backend::MemoryBackend)).
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

// The code blocks of README.md and docs/ as doctests: `cargo test --doc` compiles and runs
// every ```rust block (tests/docs.rs checks the other kinds, and that every file with a
// rust block is included here). They use every backend and the conformance kit.
#[cfg(all(doctest, feature = "server", feature = "test-util"))]
mod doc_blocks {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/README.md")]
    struct Map;
    #[doc = include_str!("../docs/guide.md")]
    struct Guide;
    #[doc = include_str!("../docs/backends.md")]
    struct Backends;
    #[doc = include_str!("../docs/cli.md")]
    struct Cli;
    #[doc = include_str!("../docs/development.md")]
    struct Development;
    #[doc = include_str!("../docs/operating.md")]
    struct Operating;
    #[doc = include_str!("../docs/protocol.md")]
    struct Protocol;
    #[doc = include_str!("../docs/internals.md")]
    struct Internals;
}

pub mod actors;
pub mod backend;
#[cfg(feature = "client")]
pub mod client;
#[doc(hidden)]
pub mod clock;
mod context;
pub mod election;
mod error;
mod fake;
#[cfg(feature = "postgres")]
pub mod fence;
pub mod key;
mod lease;
mod leaser;
mod manager;
pub mod metrics;
#[cfg(feature = "client")]
pub mod proto;
mod reason;
#[cfg(feature = "server")]
pub mod service;
mod sync;
#[cfg(feature = "test-util")]
pub mod testing;

pub use backend::LeaseInfo;
#[cfg(feature = "client")]
pub use client::{ClientLeaser, ClientOptions};
pub use context::LeaseContext;
pub use error::{BackendError, BackendErrorKind, LeaseError};
pub use fake::FakeLeaser;
pub use key::{Key, KeyError, MAX_KEY_LEN};
pub use lease::Lease;
pub use leaser::{AcquireOptions, HeldLease, Leaser, MAX_METADATA_LEN, MAX_TTL, MIN_TTL};
pub use manager::{LeaseManager, LeaseManagerBuilder, DEFAULT_MARGIN_DIVISOR};
pub use reason::{CancelReason, LeaseEnded, LossCause};
// At the root too, for code written before they moved to [`actors`].
#[doc(hidden)]
pub use manager::{AcquireReply, ManagerMessage};
