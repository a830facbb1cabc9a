//! `leases run`: the command's exit code and environment, a key held by someone else,
//! the end of a lease (revoked, lost) stopping the command.

use std::time::{Duration, Instant};

use crate::harness::{code, run_args, Cli};
use crate::support::binary::{eventually, process_gone, PATIENCE};
use crate::support::pg::PgServer;

/// The command's own exit code comes back, 128+N for a signal, 127 for no such command.
pub fn exit_code_is_the_commands(cli: &Cli) {
    let key = cli.key("exit-code", "k");
    let run = |cmd: &[&str]| cli.call(&run_args(&key, &[], cmd));
    assert_eq!(run(&["true"]).code, 0);
    assert_eq!(run(&["sh", "-c", "exit 7"]).code, 7);
    assert_eq!(run(&["sh", "-c", "kill -TERM $$"]).code, 128 + 15);
    let missing = run(&["/nonexistent/command"]);
    assert_eq!(missing.code, code::NOT_FOUND, "{missing:?}");
    assert!(missing.stderr.contains("cannot run"), "{missing:?}");
    // Each run released the key at its end: the next one got it at once.
    assert_eq!(run(&["true"]).code, 0);
}

/// The command sees LEASES_KEY and LEASES_TOKEN, and tokens grow.
pub fn command_sees_key_and_token(cli: &Cli) {
    let key = cli.key("env", "k");
    let mut last = 0u64;
    for _ in 0..2 {
        let done = cli.call_sh(&key, &[], "echo \"$LEASES_KEY $LEASES_TOKEN\"");
        assert_eq!(done.code, 0, "{done:?}");
        let (k, token) = done.stdout.trim().split_once(' ').expect("key and token");
        assert_eq!(k, key);
        let token: u64 = token.parse().expect("a numeric token");
        assert!(token > last, "{token} after {last}");
        last = token;
    }
}

/// A held key: `run` fails with 75 at once or after `--wait`; a waiter gets the key
/// when the holder ends, which a SIGTERM to the holder's `leases` does (passed on). A
/// refusal says who holds the key.
pub fn held_by_someone_else(cli: &Cli) {
    let key = cli.key("held", "k");
    let mut holder = cli.start_sh(
        &key,
        &["--metadata", "the holder"],
        "echo $LEASES_TOKEN; exec sleep 1000",
    );
    let token = holder.line();
    let now = cli.call_sh(&key, &[], "echo ran");
    assert_eq!(now.code, code::HELD, "{now:?}");
    // Who holds it, as `info` knows: metadata, token, time left.
    let who = format!("held by \"the holder\" (token {token}, ");
    assert!(now.stderr.contains(&who), "{now:?}");
    assert!(now.stderr.trim_end().ends_with(" left)"), "{now:?}");
    assert_eq!(now.stdout, "", "the command must not run");
    let waited = cli.call(&run_args(&key, &["--wait", "1s"], &["true"]));
    assert_eq!(waited.code, code::HELD, "{waited:?}");
    assert!(waited.stderr.contains("after waiting"), "{waited:?}");
    assert!(waited.stderr.contains(&who), "{waited:?}");
    // Piped stderr: no spinner drawn.
    assert!(!waited.stderr.contains('\r'), "{waited:?}");

    let mut waiter = cli.start_sh(&key, &["--wait", "60s"], "echo waiter got it");
    // Most likely waiting by now; if not, it finds the key free later: both are fine.
    std::thread::sleep(Duration::from_millis(500));
    holder.signal(libc::SIGTERM);
    let ended = holder.finish();
    // `sleep` was killed by the SIGTERM passed on to it, and says so like a shell.
    assert_eq!(ended.code, 128 + 15, "{ended:?}");
    assert_eq!(waiter.line(), "waiter got it");
    let got = waiter.finish();
    assert_eq!(got.code, 0, "{got:?}");
}

/// An operator's `leases revoke` stops the running command; `run` exits 79 and says
/// why; the key is given back.
pub fn revoke_stops_the_command(cli: &Cli) {
    let key = cli.key("revoke", "k");
    let (run, token) = cli.hold(&key, &["--metadata", "revoke me"]);
    let info = cli.call(&["info", &key, "--json"]);
    assert_eq!(info.code, 0, "{info:?}");
    let info = info.json();
    assert_eq!(info["token"], token.to_string());
    assert_eq!(info["metadata"], "revoke me");
    assert_eq!(info["revoked"], false);

    let revoked = cli.call(&["revoke", &key, "--json"]);
    assert_eq!(revoked.code, 0, "{revoked:?}");
    let revoked = revoked.json();
    assert_eq!(revoked["key"], key.as_str());
    assert_eq!(revoked["revoked"], true);
    // Until its holder notices, the lease is there, marked revoked.
    if !revoked["lease"].is_null() {
        assert_eq!(revoked["lease"]["token"], token.to_string());
        assert_eq!(revoked["lease"]["revoked"], true);
    }

    let done = run.finish();
    assert_eq!(done.code, code::LOST, "{done:?}");
    assert!(done.stderr.contains("revoked"), "{done:?}");
    assert!(done.stderr.contains(&format!("token {token}")), "{done:?}");
    // Given back before `run` exited: free for the next one, nothing left to revoke.
    let info = cli.call(&["info", &key]);
    assert_eq!(info.code, code::NOT_HELD, "{info:?}");
    let again = cli.call(&["revoke", &key]);
    assert_eq!(again.code, code::NOT_HELD, "{again:?}");
    assert!(again.stderr.contains("not held"), "{again:?}");
}

/// A grace period too long for the clock means "never SIGKILL": `leases run` panicked
/// on `Instant + Duration` once its lease was lost (#19).
pub fn longest_grace(cli: &Cli) {
    let key = cli.key("grace", "k");
    let (run, _token) = cli.hold(&key, &["--grace", "213503982334601d"]);
    let revoked = cli.call(&["revoke", &key]);
    assert_eq!(revoked.code, 0, "{revoked:?}");
    // The command ends on SIGTERM; `run` says why and exits 79.
    let done = run.finish();
    assert_eq!(done.code, code::LOST, "{done:?}");
    assert!(!done.stderr.contains("panicked"), "{done:?}");
}

/// The database goes away while the command runs: the lease is lost at its local
/// deadline, the command's whole group gets SIGTERM, then SIGKILL after the grace period
/// (this command ignores SIGTERM), and `run` exits 79. PostgreSQL only.
#[test]
fn lease_lost_while_running() {
    let server = PgServer::start(None);
    let cli = Cli::postgres(&server.url());
    let key = cli.key("lost", "k");
    let mut run = cli.start_sh(
        &key,
        &["--grace", "1s"],
        "trap '' TERM; sleep 1000 & echo $!; wait",
    );
    let sleeper: i32 = run.line().parse().expect("the background sleep's pid");
    server.stop();
    let started = Instant::now();
    let done = run.finish();
    assert_eq!(done.code, code::LOST, "{done:?}");
    assert!(done.stderr.contains("lost"), "{done:?}");
    assert!(done.stderr.contains("SIGKILL"), "{done:?}");
    // Told at the deadline (TTL minus margin after the last renewal), not before the
    // database stopped.
    assert!(started.elapsed() < PATIENCE);
    // The whole group is gone, the command's own child too.
    eventually("the command's background sleep is killed", || {
        process_gone(sleeper)
    });
}
