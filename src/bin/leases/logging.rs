//! Logs on stderr: the library's `tracing` events (a lease lost, a backend failure, a
//! refused call, the warning for a service open to the network without a token) reach
//! the operator. `RUST_LOG` chooses what is logged (`warn` unless set; `info` for
//! `serve`); `--log-format` how it looks.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::args::LogFormat;

/// Installs the subscriber for the whole process. `default` is the filter when
/// `RUST_LOG` is unset or empty; a `RUST_LOG` that does not parse is said so on stderr,
/// and the default used.
pub(crate) fn init(format: LogFormat, default: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(&s).unwrap_or_else(|e| {
            eprintln!("leases: RUST_LOG={s:?} does not parse ({e}); logging at {default}");
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Set once at the start of main; a second subscriber cannot have been installed.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}
