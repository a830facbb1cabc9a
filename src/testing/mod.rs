//! Test utilities (feature `test-util`): the conformance kit that proves a [`Backend`]
//! keeps the crate's guarantees, and [`FaultyBackend`] to inject faults.
//!
//! A backend written in another crate proves itself with a few lines:
//!
//! ```
//! # use std::sync::Arc;
//! # use leases::backend::{Backend, MemoryBackend};
//! // In the other crate's tests (with `leases = { features = ["test-util"] }`), under
//! // #[tokio::test(start_paused = true)] for a backend on tokio's clock:
//! async fn my_backend_conforms() {
//!     leases::testing::conformance(|| Arc::new(MemoryBackend::new()) as Arc<dyn Backend>)
//!         .await;
//! }
//! # tokio::runtime::Builder::new_current_thread()
//! #     .enable_all()
//! #     .start_paused(true)
//! #     .build()
//! #     .unwrap()
//! #     .block_on(my_backend_conforms());
//! ```
//!
//! For one test per case (run in parallel, reported separately), use
//! [`conformance_tests!`](crate::conformance_tests) with an [`Env`](conformance::Env).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::Backend;
pub use crate::backend::{AcquireFault, FaultyBackend, RenewFault};
use crate::{Key, LeaseManager};

pub mod conformance;
pub mod leaser;
pub mod parts;

/// An [`Env`](conformance::Env) over one backend: managers on it accept TTLs down to
/// `ttl`, and keys are unique to this environment (so runs sharing a store, such as a
/// database table, do not see each other's keys).
pub struct BackendEnv {
    backend: Arc<dyn Backend>,
    ttl: Duration,
    prefix: String,
}

impl std::fmt::Debug for BackendEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendEnv")
            .field("ttl", &self.ttl)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl BackendEnv {
    /// An environment on `backend`, with TTLs down to `ttl` (1 s is a good choice: the
    /// suite sleeps a few TTLs per case), and keys under `/system/conformance/<unique>/<case>/`.
    pub fn new(backend: Arc<dyn Backend>, ttl: Duration, case: &str) -> BackendEnv {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let prefix = format!(
            "{}-{}-{}-{case}",
            std::process::id(),
            nanos % 1_000_000_000_000,
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        BackendEnv {
            backend,
            ttl,
            prefix,
        }
    }
}

#[async_trait]
impl conformance::Env for BackendEnv {
    async fn manager(&self) -> LeaseManager {
        LeaseManager::builder()
            .min_ttl(self.ttl)
            .backend(self.backend.clone())
            .start()
            .await
            .expect("a manager starts")
    }

    async fn faulty_manager(&self) -> (LeaseManager, Arc<FaultyBackend>) {
        conformance::faulty_manager_on(self.backend.clone(), self.ttl).await
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(&self, name: &str) -> Key {
        Key::system(["conformance", &self.prefix, name])
    }
}

/// Runs the whole conformance suite against backends from `make_backend` (one fresh
/// backend per case; backends made by one maker must share their store, as managers in
/// different processes would), with a TTL of 1 s. Cases run one after the other; a
/// failing case does not stop the others, and the call panics at the end naming every
/// case that failed. On the memory backend, run it on paused tokio time.
pub async fn conformance<F>(make_backend: F)
where
    F: Fn() -> Arc<dyn Backend>,
{
    conformance_with_ttl(make_backend, Duration::from_secs(1)).await
}

/// [`conformance()`] with another TTL (for a backend whose clock is coarser than 1 s).
pub async fn conformance_with_ttl<F>(make_backend: F, ttl: Duration)
where
    F: Fn() -> Arc<dyn Backend>,
{
    let mut failed = Vec::new();
    for (name, case) in conformance::CASES {
        let env = BackendEnv::new(make_backend(), ttl, name);
        // Each case runs in a task of its own, so that its panic is reported as a
        // failure of that case and the suite goes on.
        let run = tokio::spawn(async move { case(&env).await });
        if let Err(e) = run.await {
            failed.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failed.len(),
        conformance::CASES.len(),
        failed.join("\n")
    );
}

/// Generates one test per conformance case. `$make` is called with the case's name
/// (a `&'static str`) and returns a future of an [`Env`](conformance::Env); `$attr`
/// is the test attribute, for example `#[tokio::test(start_paused = true)]`.
///
/// ```no_run
/// # #![allow(unnameable_test_items)]
/// use std::sync::Arc;
/// use std::time::Duration;
/// use leases::backend::MemoryBackend;
/// use leases::testing::BackendEnv;
///
/// // In a test file: one `#[tokio::test]` per case.
/// leases::conformance_tests!(
///     |case: &'static str| async move {
///         BackendEnv::new(Arc::new(MemoryBackend::new()), Duration::from_secs(1), case)
///     },
///     #[tokio::test(start_paused = true)]
/// );
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr, #[$attr:meta]) => {
        $crate::__conformance_cases!(__conformance_tests!($make, #[$attr]));
    };
}

/// Expands [`conformance_tests!`] for each case.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($make:expr, #[$attr:meta] ; $($case:ident),*) => {
        $(
            #[$attr]
            async fn $case() {
                let env = ($make)(stringify!($case)).await;
                $crate::testing::conformance::$case(&env).await;
            }
        )*
    };
}
