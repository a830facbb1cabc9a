//! Parts for a [`Leaser`](crate::Leaser) written outside this crate, such as a test's
//! client of another protocol: a [`Lease`] whose release calls back into the caller's
//! code, and a [`LeaseContext`] whose deadline the caller moves by the deadline rule
//! (the instant a request was *sent* plus the time left its answer gave).
//!
//! For tests and experiments (feature `test-util`), like the rest of this module: the
//! guarantees of the crate hold for such a leaser only as far as its author keeps the
//! rule.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::context::ContextSender;
use crate::lease::LeaseOwner;
use crate::{CancelReason, Key, Lease, LeaseContext, LeaseError};

/// What ends a [`lease`] on behalf of its handle.
#[async_trait]
pub trait Releaser: Send + Sync + 'static {
    /// Releases the lease `(key, token)` and waits for the outcome
    /// ([`Lease::release`]).
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError>;
    /// Releases the lease in the background (a dropped [`Lease`]).
    fn release_on_drop(&self, key: Key, token: u64);
}

struct Owner(Arc<dyn Releaser>);

#[async_trait]
impl LeaseOwner for Owner {
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError> {
        self.0.release(key, token).await
    }
    fn release_on_drop(&self, key: Key, token: u64) {
        self.0.release_on_drop(key, token)
    }
}

/// A lease handle for `(key, token)` that `releaser` releases.
pub fn lease(key: Key, token: u64, releaser: Arc<dyn Releaser>) -> Lease {
    Lease::new(key, token, Arc::new(Owner(releaser)))
}

/// The instant a request was sent (with the machine's suspended time then): what a
/// deadline counts from.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    at: Instant,
    since: Duration,
}

impl Sent {
    /// Now: call it right before sending the request.
    pub fn now() -> Sent {
        Sent {
            at: Instant::now(),
            since: crate::clock::suspended(),
        }
    }

    /// The deadline an answer to this request gives: sent plus `time_left` (an
    /// instant that does not fit ends the lease at once rather than never).
    pub fn plus(&self, time_left: Duration) -> Instant {
        self.at.checked_add(time_left).unwrap_or(self.at)
    }
}

/// The owner's side of a [`context`]: ends it, moves its deadline.
#[derive(Debug, Clone)]
pub struct ContextEnd(ContextSender);

impl ContextEnd {
    /// Ends the context with `reason` unless it has ended; `true` if this call did.
    pub fn cancel(&self, reason: CancelReason) -> bool {
        self.0.cancel(reason)
    }

    /// Moves the deadline to `sent` plus `time_left`, for an answer to a request sent
    /// then. `false` (and nothing changes) if the context has already ended or its
    /// deadline has passed: a late answer never revives a lease.
    pub fn extend(&self, sent: Sent, time_left: Duration) -> bool {
        self.0.extend(sent.plus(time_left), sent.since)
    }

    /// Why the context ended, if it has.
    pub fn reason(&self) -> Option<CancelReason> {
        self.0.reason()
    }
}

/// A live context for the lease with `token`, its deadline `sent` plus `time_left`.
pub fn context(token: u64, sent: Sent, time_left: Duration) -> (ContextEnd, LeaseContext) {
    let (sender, ctx) = LeaseContext::new_since(token, Some(sent.plus(time_left)), sent.since);
    (ContextEnd(sender), ctx)
}
