//! `leases list` and `leases info`: tables and JSON, parsed back.

use serde_json::Value;

use crate::harness::{code, Cli};

/// `list` and `info` as tables and as JSON, parsed back.
pub fn list_and_info(cli: &Cli) {
    let prefix = cli.prefix("list");
    let a = format!("{prefix}a");
    // '_' and '%' in a key: the prefix matches them as themselves.
    let b = format!("{prefix}b_%25");
    let mut holders = Vec::new();
    let mut tokens = Vec::new();
    for (key, meta) in [(&a, "holder of a"), (&b, "holder of b")] {
        let (run, token) = cli.hold(key, &["--metadata", meta]);
        tokens.push(token);
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
        // A decimal string (proto3's JSON mapping of 64-bit integers): exact for every
        // consumer, even past 2^53, where the memory backend's tokens are.
        assert_eq!(lease["token"], token.to_string(), "{lease}");
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
    assert!(one.stderr.contains("stopped at --limit 1"), "{one:?}");
    // `--limit 0` is no limit, on every source.
    let all = cli.call(&["list", &prefix, "--json", "--limit", "0"]);
    assert_eq!(all.json().as_array().map(Vec::len), Some(2), "{all:?}");
    assert!(!all.stderr.contains("stopped at"), "{all:?}");
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

/// A `list` prefix that no key could start with is a usage error (2), before anything
/// is contacted; a key with nothing after its root (`/module/NAME`, `/system`) is a key
/// like any other.
pub fn prefixes_and_bare_keys(cli: &Cli) {
    for prefix in [
        "/jobs/",
        "system/",
        "/systemd",
        "/module/a b",
        "/system/%2f",
        "/system/%G",
    ] {
        let done = cli.call(&["list", prefix]);
        assert_eq!(done.code, code::USAGE, "{prefix}: {done:?}");
        assert!(
            done.stderr.contains("no key can start with"),
            "{prefix}: {done:?}"
        );
    }
    for prefix in [
        "",
        "/",
        "/sys",
        "/system",
        "/module/",
        "/system/a%2",
        "/system/a%2F",
    ] {
        let done = cli.call(&["list", prefix, "--json"]);
        assert_eq!(done.code, 0, "{prefix:?}: {done:?}");
    }
    // A module name alone is a whole key: held, listed and shown like any other.
    let bare = format!(
        "/module/cli-bare-{}-{}",
        crate::support::pg::run_id(),
        cli.label
    );
    let mut run = cli.start_sh(&bare, &[], "echo $LEASES_KEY; exec sleep 1000");
    assert_eq!(run.line(), bare);
    let listed = cli.call(&["list", &bare, "--json"]);
    assert_eq!(listed.json()[0]["key"], bare.as_str(), "{listed:?}");
    let info = cli.call(&["info", &bare, "--json"]);
    assert_eq!(info.code, 0, "{info:?}");
    run.signal(libc::SIGTERM);
    assert_eq!(run.finish().code, 128 + 15);
}

/// A JSON lease without its time left (which moves between two calls).
fn without_time_left(lease: &Value) -> Value {
    let mut lease = lease.clone();
    if let Some(fields) = lease.as_object_mut() {
        assert!(fields.remove("expires_in_ms").is_some(), "{fields:?}");
    }
    lease
}
