//! End-to-end tests of the `leases` binary: the real executable, run as a user would,
//! against a throwaway PostgreSQL (`support/pg.rs`; `LEASES_POSTGRES_URL` when set).
//!
//! Every scenario takes a [`Cli`](harness::Cli), the arguments that say where leases
//! live, so that the same scenarios run against another source (the lease service) by
//! adding one more `scenarios!` line. Nothing depends on speed: waits poll with deadlines
//! of tens of seconds; the TTL is the crate's minimum, 5 s.
//!
//! - `harness`: the binary as the scenarios drive it, and the documented exit codes;
//! - `run`: `leases run`, its command's exit code and environment, and what ends it;
//! - `elect`: `leases elect`, its terms and its observer;
//! - `elect_review`: regressions from a review of `elect`'s terms (signals, leftovers, Ctrl-Z);
//! - `signals`: SIGINT, Ctrl-Z and SIGCONT passed on to the command;
//! - `tree_review`: stopping a command's whole tree (Ctrl-Z, SIGKILL) for `run` and `elect`;
//! - `inspect`: `leases list` and `leases info`;
//! - `errors`: usage errors, unreachable sources, the help;
//! - `logs_and_flags`: logs on stderr, `serve`'s flags apart from the clients', token files;
//! - `messages`: a refused token (77), why a service is unreachable, TTL bounds;
//! - `failover`: `--server URL,URL` across a rolling restart and a killed server;
//! - `retry`: `--wait forever`, and `--retry` while a service cannot be reached;
//! - `readonly`: `list` and `info` on PostgreSQL with a SELECT-only role, and no table.
#![cfg(feature = "server")]

#[path = "../support/mod.rs"]
mod support;

mod elect;
mod elect_review;
mod errors;
mod failover;
mod harness;
mod inspect;
mod logs_and_flags;
mod messages;
mod readonly;
mod retry;
mod run;
mod signals;
mod tree_review;

/// One test per scenario on one source: `scenarios!(NAME, CLI; module::scenario, ...)`
/// makes `NAME::scenario`, which runs `module::scenario(&CLI)`.
macro_rules! scenarios {
    ($source:ident, $cli:expr; $($module:ident :: $scenario:ident),* $(,)?) => {
        mod $source {
            use crate::harness::Cli;
            $(
                #[test]
                fn $scenario() {
                    crate::$module::$scenario(&$cli);
                }
            )*
        }
    };
}

scenarios!(postgres, Cli::postgres(&crate::support::pg::shared_url());
    run::exit_code_is_the_commands, run::command_sees_key_and_token,
    run::held_by_someone_else, signals::sigint_is_passed_on, signals::stop_and_continue,
    run::revoke_stops_the_command, inspect::list_and_info, errors::usage_errors,
    inspect::prefixes_and_bare_keys, retry::wait_forever,
    elect::candidates_take_turns, elect::command_exit_ends_the_election);

scenarios!(etcd, Cli::etcd();
    run::exit_code_is_the_commands, run::command_sees_key_and_token,
    run::held_by_someone_else, signals::sigint_is_passed_on, signals::stop_and_continue,
    run::revoke_stops_the_command, inspect::list_and_info, errors::usage_errors,
    inspect::prefixes_and_bare_keys, retry::wait_forever,
    elect::candidates_take_turns, elect::command_exit_ends_the_election);

scenarios!(service, Cli::server();
    run::exit_code_is_the_commands, run::command_sees_key_and_token,
    run::held_by_someone_else, signals::sigint_is_passed_on, signals::stop_and_continue,
    run::revoke_stops_the_command, inspect::list_and_info, errors::usage_errors,
    run::longest_grace, inspect::prefixes_and_bare_keys, retry::wait_forever,
    elect::candidates_take_turns, elect::command_exit_ends_the_election);
