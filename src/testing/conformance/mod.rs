//! The conformance suite: every behaviour a [`Backend`](crate::backend::Backend) must
//! show under the lease manager, written once and run against every backend (memory,
//! PostgreSQL, and any backend written in another crate). One file per property;
//! `env.rs` holds what every case shares.
//!
//! Each case takes an [`Env`] that makes managers sharing one backend. Cases sleep with
//! `tokio::time::sleep`, so they run instantly on paused time (the memory backend) and
//! in real time against a database. Two ways to run it:
//! - [`conformance`](crate::testing::conformance()) runs every case, one after the
//!   other, each on a fresh backend from your maker, and panics listing the cases that
//!   failed;
//! - [`conformance_tests!`](crate::conformance_tests) generates one `#[test]` per case
//!   (run in parallel, reported one by one), from an async maker of an [`Env`].

mod env;
mod faults;
mod holding;
mod info;
mod release;
mod revoke;
mod shutdown;
mod waiting;

pub use env::{faulty_manager_on, Env};
pub use faults::{
    expiry_and_takeover, lost_acquire_answer_is_bounded, panicking_acquire_frees_the_key,
};
pub use holding::{conflict, many_keys, race_for_one_key, tokens_grow};
pub use info::{bad_input, list_live_leases, metadata_and_info};
pub use release::{drop_releases, release_after_loss_is_not_held, release_and_reacquire};
pub use revoke::{failed_revoke_still_frees_a_local_holder, revoke, revoke_from_another_manager};
pub use shutdown::{grant_during_shutdown_is_given_back, shutdown_ends_everything};
pub use waiting::{wait_for_release, wait_times_out, waiters_first_come_first_served};

/// One conformance case.
pub type Case =
    for<'a> fn(&'a dyn Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

// Every case, by name (the list itself is in `__conformance_cases!`, once).
crate::__conformance_cases!(__conformance_const!());

/// The names of every case, for macros that make one test per case. Calls
/// `$callback!($($args)* ; case, case, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { $($args)* ;
            conflict, release_and_reacquire, tokens_grow, revoke, revoke_from_another_manager,
            drop_releases, wait_for_release, wait_times_out, waiters_first_come_first_served,
            expiry_and_takeover, shutdown_ends_everything, metadata_and_info, bad_input,
            release_after_loss_is_not_held, race_for_one_key, many_keys,
            grant_during_shutdown_is_given_back, panicking_acquire_frees_the_key,
            failed_revoke_still_frees_a_local_holder, lost_acquire_answer_is_bounded,
            list_live_leases
        }
    };
}

/// Defines [`CASES`] from the case list.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_const {
    (; $($case:ident),*) => {
        /// Every case, by name.
        pub const CASES: &[(&str, Case)] = &[
            $((stringify!($case), |env| Box::pin($case(env)))),*
        ];
    };
}
