//! `leases elect`: the leader runs the command, a lost term stops it and the candidate
//! campaigns again, starting it anew when elected again; the command's own exit ends
//! `leases` with its code; `--observe` prints one line per change of leader.

use std::time::Duration;

use crate::harness::{code, Cli, Running};
use crate::support::binary::eventually;

/// `leases elect KEY --identity ID -- sh -c 'echo ...; exec sleep 1000'` in the
/// background: the command prints its identity and token, then sleeps.
fn candidate(cli: &Cli, key: &str, identity: &str) -> Running {
    cli.start(&[
        "elect",
        key,
        "--identity",
        identity,
        "--ttl",
        "5s",
        "--",
        "sh",
        "-c",
        "echo \"$LEASES_IDENTITY $LEASES_TOKEN $LEASES_KEY\"; exec sleep 1000",
    ])
}

/// The identity and token a candidate's command printed, checking its key.
fn elected(c: &mut Running, key: &str) -> (String, u64) {
    let line = c.line();
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 3, "{line}");
    assert_eq!(parts[2], key, "{line}");
    (parts[0].to_string(), parts[1].parse().expect("a token"))
}

/// Two candidates and an observer: a revoked leader stops its command and campaigns
/// again; the other leads; when that one ends, the first leads again with a new
/// command and a larger token. The observer saw a, b, a.
pub fn candidates_take_turns(cli: &Cli) {
    let key = cli.key("elect", "leader");
    let mut a = candidate(cli, &key, "a");
    let (who, t1) = elected(&mut a, &key);
    assert_eq!(who, "a");
    // Started after the first candidate, which creates the PostgreSQL table that the
    // observer (read-only) does not.
    let mut observer = cli.start(&["elect", "--observe", &key, "--json", "--interval", "100ms"]);
    let first = observer.line();
    assert!(first.contains(&format!("\"token\":\"{t1}\"")), "{first}");
    let mut b = candidate(cli, &key, "b");
    // b waits while a leads.
    std::thread::sleep(Duration::from_millis(500));
    let info = cli.call(&["info", &key, "--json"]);
    assert_eq!(info.json()["metadata"], "a", "{info:?}");

    assert_eq!(cli.call(&["revoke", &key]).code, 0);
    let (who, t2) = elected(&mut b, &key);
    assert_eq!(who, "b");
    assert!(t2 > t1, "{t2} after {t1}");
    // b ends (its command is killed by the SIGTERM passed on): a leads again, with a
    // command started anew. (First a pause, for the observer to look.)
    std::thread::sleep(Duration::from_millis(500));
    b.signal(libc::SIGTERM);
    assert_eq!(b.finish().code, 128 + 15);
    let (who, t3) = elected(&mut a, &key);
    assert_eq!(who, "a");
    assert!(t3 > t2, "{t3} after {t2}");
    let t3_text = t3.to_string();
    eventually("the store shows a again", || {
        cli.call(&["info", &key, "--json"]).json()["token"] == t3_text.as_str()
    });
    std::thread::sleep(Duration::from_millis(500));
    a.signal(libc::SIGTERM);
    let a = a.finish();
    assert_eq!(a.code, 128 + 15, "{a:?}");
    assert!(a.stderr.contains("campaigning again"), "{a:?}");

    observer.signal(libc::SIGINT);
    let seen = observer.finish();
    assert_eq!(seen.code, 0, "{seen:?}");
    let mut leaders: Vec<(String, String)> = Vec::new();
    for line in seen.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(v["key"], key.as_str(), "{line}");
        if let (Some(id), Some(token)) = (v["identity"].as_str(), v["token"].as_str()) {
            leaders.push((id.to_string(), token.to_string()));
        }
    }
    leaders.dedup();
    let want: Vec<(String, String)> = [("a", t1), ("b", t2), ("a", t3)]
        .iter()
        .map(|(id, t)| (id.to_string(), t.to_string()))
        .collect();
    assert_eq!(leaders, want, "{seen:?}");
}

/// A command that exits on its own ends `leases elect` with its code, and the key is
/// given back.
pub fn command_exit_ends_the_election(cli: &Cli) {
    let key = cli.key("elect", "exits");
    let done = cli.call(&[
        "elect",
        &key,
        "--identity",
        "c",
        "--ttl",
        "5s",
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(done.code, 7, "{done:?}");
    assert_eq!(cli.call(&["info", &key]).code, code::NOT_HELD);
}

/// Usage errors (2), before anything is contacted.
#[test]
fn elect_usage_errors() {
    let cli = crate::logs_and_flags::nobody();
    let server = ["--server", "http://127.0.0.1:1"];
    for (args, says) in [
        (vec!["elect", "/system/e", "--", "true"], "--identity"),
        (vec!["elect", "/system/e", "--identity", "x"], "COMMAND"),
        (
            vec!["elect", "--observe", "/system/e", "--", "true"],
            "cannot be used",
        ),
        (
            vec![
                "elect",
                "/system/e",
                "--json",
                "--identity",
                "x",
                "--",
                "true",
            ],
            "--observe",
        ),
        (
            vec![
                "elect",
                "/system/e",
                "--identity",
                "x",
                "--ttl",
                "1s",
                "--",
                "true",
            ],
            "shorter than the minimum",
        ),
    ] {
        let mut all = server.to_vec();
        all.extend(args.iter().copied());
        let done = cli.call(&all);
        assert_eq!(done.code, code::USAGE, "{args:?}: {done:?}");
        assert!(done.stderr.contains(says), "{args:?}: {done:?}");
    }
}
