//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The lease manager records what it does with the `metrics` crate's macros. Until the
//! application installs a recorder (any `metrics` exporter) they cost next to nothing
//! and go nowhere. With the `prometheus` feature, `install_prometheus` installs one
//! and serves the Prometheus text format over HTTP; [`describe`] adds help texts for
//! any other exporter.
//!
//! | Name | Kind | Labels | What it counts |
//! |---|---|---|---|
//! | `leases_held` | gauge | | Leases this process's managers hold right now (granted, not yet ended). |
//! | `leases_acquires_total` | counter | `outcome` = `granted`, `conflict`, `timed_out`, `error` | Acquire calls by how they ended: `conflict` is a held key (no wait), `timed_out` a wait that ran out, `error` a backend failure or a grant confirmed too late to hold. Input errors (bad TTL, key or metadata) and calls to a stopped manager are not counted. |
//! | `leases_renewal_duration_seconds` | histogram | | How long each renewal call to the backend took, answered or failed (a renewal still unanswered at the local deadline is a loss, not a sample). |
//! | `leases_lost_total` | counter | `cause` = `renewal_refused`, `deadline_exceeded`, `renewer_failed`, `manager_failed`, and for a `ClientLeaser` `remote`, `disconnected` | Leases whose holder was told they were lost (see [`LossCause`]). |
//! | `leases_ended_total` | counter | `reason` = `released`, `revoked`, `lost`, `shutdown` | Every end of a lease held through a manager, by [`CancelReason`]; each lease ends once. |
//! | `leases_backend_errors_total` | counter | `op` = `acquire`, `renew`, `release`, `revoke`, `info` | Backend calls that failed (unreachable, timed out, or answered with an error). |
//!
//! Leases held through a [`FakeLeaser`](crate::FakeLeaser) are not counted. Tracing
//! spans (`tracing` crate) named `lease.acquire`, `lease.renew` and `lease.release`
//! carry the fields `key` and `token` (an acquire's token is filled in once granted).

use crate::context::reason::{CancelReason, LossCause};
use crate::error::LeaseError;

/// Gauge: leases held right now.
pub const LEASES_HELD: &str = "leases_held";
/// Counter: acquires by `outcome`.
pub const ACQUIRES: &str = "leases_acquires_total";
/// Histogram: seconds per renewal call.
pub const RENEWAL_SECONDS: &str = "leases_renewal_duration_seconds";
/// Counter: losses by `cause`.
pub const LOSSES: &str = "leases_lost_total";
/// Counter: lease ends by `reason`.
pub const ENDED: &str = "leases_ended_total";
/// Counter: failed backend calls by `op`.
pub const BACKEND_ERRORS: &str = "leases_backend_errors_total";

/// The buckets of [`RENEWAL_SECONDS`] in the Prometheus exporter, in seconds.
pub const RENEWAL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers the unit and help text of every metric above with the installed recorder.
/// `install_prometheus` calls it; call it yourself after installing another exporter.
pub fn describe() {
    metrics::describe_gauge!(LEASES_HELD, "Leases held right now by this process");
    metrics::describe_counter!(ACQUIRES, "Lease acquires by outcome");
    metrics::describe_histogram!(
        RENEWAL_SECONDS,
        metrics::Unit::Seconds,
        "Duration of lease renewal calls to the backend"
    );
    metrics::describe_counter!(LOSSES, "Leases lost by their holder, by cause");
    metrics::describe_counter!(ENDED, "Lease ends by reason");
    metrics::describe_counter!(BACKEND_ERRORS, "Failed backend calls by operation");
}

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

#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "prometheus")]
pub use prometheus::{install_prometheus, prometheus_recorder, MetricsError, PrometheusExporter};
