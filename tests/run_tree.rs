//! `leases run`: a command is a holder until its last process is dead (issue #19,
//! defects 4 and 5).
//!
//! Each scenario runs a first `leases run` (A) whose processes tick into a log while they
//! run — a line with the time from one clock (`/proc/uptime`) every 0.1 s — and record
//! their pids. Then the lease ends (a revoke through the `leases revoke` command, a
//! blackholed link to the database) or the command exits leaving a process behind, and
//! a second `leases run` (B) on the same key, waiting for it, records when its command
//! starts and which of A's processes are alive at that instant. The checker knows only
//! the guarantee: B's command never starts while a process of A's is alive, so no tick
//! of A's is later than B's start, and B finds none of them alive.
//!
//! A's processes ignore SIGTERM (as many real programs do, by accident or design), with
//! the default `--grace` of 10 s: they die only by SIGKILL. Nothing depends on speed:
//! every wait has a deadline of a minute; the TTL is the minimum, 5 s.
#![cfg(feature = "server")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use support::binary::{eventually, kill_unfinished, leases, process_gone, wait_patiently};
use support::pg::{run_id, shared_url};
use support::proxy::{Fault, FaultProxy};

/// `run`'s exit code after a lost or revoked lease.
const LOST: i32 = 79;

/// A worker: ignores SIGTERM, records its pid, then ticks into the log (`NAME TIME`)
/// every 0.1 s, forever or for ROUNDS ticks. `sh worker.sh NAME [ROUNDS]`.
const WORKER: &str = r#"trap '' TERM
echo $$ >> "$PIDS"
n=0
while [ -z "$2" ] || [ "$n" -lt "$2" ]; do
    read t _ < /proc/uptime
    echo "$1 $t" >> "$LOG"
    n=$((n + 1))
    sleep 0.1
done
"#;

/// The second holder's command: the time it starts, then every recorded pid that is
/// alive (neither gone nor a zombie) at that instant.
const SECOND: &str = r#"read t _ < /proc/uptime
echo "B $t" >> "$LOG"
for p in $(cat "$PIDS"); do
    st=$(cat "/proc/$p/stat" 2>/dev/null)
    st=${st##*) }
    st=${st%% *}
    if [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]; then
        echo "alive $p" >> "$LOG"
    fi
done
"#;

/// A scenario's directory: the scripts, the log, the pids, the output of each `leases`.
struct Scene {
    dir: PathBuf,
    source: Vec<String>,
    key: String,
}

impl Scene {
    fn new(name: &str, source: Vec<String>) -> Scene {
        let dir = std::env::temp_dir().join(format!("leases-run-tree-{}-{name}", run_id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("worker.sh"), WORKER).unwrap();
        std::fs::write(dir.join("second.sh"), SECOND).unwrap();
        std::fs::write(dir.join("pids"), "").unwrap();
        std::fs::write(dir.join("log"), "").unwrap();
        let key = format!("/system/run-tree/{}/{name}", run_id());
        Scene { dir, source, key }
    }

    fn worker(&self) -> String {
        self.dir.join("worker.sh").display().to_string()
    }

    /// `leases <source> <args>`, its stdout and stderr in files named after `name`.
    fn command(&self, name: &str, args: &[&str]) -> Command {
        let mut c = leases(&self.source, args);
        let file = |what: &str| std::fs::File::create(self.dir.join(format!("{name}.{what}")));
        c.env("LOG", self.dir.join("log"))
            .env("PIDS", self.dir.join("pids"))
            .env("W", self.worker())
            .stdout(file("out").unwrap())
            .stderr(file("err").unwrap());
        c
    }

    /// Starts `leases <source> run KEY --ttl 5s [extra] -- <command>` as `name`.
    fn run(&self, name: &str, extra: &[&str], command: &[&str]) -> Running {
        let mut args = vec!["run", self.key.as_str(), "--ttl", "5s"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(command);
        let child = self.command(name, &args).spawn().expect("leases runs");
        Running {
            child: Some(child),
            name: name.to_string(),
            dir: self.dir.clone(),
        }
    }

    /// Starts B: `leases run` waiting up to a minute for the key, then the second
    /// holder's command.
    fn second(&self) -> Running {
        let second = self.dir.join("second.sh").display().to_string();
        self.run("b", &["--wait", "60s"], &["sh", &second])
    }

    /// `leases revoke KEY`, which must find the key held.
    fn revoke(&self) {
        let out = self
            .command("revoke", &["revoke", &self.key])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "revoke: {out:?} {}",
            read(&self.dir.join("revoke.err"))
        );
    }

    /// The pids A's processes recorded.
    fn pids(&self) -> Vec<i32> {
        read(&self.dir.join("pids"))
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Waits until `n` of A's workers have started and ticked.
    fn wait_for_workers(&self, n: usize) {
        eventually(&format!("{n} worker(s) tick"), || {
            self.pids().len() >= n && !read(&self.dir.join("log")).is_empty()
        });
    }

    /// The guarantee: B's command started, after A's last tick, and found none of A's
    /// processes alive.
    fn check(&self) {
        let log = read(&self.dir.join("log"));
        let time = |line: &str| -> f64 {
            let t = line.split_whitespace().nth(1).expect("a time");
            t.parse().expect("a number")
        };
        let second = log
            .lines()
            .find(|l| l.starts_with("B "))
            .unwrap_or_else(|| panic!("B's command never started; log:\n{log}"));
        let started = time(second);
        let alive: Vec<&str> = log.lines().filter(|l| l.starts_with("alive")).collect();
        let late: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with("B ") && !l.starts_with("alive"))
            .filter(|l| time(l) > started)
            .collect();
        // /proc/uptime has a resolution of 10 ms: a tick in the same hundredth as B's
        // start is not later.
        assert!(
            alive.is_empty() && late.is_empty(),
            "B's command started at {started} while A's processes ran: alive then {alive:?}, \
             {} tick(s) after it (first {:?}, last {:?})\nA said: {}",
            late.len(),
            late.first(),
            late.last(),
            read(&self.dir.join("a.err"))
        );
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // A failed scenario (or `run` before the fix) can leave a worker running: kill
        // every recorded pid that is still one of our workers.
        let worker = self.worker();
        for pid in self.pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&worker) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if !std::thread::panicking() && std::env::var_os("KEEP_SCENE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A `leases run` in the background; killed if the scenario ends without waiting.
struct Running {
    child: Option<Child>,
    name: String,
    dir: PathBuf,
}

impl Running {
    /// Waits for the end (at most a minute); the exit code and stderr.
    fn finish(mut self) -> (i32, String) {
        let mut child = self.child.take().expect("not finished yet");
        let err = || read(&self.dir.join(format!("{}.err", self.name)));
        let status = wait_patiently(&mut child, || format!("{}: {}", self.name, err()));
        (status.code().unwrap_or(-1), err())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        kill_unfinished(self.child.take());
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn postgres() -> Vec<String> {
    vec!["--postgres".into(), shared_url()]
}

/// A lease service in this test process: the memory backend behind one `LeaseServer`.
fn server() -> Vec<String> {
    vec!["--server".into(), support::remote::background_server_url()]
}

/// The scenario of a revoke: A runs `command` (whose workers, `workers` of them, ignore
/// SIGTERM), an operator revokes the key, B waits for the key; A exits 79, B runs, and
/// never while a process of A's lives.
fn revoked(scene: &Scene, command: &[&str], workers: usize) {
    let a = scene.run("a", &[], command);
    scene.wait_for_workers(workers);
    scene.revoke();
    let b = scene.second();
    let (a_code, a_err) = a.finish();
    let (b_code, b_err) = b.finish();
    scene.check();
    assert_eq!(a_code, LOST, "A: {a_err}");
    assert!(a_err.contains("revoked"), "A: {a_err}");
    assert_eq!(b_code, 0, "B: {b_err}");
}

/// Defect 4: a command that ignores SIGTERM, revoked through `leases revoke`: the key
/// stays taken until the command is dead, which is before the key could be granted
/// anywhere (the grace of 10 s is capped).
#[test]
fn postgres_revoke_of_a_command_ignoring_sigterm() {
    let scene = Scene::new("pg-ignores-term", postgres());
    let worker = scene.worker();
    revoked(&scene, &["sh", &worker, "A"], 1);
}

/// Defect 5: `sh -c 'worker & wait'`, the worker ignoring SIGTERM: `sh` dies of the
/// SIGTERM, the worker does not; `run` holds the key until the worker is dead too.
#[test]
fn postgres_revoke_of_a_background_worker_ignoring_sigterm() {
    let scene = Scene::new("pg-background", postgres());
    revoked(&scene, &["sh", "-c", "sh \"$W\" A & wait"], 1);
}

/// A descendant that left the process group and was orphaned (`setsid` after a double
/// fork): not reached by a signal to the group, it is still the command's, found and
/// killed.
#[test]
fn postgres_revoke_of_a_setsid_double_forked_worker() {
    let scene = Scene::new("pg-setsid", postgres());
    revoked(
        &scene,
        &[
            "sh",
            "-c",
            "(setsid sh \"$W\" escaped &); sh \"$W\" A & wait",
        ],
        2,
    );
}

/// A command that exits at once but leaves a worker running: the lease is held (and
/// renewed, past the TTL) until the worker ends; `run` then exits with the command's
/// code, and only then may B run.
#[test]
fn postgres_processes_left_behind_keep_the_lease() {
    let scene = Scene::new("pg-left-behind", postgres());
    // 70 ticks: at least 7 s, longer than the TTL, so the lease must be renewed.
    let a = scene.run("a", &[], &["sh", "-c", "(setsid sh \"$W\" A 70 &); exit 3"]);
    scene.wait_for_workers(1);
    let b = scene.second();
    let (a_code, a_err) = a.finish();
    let (b_code, b_err) = b.finish();
    scene.check();
    assert_eq!(a_code, 3, "A: {a_err}");
    assert!(a_err.contains("holding the lease"), "A: {a_err}");
    assert_eq!(b_code, 0, "B: {b_err}");
    let ticks = read(&scene.dir.join("log"))
        .lines()
        .filter(|l| l.starts_with("A "))
        .count();
    assert_eq!(ticks, 70, "the worker ran to its end");
}

/// `kill -9` of `leases run` itself: its guardian kills the whole tree, the command's
/// group and a worker that left it, at once; the lease then expires, and B never runs
/// beside them.
#[test]
fn postgres_sigkill_of_leases_kills_the_whole_tree() {
    let scene = Scene::new("pg-sigkill", postgres());
    let a = scene.run(
        "a",
        &[],
        &[
            "sh",
            "-c",
            "(setsid sh \"$W\" escaped &); sh \"$W\" A & wait",
        ],
    );
    scene.wait_for_workers(2);
    // SIGKILL, and waited for.
    drop(a);
    let b = scene.second();
    let (code, err) = b.finish();
    scene.check();
    assert_eq!(code, 0, "B: {err}");
    for pid in scene.pids() {
        eventually(&format!("worker {pid} is dead"), || process_gone(pid));
    }
}

/// Defect 4 with a blackholed link to the database: renewal stops being confirmed; the
/// command (ignoring SIGTERM, grace 10 s) is dead before the store lets the key go, so
/// B, on a direct link, never runs beside it.
#[test]
fn postgres_blackholed_link_kills_before_the_key_can_be_granted() {
    let url = shared_url();
    // postgres://user@HOST:PORT/db
    let authority = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the shared URL")
        .to_string();
    blackholed("pg-blackhole", &authority, |port| {
        let via = url.replacen(&authority, &format!("127.0.0.1:{port}"), 1);
        vec!["--postgres".into(), via]
    });
}

/// Defect 4 with a blackholed link to a lease service: the client's deadline draws near
/// unconfirmed; the command is dead before the service lets the key go. Needs the
/// service to keep a silent client's lease until the time it promised has passed.
#[test]
fn server_blackholed_link_kills_before_the_key_can_be_granted() {
    let direct = server();
    let authority = direct[1]
        .strip_prefix("http://")
        .expect("an http URL")
        .to_string();
    blackholed("service-blackhole", &authority, |port| {
        vec!["--server".into(), format!("http://127.0.0.1:{port}")]
    });
}

/// The scenario of a blackholed link: A reaches the store (at `authority`, host:port)
/// through a fault proxy, its source arguments made by `through` from the proxy's port;
/// the link goes silent; B, on a direct link, waits for the key. A's command ignores
/// SIGTERM (grace 10 s).
fn blackholed(name: &str, authority: &str, through: impl FnOnce(u16) -> Vec<String>) {
    let target: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .expect("resolve the store")
        .next()
        .expect("an address");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let proxy = rt.block_on(FaultProxy::start(target));
    let mut scene = Scene::new(name, through(proxy.port()));
    let direct = scene.source.clone();
    let worker = scene.worker();
    let a = scene.run("a", &[], &["sh", &worker, "A"]);
    scene.wait_for_workers(1);
    proxy.set(Fault::Blackhole);
    scene.source = direct
        .iter()
        .map(|arg| arg.replace(&format!("127.0.0.1:{}", proxy.port()), authority))
        .collect();
    let b = scene.second();
    let (b_code, b_err) = b.finish();
    scene.check();
    assert_eq!(b_code, 0, "B: {b_err}");
    let (code, err) = a.finish();
    assert_eq!(code, LOST, "A: {err}");
    // Stopped before the lease's own end, when its deadline drew near unconfirmed, and
    // SIGKILLed in time, the grace of 10 s cut short.
    assert!(err.contains("no renewal"), "A: {err}");
    assert!(err.contains("SIGKILL"), "A: {err}");
    drop(proxy);
    drop(rt);
}

/// Defect 4 through a lease service: a revoke through the service, a command ignoring
/// SIGTERM. Needs the service to keep a remote lease that ended until its client's
/// release (or its promised time has passed).
#[test]
fn server_revoke_of_a_command_ignoring_sigterm() {
    let scene = Scene::new("service-ignores-term", server());
    let worker = scene.worker();
    revoked(&scene, &["sh", &worker, "A"], 1);
}
