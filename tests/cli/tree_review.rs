//! Stopping a command's whole tree, for `leases run` and `leases elect` alike: regressions
//! from an adversarial review. A tree stopped by Ctrl-Z whose kill time passes meanwhile
//! is killed as it is, never continued; Ctrl-Z stops every process of the tree, also one
//! forked into a new session while the tree was being looked at; SIGKILL reaches the
//! whole tree at once, so that none of it acts after the kill. On the lease service over
//! the memory backend; nothing depends on speed, every wait has a deadline of a minute.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::{code, Cli, Running};
use crate::support::binary::{eventually, process_state, PATIENCE};
use crate::support::pg::run_id;

/// Which command keeps the lease.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Run,
    Elect,
}

/// Every script starts with this: a later term of `elect` (after a lost one) only says
/// so and sleeps, to be ended by SIGTERM.
const LATER_TERMS: &str = r#"if [ -e "$D/first" ]; then echo second; exec sleep 1000; fi
: > "$D/first"
"#;

/// A scenario's directory, `$D` for its scripts; on drop (also when a test fails) every
/// process started with this scene's mark in its environment is killed, stopped or not.
struct Scene {
    dir: PathBuf,
    mark: String,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let dir = std::env::temp_dir().join(format!("leases-tree-review-{}-{name}", run_id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("go"), "").unwrap();
        let mark = format!("LEASES_TEST_SCENE={}", dir.display());
        Scene { dir, mark }
    }

    fn size(&self, name: &str) -> u64 {
        std::fs::metadata(self.dir.join(name)).map_or(0, |m| m.len())
    }

    /// Starts `leases run` or `leases elect` on `key` with `sh -c SCRIPT`; `extra`
    /// holds `--ttl`.
    fn start(&self, cli: &Cli, kind: Kind, key: &str, extra: &[&str], script: &str) -> Running {
        let mut args = match kind {
            Kind::Run => vec!["run", key],
            Kind::Elect => vec!["elect", key, "--identity", "tree-review"],
        };
        args.extend_from_slice(extra);
        let script = format!("{LATER_TERMS}{script}");
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        let dir = self.dir.display().to_string();
        cli.start_env(&args, &[("D", &dir), ("LEASES_TEST_SCENE", &dir)])
    }

    /// The pids of the processes carrying this scene's mark.
    fn marked(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|&b| b == 0)
                        .any(|var| var == self.mark.as_bytes())
                })
            })
            .collect()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("go"));
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.marked();
            if left.is_empty() || Instant::now() > until {
                break;
            }
            for pid in left {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// After a lost term: `run` exits 79; `elect` campaigns again, and its next term (see
/// [`LATER_TERMS`]) is ended by SIGTERM (143).
fn end_after_loss(kind: Kind, mut leases: Running) {
    if let Kind::Elect = kind {
        while leases.line() != "second" {}
        leases.signal(libc::SIGTERM);
    }
    let done = leases.finish();
    let want = match kind {
        Kind::Run => code::LOST,
        Kind::Elect => 128 + libc::SIGTERM,
    };
    assert_eq!(done.code, want, "{kind:?}: {done:?}");
}

/// Waits until the `leases` process is stopped; fails at once if it exited instead.
fn stopped(leases: &Running) {
    eventually("leases stops or exits", || {
        matches!(process_state(leases.pid()), 'T' | 'Z' | '?')
    });
    assert_eq!(process_state(leases.pid()), 'T', "leases exited");
}

/// Four processes that, on SIGTERM, write to `$D/spin` as fast as they can for ever.
const SPINNERS: &str = r#"spin() {
    trap 'while :; do echo x; done >> "$D/spin"' TERM
    while :; do sleep 0.1; done
}
spin & spin & spin &
echo ready
spin
"#;

/// Finding 3: the lease is revoked, the command (SIGTERM: it spins) is stopped by Ctrl-Z
/// while `leases` stops it, and continued only after its kill time has passed. It must
/// be killed as it is, stopped: continued, it would act after the kill time.
fn continued_past_the_kill_time(kind: Kind) {
    let cli = Cli::server();
    let scene = Scene::new(&format!("past-kill-{kind:?}"));
    let key = cli.key("tree-review-past-kill", &format!("{kind:?}"));
    let mut leases = scene.start(
        &cli,
        kind,
        &key,
        &["--ttl", "5s", "--grace", "1h"],
        SPINNERS,
    );
    assert_eq!(leases.line(), "ready");
    let revoked = Instant::now();
    assert_eq!(cli.call(&["revoke", &key]).code, 0);
    eventually("the command spins on SIGTERM", || scene.size("spin") > 0);
    leases.signal(libc::SIGTSTP);
    stopped(&leases);
    let frozen = scene.size("spin");
    // The kill time is at the latest the deadline (4 s after the last confirmed renewal,
    // before the revoke) minus the kill margin.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(revoked.elapsed()));
    assert_eq!(
        scene.size("spin"),
        frozen,
        "the tree ran while leases was stopped"
    );
    leases.signal(libc::SIGCONT);
    end_after_loss(kind, leases);
    assert_eq!(
        scene.size("spin"),
        frozen,
        "the tree ran again after its kill time"
    );
}

#[test]
fn run_continued_past_the_kill_time_kills_the_stopped_tree() {
    continued_past_the_kill_time(Kind::Run);
}

#[test]
fn elect_continued_past_the_kill_time_kills_the_stopped_tree() {
    continued_past_the_kill_time(Kind::Elect);
}

/// The command forks, as fast as it can, processes that leave for a session of their
/// own, each logging to `$D/log` at its start and 0.2 s later. Until `$D/go` is removed.
const SPAWNER: &str = r#"echo ready
while [ -e "$D/go" ]; do
    setsid sh -c 'echo start >> "$D/log"; sleep 0.2; echo end >> "$D/log"' &
done
"#;

/// Findings 3 and 4: Ctrl-Z stops every process of the tree before `leases` stops
/// itself, also the ones forked into new sessions while the tree was being looked at:
/// while `leases` is stopped, nothing of the tree runs. Five times, continued between.
fn ctrl_z_freezes_the_whole_tree(kind: Kind) {
    let cli = Cli::server();
    let scene = Scene::new(&format!("freeze-{kind:?}"));
    let key = cli.key("tree-review-freeze", &format!("{kind:?}"));
    // A TTL that the load of the spawner cannot make `leases` miss a renewal by.
    let mut leases = scene.start(&cli, kind, &key, &["--ttl", "30s"], SPAWNER);
    assert_eq!(leases.line(), "ready");
    eventually("the tree logs", || scene.size("log") > 0);
    for round in 0..5 {
        leases.signal(libc::SIGTSTP);
        stopped(&leases);
        let before = scene.size("log");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            scene.size("log"),
            before,
            "round {round}: a process of the tree ran while leases was stopped"
        );
        leases.signal(libc::SIGCONT);
        eventually("the tree is continued", || scene.size("log") > before);
    }
    std::fs::remove_file(scene.dir.join("go")).unwrap();
    let done = leases.finish();
    assert_eq!(done.code, 0, "{done:?}");
}

#[test]
fn run_ctrl_z_freezes_the_whole_tree() {
    ctrl_z_freezes_the_whole_tree(Kind::Run);
}

#[test]
fn elect_ctrl_z_freezes_the_whole_tree() {
    ctrl_z_freezes_the_whole_tree(Kind::Elect);
}

/// Forks, as fast as it can, short-lived subshells that look at the witness (a process
/// of the command's group, `$D/witness`) and write to `$D/saw` once it is dying: SIGKILL
/// pending, exiting, a zombie, or gone.
const WATCHERS: &str = r#"W=$(cat "$D/witness")
dying() {
    [ -r "/proc/$W/status" ] || return 0
    while read -r k v rest; do
        case $k in
            State:) case $v in Z|X) return 0;; esac ;;
            SigPnd:|ShdPnd:) [ $(( 0x$v & 256 )) -ne 0 ] && return 0 ;;
        esac
    done < "/proc/$W/status"
    return 1
}
while [ -e "$D/go" ]; do
    (
        i=0
        while [ $i -lt 200 ]; do
            if dying 2>/dev/null; then echo saw >> "$D/saw"; exit 0; fi
            i=$((i+1))
        done
    ) &
done
"#;

/// The command, which ignores SIGTERM: the witness, 300 idle processes (signalled
/// before the watchers' forker, whose pid is larger), and the watchers in a session of
/// their own.
const WITNESSED: &str = r#"trap '' TERM
sleep 1000 & echo $! > "$D/witness"
i=0; while [ $i -lt 300 ]; do sleep 1000 & i=$((i+1)); done
setsid sh "$D/watchers.sh" &
echo ready
while :; do sleep 0.1; done
"#;

/// Whether SIGKILL was sent to `pid` (pending, or already acted on).
fn sigkill_sent(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status.lines().any(|line| {
        let mask = line
            .strip_prefix("SigPnd:")
            .or_else(|| line.strip_prefix("ShdPnd:"));
        let state = line.strip_prefix("State:").map(str::trim);
        mask.is_some_and(|m| u64::from_str_radix(m.trim(), 16).is_ok_and(|m| m & 0x100 != 0))
            || state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}

/// Finding 4: SIGKILL reaches the whole tree at once. The witness gets the first
/// SIGKILL; right then `leases` is held up (SIGSTOP from this test, as a busy machine
/// may hold it up anywhere) before it can look again. A process of the tree that is not
/// dying by then (one forked while the tree was being looked at, which a single scan
/// misses) runs on and sees the witness dying. None may.
fn sigkill_reaches_the_whole_tree_at_once(kind: Kind) {
    let cli = Cli::server();
    let scene = Scene::new(&format!("kill-{kind:?}"));
    std::fs::write(scene.dir.join("watchers.sh"), WATCHERS).unwrap();
    let key = cli.key("tree-review-kill", &format!("{kind:?}"));
    let mut leases = scene.start(
        &cli,
        kind,
        &key,
        &["--ttl", "5s", "--grace", "1s"],
        WITNESSED,
    );
    assert_eq!(leases.line(), "ready");
    let witness: i32 = std::fs::read_to_string(scene.dir.join("witness"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cli.call(&["revoke", &key]).code, 0);
    let until = Instant::now() + PATIENCE;
    while !sigkill_sent(witness) {
        assert!(Instant::now() < until, "the witness got no SIGKILL");
        std::thread::sleep(Duration::from_micros(100));
    }
    leases.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(500));
    leases.signal(libc::SIGCONT);
    end_after_loss(kind, leases);
    let saw = std::fs::read_to_string(scene.dir.join("saw")).unwrap_or_default();
    assert_eq!(
        saw.lines().count(),
        0,
        "processes of the tree ran after the first SIGKILL"
    );
}

#[test]
fn run_sigkill_reaches_the_whole_tree_at_once() {
    sigkill_reaches_the_whole_tree_at_once(Kind::Run);
}

#[test]
fn elect_sigkill_reaches_the_whole_tree_at_once() {
    sigkill_reaches_the_whole_tree_at_once(Kind::Elect);
}
