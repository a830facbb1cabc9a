//! Leader election on the memory backend, on paused time: never two leaders at once
//! (judged on the backend's clock, which is tokio's paused clock here), leadership
//! changes hands after a crash and after a resignation, and an observer sees every
//! term. Also the election over a `FakeLeaser` and over a leaser that cannot look
//! leases up.
//!
//! `handover.rs` is the three-candidate run, on `recording.rs` (a backend that records
//! every grant), `candidates.rs` and `terms.rs` (what the test saw of each term);
//! `campaigns.rs` holds the smaller cases.

#[macro_use]
#[path = "../support/forward.rs"]
mod forward;

mod campaigns;
mod candidates;
mod handover;
mod recording;
mod terms;
