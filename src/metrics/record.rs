//! What the manager records, one function per event of the table in the module docs.

use super::names::{ACQUIRES, BACKEND_ERRORS, ENDED, LEASES_HELD, LOSSES, RENEWAL_SECONDS};
use crate::error::LeaseError;
use crate::reason::{CancelReason, LossCause};

/// One more (or one fewer, when dropped) lease in [`LEASES_HELD`]: a guard, so that the
/// gauge comes down however a holder leaves the table.
#[derive(Debug)]
pub(crate) struct HeldGauge(());

impl HeldGauge {
    pub(crate) fn new() -> HeldGauge {
        metrics::gauge!(LEASES_HELD).increment(1.0);
        HeldGauge(())
    }
}

impl Drop for HeldGauge {
    fn drop(&mut self) {
        metrics::gauge!(LEASES_HELD).decrement(1.0);
    }
}

/// Adds one to a counter with one label. Label keys and values are literals, so that
/// the metric's key is a static (no allocation per call, recorder or not).
macro_rules! count {
    ($name:expr, $label:literal => $value:literal) => {
        metrics::counter!($name, $label => $value).increment(1)
    };
}

/// Counts one acquire that handed out a lease.
pub(crate) fn acquire_granted() {
    count!(ACQUIRES, "outcome" => "granted");
}

/// Counts one acquire answered with `error`, if it is an outcome the table above counts.
pub(crate) fn acquire_failed(error: &LeaseError) {
    match error {
        LeaseError::Conflict => count!(ACQUIRES, "outcome" => "conflict"),
        LeaseError::WaitTimedOut { .. } => count!(ACQUIRES, "outcome" => "timed_out"),
        LeaseError::Backend(_) => count!(ACQUIRES, "outcome" => "error"),
        _ => {}
    }
}

/// Runs a renewal call and records how long it took (if it finishes).
pub(crate) async fn timed_renewal<T>(
    renewal: impl std::future::Future<Output = T>,
    start: tokio::time::Instant,
) -> T {
    let answer = renewal.await;
    metrics::histogram!(RENEWAL_SECONDS).record(start.elapsed().as_secs_f64());
    answer
}

/// A backend operation, for [`BACKEND_ERRORS`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Acquire,
    Renew,
    Release,
    Revoke,
    Info,
}

/// Counts one failed backend call.
pub(crate) fn backend_error(op: Op) {
    match op {
        Op::Acquire => count!(BACKEND_ERRORS, "op" => "acquire"),
        Op::Renew => count!(BACKEND_ERRORS, "op" => "renew"),
        Op::Release => count!(BACKEND_ERRORS, "op" => "release"),
        Op::Revoke => count!(BACKEND_ERRORS, "op" => "revoke"),
        Op::Info => count!(BACKEND_ERRORS, "op" => "info"),
    }
}

/// Counts the end of a lease (and its loss, if it was lost).
pub(crate) fn ended(reason: &CancelReason) {
    match reason {
        CancelReason::Released => count!(ENDED, "reason" => "released"),
        CancelReason::Revoked => count!(ENDED, "reason" => "revoked"),
        CancelReason::Shutdown => count!(ENDED, "reason" => "shutdown"),
        CancelReason::HandedOver => count!(ENDED, "reason" => "handed_over"),
        CancelReason::Lost(cause) => {
            match cause {
                LossCause::RenewalRefused => count!(LOSSES, "cause" => "renewal_refused"),
                LossCause::DeadlineExceeded => count!(LOSSES, "cause" => "deadline_exceeded"),
                LossCause::RenewerFailed(_) => count!(LOSSES, "cause" => "renewer_failed"),
                LossCause::ManagerFailed => count!(LOSSES, "cause" => "manager_failed"),
                LossCause::Injected => count!(LOSSES, "cause" => "injected"),
                LossCause::Remote(_) => count!(LOSSES, "cause" => "remote"),
                LossCause::Disconnected(_) => count!(LOSSES, "cause" => "disconnected"),
            }
            count!(ENDED, "reason" => "lost");
        }
    }
}
