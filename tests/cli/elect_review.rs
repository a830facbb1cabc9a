//! `leases elect`: regressions from an adversarial review of its terms. A stop signal
//! that arrives while a lost term is being stopped ends the candidacy (128 + N) once the
//! tree is dead; a process the command left running is part of its term, and no new term
//! starts while it lives; Ctrl-Z between terms stops `leases` like any job, which then
//! campaigns on when continued. On the lease service over the memory backend.

use std::path::Path;
use std::time::Duration;

use crate::harness::{code, Cli, Running};
use crate::support::binary::{eventually, process_gone, process_state};
use crate::support::scratch::Scratch;

/// `leases elect KEY --identity ID --ttl 5s [extra] -- sh -c SCRIPT` in the background.
pub fn start_elect(cli: &Cli, key: &str, extra: &[&str], script: &str) -> Running {
    let mut args = vec!["elect", key, "--identity", "review", "--ttl", "5s"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    cli.start(&args)
}

/// A fresh directory for a scenario's files, removed when dropped.
pub fn scene(name: &str) -> Scratch {
    Scratch::dir("elect-review", name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Revokes `key`, and waits until the store has it back (its holder gave it back).
fn revoke_and_wait_given_back(cli: &Cli, key: &str) {
    let revoked = cli.call(&["revoke", key]);
    assert_eq!(revoked.code, 0, "{revoked:?}");
    eventually("the revoked term is given back", || {
        cli.call(&["info", key]).code == code::NOT_HELD
    });
}

/// Finding 1: SIGINT, SIGTERM or SIGHUP arriving while `elect` stops the command of a
/// lost term is not forgotten: once the tree is dead, `elect` exits 128 + N instead of
/// campaigning again.
#[test]
fn a_stop_signal_while_a_lost_term_is_stopped_ends_the_candidacy() {
    let cli = Cli::server();
    for (name, sig) in [
        ("int", libc::SIGINT),
        ("term", libc::SIGTERM),
        ("hup", libc::SIGHUP),
    ] {
        let key = cli.key("elect-stop-signal", name);
        // The command takes the SIGTERM of the lost term as its cue to report and ignore
        // it; the stop signal passed on afterwards ends it.
        let mut elect = start_elect(
            &cli,
            &key,
            &["--grace", "1h"],
            "trap 'echo stopping' TERM; echo $$; while :; do sleep 0.1; done",
        );
        let command: i32 = elect.line().parse().expect("the command's pid");
        assert_eq!(cli.call(&["revoke", &key]).code, 0);
        assert_eq!(elect.line(), "stopping");
        // `elect` is stopping the lost term's tree now (SIGKILL comes only near the
        // deadline, seconds away): a stop signal arrives.
        elect.signal(sig);
        let done = elect.finish();
        assert_eq!(done.code, 128 + sig, "{name}: {done:?}");
        assert!(process_gone(command), "{name}: the command outlived elect");
        assert!(
            !done.stderr.contains("campaigning again in"),
            "{name}: {done:?}"
        );
        let terms = done
            .stdout
            .lines()
            .filter(|l| l.parse::<i32>().is_ok())
            .count();
        assert_eq!(terms, 1, "{name}: a second term: {done:?}");
    }
}

/// The command of the first term: starts a worker in a session of its own that ignores
/// SIGTERM and ticks into the log (`tick TIME`, on the clock of `/proc/uptime`), then
/// exits 0. Every later term logs when it starts and which of the first term's workers
/// are alive at that instant, then sleeps.
const LEFTOVER: &str = r#"
if [ ! -e "$DIR/first" ]; then
    : > "$DIR/first"
    setsid sh -c 'trap "" TERM
        echo $$ >> "$DIR/pids"
        while :; do read t _ < /proc/uptime; echo "tick $t" >> "$DIR/log"; sleep 0.05; done' &
    echo first
    exit 0
fi
read t _ < /proc/uptime
echo "start $t" >> "$DIR/log"
for p in $(cat "$DIR/pids"); do
    st=$(cat "/proc/$p/stat" 2>/dev/null)
    st=${st##*) }
    st=${st%% *}
    if [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]; then echo "alive $p" >> "$DIR/log"; fi
done
echo second
exec sleep 1000
"#;

/// Finding 2: the command exits leaving a worker running; then the term is revoked. The
/// worker belongs to the term: it is killed before the key is given back, and the next
/// term starts only once it is dead (no tick of it after the next term's start).
#[test]
fn a_process_left_behind_ends_with_its_term() {
    let cli = Cli::server();
    let key = cli.key("elect-leftover", "k");
    let dir = scene("leftover");
    let dir_text = dir.display().to_string();
    let mut args = vec!["elect", &key, "--identity", "review", "--ttl", "5s"];
    args.extend_from_slice(&["--grace", "1s", "--", "sh", "-c", LEFTOVER]);
    let mut elect = cli.start_env(&args, &[("DIR", &dir_text)]);
    assert_eq!(elect.line(), "first");
    eventually("the worker ticks", || {
        read(&dir.join("log")).contains("tick")
    });
    let worker: i32 = read(&dir.join("pids")).trim().parse().expect("a pid");
    assert!(!process_gone(worker));
    // The command has exited; its worker runs on, and the term with it.
    std::thread::sleep(Duration::from_millis(500));
    let info = cli.call(&["info", &key, "--json"]);
    assert_eq!(info.json()["metadata"], "review", "{info:?}");

    assert_eq!(cli.call(&["revoke", &key]).code, 0);
    assert_eq!(elect.line(), "second");
    let log = read(&dir.join("log"));
    assert!(
        !log.contains("alive"),
        "the worker outlived its term:\n{log}"
    );
    let start: f64 = log
        .lines()
        .find_map(|l| l.strip_prefix("start "))
        .expect("the second term's start")
        .parse()
        .unwrap();
    let ticks: Vec<f64> = log
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .map(|t| t.parse().unwrap())
        .collect();
    assert!(
        ticks.iter().all(|&t| t <= start),
        "the worker ticked after the next term started:\n{log}"
    );
    assert!(process_gone(worker));
    elect.signal(libc::SIGTERM);
    let done = elect.finish();
    assert_eq!(done.code, 128 + libc::SIGTERM, "{done:?}");
}

/// Finding 5: Ctrl-Z between terms (in the pause after a lost term) stops `elect`, as a
/// job is stopped, instead of ending it (148); continued, it campaigns on and leads again.
#[test]
fn ctrl_z_between_terms_stops_and_continues() {
    let cli = Cli::server();
    let key = cli.key("elect-ctrl-z-between", "k");
    let mut elect = start_elect(&cli, &key, &[], "echo $LEASES_TOKEN; exec sleep 1000");
    let first: u64 = elect.line().parse().expect("a token");
    // Two short terms lost in a row: the pause after the second is 2 s.
    revoke_and_wait_given_back(&cli, &key);
    elect.wait_stderr("campaigning again in");
    let second: u64 = elect.line().parse().expect("a token");
    assert!(second > first);
    revoke_and_wait_given_back(&cli, &key);
    // The key is given back before `elect` has heard that its release reached the
    // server: wait until it says it pauses (a signal before that falls in the term).
    elect.wait_stderr("campaigning again in");
    // In the pause now (or, at worst, campaigning): Ctrl-Z.
    elect.signal(libc::SIGTSTP);
    eventually("elect stops or exits", || {
        matches!(process_state(elect.pid()), 'T' | 'Z' | '?')
    });
    assert_eq!(
        process_state(elect.pid()),
        'T',
        "elect exited instead of stopping"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        process_state(elect.pid()),
        'T',
        "elect did not stay stopped"
    );
    elect.signal(libc::SIGCONT);
    let third: u64 = elect.line().parse().expect("a token: elect leads again");
    assert!(third > second);
    elect.signal(libc::SIGTERM);
    let done = elect.finish();
    assert_eq!(done.code, 128 + libc::SIGTERM, "{done:?}");
}
