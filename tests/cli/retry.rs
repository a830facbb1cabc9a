//! `run --wait forever`, and `--retry`: keep trying while the lease service cannot be
//! reached, within the wait; never after a refused token.

use std::time::{Duration, Instant};

use crate::harness::{closed_port, code, run_args, Cli};
use crate::logs_and_flags::{nobody, temp_file, Serve};

/// `--wait forever` waits for the holder, however long it holds.
pub fn wait_forever(cli: &Cli) {
    let key = cli.key("forever", "k");
    let (holder, _) = cli.hold(&key, &[]);
    let mut waiter = cli.start_sh(&key, &["--wait", "forever"], "echo waiter got it");
    std::thread::sleep(Duration::from_millis(500));
    holder.signal(libc::SIGTERM);
    assert_eq!(holder.finish().code, 128 + 15);
    assert_eq!(waiter.line(), "waiter got it");
    assert_eq!(waiter.finish().code, 0);
}

/// A service that is not there yet: `--retry` tries again (1s, 2s, ...) until it is,
/// then runs the command.
#[test]
fn retry_until_the_service_is_reachable() {
    let port = closed_port();
    let cli = Cli {
        source: vec!["--server".into(), format!("http://127.0.0.1:{port}")],
        label: "retry",
    };
    let key = cli.key("retry", "k");
    let waiter = cli.start(&run_args(
        &key,
        &["--wait", "forever", "--retry"],
        &["sh", "-c", "echo ran"],
    ));
    std::thread::sleep(Duration::from_millis(1500));
    let bind = format!("127.0.0.1:{port}");
    let server = Serve::start(&[], &["--bind", &bind], &[]);
    let done = waiter.finish();
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(done.stdout, "ran\n", "{done:?}");
    assert!(
        done.stderr.contains("trying again in 1s (--retry)"),
        "{done:?}"
    );
    assert!(done.stderr.contains("connection refused"), "{done:?}");
    server.stop();
}

/// The tries end with the wait (69); `--retry` needs `--wait`; a refused token (77) is
/// never tried again.
#[test]
fn retry_ends_with_the_wait_and_never_follows_a_refused_token() {
    let cli = Cli {
        source: vec![
            "--server".into(),
            format!("http://127.0.0.1:{}", closed_port()),
        ],
        label: "retry-end",
    };
    let key = cli.key("retry", "end");
    let started = Instant::now();
    let done = cli.call(&run_args(&key, &["--wait", "2s", "--retry"], &["true"]));
    assert_eq!(done.code, code::BACKEND, "{done:?}");
    assert!(done.stderr.contains("trying again in 1s"), "{done:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "{done:?}");
    let alone = cli.call(&run_args(&key, &["--retry"], &["true"]));
    assert_eq!(alone.code, code::USAGE, "{alone:?}");
    assert!(alone.stderr.contains("--wait"), "{alone:?}");

    let token = temp_file("retry-token", "right\n");
    let wrong = temp_file("retry-wrong-token", "wrong\n");
    let server = Serve::start(&[], &["--token-file", token.to_str().unwrap()], &[]);
    let refused = nobody().call(&[
        "run",
        &key,
        "--server",
        &server.url,
        "--token-file",
        wrong.to_str().unwrap(),
        "--ttl",
        "5s",
        "--wait",
        "forever",
        "--retry",
        "--",
        "true",
    ]);
    assert_eq!(refused.code, code::AUTH, "{refused:?}");
    assert!(!refused.stderr.contains("trying again"), "{refused:?}");
    server.stop();
}
