//! Signals to `leases run` reach its command: SIGINT passed on, Ctrl-Z stopping both
//! and SIGCONT continuing both while the lease lives.

use std::time::Duration;

use crate::harness::{code, Cli};
use crate::support::binary::{eventually, process_gone, process_state};

/// SIGINT to `leases` reaches the command, which exits its own way.
pub fn sigint_is_passed_on(cli: &Cli) {
    let key = cli.key("sigint", "k");
    let mut run = cli.start_sh(
        &key,
        &[],
        "trap 'echo interrupted; exit 42' INT; echo ready; while :; do sleep 0.1; done",
    );
    assert_eq!(run.line(), "ready");
    run.signal(libc::SIGINT);
    assert_eq!(run.line(), "interrupted");
    let done = run.finish();
    assert_eq!(done.code, 42, "{done:?}");
}

/// Ctrl-Z (SIGTSTP) stops the command and `leases`; SIGCONT continues both while the
/// lease lives; after a stop longer than the TTL the command is not continued but
/// stopped for good, and `run` reports the loss.
pub fn stop_and_continue(cli: &Cli) {
    let key = cli.key("stop", "k");
    let mut run = cli.start_sh(&key, &[], "echo $$; exec sleep 1000");
    let command: i32 = run.line().parse().expect("the command's pid");
    let leases = run.pid();
    let both_stopped = || process_state(command) == 'T' && process_state(leases) == 'T';
    run.signal(libc::SIGTSTP);
    eventually("the command and leases stop", both_stopped);
    run.signal(libc::SIGCONT);
    eventually("both run again", || {
        process_state(command) != 'T' && process_state(leases) != 'T'
    });
    // Stopped for longer than the TTL: the lease ran out meanwhile.
    run.signal(libc::SIGTSTP);
    eventually("stopped again", both_stopped);
    std::thread::sleep(Duration::from_secs(7));
    run.signal(libc::SIGCONT);
    let done = run.finish();
    assert_eq!(done.code, code::LOST, "{done:?}");
    assert!(done.stderr.contains("ended"), "{done:?}");
    assert!(process_gone(command));
}
