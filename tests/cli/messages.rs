//! Messages that say what to do: a refused token (its own exit code, 77), a source that is
//! missing or unreachable and why (refused, DNS, TLS against plain and plain against
//! TLS, a URL without a scheme), TTLs out of the library's bounds or under a server's
//! minimum, and durations written as users write them.

use crate::harness::{closed_port, code, Cli};
use crate::logs_and_flags::{nobody, temp_file, Serve};

/// A refused token is exit 77, not 69 (which wrappers retry), whichever command meets
/// it, and the message names the flag and the variable to fix.
#[test]
fn refused_token_has_its_own_exit_code() {
    let token = temp_file("serve-token", "right\n");
    let wrong = temp_file("wrong-token", "wrong\n");
    let server = Serve::start(&[], &["--token-file", token.to_str().unwrap()], &[]);
    let cli = Cli {
        source: vec!["--server".into(), server.url.clone()],
        label: "auth",
    };
    let key = cli.key("auth", "k");
    for extra in [vec![], vec!["--token-file", wrong.to_str().unwrap()]] {
        fn with<'a>(args: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [extra, args].concat()
        }
        let run = cli.call(&with(
            &["run", &key, "--ttl", "5s", "--", "echo", "ran"],
            &extra,
        ));
        assert_eq!(run.code, code::AUTH, "{run:?}");
        assert_eq!(run.stdout, "", "the command must not run: {run:?}");
        assert!(
            run.stderr.contains("--token-file") && run.stderr.contains("LEASES_TOKEN_FILE"),
            "{run:?}"
        );
        for args in [
            vec!["list"],
            vec!["info", key.as_str()],
            vec!["revoke", &key],
        ] {
            let done = cli.call(&with(&args, &extra));
            assert_eq!(done.code, code::AUTH, "{args:?}: {done:?}");
        }
    }
    let help = nobody().call(&["--help"]);
    assert!(
        help.stdout.contains("77") && help.stdout.contains("refused the token"),
        "{help:?}"
    );
    let right = cli.call(&["list", "--token-file", token.to_str().unwrap()]);
    assert_eq!(right.code, 0, "{right:?}");
    server.stop();
}

/// No source at all: the message names every way to give one, the service included.
#[test]
fn no_source_names_the_server_too() {
    let none = nobody().call(&["list"]);
    assert_eq!(none.code, code::USAGE, "{none:?}");
    for named in ["--server", "LEASES_SERVER", "--postgres", "--etcd"] {
        assert!(none.stderr.contains(named), "no {named}: {none:?}");
    }
}

/// A URL without `http://` or `https://` is refused before anything is contacted.
#[test]
fn a_server_url_needs_a_scheme() {
    let port = closed_port();
    for url in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let done = nobody().call(&["list", "--server", &url]);
        assert_eq!(done.code, code::USAGE, "{url}: {done:?}");
        assert!(
            done.stderr.contains("add http://") && done.stderr.contains("https://"),
            "{url}: {done:?}"
        );
    }
}

/// A service that cannot be reached: the message says why.
#[test]
fn transport_errors_say_which() {
    let refused = nobody().call(&[
        "list",
        "--server",
        &format!("http://127.0.0.1:{}", closed_port()),
    ]);
    assert_eq!(refused.code, code::BACKEND, "{refused:?}");
    assert!(refused.stderr.contains("connection refused"), "{refused:?}");
    // `.invalid` never resolves (RFC 2606).
    let dns = nobody().call(&["list", "--server", "http://no-such-host.invalid:8895"]);
    assert_eq!(dns.code, code::BACKEND, "{dns:?}");
    assert!(dns.stderr.contains("DNS"), "{dns:?}");
    let plain = Serve::start(&[], &[], &[]);
    let tls_to_plain = nobody().call(&[
        "list",
        "--server",
        &plain.url.replace("http://", "https://"),
    ]);
    assert_eq!(tls_to_plain.code, code::BACKEND, "{tls_to_plain:?}");
    assert!(
        tls_to_plain.stderr.contains("does not speak TLS")
            && tls_to_plain.stderr.contains("http://"),
        "{tls_to_plain:?}"
    );
    plain.stop();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let crt = temp_file("server.crt", &cert.cert.pem());
    let key = temp_file("server.key", &cert.signing_key.serialize_pem());
    let tls = Serve::start(
        &[],
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let plain_to_tls = nobody().call(&["list", "--server", &tls.url]);
    assert_eq!(plain_to_tls.code, code::BACKEND, "{plain_to_tls:?}");
    assert!(
        plain_to_tls.stderr.contains("speaks TLS, not plain HTTP/2")
            && plain_to_tls.stderr.contains("use https://"),
        "{plain_to_tls:?}"
    );
    tls.stop();
}

/// A TTL out of the library's bounds is a usage error before anything is contacted, said
/// in the units it was written in (`0s`, `25h`, not `0ns`, `90000s`).
#[test]
fn ttl_bounds_are_checked_before_connecting() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    for (ttl, says) in [
        ("0s", "--ttl 0s is shorter than the minimum 5s"),
        ("4500ms", "--ttl 4.5s is shorter than the minimum 5s"),
        ("25h", "--ttl 25h is longer than the maximum 24h"),
    ] {
        let done = nobody().call(&[
            "run",
            "/system/x",
            "--ttl",
            ttl,
            "--server",
            &url,
            "--",
            "echo",
            "ran",
        ]);
        assert_eq!(done.code, code::USAGE, "{ttl}: {done:?}");
        assert!(done.stderr.contains(says), "{ttl}: {done:?}");
        assert_eq!(done.stdout, "", "{done:?}");
    }
}

/// A TTL under the server's own minimum (`serve --min-ttl`) says it is the server's.
#[test]
fn ttl_under_the_servers_minimum_says_so() {
    let server = Serve::start(&[], &["--min-ttl", "1m30s", "--default-ttl", "2m"], &[]);
    let done = nobody().call(&[
        "run",
        "/system/cli/server-min",
        "--ttl",
        "1m",
        "--server",
        &server.url,
        "--",
        "echo",
        "ran",
    ]);
    assert_eq!(done.code, code::USAGE, "{done:?}");
    assert_eq!(done.stdout, "", "{done:?}");
    assert!(
        done.stderr.contains(
            "the lease service refused --ttl 1m: its minimum TTL (serve --min-ttl) is 1m30s"
        ),
        "{done:?}"
    );
    server.stop();
}
