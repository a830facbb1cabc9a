//! Errors and exit codes: usage errors before anything is contacted, an unreachable
//! source (69), how the source is named, and the help that documents the codes.

use crate::harness::{closed_port, code, Cli};

/// Bad input is a usage error (2) before anything is contacted.
pub fn usage_errors(cli: &Cli) {
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

/// A database that cannot be reached: 69 from every command, and the command never runs.
/// PostgreSQL only.
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
    let run = cli.call_sh(&key, &[], "echo ran");
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
    for command in ["serve", "run", "elect", "list", "info", "revoke"] {
        let help = no_source.call(&[command, "--help"]);
        assert_eq!(help.code, 0, "{help:?}");
        assert!(help.stdout.contains("Examples:"), "{command}: {help:?}");
    }
}
