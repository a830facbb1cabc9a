//! The lease manager: a cloneable handle to a supervisor actor that owns every lease.
//!
//! ```text
//! LeaseManager (handle.rs) ──call──▶ Supervisor actor (supervisor.rs)
//!                                      owns the lease table (table.rs, state.rs)
//!                                      acquire.rs: hands leases out
//!                                      ending.rs:  ends them, decides what goes back
//!                                      │ backend I/O in counted tasks (tasks.rs):
//!                                      │   attempt.rs (acquires), io.rs (releases,
//!                                      │   revokes), grant.rs (a grant nobody took)
//!                                      │ spawn_linked, one per held lease
//!                                      ▼
//!                                    Renewer actor (renewer.rs), one per lease;
//!                                    renewal itself goes once per group (group.rs:
//!                                    a task per TTL renews its leases in one call)
//! ```
//!
//! - **One owner.** The supervisor is the only owner of the lease table: every change
//!   of who holds what goes through its mailbox (`messages.rs` is its protocol), so
//!   nothing about leases is shared under a lock.
//! - **A mailbox that never waits on the backend.** Its handlers await nothing but
//!   shutdown: backend calls run in tasks that report back by message, and each task
//!   reports however it ends (a panic included), so a key's slot is never left busy and
//!   a grant nobody took is given back at once.
//! - **Early loss.** Each held lease has a local deadline (start of the last renewal
//!   confirmed for it + TTL − safety margin), which its group moves on each confirmed
//!   renewal; its renewal actor ends the holder's context itself when its group tells it
//!   the renewal was refused, revoked or unconfirmed by then; the context also reads the
//!   clock on its own (see `crate::context`).
//! - **No silent loss.** Release, revocation, a renewer's failure and shutdown each end
//!   the context with a reason (`ending.rs`); a lost lease is left to expire on the
//!   backend rather than given back, so that its holder keeps the safety margin.
//!
//! Settings and their defaults are in `config.rs`, the builder in `builder.rs`.

mod acquire;
mod attempt;
mod builder;
mod config;
mod ending;
mod grant;
mod group;
mod handle;
mod io;
mod messages;
mod renewer;
mod state;
mod supervisor;
mod table;
mod tasks;

pub use builder::LeaseManagerBuilder;
pub use config::DEFAULT_MARGIN_DIVISOR;
pub use handle::LeaseManager;
pub use messages::{AcquireReply, ManagerMessage};
