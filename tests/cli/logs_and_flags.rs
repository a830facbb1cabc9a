//! What an operator meets first: logs on stderr (`RUST_LOG`, `--log-format`), `serve`'s
//! flags apart from the clients' (its own token file, its own `--help`), and token
//! files that are refused when empty. Each `leases serve` here is a process of its own.

use crate::harness::{closed_port, code, Cli, Done, Running};
use crate::support::pg::run_id;
use crate::support::scratch::Scratch;

/// No source: the arguments of each call say everything.
pub fn nobody() -> Cli {
    Cli {
        source: vec![],
        label: "operator",
    }
}

/// A file in the temporary directory holding `contents`, named for this test process,
/// removed when dropped.
pub fn temp_file(name: &str, contents: &str) -> Scratch {
    Scratch::file("cli", name, contents)
}

/// A `leases serve` of our own, stopped (SIGTERM) by [`Serve::stop`] or killed when
/// dropped.
pub struct Serve {
    run: Running,
    /// `http://ADDR`, from the line it prints once it listens.
    pub url: String,
}

impl Serve {
    /// `leases [global] serve [args]` with these environment variables (on a free port of
    /// 127.0.0.1 unless `args` has `--bind`); returns once it listens.
    pub fn start(global: &[&str], args: &[&str], env: &[(&str, &str)]) -> Serve {
        // Any free port on loopback unless the test binds elsewhere.
        let bind: &[&str] = if args.contains(&"--bind") {
            &[]
        } else {
            &["--bind", "127.0.0.1:0"]
        };
        let all: Vec<&str> = global
            .iter()
            .chain(["serve"].iter())
            .chain(bind)
            .chain(args)
            .copied()
            .collect();
        let mut run = nobody().start_env(&all, env);
        let line = run.line();
        let addr = line
            .strip_prefix("leases serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Serve {
            url: format!("http://{addr}"),
            run,
        }
    }

    /// SIGKILL: the server dies without a word to its clients.
    pub fn kill(self) {
        self.run.signal(libc::SIGKILL);
        drop(self.run);
    }

    /// SIGTERM, and what it printed until it stopped.
    pub fn stop(self) -> Done {
        self.run.signal(libc::SIGTERM);
        let done = self.run.finish();
        assert_eq!(done.code, 0, "a graceful stop: {done:?}");
        done
    }
}

const NON_LOOPBACK: &str = "non-loopback address without authentication";

/// The library's warning for a service open to the network without a token reaches
/// stderr by default; `RUST_LOG=off` silences it.
#[test]
fn serve_logs_the_non_loopback_warning() {
    let bind = ["--bind", "0.0.0.0:0"];
    let logged = Serve::start(&[], &bind, &[]).stop();
    assert!(logged.stderr.contains(NON_LOOPBACK), "{logged:?}");
    assert!(logged.stderr.contains("WARN"), "{logged:?}");
    let off = Serve::start(&[], &bind, &[("RUST_LOG", "off")]).stop();
    assert!(!off.stderr.contains(NON_LOOPBACK), "{off:?}");
    // RUST_LOG chooses what is logged: `error` leaves the warning out too.
    let errors_only = Serve::start(&[], &bind, &[("RUST_LOG", "error")]).stop();
    assert!(
        !errors_only.stderr.contains(NON_LOOPBACK),
        "{errors_only:?}"
    );
}

/// A server on the memory backend says, where its operator meets it, that no other
/// server can share its leases; on PostgreSQL it does not.
#[test]
fn serve_on_memory_says_its_leases_are_its_own() {
    const ALONE: &str = "no other server can share them";
    let memory = Serve::start(&[], &[], &[]).stop();
    assert!(memory.stderr.contains(ALONE), "{memory:?}");
    let url = crate::support::pg::shared_url();
    let shared = Serve::start(&[], &["--postgres", &url], &[]).stop();
    assert!(!shared.stderr.contains(ALONE), "{shared:?}");
}

/// The client commands log the library's warnings too (here: an acquire that failed on
/// an unreachable database), at `warn` unless `RUST_LOG` says otherwise.
#[test]
fn clients_log_warnings() {
    let cli = Cli::postgres(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        closed_port()
    ));
    let args = ["run", "/system/cli/logs/k", "--ttl", "5s", "--", "true"];
    let logged = cli.call(&args);
    assert_eq!(logged.code, code::BACKEND, "{logged:?}");
    assert!(
        logged.stderr.contains("WARN") && logged.stderr.contains("lease acquire failed"),
        "{logged:?}"
    );
    let json = cli.call(&[&["--log-format", "json"][..], &args].concat());
    let warning = json
        .stderr
        .lines()
        .find(|l| l.contains("lease acquire failed"))
        .unwrap_or_else(|| panic!("no warning: {json:?}"));
    let warning: serde_json::Value = serde_json::from_str(warning).expect("a JSON line");
    assert_eq!(warning["level"], "WARN", "{json:?}");
    let off = cli.call_env(&args, &[("RUST_LOG", "off")]);
    assert_eq!(off.code, code::BACKEND, "{off:?}");
    assert!(!off.stderr.contains("lease acquire failed"), "{off:?}");
    // The command's own message is not a log line: it stays.
    assert!(off.stderr.starts_with("leases: "), "{off:?}");
}

/// `--log-format json`: every line on stderr is one JSON object, the warning among them
/// with its level.
#[test]
fn serve_logs_json_lines() {
    let done = Serve::start(&["--log-format", "json"], &["--bind", "0.0.0.0:0"], &[]).stop();
    let lines: Vec<serde_json::Value> = done
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert!(
        lines.iter().any(|v| v["level"] == "WARN"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(NON_LOOPBACK))),
        "{done:?}"
    );
    // After the command, too.
    let after = Serve::start(&[], &["--bind", "127.0.0.1:0", "--log-format", "json"], &[]).stop();
    for line in after.stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
    }
}

/// Unset, `RUST_LOG` leaves out the line each acquired lease would add to a server's
/// log (a server acquires all day); `RUST_LOG=info` shows it.
#[test]
fn serve_logs_no_line_per_acquire_unless_asked() {
    for (env, expected) in [(vec![], false), (vec![("RUST_LOG", "info")], true)] {
        let serve = Serve::start(&[], &[], &env);
        let held = nobody().call(&[
            "run",
            "/system/logs/acquire",
            "--ttl",
            "5s",
            "--server",
            &serve.url,
            "--",
            "true",
        ]);
        assert_eq!(held.code, 0, "{held:?}");
        let done = serve.stop();
        assert_eq!(
            done.stderr.contains("lease acquired"),
            expected,
            "RUST_LOG {env:?}: {done:?}"
        );
    }
}

/// Serve reads only `LEASES_SERVE_TOKEN_FILE`, and a client does not read that one. A
/// client's `LEASES_TOKEN_FILE` in a server's environment (which once turned on
/// authentication there) makes serve refuse to start rather than serve unauthenticated.
#[test]
fn serve_and_clients_read_their_own_token_files() {
    let token = temp_file("token", "s3cret\n");
    let token = token.to_str().unwrap();
    // The client's variable, set where a server runs: refused, naming serve's own.
    let refused = nobody().call_env(
        &["serve", "--bind", "127.0.0.1:0"],
        &[("LEASES_TOKEN_FILE", token)],
    );
    assert_eq!(refused.code, code::USAGE, "{refused:?}");
    assert!(
        refused.stderr.contains("LEASES_SERVE_TOKEN_FILE"),
        "{refused:?}"
    );
    // The server's own variable: authentication.
    let closed = Serve::start(&[], &[], &[("LEASES_SERVE_TOKEN_FILE", token)]);
    let without = nobody().call_env(
        &["list", "--server", &closed.url],
        &[("LEASES_SERVE_TOKEN_FILE", token)],
    );
    assert_eq!(without.code, code::AUTH, "{without:?}");
    let with = nobody().call_env(
        &["list", "--server", &closed.url],
        &[("LEASES_TOKEN_FILE", token)],
    );
    assert_eq!(with.code, 0, "{with:?}");
    closed.stop();
}

/// `serve --help` lists serve's flags only, in sections; the clients' help lists theirs
/// only. The clients' flags are refused by serve, before or after `serve`.
#[test]
fn serve_and_clients_take_their_own_flags() {
    let help = nobody().call(&["serve", "--help"]);
    assert_eq!(help.code, 0, "{help:?}");
    for flag in ["--server", "--ca-file", "[env: LEASES_TOKEN_FILE"] {
        assert!(
            !help.stdout.contains(flag),
            "serve --help lists {flag}: {help:?}"
        );
    }
    for shown in [
        "--token-file",
        "LEASES_SERVE_TOKEN_FILE",
        "--tls-cert",
        "Authentication and TLS:",
        "Store (default: memory):",
        "Logging:",
    ] {
        assert!(help.stdout.contains(shown), "no {shown}: {help:?}");
    }
    for command in ["run", "list", "info", "revoke"] {
        let help = nobody().call(&[command, "--help"]);
        assert!(help.stdout.contains("Where leases live:"), "{help:?}");
        assert!(help.stdout.contains("--server"), "{help:?}");
        for flag in ["--bind", "--tls-cert", "LEASES_SERVE_TOKEN_FILE"] {
            assert!(
                !help.stdout.contains(flag),
                "{command} lists {flag}: {help:?}"
            );
        }
    }
    let url = format!("http://127.0.0.1:{}", closed_port());
    for args in [
        vec!["--server", url.as_str(), "serve", "--bind", "127.0.0.1:0"],
        vec![
            "--ca-file",
            "/nonexistent",
            "serve",
            "--bind",
            "127.0.0.1:0",
        ],
        vec!["serve", "--bind", "127.0.0.1:0", "--server", url.as_str()],
    ] {
        let done = nobody().call(&args);
        assert_eq!(done.code, code::USAGE, "{args:?}: {done:?}");
    }
    let token = nobody().call(&["--token-file", "/x", "serve", "--bind", "127.0.0.1:0"]);
    assert_eq!(token.code, code::USAGE, "{token:?}");
    assert!(
        token.stderr.contains("LEASES_SERVE_TOKEN_FILE"),
        "{token:?}"
    );
}

/// An empty token file, or one of whitespace only, is refused at start (exit 2, saying
/// so) by serve and by the clients, before anything is contacted.
#[test]
fn empty_token_files_are_refused() {
    for (name, contents) in [("empty", ""), ("blank", " \n\t\n")] {
        let path = temp_file(name, contents);
        let path = path.to_str().unwrap();
        let serve = nobody().call(&["serve", "--bind", "127.0.0.1:0", "--token-file", path]);
        assert_eq!(serve.code, code::USAGE, "{serve:?}");
        assert!(serve.stderr.contains("is empty"), "{serve:?}");
        let url = format!("http://127.0.0.1:{}", closed_port());
        let client = nobody().call(&["list", "--server", &url, "--token-file", path]);
        assert_eq!(client.code, code::USAGE, "{client:?}");
        assert!(client.stderr.contains("is empty"), "{client:?}");
    }
}

/// One HTTP/1.1 request (`Connection: close`) to `addr`: the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the HTTP port answers");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

/// `--http-bind` serves the HTTP API (and, with `--console`, the console) on a port of
/// its own, printed on the second line, beside the one on `--bind`: both reach the same
/// leases. `--max-http-leases-per-client` reaches the server.
#[test]
fn serve_http_bind_serves_the_api_on_its_own_port() {
    let args = [
        "--http-bind",
        "127.0.0.1:0",
        "--console",
        "--max-http-leases-per-client",
        "1",
    ];
    let mut serve = Serve::start(&[], &args, &[]);
    let line = serve.run.line();
    let own = line
        .strip_prefix("leases serve: HTTP API on ")
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
        .to_string();
    let shared = serve.url.trim_start_matches("http://").to_string();
    assert_ne!(own, shared);
    let key = format!("/system/cli/{}/http-bind/a", run_id());
    let acquire = format!(r#"{{"key": "{key}", "ttl_ms": 5000}}"#);
    let (status, body) = http(&own, "POST", "/v1/acquire", &acquire);
    assert_eq!(status, 200, "{body}");
    let granted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = granted["token"].as_str().unwrap().to_string();
    // The same lease seen through the other port.
    let (status, body) = http(&shared, "GET", &format!("/v1/info?key={key}"), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&token), "{body}");
    // The limit of one lease per client holds across both ports.
    let other = format!(r#"{{"key": "{key}-b", "ttl_ms": 5000}}"#);
    let (status, body) = http(&shared, "POST", "/v1/acquire", &other);
    assert_eq!(status, 429, "{body}");
    let release = format!(r#"{{"key": "{key}", "token": "{token}"}}"#);
    let (status, body) = http(&own, "POST", "/v1/release", &release);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(&shared, "POST", "/v1/acquire", &other);
    assert_eq!(status, 200, "{body}");
    let (status, page) = http(&own, "GET", "/console", "");
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    serve.stop();
}
