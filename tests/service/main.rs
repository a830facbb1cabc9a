//! The lease service and `ClientLeaser`: the leaser conformance suite through the
//! service (on the memory backend and on PostgreSQL), FTL's wire contract case by case,
//! bad input, security, probes, and a server that goes away under its clients.
//!
//! These tests use real sockets, so they run on the real clock with short TTLs.//!
//! One binary, a module per theme: `conformance` (the leaser suite), `ftl` (FTL's
//! protocol), `client_side` (a server that goes away under its clients) and `ops`
//! (authentication, TLS, probes, limits), `many` (`HoldMany`: many leases on one
//! stream).
#![cfg(feature = "server")]

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod cancel_review;
mod client_side;
mod conformance;
mod ftl;
mod many;
mod many_review;
mod memory_review;
mod ops;
mod reattach;
mod reattach_client;
mod reattach_review;
mod resume;

use std::time::Duration;

use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseRequest;
use support::remote::FtlStream;

pub(crate) fn request(key: &[&str], ttl: Option<Duration>) -> AcquireLeaseRequest {
    AcquireLeaseRequest {
        key: key.iter().map(|s| s.to_string()).collect(),
        ttl: ttl.map(|d| prost_types::Duration::try_from(d).unwrap()),
    }
}

/// The next answer: `Ok(true)` an empty response, `Ok(false)` a clean end.
pub(crate) async fn next(s: &mut FtlStream) -> Result<bool, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), s.answers.message())
        .await
        .expect("an answer within 10 s")
        .map(|m| m.is_some())
}
