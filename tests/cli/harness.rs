//! The binary as the scenarios drive it: a [`Cli`] names where leases live and runs
//! `leases` there, to its end ([`Done`]) or in the background ([`Running`]).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use serde_json::Value;

use crate::support::binary::{kill_unfinished, leases, wait_patiently, PATIENCE};
use crate::support::pg::run_id;

/// The exit codes `leases` documents.
pub mod code {
    pub const NOT_HELD: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const BACKEND: i32 = 69;
    pub const AUTH: i32 = 77;
    pub const HELD: i32 = 75;
    pub const LOST: i32 = 79;
    pub const NOT_FOUND: i32 = 127;
}

/// How the binary reaches the leases: the global arguments naming the source.
#[derive(Debug, Clone)]
pub struct Cli {
    pub source: Vec<String>,
    /// Names this source in keys, so that scenarios on different sources never share keys.
    pub label: &'static str,
}

/// What a finished `leases` call left.
#[derive(Debug)]
pub struct Done {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Done {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// `run KEY --ttl 5s [extra] -- [command]`: a `run` with the crate's minimum TTL.
pub fn run_args<'a>(key: &'a str, extra: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", key, "--ttl", "5s"];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    args
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
        let endpoints = crate::support::etcd::shared_endpoints().join(",");
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
        let url = crate::support::remote::background_server_url();
        Cli {
            source: vec!["--server".into(), url],
            label: "service",
        }
    }

    /// A key unique to this test process, scenario and source.
    pub fn key(&self, scenario: &str, name: &str) -> String {
        format!("/system/cli/{}/{}/{scenario}/{name}", run_id(), self.label)
    }

    /// The prefix under which a scenario's keys live.
    pub fn prefix(&self, scenario: &str) -> String {
        format!("/system/cli/{}/{}/{scenario}/", run_id(), self.label)
    }

    /// `leases <source> <args>`, with no `LEASES_*` variables from our own environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = leases(&self.source, args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// Runs `leases <args>` to its end (at most [`PATIENCE`]).
    pub fn call(&self, args: &[&str]) -> Done {
        self.start(args).finish()
    }

    /// Starts `leases <args>` in the background.
    pub fn start(&self, args: &[&str]) -> Running {
        let child = self.command(args).spawn().expect("the leases binary runs");
        Running::new(child, args)
    }

    /// Starts `leases <args>` in the background with these environment variables.
    pub fn start_env(&self, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut c = self.command(args);
        c.envs(env.iter().copied());
        Running::new(c.spawn().expect("the leases binary runs"), args)
    }

    /// Runs `leases <args>` to its end with these environment variables.
    pub fn call_env(&self, args: &[&str], env: &[(&str, &str)]) -> Done {
        self.start_env(args, env).finish()
    }

    /// Runs `leases run KEY --ttl 5s [extra] -- sh -c SCRIPT` to its end.
    pub fn call_sh(&self, key: &str, extra: &[&str], script: &str) -> Done {
        self.call(&run_args(key, extra, &["sh", "-c", script]))
    }

    /// Starts `leases run KEY --ttl 5s [extra]` with a command that prints its token and
    /// sleeps; the running `leases` and the token, once printed.
    pub fn hold(&self, key: &str, extra: &[&str]) -> (Running, u64) {
        let mut run = self.start_sh(key, extra, "echo $LEASES_TOKEN; exec sleep 1000");
        let token = run.line().parse().expect("the token");
        (run, token)
    }

    /// Starts `leases run KEY --ttl 5s [extra] -- sh -c SCRIPT` in the background.
    pub fn start_sh(&self, key: &str, extra: &[&str], script: &str) -> Running {
        self.start(&run_args(key, extra, &["sh", "-c", script]))
    }
}

/// A `leases` process in the background; killed if the test ends without waiting for it.
pub struct Running {
    child: Option<Child>,
    what: String,
    lines: Receiver<String>,
    stdout: Vec<String>,
    /// Its standard error, line by line (each with its newline).
    stderr: Receiver<String>,
    /// The lines of standard error already read by [`Running::wait_stderr`].
    stderr_read: String,
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
            for line in BufReader::new(&mut err).lines() {
                let Ok(line) = line else { break };
                if tx.send(format!("{line}\n")).is_err() {
                    break;
                }
            }
        });
        Running {
            child: Some(child),
            what: format!("leases {}", args.join(" ")),
            lines,
            stdout: Vec::new(),
            stderr,
            stderr_read: String::new(),
        }
    }

    /// Waits (at most [`PATIENCE`]) for the next line on standard error that contains
    /// `needle`, and returns it.
    pub fn wait_stderr(&mut self, needle: &str) -> String {
        loop {
            let line = self.stderr.recv_timeout(PATIENCE).unwrap_or_else(|e| {
                panic!(
                    "{}: no line with {needle:?} on stderr ({e}); so far:\n{}",
                    self.what, self.stderr_read
                )
            });
            self.stderr_read.push_str(&line);
            if line.contains(needle) {
                return line;
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// The next line the command printed (at most [`PATIENCE`]).
    pub fn line(&mut self) -> String {
        let line = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("{}: no line on stdout ({e})", self.what));
        self.stdout.push(line.clone());
        line
    }

    /// Sends `sig` to the `leases` process itself.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the end (at most [`PATIENCE`]).
    pub fn finish(mut self) -> Done {
        let mut child = self.child.take().expect("not finished yet");
        let status = wait_patiently(&mut child, || self.what.clone());
        // The readers end at EOF, once the command's whole group has closed the pipes.
        let mut stderr = std::mem::take(&mut self.stderr_read);
        while let Ok(line) = self.stderr.recv_timeout(PATIENCE) {
            stderr.push_str(&line);
        }
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
        kill_unfinished(self.child.take());
    }
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
