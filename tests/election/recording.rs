//! A memory backend that records every grant, and which candidates said they led at
//! that instant.

use std::sync::Mutex;
use std::time::Duration;

use leases::backend::{AcquireOutcome, MemoryBackend};
use leases::election::Leadership;
use leases::{BackendError, Key};
use tokio::time::Instant;

/// The memory backend, recording the instant (on its own clock: tokio's) of every
/// grant, by token; and, at the grant itself, which candidates still said they lead.
#[derive(Default)]
pub(crate) struct Recording {
    pub(crate) inner: MemoryBackend,
    pub(crate) grants: Mutex<Vec<(u64, Instant)>>,
    /// The candidates' channels, looked at in the middle of each grant.
    pub(crate) candidates: Mutex<Vec<tokio::sync::watch::Receiver<Leadership>>>,
    /// Grants made while a candidate's state said it led.
    pub(crate) violations: Mutex<Vec<String>>,
}

forward_backend! {
    Recording => inner;
    forward: renew, release, revoke, info, subscribe_freed;
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        let outcome = self.inner.acquire(key, ttl, metadata).await?;
        if let AcquireOutcome::Granted { token } = outcome {
            self.grants.lock().unwrap().push((token, Instant::now()));
            for rx in self.candidates.lock().unwrap().iter() {
                let state = rx.borrow();
                if state.is_leader() {
                    self.violations
                        .lock()
                        .unwrap()
                        .push(format!("{token} granted while {:?} led", *state));
                }
            }
        }
        Ok(outcome)
    }
}
