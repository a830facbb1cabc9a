//! The `leases` binary as a user runs it, for the tests of the command line: the command
//! with none of our own `LEASES_*` variables, bounded waits for its end, and what
//! `/proc` says of the processes it ran. Nothing depends on speed: every wait has a
//! deadline of [`PATIENCE`].

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A generous bound for anything that should take a moment.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The environment variables that name a source (or its table or prefix): a test says
/// its source in arguments, so none may leak in from the environment it runs in.
const SOURCE_VARIABLES: [&str; 5] = [
    "LEASES_POSTGRES_URL",
    "LEASES_SERVER",
    "LEASES_TABLE",
    "LEASES_ETCD_ENDPOINTS",
    "LEASES_ETCD_PREFIX",
];

/// The variables that name a token or CA file, or what is logged: a test sets them
/// itself when it means to.
const OTHER_VARIABLES: [&str; 4] = [
    "LEASES_TOKEN_FILE",
    "LEASES_CA_FILE",
    "LEASES_SERVE_TOKEN_FILE",
    "RUST_LOG",
];

/// `leases <source> <args>`, with no `LEASES_*` variables (nor `RUST_LOG`) from our own
/// environment and nothing on stdin; the caller says where stdout and stderr go.
pub fn leases(source: &[String], args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leases"));
    c.args(source).args(args);
    for var in SOURCE_VARIABLES.into_iter().chain(OTHER_VARIABLES) {
        c.env_remove(var);
    }
    c.stdin(Stdio::null());
    c
}

/// Waits for `child`'s end, at most [`PATIENCE`]; past it, kills and reaps it and panics
/// with `what()` (the command, and whatever else helps to see why).
pub fn wait_patiently(child: &mut Child, what: impl FnOnce() -> String) -> ExitStatus {
    let until = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: still running after {PATIENCE:?}", what());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `child` (SIGKILL) and reaps it, if the test has not waited for it: a failed test
/// leaves nothing running.
pub fn kill_unfinished(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls `check` until it holds, for at most [`PATIENCE`].
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < until, "not within {PATIENCE:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state letter of process `pid` (`S` sleeping, `T` stopped, `Z` zombie, ...), `?`
/// if it is gone.
pub fn process_state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .unwrap_or('?')
}

/// Is process `pid` gone (or a zombie nobody reaped yet)?
pub fn process_gone(pid: i32) -> bool {
    matches!(process_state(pid), '?' | 'Z' | 'X')
}
