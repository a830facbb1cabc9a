//! The command line's shape (clap): the client commands' flags, `serve`'s (in serve.rs),
//! and the logging flag that every command takes.
//!
//! The client commands' source flags may come before the command (`leases --server URL
//! list`) or after it (`leases list --server URL`); they are not global, so that `serve`
//! neither takes nor lists them: its store and token flags are its own.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};
use leases::Key;

use crate::{duration, exit};

const ABOUT: &str = "Distributed leases with fencing tokens: serve them over gRPC, run a \
command while holding a lease, and look at or revoke leases.";

const EXAMPLES: &str = "\
Examples:
  export LEASES_POSTGRES_URL=postgres://app@db.internal/app
  leases run /system/jobs/nightly --ttl 30s -- ./nightly.sh
  leases list /system/jobs/
  leases info /system/jobs/nightly --json
  leases revoke /system/jobs/nightly";

const RUN_EXAMPLES: &str = "\
Examples:
  # Run the job only if nobody else runs it now (exit 75 if someone does):
  leases run /system/jobs/nightly --ttl 30s -- ./nightly.sh --full
  # Wait up to 5 minutes for the lease, and say who holds it:
  leases run /system/jobs/nightly --ttl 1m --wait 5m --metadata \"$HOSTNAME\" -- ./nightly.sh
  # Wait as long as it takes, also while the store cannot be reached:
  leases run /system/jobs/nightly --ttl 1m --wait forever --retry -- ./nightly.sh
  # The command sees its key and fencing token:
  leases run /module/billing/invoices --ttl 30s -- sh -c 'echo \"$LEASES_KEY $LEASES_TOKEN\"'";

const ELECT_EXAMPLES: &str = "\
Examples:
  # Run the scheduler on one host at a time; another takes over when it goes:
  leases elect /system/scheduler/leader --identity \"$HOSTNAME\" -- ./scheduler
  # Who leads, at every change:
  leases elect --observe /system/scheduler/leader
  leases elect --observe /system/scheduler/leader --json | jq -r .identity";

const LIST_EXAMPLES: &str = "\
Examples:
  leases list                      # every live lease
  leases list /system/jobs/        # the leases under /system/jobs
  leases list /module/billing --json | jq -r '.[].key'";

const INFO_EXAMPLES: &str = "\
Examples:
  leases info /system/jobs/nightly
  leases info /system/jobs/nightly --json | jq .token
  leases info /system/jobs/nightly >/dev/null && echo held";

const REVOKE_EXAMPLES: &str = "\
Examples:
  leases revoke /system/jobs/nightly
  leases revoke /system/jobs/nightly --json";

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "leases",
    version,
    about = ABOUT,
    after_help = format!("{EXAMPLES}\n\n{}", exit::TABLE),
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) log: LogArgs,
    /// The client commands' source flags given before the command.
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How log lines look.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging (every command).
#[derive(Args, Debug)]
pub(crate) struct LogArgs {
    /// How log lines on stderr look. Which events are logged is set by RUST_LOG
    /// (default: warn; info for serve), e.g. RUST_LOG=debug or RUST_LOG=off.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT",
        help_heading = "Logging"
    )]
    pub(crate) log_format: LogFormat,
}

/// Where leases live (the client commands: run, elect, list, info, revoke).
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Where leases live")]
pub(crate) struct SourceArgs {
    /// Use the lease table in this PostgreSQL database directly
    /// (e.g. postgres://user:pass@host/db?sslmode=require).
    #[arg(
        long,
        env = "LEASES_POSTGRES_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) postgres: Option<String>,
    /// With --postgres: the lease table's name.
    #[arg(
        long,
        env = "LEASES_TABLE",
        default_value = "leases",
        value_name = "NAME"
    )]
    pub(crate) table: String,
    /// Use the leases in this etcd cluster directly: its members' client URLs,
    /// comma-separated (e.g. http://10.0.0.1:2379,http://10.0.0.2:2379).
    #[arg(
        long,
        env = "LEASES_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    pub(crate) etcd: Vec<String>,
    /// With --etcd: the prefix of the etcd keys the leases live under.
    #[arg(
        long,
        env = "LEASES_ETCD_PREFIX",
        default_value = "/leases",
        value_name = "PREFIX"
    )]
    pub(crate) etcd_prefix: String,
    /// Use the lease service (`leases serve`) at this address
    /// (e.g. http://127.0.0.1:8895, or https://... for TLS). Several servers of one
    /// store, comma-separated (URL,URL): a held lease moves to another when its server
    /// stops or cannot be reached.
    #[arg(long, env = "LEASES_SERVER", value_name = "URL[,URL...]")]
    pub(crate) server: Option<String>,
    /// With --server: send the bearer token read from this file.
    #[arg(long, env = "LEASES_TOKEN_FILE", value_name = "PATH")]
    pub(crate) token_file: Option<PathBuf>,
    /// With --server over TLS: trust this CA certificate (PEM) for the server.
    #[arg(long, env = "LEASES_CA_FILE", value_name = "PATH")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Where `postgres` came from (a flag beats an environment variable).
    #[arg(skip)]
    pub(crate) postgres_source: Option<ValueSource>,
    /// Where `server` came from.
    #[arg(skip)]
    pub(crate) server_source: Option<ValueSource>,
    /// Where `etcd` came from.
    #[arg(skip)]
    pub(crate) etcd_source: Option<ValueSource>,
}

/// The client flags only clients take: given before `serve`, they are a usage error.
pub(crate) const CLIENT_ONLY: [(&str, &str); 3] = [
    ("server", "--server"),
    ("token_file", "--token-file"),
    ("ca_file", "--ca-file"),
];

fn on_command_line(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

impl SourceArgs {
    /// The source flags of one client command: those given after the command beat those
    /// given before it; environment variables and defaults are the same for both.
    pub(crate) fn merge(
        top: SourceArgs,
        top_m: &ArgMatches,
        sub: SourceArgs,
        sub_m: &ArgMatches,
    ) -> SourceArgs {
        // The value given after the command if any, else the one given before it, else
        // the environment's or the default.
        let pick = |id: &str| on_command_line(sub_m, id) || !on_command_line(top_m, id);
        let source = |id: &str| {
            if on_command_line(sub_m, id) || on_command_line(top_m, id) {
                Some(ValueSource::CommandLine)
            } else {
                sub_m.value_source(id)
            }
        };
        SourceArgs {
            postgres: if pick("postgres") {
                sub.postgres
            } else {
                top.postgres
            },
            table: if pick("table") { sub.table } else { top.table },
            etcd: if pick("etcd") { sub.etcd } else { top.etcd },
            etcd_prefix: if pick("etcd_prefix") {
                sub.etcd_prefix
            } else {
                top.etcd_prefix
            },
            server: if pick("server") {
                sub.server
            } else {
                top.server
            },
            token_file: if pick("token_file") {
                sub.token_file
            } else {
                top.token_file
            },
            ca_file: if pick("ca_file") {
                sub.ca_file
            } else {
                top.ca_file
            },
            postgres_source: source("postgres"),
            server_source: source("server"),
            etcd_source: source("etcd"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Serve leases over gRPC: FTL's LeaseService and the native service, on one port,
    /// with HTTP probes (/_readiness, /_liveness), health and reflection. Memory backend
    /// unless --postgres (LEASES_POSTGRES_URL) or --etcd (LEASES_ETCD_ENDPOINTS) is
    /// given; several servers may share one table or cluster. Stops gracefully on
    /// SIGINT/SIGTERM.
    Serve(crate::serve_args::ServeArgs),
    /// Acquire a lease and run a command while holding it.
    ///
    /// The command runs in a process group of its own and sees LEASES_KEY and
    /// LEASES_TOKEN (the fencing token: pass it with every write) in its environment.
    /// The command holds the lease until it is dead: with every process it started,
    /// those that left its process group (setsid, double fork) and those it left
    /// running when it exited. The lease is renewed until the last of them has ended,
    /// and only then released.
    ///
    /// If the lease is lost or revoked, all of them get SIGTERM at once, then SIGKILL
    /// after --grace, but never later than TTL/20 (at most 1s) before the lease's
    /// local deadline, so that they are dead before the key could be granted
    /// elsewhere; if no renewal has been confirmed by TTL/10 before that deadline,
    /// they are stopped the same way while the lease still lives. leases then exits
    /// with 79. SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to leases are passed on to
    /// them all; on Linux a guardian process kills them all if leases itself is
    /// killed. Otherwise leases exits with the command's own exit code.
    #[command(after_help = format!("{RUN_EXAMPLES}\n\n{}", exit::TABLE))]
    Run(RunArgs),
    /// Run a command while this candidate leads (leader election, like `etcdctl elect`),
    /// or watch who leads (--observe).
    ///
    /// Candidates campaign for KEY, each with an --identity (stored as the lease's
    /// metadata). The leader runs the command, with LEASES_KEY, LEASES_TOKEN (the
    /// term's fencing token) and LEASES_IDENTITY in its environment, as `run` does: the
    /// command's whole tree holds the lease. When the term is lost or revoked, the tree
    /// is stopped as `run` stops it (SIGTERM, SIGKILL before the key could be granted
    /// elsewhere), the key is given back, and the candidate campaigns again (after 1s,
    /// doubling up to the TTL), starting the command anew when elected again. When the
    /// command exits on its own, leases exits with its code.
    ///
    /// With --observe, prints the leader (IDENTITY TOKEN, or - when nobody leads) at
    /// every change, one line each (--json: one object per line), until interrupted.
    #[command(after_help = ELECT_EXAMPLES)]
    Elect(ElectArgs),
    /// List the live leases, all or those whose key starts with a prefix.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Show the lease on one key (exit code 1 if the key is not held).
    #[command(after_help = INFO_EXAMPLES)]
    Info(KeyArgs),
    /// Revoke the lease on one key (exit code 1 if the key is not held).
    ///
    /// The holder is refused at its next renewal (within a third of its TTL), is told,
    /// and gives the key back; until then nobody else can take the key.
    #[command(after_help = REVOKE_EXAMPLES)]
    Revoke(KeyArgs),
}

/// `leases run`.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The key, in its canonical string form (e.g. /system/jobs/nightly,
    /// /module/billing/invoices; segments escaped as URL path segments).
    #[arg(value_parser = parse_key)]
    pub(crate) key: Key,
    /// How long the lease lasts unless renewed (it is renewed every TTL/3 while the
    /// command or a process it started runs); at least 5s. E.g. 30s, 5m, 1h30m.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    pub(crate) ttl: Duration,
    /// Wait up to this long for a held key to become free, or `forever` (default: do
    /// not wait: exit 75 at once).
    #[arg(long, value_parser = parse_wait, value_name = "DURATION|forever")]
    pub(crate) wait: Option<Duration>,
    /// With --wait: while the store or lease service cannot be reached, try again
    /// (after 1s, doubling up to 30s) until the wait is over, instead of exiting 69 at
    /// once. A refused token (77) or a usage error (2) is never tried again.
    #[arg(long, requires = "wait")]
    pub(crate) retry: bool,
    /// Text attached to the lease, shown by `list` and `info` (default: "HOST pid PID").
    #[arg(long, value_name = "TEXT")]
    pub(crate) metadata: Option<String>,
    /// After a lost lease: how long the command has between SIGTERM and SIGKILL; cut
    /// short so that SIGKILL goes out TTL/20 (at most 1s) before the lease's local
    /// deadline at the latest.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION", default_value = "10s")]
    pub(crate) grace: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
}

/// `leases elect`.
#[derive(Args, Debug)]
pub(crate) struct ElectArgs {
    /// The key campaigned for (e.g. /system/scheduler/leader).
    #[arg(value_parser = parse_key)]
    pub(crate) key: Key,
    /// This candidate's name, stored as the lease's metadata and shown to observers.
    #[arg(long, value_name = "ID", required_unless_present = "observe")]
    pub(crate) identity: Option<String>,
    /// How long a term's lease lasts unless renewed (renewed every TTL/3); at least 5s.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION", default_value = "15s")]
    pub(crate) ttl: Duration,
    /// After a lost term: the time between SIGTERM and SIGKILL, cut short as for `run`.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION", default_value = "10s")]
    pub(crate) grace: Duration,
    /// While the store or lease service cannot be reached, try again (after 1s,
    /// doubling up to 30s) instead of exiting 69.
    #[arg(long, conflicts_with = "observe")]
    pub(crate) retry: bool,
    /// Do not campaign: print who leads at every change, until interrupted.
    #[arg(long, conflicts_with_all = ["identity", "command"])]
    pub(crate) observe: bool,
    /// With --observe: one JSON object per line ({"key", "identity", "token"}; the
    /// token a decimal string; null identity and token while nobody leads).
    #[arg(long)]
    pub(crate) json: bool,
    /// With --observe: how often to look.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION", default_value = "1s")]
    pub(crate) interval: Duration,
    /// The command and its arguments, after `--`.
    #[arg(
        last = true,
        value_name = "COMMAND",
        required_unless_present = "observe"
    )]
    pub(crate) command: Vec<OsString>,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
}

/// `leases list`.
#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// Only keys whose string form starts with this (a plain string prefix: end it with
    /// `/` for one subtree). A prefix no key can start with (not under /system or
    /// /module, or with a character keys never contain raw) is a usage error.
    #[arg(value_parser = parse_prefix)]
    pub(crate) prefix: Option<String>,
    /// Print JSON (an array of leases) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Show at most this many leases (in key order); 0: no limit (through a lease
    /// service, at most its own cap of 10000 per call).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
}

/// `leases info` and `leases revoke`.
#[derive(Args, Debug)]
pub(crate) struct KeyArgs {
    /// The key, in its canonical string form (e.g. /system/jobs/nightly).
    #[arg(value_parser = parse_key)]
    pub(crate) key: Key,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
}

/// A `--wait`: a duration, or `forever` (`Duration::MAX`).
pub(crate) fn parse_wait(s: &str) -> Result<Duration, String> {
    if s.trim() == "forever" {
        return Ok(Duration::MAX);
    }
    duration::parse(s).map_err(|e| format!("{e} (or `forever`)"))
}

pub(crate) fn parse_key(s: &str) -> Result<Key, String> {
    Key::parse(s).map_err(|e| {
        format!(
            "{e} (a key looks like /system/jobs/nightly or /module/billing/invoices, each \
             segment escaped as a URL path segment)"
        )
    })
}

/// A `list` prefix that some key could start with: a beginning of `/system/` or
/// `/module/`, or a longer string under one of them whose every character can appear in
/// a key's canonical form (URL path characters, `/`, and `%` escapes in upper-case hex).
/// Anything else could never match, which is more likely a mistake than a question.
pub(crate) fn parse_prefix(s: &str) -> Result<String, String> {
    const ROOTS: [&str; 2] = ["/system/", "/module/"];
    let Some(rest) = ROOTS.iter().find_map(|root| s.strip_prefix(root)) else {
        if ROOTS.iter().any(|root| root.starts_with(s)) {
            return Ok(s.to_string());
        }
        return Err(format!(
            "no key can start with {s:?}: keys start with /system/ or /module/ (e.g. \
             /system/jobs/; an empty prefix lists every lease)"
        ));
    };
    let bytes = rest.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let fits = b.is_ascii_alphanumeric() || b"-_.~$&+:=@/%".contains(&b);
        // Within an escape (`%XX`), only upper-case hex digits.
        let in_escape = (i >= 1 && bytes[i - 1] == b'%') || (i >= 2 && bytes[i - 2] == b'%');
        if !fits || (in_escape && !(b.is_ascii_digit() || (b'A'..=b'F').contains(&b))) {
            let c = rest[i..].chars().next().unwrap_or('?');
            return Err(format!(
                "no key can start with {s:?}: keys never contain {c:?} as it is written \
                 here (segments are escaped as URL path segments, with upper-case hex: \
                 e.g. %20 for a space)"
            ));
        }
    }
    Ok(s.to_string())
}

impl Command {
    /// The wait within which `--retry` tries again, if it was given.
    pub(crate) fn retry(&self) -> Option<Duration> {
        match self {
            Command::Run(a) if a.retry => a.wait,
            Command::Elect(a) if a.retry => Some(Duration::MAX),
            _ => None,
        }
    }

    /// The source flags of a client command; `None` for `serve`.
    pub(crate) fn source_mut(&mut self) -> Option<&mut SourceArgs> {
        match self {
            Command::Serve(_) => None,
            Command::Run(a) => Some(&mut a.source),
            Command::Elect(a) => Some(&mut a.source),
            Command::List(a) => Some(&mut a.source),
            Command::Info(a) | Command::Revoke(a) => Some(&mut a.source),
        }
    }
}
