//! The targets of the manager's log events stay what they were before the manager was
//! split into files (#22's review found they had moved). A `tracing` event's target is
//! the module path of the macro call by default, and an embedder filters on it
//! (`EnvFilter` directives such as `leases::manager::supervisor=info` match by prefix):
//! the supervisor's events ("lease acquired", "lease acquire failed", "lease ended",
//! "lease manager stopped", ...) come from `leases::manager::supervisor`, the backend
//! calls' from `leases::manager::io`, wherever their code lives.

use std::time::Duration;

use leases::{Key, LeaseManager};

#[path = "support/log_capture.rs"]
mod log_capture;
use log_capture::Recorder;

#[tokio::test]
async fn the_supervisors_log_events_keep_their_target() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());

    let manager = LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let (lease, _ctx) = manager
        .acquire_lease(Key::system(["log-targets"]), Duration::from_secs(5))
        .await
        .unwrap();
    lease.release().await.unwrap();
    manager.shutdown().await;

    let events = recorder.events();
    let target_of = |message: &str| {
        events
            .iter()
            .find(|(_, m)| m == message)
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| panic!("no {message:?} event among {events:?}"))
    };
    let mut moved = Vec::new();
    for message in ["lease acquired", "lease ended", "lease manager stopped"] {
        let target = target_of(message);
        if target != "leases::manager::supervisor" {
            moved.push(format!("{message:?} now from {target}"));
        }
    }
    assert!(
        moved.is_empty(),
        "log events left leases::manager::supervisor (d96ca2c's target): {moved:?}"
    );
}
