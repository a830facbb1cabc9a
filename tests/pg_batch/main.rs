//! Batched renewals on PostgreSQL: one statement renews many leases, and each holder is
//! told exactly its own lease's outcome; a statement that fails fails all its leases.
//! With the adversarial reviews' regressions of the batched renewal: each interleaving
//! forced with row locks held by a second session, never left to the scheduler.
//!
//! - `outcomes.rs`: each lease's own outcome, failed and abandoned batches;
//! - `queue.rs`: the batcher's queue and statement slots;
//! - `review.rs`, `review2.rs`: the first and second reviews' regressions;
//! - `setup.rs`: what the first two share.
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

#[path = "../support/mod.rs"]
mod support;

mod outcomes;
mod queue;
mod review;
mod review2;
mod setup;
