//! The lease service the service's cases start: on a manager of 1 s minimum TTL, bound
//! to a free local port.

use std::time::Duration;

use leases::service::ServeOptions;
use leases::LeaseManager;

/// Serve options on a free local port, a default TTL of 2 s.
pub fn local() -> ServeOptions {
    ServeOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        default_ttl: Duration::from_secs(2),
        ..ServeOptions::default()
    }
}

/// A manager on the memory store, its minimum TTL 1 s.
pub async fn manager() -> LeaseManager {
    LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .start()
        .await
        .unwrap()
}
