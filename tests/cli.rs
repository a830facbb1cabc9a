//! End-to-end tests of the `leases` binary: the real executable, run as a user would,
//! against a throwaway PostgreSQL (`support/pg.rs`; `LEASES_POSTGRES_URL` when set).
//!
//! Every scenario takes a [`Cli`], the arguments that say where leases live, so that the
//! same scenarios run against another source (the lease service) by adding one more
//! `scenarios!` line. Nothing depends on speed: waits poll with deadlines of tens of
//! seconds; the TTL is the crate's minimum, 5 s.
#![cfg(feature = "server")]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pg::{run_id, shared_url, PgServer};

/// A generous bound for anything that should take a moment.
const PATIENCE: Duration = Duration::from_secs(60);

/// The exit codes `leases` documents.
mod code {
    pub const NOT_HELD: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const BACKEND: i32 = 69;
    pub const HELD: i32 = 75;
    pub const LOST: i32 = 79;
    pub const NOT_FOUND: i32 = 127;
}

/// How the binary reaches the leases: the global arguments naming the source.
#[derive(Debug, Clone)]
pub struct Cli {
    source: Vec<String>,
    /// Names this source in keys, so that scenarios on different sources never share keys.
    label: &'static str,
}

/// What a finished `leases` call left.
#[derive(Debug)]
struct Done {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Done {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

impl Cli {
    /// Leases in PostgreSQL, reached directly.
    pub fn postgres(url: &str) -> Cli {
        Cli {
            source: vec!["--postgres".into(), url.into()],
            label: "pg",
        }
    }

    /// Leases in a throwaway 3-member etcd cluster (`support/etcd.rs`), reached directly.
    pub fn etcd() -> Cli {
        let endpoints = support::etcd::shared_endpoints().join(",");
        Cli {
            source: vec![
                "--etcd".into(),
                endpoints,
                "--etcd-prefix".into(),
                format!("/leases-cli-{}", run_id()),
            ],
            label: "etcd",
        }
    }

    /// Leases through a lease service: one in-process `LeaseServer` on the memory
    /// backend, started once for this test process.
    pub fn server() -> Cli {
        let url = support::remote::background_server_url();
        Cli {
            source: vec!["--server".into(), url],
            label: "service",
        }
    }

    /// A key unique to this test process, scenario and source.
    fn key(&self, scenario: &str, name: &str) -> String {
        format!("/system/cli/{}/{}/{scenario}/{name}", run_id(), self.label)
    }

    /// The prefix under which a scenario's keys live.
    fn prefix(&self, scenario: &str) -> String {
        format!("/system/cli/{}/{}/{scenario}/", run_id(), self.label)
    }

    /// `leases <source> <args>`, with no `LEASES_*` variables from our own environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_leases"));
        c.args(&self.source).args(args);
        for var in [
            "LEASES_POSTGRES_URL",
            "LEASES_SERVER",
            "LEASES_TABLE",
            "LEASES_ETCD_ENDPOINTS",
            "LEASES_ETCD_PREFIX",
        ] {
            c.env_remove(var);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs `leases <args>` to its end (at most [`PATIENCE`]).
    fn call(&self, args: &[&str]) -> Done {
        let child = self.command(args).spawn().expect("the leases binary runs");
        Running::new(child, args).finish()
    }

    /// Starts `leases <args>` in the background.
    fn start(&self, args: &[&str]) -> Running {
        let child = self.command(args).spawn().expect("the leases binary runs");
        Running::new(child, args)
    }
}

/// A `leases` process in the background; killed if the test ends without waiting for it.
struct Running {
    child: Option<Child>,
    what: String,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Receiver<String>,
}

impl Running {
    fn new(mut child: Child, args: &[&str]) -> Running {
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        Running {
            child: Some(child),
            what: format!("leases {}", args.join(" ")),
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// The next line the command printed (at most [`PATIENCE`]).
    fn line(&mut self) -> String {
        let line = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("{}: no line on stdout ({e})", self.what));
        self.stdout.push(line.clone());
        line
    }

    /// Sends `sig` to the `leases` process itself.
    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the end (at most [`PATIENCE`]).
    fn finish(mut self) -> Done {
        let mut child = self.child.take().expect("not finished yet");
        let until = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{}: still running after {PATIENCE:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end at EOF, once the command's whole group has closed the pipes.
        let stderr = self.stderr.recv_timeout(PATIENCE).unwrap_or_default();
        let mut stdout = std::mem::take(&mut self.stdout);
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            stdout.push(line);
        }
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| panic!("{}: killed by signal {:?}", self.what, status.signal()));
        Done {
            code,
            stdout: stdout.iter().map(|l| format!("{l}\n")).collect(),
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test leaves nothing running: SIGKILL to `leases`, whose command then
        // gets SIGKILL through its parent-death signal.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` until it holds, for at most [`PATIENCE`].
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < until, "not within {PATIENCE:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Is process `pid` gone (or a zombie nobody reaped yet)?
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

// ---- the scenarios, each on any source ----

/// The command's own exit code comes back, 128+N for a signal, 127 for no such command.
fn exit_code_is_the_commands(cli: &Cli) {
    let key = cli.key("exit-code", "k");
    let run = |cmd: &[&str]| {
        let mut args = vec!["run", &key, "--ttl", "5s", "--"];
        args.extend_from_slice(cmd);
        cli.call(&args)
    };
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
fn command_sees_key_and_token(cli: &Cli) {
    let key = cli.key("env", "k");
    let mut last = 0u64;
    for _ in 0..2 {
        let done = cli.call(&[
            "run",
            &key,
            "--ttl",
            "5s",
            "--",
            "sh",
            "-c",
            "echo \"$LEASES_KEY $LEASES_TOKEN\"",
        ]);
        assert_eq!(done.code, 0, "{done:?}");
        let (k, token) = done.stdout.trim().split_once(' ').expect("key and token");
        assert_eq!(k, key);
        let token: u64 = token.parse().expect("a numeric token");
        assert!(token > last, "{token} after {last}");
        last = token;
    }
}

/// A held key: `run` fails with 75 at once or after `--wait`; a waiter gets the key
/// when the holder ends, which a SIGTERM to the holder's `leases` does (passed on).
fn held_by_someone_else(cli: &Cli) {
    let key = cli.key("held", "k");
    let mut holder = cli.start(&[
        "run",
        &key,
        "--ttl",
        "5s",
        "--metadata",
        "the holder",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 1000",
    ]);
    assert_eq!(holder.line(), "ready");
    let now = cli.call(&["run", &key, "--ttl", "5s", "--", "sh", "-c", "echo ran"]);
    assert_eq!(now.code, code::HELD, "{now:?}");
    assert!(now.stderr.contains("held"), "{now:?}");
    assert_eq!(now.stdout, "", "the command must not run");
    let waited = cli.call(&["run", &key, "--ttl", "5s", "--wait", "1s", "--", "true"]);
    assert_eq!(waited.code, code::HELD, "{waited:?}");
    assert!(waited.stderr.contains("after waiting"), "{waited:?}");
    // Piped stderr: no spinner drawn.
    assert!(!waited.stderr.contains('\r'), "{waited:?}");

    let mut waiter = cli.start(&[
        "run",
        &key,
        "--ttl",
        "5s",
        "--wait",
        "60s",
        "--",
        "sh",
        "-c",
        "echo waiter got it",
    ]);
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

/// SIGINT to `leases` reaches the command, which exits its own way.
fn sigint_is_passed_on(cli: &Cli) {
    let key = cli.key("sigint", "k");
    let mut run = cli.start(&[
        "run",
        &key,
        "--ttl",
        "5s",
        "--",
        "sh",
        "-c",
        "trap 'echo interrupted; exit 42' INT; echo ready; while :; do sleep 0.1; done",
    ]);
    assert_eq!(run.line(), "ready");
    run.signal(libc::SIGINT);
    assert_eq!(run.line(), "interrupted");
    let done = run.finish();
    assert_eq!(done.code, 42, "{done:?}");
}

/// The state letter of process `pid` (`S` sleeping, `T` stopped, ...), `?` if gone.
fn process_state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .unwrap_or('?')
}

/// Ctrl-Z (SIGTSTP) stops the command and `leases`; SIGCONT continues both while the
/// lease lives; after a stop longer than the TTL the command is not continued but
/// stopped for good, and `run` reports the loss.
fn stop_and_continue(cli: &Cli) {
    let key = cli.key("stop", "k");
    let mut run = cli.start(&[
        "run",
        &key,
        "--ttl",
        "5s",
        "--",
        "sh",
        "-c",
        "echo $$; exec sleep 1000",
    ]);
    let command: i32 = run.line().parse().expect("the command's pid");
    let leases = run.pid();
    run.signal(libc::SIGTSTP);
    eventually("the command and leases stop", || {
        process_state(command) == 'T' && process_state(leases) == 'T'
    });
    run.signal(libc::SIGCONT);
    eventually("both run again", || {
        process_state(command) != 'T' && process_state(leases) != 'T'
    });
    // Stopped for longer than the TTL: the lease ran out meanwhile.
    run.signal(libc::SIGTSTP);
    eventually("stopped again", || {
        process_state(command) == 'T' && process_state(leases) == 'T'
    });
    std::thread::sleep(Duration::from_secs(7));
    run.signal(libc::SIGCONT);
    let done = run.finish();
    assert_eq!(done.code, code::LOST, "{done:?}");
    assert!(done.stderr.contains("ended"), "{done:?}");
    assert!(process_gone(command));
}

/// An operator's `leases revoke` stops the running command; `run` exits 79 and says
/// why; the key is given back.
fn revoke_stops_the_command(cli: &Cli) {
    let key = cli.key("revoke", "k");
    let mut run = cli.start(&[
        "run",
        &key,
        "--ttl",
        "5s",
        "--metadata",
        "revoke me",
        "--",
        "sh",
        "-c",
        "echo $LEASES_TOKEN; exec sleep 1000",
    ]);
    let token: u64 = run.line().parse().expect("the token");
    let info = cli.call(&["info", &key, "--json"]);
    assert_eq!(info.code, 0, "{info:?}");
    let info = info.json();
    assert_eq!(info["token"].as_u64(), Some(token));
    assert_eq!(info["metadata"], "revoke me");
    assert_eq!(info["revoked"], false);

    let revoked = cli.call(&["revoke", &key, "--json"]);
    assert_eq!(revoked.code, 0, "{revoked:?}");
    let revoked = revoked.json();
    assert_eq!(revoked["key"], key.as_str());
    assert_eq!(revoked["revoked"], true);
    // Until its holder notices, the lease is there, marked revoked.
    if !revoked["lease"].is_null() {
        assert_eq!(revoked["lease"]["token"].as_u64(), Some(token));
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
fn longest_grace(cli: &Cli) {
    let key = cli.key("grace", "k");
    let mut run = cli.start(&[
        "run",
        &key,
        "--ttl",
        "5s",
        "--grace",
        "213503982334601d",
        "--",
        "sh",
        "-c",
        "echo $LEASES_TOKEN; exec sleep 1000",
    ]);
    let _token: u64 = run.line().parse().expect("the token");
    let revoked = cli.call(&["revoke", &key]);
    assert_eq!(revoked.code, 0, "{revoked:?}");
    // The command ends on SIGTERM; `run` says why and exits 79.
    let done = run.finish();
    assert_eq!(done.code, code::LOST, "{done:?}");
    assert!(!done.stderr.contains("panicked"), "{done:?}");
}

/// `list` and `info` as tables and as JSON, parsed back.
fn list_and_info(cli: &Cli) {
    let prefix = cli.prefix("list");
    let a = format!("{prefix}a");
    // '_' and '%' in a key: the prefix matches them as themselves.
    let b = format!("{prefix}b_%25");
    let mut holders = Vec::new();
    let mut tokens = Vec::new();
    for (key, meta) in [(&a, "holder of a"), (&b, "holder of b")] {
        let mut run = cli.start(&[
            "run",
            key,
            "--ttl",
            "5s",
            "--metadata",
            meta,
            "--",
            "sh",
            "-c",
            "echo $LEASES_TOKEN; exec sleep 1000",
        ]);
        tokens.push(run.line().parse::<u64>().expect("the token"));
        holders.push(run);
    }

    let listed = cli.call(&["list", &prefix, "--json"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    let listed = listed.json();
    let leases = listed.as_array().expect("an array");
    assert_eq!(leases.len(), 2, "{listed}");
    for (lease, (key, (meta, token))) in leases.iter().zip(
        [&a, &b]
            .into_iter()
            .zip(["holder of a", "holder of b"].into_iter().zip(&tokens)),
    ) {
        assert_eq!(lease["key"], key.as_str(), "{listed}");
        assert_eq!(lease["metadata"], meta);
        assert_eq!(lease["token"].as_u64(), Some(*token));
        assert_eq!(lease["ttl_ms"], 5000);
        let left = lease["expires_in_ms"].as_u64().expect("expires_in_ms");
        assert!(left > 0 && left <= 5000, "{lease}");
        assert_eq!(lease["revoked"], false);
        assert!(lease["acquired_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
    }
    let one = cli.call(&["list", &prefix, "--json", "--limit", "1"]);
    assert_eq!(one.json().as_array().map(Vec::len), Some(1), "{one:?}");
    let narrow = cli.call(&["list", &format!("{prefix}b_"), "--json"]);
    assert_eq!(narrow.json()[0]["key"], b.as_str(), "{narrow:?}");
    let none = cli.call(&["list", &format!("{prefix}b%"), "--json"]);
    assert_eq!(none.json(), serde_json::json!([]), "{none:?}");

    let table = cli.call(&["list", &prefix]);
    assert_eq!(table.code, 0, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{table:?}");
    for column in ["KEY", "HOLDER", "TOKEN", "LEFT", "REVOKED"] {
        assert!(lines[0].contains(column), "{table:?}");
    }
    assert!(
        lines[1].starts_with(&a) && lines[1].contains("holder of a"),
        "{table:?}"
    );
    assert!(lines[1].contains(&tokens[0].to_string()) && lines[1].ends_with("no"));
    assert!(
        lines[2].starts_with(&b) && lines[2].contains("holder of b"),
        "{table:?}"
    );

    let info = cli.call(&["info", &b, "--json"]);
    assert_eq!(info.code, 0, "{info:?}");
    assert_eq!(
        without_time_left(&info.json()),
        without_time_left(&leases[1])
    );
    let info = cli.call(&["info", &a]);
    assert!(
        info.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&a)),
        "{info:?}"
    );

    let free = format!("{prefix}free");
    let missing = cli.call(&["info", &free, "--json"]);
    assert_eq!(missing.code, code::NOT_HELD, "{missing:?}");
    assert_eq!(missing.json(), Value::Null);

    for holder in holders {
        holder.signal(libc::SIGTERM);
        assert_eq!(holder.finish().code, 128 + 15);
    }
    let empty = cli.call(&["list", &prefix, "--json"]);
    assert_eq!(empty.json(), serde_json::json!([]), "{empty:?}");
}

/// A JSON lease without its time left (which moves between two calls).
fn without_time_left(lease: &Value) -> Value {
    let mut lease = lease.clone();
    if let Some(fields) = lease.as_object_mut() {
        assert!(fields.remove("expires_in_ms").is_some(), "{fields:?}");
    }
    lease
}

/// Bad input is a usage error (2) before anything is contacted.
fn usage_errors(cli: &Cli) {
    let key = cli.key("usage", "k");
    for (args, says) in [
        (vec!["run", "no-slash", "--ttl", "5s", "--", "true"], "key"),
        (
            vec!["run", "/system/a b", "--ttl", "5s", "--", "true"],
            "key",
        ),
        (vec!["run", &key, "--ttl", "5", "--", "true"], "unit"),
        (vec!["run", &key, "--ttl", "5x", "--", "true"], "unit"),
        (
            vec!["run", &key, "--ttl", "1s", "--", "true"],
            "shorter than the minimum",
        ),
        (vec!["run", &key, "--ttl", "5s"], "COMMAND"),
        (vec!["run", &key, "--", "true"], "--ttl"),
        (vec!["info", "/nope/x"], "key"),
        (vec!["frobnicate"], "unrecognized"),
    ] {
        let done = cli.call(&args);
        assert_eq!(done.code, code::USAGE, "{args:?}: {done:?}");
        assert!(done.stderr.contains(says), "{args:?}: {done:?}");
    }
}

macro_rules! scenarios {
    ($source:ident, $cli:expr; $($scenario:ident),* $(,)?) => {
        mod $source {
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(&$cli);
                }
            )*
        }
    };
}

scenarios!(postgres, Cli::postgres(&shared_url());
    exit_code_is_the_commands, command_sees_key_and_token, held_by_someone_else,
    sigint_is_passed_on, stop_and_continue, revoke_stops_the_command, list_and_info, usage_errors);

scenarios!(etcd, Cli::etcd();
    exit_code_is_the_commands, command_sees_key_and_token, held_by_someone_else,
    sigint_is_passed_on, stop_and_continue, revoke_stops_the_command, list_and_info, usage_errors);

scenarios!(service, Cli::server();
    exit_code_is_the_commands, command_sees_key_and_token, held_by_someone_else,
    sigint_is_passed_on, stop_and_continue, revoke_stops_the_command, list_and_info, usage_errors,
    longest_grace);

/// A lease service that cannot be reached: 69 from every command, and the command
/// never runs.
#[test]
fn service_unreachable() {
    let cli = Cli {
        source: vec![
            "--server".into(),
            format!("http://127.0.0.1:{}", closed_port()),
        ],
        label: "service-unreachable",
    };
    unreachable(&cli, "lease service");
}

// ---- PostgreSQL only ----

/// A database that cannot be reached: 69 from every command, and the command never runs.
#[test]
fn backend_unreachable() {
    let cli = Cli::postgres(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        closed_port()
    ));
    unreachable(&cli, "connect");
}

/// Every command on an unreachable source exits 69, saying `says`; `run` never runs its
/// command.
fn unreachable(cli: &Cli, says: &str) {
    let key = cli.key("unreachable", "k");
    let run = cli.call(&["run", &key, "--ttl", "5s", "--", "sh", "-c", "echo ran"]);
    assert_eq!(run.code, code::BACKEND, "{run:?}");
    assert_eq!(run.stdout, "", "the command must not run: {run:?}");
    assert!(run.stderr.contains(says), "{run:?}");
    for args in [
        vec!["list"],
        vec!["info", key.as_str()],
        vec!["revoke", key.as_str()],
    ] {
        let done = cli.call(&args);
        assert_eq!(done.code, code::BACKEND, "{args:?}: {done:?}");
    }
}

/// The database goes away while the command runs: the lease is lost at its local
/// deadline, the command's whole group gets SIGTERM, then SIGKILL after the grace period
/// (this command ignores SIGTERM), and `run` exits 79.
#[test]
fn lease_lost_while_running() {
    let server = PgServer::start(None);
    let cli = Cli::postgres(&server.url());
    let key = cli.key("lost", "k");
    let mut run = cli.start(&[
        "run",
        &key,
        "--ttl",
        "5s",
        "--grace",
        "1s",
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 1000 & echo $!; wait",
    ]);
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

/// `--server` names a lease service (unreachable here: 69); two sources given as flags are refused;
/// no source at all is a usage error; the help shows the exit codes.
#[test]
fn sources_and_help() {
    let no_source = Cli {
        source: vec![],
        label: "none",
    };
    let server = no_source.call(&[
        "--server",
        &format!("http://127.0.0.1:{}", closed_port()),
        "list",
    ]);
    assert_eq!(server.code, code::BACKEND, "{server:?}");
    assert!(server.stderr.contains("lease service"), "{server:?}");
    let both = no_source.call(&[
        "--server",
        "http://x",
        "--postgres",
        "postgres://x/y",
        "list",
    ]);
    assert_eq!(both.code, code::USAGE, "{both:?}");
    let none = no_source.call(&["list"]);
    assert_eq!(none.code, code::USAGE, "{none:?}");
    assert!(none.stderr.contains("--postgres"), "{none:?}");
    // A flag beats the other source's environment variable.
    let mut c = no_source.command(&[
        "--server",
        &format!("http://127.0.0.1:{}", closed_port()),
        "list",
    ]);
    c.env("LEASES_POSTGRES_URL", "postgres://x/y");
    let out = c.output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lease service"),
        "{out:?}"
    );
    let help = no_source.call(&["--help"]);
    assert_eq!(help.code, 0);
    assert!(
        help.stdout.contains("Exit codes") && help.stdout.contains("79"),
        "{help:?}"
    );
    for command in ["serve", "run", "list", "info", "revoke"] {
        let help = no_source.call(&[command, "--help"]);
        assert_eq!(help.code, 0, "{help:?}");
        assert!(help.stdout.contains("Examples:"), "{command}: {help:?}");
    }
}
