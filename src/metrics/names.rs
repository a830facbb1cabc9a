//! The names of the metrics (see the table in the module docs), the buckets of the
//! renewal histogram, and their help texts.

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
