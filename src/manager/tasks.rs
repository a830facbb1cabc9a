//! How the manager runs backend I/O off the supervisor's mailbox: in counted tasks
//! ([`InFlight`]), so that shutdown can wait for them, with a panic of the backend
//! turned into a backend error ([`catch_panic`], [`unpanic`]), so that a faulty backend
//! cannot take the whole manager down nor leave a caller without an answer.

use std::sync::Arc;

use crate::error::{BackendError, BackendErrorKind};

/// Backend I/O a manager started in tasks of its own and that has not finished yet
/// (acquire attempts, releases, revokes, grants given back), so that shutdown can wait
/// for it: a process that exits when `shutdown` returns must not leave a key that is
/// being given back taken by nobody for a TTL.
#[derive(Clone, Debug)]
pub(crate) struct InFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl Default for InFlight {
    fn default() -> InFlight {
        InFlight(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl InFlight {
    /// Runs `io` in a task that is counted until it ends (or is dropped).
    pub(crate) fn spawn(&self, io: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.send_modify(|n| *n += 1);
        let counted = Counted(self.0.clone());
        let spawned = tokio::runtime::Handle::try_current().map(|rt| {
            rt.spawn(async move {
                let _counted = counted;
                io.await;
            })
        });
        // Without a runtime (it is shutting down) nothing runs, and the guard inside the
        // dropped future has already uncounted it.
        drop(spawned);
    }

    /// Waits until no counted task is left.
    pub(crate) async fn idle(&self) {
        let _ = self.0.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// Uncounts one task of an [`InFlight`] when dropped.
struct Counted(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Runs a backend call that answers inline on the supervisor's mailbox, turning a panic
/// into a backend error: a faulty backend must not take the whole manager down.
pub(crate) fn catch_panic<T>(
    call: impl FnOnce() -> Option<Result<T, BackendError>>,
) -> Option<Result<T, BackendError>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|_| {
        Some(Err(BackendError::new(
            BackendErrorKind::Failed,
            "the backend panicked",
        )))
    })
}

/// Runs backend I/O in a task of its own and turns a panic there into a backend error,
/// so that whoever waits for the answer gets one.
pub(crate) async fn unpanic<T: Send + 'static>(
    io: impl std::future::Future<Output = Result<T, BackendError>> + Send + 'static,
) -> Result<T, BackendError> {
    match tokio::spawn(io).await {
        Ok(result) => result,
        Err(e) => Err(BackendError::new(
            BackendErrorKind::Failed,
            format!("the backend failed: {e}"),
        )),
    }
}
