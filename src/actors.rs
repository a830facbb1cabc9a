//! The ractor-facing API, in one place: for applications built of
//! [ractor](https://docs.rs/ractor) actors. The rest of the crate reads without ractor
//! types; these four pieces connect it to an actor system.
//!
//! - **Place the manager in your supervision tree.**
//!   [`LeaseManagerBuilder::supervised_by`](crate::LeaseManagerBuilder::supervised_by)
//!   spawns the manager's supervisor actor linked under one of yours. Your actor then
//!   gets a supervision event when the manager stops (after
//!   [`LeaseManager::shutdown`](crate::LeaseManager::shutdown), or if it fails). Note
//!   what ractor's default `handle_supervisor_evt` does with that event: it stops the
//!   parent too. Override it if your actor should outlive the manager.
//! - **Learn of a lease's end as a message.**
//!   [`LeaseContext::forward_to`](crate::LeaseContext::forward_to) sends a message of
//!   your choosing to an actor when the lease ends (released, revoked, lost, shutdown),
//!   so an actor that holds a lease handles its loss in its ordinary `handle`.
//! - **Talk to the manager from an actor.** [`LeaseManager::actor`](crate::LeaseManager::actor)
//!   is the supervisor's `ActorRef`; send it a [`ManagerMessage`] with `ractor::call!`.
//!   The reply to an acquire is an [`AcquireReply`].
//! - **Inside the manager**, every held lease has its own renewal actor, a linked child
//!   of the supervisor; the supervisor overrides ractor's default and never stops
//!   because a renewer did (a renewer's end is one lease's end).
//!
//! ```
//! use std::time::Duration;
//! use leases::actors::ManagerMessage;
//! use leases::{AcquireOptions, Key, LeaseManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let manager = LeaseManager::start().await.unwrap();
//! let key = Key::system(["jobs", "compaction"]);
//! // From inside an actor's handler, exactly the same call:
//! let reply = ractor::call!(
//!     manager.actor(),
//!     ManagerMessage::acquire,
//!     key,
//!     AcquireOptions::new(Duration::from_secs(10))
//! )
//! .expect("the manager answers");
//! let (lease, _ctx) = reply.expect("the key is free");
//! lease.release().await.unwrap();
//! manager.shutdown().await;
//! # }
//! ```

pub use crate::manager::{AcquireReply, ManagerMessage};
