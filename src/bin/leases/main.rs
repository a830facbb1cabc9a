//! `leases`: the command line of the `leases` crate. Thin: argument parsing, then
//! library calls.
//!
//! - `serve`   (serve.rs): the lease service;
//! - `run`     (run.rs): hold a lease while a command runs;
//! - `list`, `info`, `revoke`: look at leases and end them (output.rs prints them);
//! - tree.rs: the processes a command started, for `run`; kill_timing.rs: when it
//!   stops them; guardian.rs: the process
//!   between `run` and its command that kills them all if `leases` is killed;
//! - source.rs: where leases live (PostgreSQL directly, or a lease service);
//! - exit.rs: the exit codes; duration.rs: `30s`, `5m`, `1h30m`.

mod duration;
mod exit;
#[cfg(target_os = "linux")]
mod guardian;
mod kill_timing;
mod output;
mod run;
mod serve;
mod source;
mod spinner;
mod tree;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use leases::Key;

use exit::{Failure, NOT_HELD};
use source::Source;

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
  # The command sees its key and fencing token:
  leases run /module/billing/invoices --ttl 30s -- sh -c 'echo \"$LEASES_KEY $LEASES_TOKEN\"'";

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
struct Cli {
    #[command(flatten)]
    source: SourceArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where leases live (global options).
#[derive(Args, Debug)]
pub(crate) struct SourceArgs {
    /// Use the lease table in this PostgreSQL database directly
    /// (e.g. postgres://user:pass@host/db?sslmode=require).
    #[arg(
        long,
        global = true,
        env = "LEASES_POSTGRES_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) postgres: Option<String>,
    /// Use the lease service (`leases serve`) at this address
    /// (e.g. http://127.0.0.1:8895, or https://... for TLS).
    #[arg(long, global = true, env = "LEASES_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// With --server: send the bearer token read from this file.
    #[arg(long, global = true, env = "LEASES_TOKEN_FILE", value_name = "PATH")]
    pub(crate) token_file: Option<std::path::PathBuf>,
    /// With --server over TLS: trust this CA certificate (PEM) for the server.
    #[arg(long, global = true, env = "LEASES_CA_FILE", value_name = "PATH")]
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// The lease table's name in PostgreSQL.
    #[arg(
        long,
        global = true,
        env = "LEASES_TABLE",
        default_value = "leases",
        value_name = "NAME"
    )]
    pub(crate) table: String,
    /// Use the leases in this etcd cluster directly: its members' client URLs,
    /// comma-separated (e.g. http://10.0.0.1:2379,http://10.0.0.2:2379).
    #[arg(
        long,
        global = true,
        env = "LEASES_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    pub(crate) etcd: Vec<String>,
    /// With --etcd: the prefix of the etcd keys the leases live under.
    #[arg(
        long,
        global = true,
        env = "LEASES_ETCD_PREFIX",
        default_value = "/leases",
        value_name = "PREFIX"
    )]
    pub(crate) etcd_prefix: String,
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve leases over gRPC: FTL's LeaseService and the native service, on one port,
    /// with HTTP probes (/_readiness, /_liveness), health and reflection. Memory backend
    /// unless --postgres (LEASES_POSTGRES_URL) or --etcd (LEASES_ETCD_ENDPOINTS) is
    /// given; several servers may share one table or cluster. Stops gracefully on
    /// SIGINT/SIGTERM.
    Serve(serve::ServeArgs),
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
struct RunArgs {
    /// The key, in its canonical string form (e.g. /system/jobs/nightly,
    /// /module/billing/invoices; segments escaped as URL path segments).
    #[arg(value_parser = parse_key)]
    key: Key,
    /// How long the lease lasts unless renewed (it is renewed every TTL/3 while the
    /// command or a process it started runs); at least 5s. E.g. 30s, 5m, 1h30m.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    ttl: Duration,
    /// Wait up to this long for a held key to become free (default: do not wait).
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    wait: Option<Duration>,
    /// Text attached to the lease, shown by `list` and `info` (default: "HOST pid PID").
    #[arg(long, value_name = "TEXT")]
    metadata: Option<String>,
    /// After a lost lease: how long the command has between SIGTERM and SIGKILL; cut
    /// short so that SIGKILL goes out TTL/20 (at most 1s) before the lease's local
    /// deadline at the latest.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION", default_value = "10s")]
    grace: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// `leases list`.
#[derive(Args, Debug)]
struct ListArgs {
    /// Only keys whose string form starts with this (a plain string prefix: end it with
    /// `/` for one subtree).
    prefix: Option<String>,
    /// Print JSON (an array of leases) instead of a table.
    #[arg(long)]
    json: bool,
    /// Show at most this many leases (in key order).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    limit: usize,
}

/// `leases info` and `leases revoke`.
#[derive(Args, Debug)]
struct KeyArgs {
    /// The key, in its canonical string form (e.g. /system/jobs/nightly).
    #[arg(value_parser = parse_key)]
    key: Key,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_key(s: &str) -> Result<Key, String> {
    Key::parse(s).map_err(|e| {
        format!(
            "{e} (a key looks like /system/jobs/nightly or /module/billing/invoices, each \
             segment escaped as a URL path segment)"
        )
    })
}

/// Where a global argument's value came from: the top level or the subcommand's matches.
fn value_source(matches: &ArgMatches, id: &str) -> Option<ValueSource> {
    let sub = matches.subcommand().and_then(|(_, m)| m.value_source(id));
    match (matches.value_source(id), sub) {
        (Some(ValueSource::CommandLine), _) | (_, Some(ValueSource::CommandLine)) => {
            Some(ValueSource::CommandLine)
        }
        (top, sub) => top.or(sub),
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

async fn execute(source: &Source, command: Command) -> Result<u8, Failure> {
    let fail = |e: leases::LeaseError| Failure::from_lease_error(&e);
    match command {
        Command::Run(args) => {
            run::run(
                source,
                run::RunPlan {
                    key: args.key,
                    ttl: args.ttl,
                    wait: args.wait,
                    metadata: args.metadata,
                    grace: args.grace,
                    command: args.command,
                },
            )
            .await
        }
        Command::Serve(_) => unreachable!("serve runs without a source"),
        Command::List(args) => {
            let prefix = args.prefix.unwrap_or_default();
            let leases = source.list(&prefix, args.limit).await.map_err(fail)?;
            if args.json {
                print_json(&leases.iter().map(output::lease_json).collect());
            } else {
                print!("{}", output::table(&leases));
            }
            if leases.len() == args.limit && args.limit > 0 {
                eprintln!(
                    "leases: stopped at --limit {}; there may be more leases",
                    args.limit
                );
            }
            Ok(0)
        }
        Command::Info(args) => {
            let info = source.info(&args.key).await.map_err(fail)?;
            if args.json {
                print_json(
                    &info
                        .as_ref()
                        .map_or(serde_json::Value::Null, output::lease_json),
                );
            } else if let Some(info) = &info {
                print!("{}", output::table(std::slice::from_ref(info)));
            } else {
                eprintln!("leases: {} is not held", args.key);
            }
            Ok(if info.is_some() { 0 } else { NOT_HELD })
        }
        Command::Revoke(args) => {
            let revoked = source.revoke(&args.key).await.map_err(fail)?;
            // What the lease looks like now (revoked, until its holder gives it back).
            let info = if revoked {
                source.info(&args.key).await.map_err(fail)?
            } else {
                None
            };
            if args.json {
                print_json(&serde_json::json!({
                    "key": args.key.to_string(),
                    "revoked": revoked,
                    "lease": info.as_ref().map(output::lease_json),
                }));
            } else if !revoked {
                eprintln!("leases: {} is not held; nothing to revoke", args.key);
            } else {
                println!(
                    "revoked {}: its holder is told at its next renewal and gives it back",
                    args.key
                );
                if let Some(info) = &info {
                    print!("{}", output::table(std::slice::from_ref(info)));
                }
            }
            Ok(if revoked { 0 } else { NOT_HELD })
        }
    }
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == guardian::ARG)
    {
        guardian::main(std::env::args_os().skip(2).collect());
    }
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Command::Serve(args) = cli.command {
        // The service serves many clients at once: a runtime with worker threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build();
        return match runtime {
            Ok(rt) => {
                let etcd = source::etcd_options(&cli.source);
                rt.block_on(serve::run(
                    args,
                    cli.source.postgres,
                    cli.source.table,
                    etcd,
                ))
            }
            Err(e) => {
                eprintln!("leases serve: cannot start the runtime: {e}");
                ExitCode::from(exit::INTERNAL)
            }
        };
    }
    cli.source.postgres_source = value_source(&matches, "postgres");
    cli.source.server_source = value_source(&matches, "server");
    cli.source.etcd_source = value_source(&matches, "etcd");
    // One thread: the command is spawned from the thread that lives as long as the
    // process, which the parent-death signal (run.rs) depends on.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leases: cannot start the runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let outcome = runtime.block_on(async {
        match Source::open(&cli.source).await {
            Ok(source) => {
                let outcome = execute(&source, cli.command).await;
                source.shutdown().await;
                outcome
            }
            Err(e) => Err(e),
        }
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("leases: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
