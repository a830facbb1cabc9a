//! `--server URL,URL`: servers of one store (PostgreSQL here) restarted one at a time
//! under a running `leases run`, drained (SIGTERM) or killed (SIGKILL): the lease moves
//! to the server still up, the command runs to its end, and nothing else ran it
//! meanwhile.

use crate::harness::{code, Cli};
use crate::logs_and_flags::Serve;
use crate::support::pg::{shared_url, table};

/// Two servers on one fresh table.
fn servers(case: &str) -> (Serve, Serve, String) {
    let url = shared_url();
    let table = table("cli_failover", case);
    let args = ["--postgres", url.as_str(), "--table", table.as_str()];
    let a = Serve::start(&[], &args, &[]);
    let b = Serve::start(&[], &args, &[]);
    (a, b, table)
}

/// A rolling restart: the command's server is drained and started again, then the
/// other one: the command keeps its lease throughout and finishes (exit 0).
#[test]
fn run_survives_a_rolling_restart() {
    let (a, b, table) = servers("rolling");
    let cli = Cli {
        source: vec!["--server".into(), format!("{},{}", a.url, b.url)],
        label: "failover",
    };
    let key = cli.key("failover", "rolling");
    let mut job = cli.start_sh(&key, &[], "echo started; sleep 12; echo finished");
    assert_eq!(job.line(), "started");
    let url = shared_url();
    let args = ["--postgres", url.as_str(), "--table", table.as_str()];
    // Restart each server on its own address (the client's URLs stay right).
    let a_bind = a.url.trim_start_matches("http://").to_string();
    a.stop();
    let a = Serve::start(&[], &[&args[..], &["--bind", &a_bind]].concat(), &[]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let b_bind = b.url.trim_start_matches("http://").to_string();
    b.stop();
    let b = Serve::start(&[], &[&args[..], &["--bind", &b_bind]].concat(), &[]);
    // Meanwhile nobody else could take the key.
    let other = Cli {
        source: vec!["--server".into(), b.url.clone()],
        label: "failover",
    };
    let taken = other.call_sh(&key, &[], "echo second holder");
    assert_eq!(taken.code, code::HELD, "{taken:?}");
    assert_eq!(job.line(), "finished");
    let done = job.finish();
    assert_eq!(done.code, 0, "{done:?}");
    a.stop();
    b.stop();
}

/// The command's server is killed outright: the lease moves to the other server
/// before its deadline, and the command finishes (exit 0).
#[test]
fn run_survives_its_server_being_killed() {
    let (a, b, _table) = servers("killed");
    let cli = Cli {
        source: vec!["--server".into(), format!("{},{}", a.url, b.url)],
        label: "failover",
    };
    let key = cli.key("failover", "killed");
    let mut job = cli.start_sh(&key, &[], "echo started; sleep 8; echo finished");
    assert_eq!(job.line(), "started");
    a.kill();
    assert_eq!(job.line(), "finished");
    let done = job.finish();
    assert_eq!(done.code, 0, "{done:?}");
    b.stop();
}
