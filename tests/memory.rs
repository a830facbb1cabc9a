//! The conformance suite (`leases::testing`) on the in-memory backend, on paused time:
//! one test per case, and once more through the kit's one-call entry point.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, MemoryBackend};
use leases::testing::BackendEnv;

const TTL: Duration = Duration::from_secs(1);

leases::conformance_tests!(
    |case: &'static str| async move {
        BackendEnv::new(Arc::new(MemoryBackend::new()), TTL, case)
    },
    #[tokio::test(start_paused = true)]
);

/// The whole suite through `leases::testing::conformance`, as a backend in another
/// crate would run it.
#[tokio::test(start_paused = true)]
async fn the_whole_suite_in_one_call() {
    leases::testing::conformance(|| Arc::new(MemoryBackend::new()) as Arc<dyn Backend>).await;
}
