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
//! | `leases_renewal_duration_seconds` | histogram | | How long each renewal call to the backend took, answered or failed: one sample per group call (a manager's leases of one TTL, renewed together every TTL/3), whatever the number of leases in it (a call still unanswered at the earliest deadline of its leases is given up, not a sample). |
//! | `leases_lost_total` | counter | `cause` = `renewal_refused`, `deadline_exceeded`, `renewer_failed`, `manager_failed`, and for a `ClientLeaser` `remote`, `disconnected` | Leases whose holder was told they were lost (see [`LossCause`](crate::LossCause)). |
//! | `leases_ended_total` | counter | `reason` = `released`, `revoked`, `lost`, `shutdown` | Every end of a lease held through a manager, by [`CancelReason`](crate::CancelReason); each lease ends once. |
//! | `leases_backend_errors_total` | counter | `op` = `acquire`, `renew`, `release`, `revoke`, `info` | Backend calls that failed (unreachable, timed out, or answered with an error). |
//!
//! Leases held through a [`FakeLeaser`](crate::FakeLeaser) are not counted. Tracing
//! spans (`tracing` crate) named `lease.acquire` and `lease.release` carry the fields
//! `key` and `token` (an acquire's token is filled in once granted); `lease.renew`, one
//! per group call, carries `ttl` and `leases` (how many leases the call renews).

mod names;
#[cfg(feature = "prometheus")]
mod prometheus;
mod record;

pub use names::{
    describe, ACQUIRES, BACKEND_ERRORS, ENDED, LEASES_HELD, LOSSES, RENEWAL_BUCKETS,
    RENEWAL_SECONDS,
};
#[cfg(feature = "prometheus")]
pub use prometheus::{install_prometheus, prometheus_recorder, MetricsError, PrometheusExporter};
pub(crate) use record::{
    acquire_failed, acquire_granted, backend_error, ended, timed_renewal, HeldGauge, Op,
};
