//! [`ClientLeaser`]: leases from a lease service (`leases serve`) over gRPC, the Rust
//! half of FTL's `NewClientLeaser` (feature `client`).
//!
//! See [`ClientLeaser`] for how a lease over the network keeps the guarantees.
//!
//! The parts, each in its own file, none using another's names in a circle:
//! - `options.rs`: [`ClientOptions`], how to reach the service;
//! - `status.rs`: the service's answers as [`LeaseError`](crate::LeaseError)s;
//! - `connection.rs`: [`ClientLeaser`] and its one HTTP/2 connection;
//! - `calls.rs`: the one-shot calls (revoke, info, list, check);
//! - `acquire.rs`: the [`Leaser`](crate::Leaser) impl, which opens a lane (or a `Hold`
//!   stream) per lease;
//! - `keep.rs`: the task that keeps one granted lease on its stream (heartbeats, the
//!   deadline, the end and the release);
//! - `lanes.rs`: a lease's stream, its own `Hold` stream or a lane of the `HoldMany`
//!   stream; `many.rs` that stream, one per server: many leases, one heartbeat per
//!   group of one TTL.

mod acquire;
mod calls;
mod connection;
mod keep;
mod lanes;
mod many;
mod options;
mod reattach;
mod status;

pub use connection::ClientLeaser;
pub use options::ClientOptions;
