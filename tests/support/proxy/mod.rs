//! A TCP fault proxy: sits between lease managers and a server on 127.0.0.1 and injects
//! network faults (latency, silence, resets, half-open connections, a slow link) into
//! live connections at any moment, so tests can cut operations off mid-flight.
//!
//! The proxy's tasks live on the tokio runtime it was started on; dropping the
//! [`FaultProxy`] stops the listener and closes every proxied connection.
//!
//! Discarded bytes are gone for good: switching back to [`Fault::Pass`] after
//! [`Fault::Blackhole`] or [`Fault::HalfOpen`] does not replay them. A byte stream with
//! a hole in it (the PostgreSQL protocol on that connection) is then broken, as after a
//! real network fault that TCP could not repair; the client must notice and give up on
//! the connection.
//!
//! Its parts: `fault.rs` (the faults, and the state a proxy's tasks share), `relay.rs`
//! (accepting and relaying connections under the current fault), `handle.rs`
//! ([`FaultProxy`]), `schedule.rs` (timed faults) and `one_sided.rs` ([`OneSidedCut`],
//! a partition the proxy cannot make).

// Each test binary uses its own part of these.
#![allow(unused_imports)]

mod fault;
mod handle;
mod one_sided;
mod relay;
mod schedule;

pub use fault::{Counters, Fault};
pub use handle::FaultProxy;
pub use one_sided::OneSidedCut;
pub use schedule::{FaultSchedule, Step};
