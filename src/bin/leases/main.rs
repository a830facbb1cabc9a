//! `leases`: the command line of the `leases` crate. Thin: argument parsing, then
//! library calls.
//!
//! - `serve`   (serve.rs): the lease service;
//! - `run`     (run.rs): hold a lease while a command runs;
//! - `elect`   (elect.rs): run a command while leading, or watch who leads;
//! - acquire.rs, retry.rs, signals.rs: what `run` and `elect` share to get a lease;
//! - `list`, `info`, `revoke`: look at leases and end them (output.rs prints them);
//! - refusal.rs: why an acquire was refused (who holds the key);
//! - tree.rs: the processes a command started, for `run`; kill_timing.rs: when it
//!   stops them; guardian.rs: the process
//!   between `run` and its command that kills them all if `leases` is killed;
//! - source.rs: where leases live (PostgreSQL directly, or a lease service);
//! - args.rs: the command line's flags; logging.rs: logs on stderr (`RUST_LOG`);
//! - token.rs: token files; exit.rs: the exit codes, and errors for people;
//! - duration.rs: `30s`, `5m`, `1h30m`.

mod acquire;
mod args;
mod causes;
mod duration;
mod elect;
mod exit;
#[cfg(target_os = "linux")]
mod guardian;
mod kill_timing;
mod logging;
mod output;
mod refusal;
mod retry;
mod run;
mod serve;
mod serve_args;
mod signals;
mod source;
mod spinner;
mod token;
mod transport;
mod tree;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use args::{Cli, Command, SourceArgs};
use exit::{Failure, NOT_HELD, USAGE};
use source::Source;

/// The most leases a lease service lists in one call, whatever was asked for (its
/// `LIST_LIMIT`).
const SERVICE_LIST_CAP: usize = 10_000;

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

async fn execute(
    source: &Source,
    command: Command,
    retry: Option<retry::Retry>,
) -> Result<u8, Failure> {
    let fail = |e: leases::LeaseError| Failure::from_lease_error(&e);
    match command {
        Command::Run(args) => {
            run::run(
                source,
                run::RunPlan {
                    key: args.key,
                    ttl: args.ttl,
                    wait: args.wait,
                    retry,
                    metadata: args.metadata,
                    grace: args.grace,
                    command: args.command,
                },
            )
            .await
        }
        Command::Elect(args) if args.observe => {
            elect::observe(source, &args.key, args.interval, args.json).await
        }
        Command::Elect(args) => {
            elect::elect(
                source,
                elect::ElectPlan {
                    key: args.key,
                    identity: args.identity.unwrap_or_default(),
                    ttl: args.ttl,
                    grace: args.grace,
                    retry: args.retry,
                    command: args.command,
                },
            )
            .await
        }
        Command::Serve(_) => unreachable!("serve runs without a source"),
        Command::List(args) => {
            let prefix = args.prefix.unwrap_or_default();
            // `--limit 0` is no limit (as etcdctl's and kubectl's): every lease, up to a
            // lease service's own cap per call.
            let asked = if args.limit == 0 {
                usize::MAX
            } else {
                args.limit
            };
            let most = if source.is_service() {
                asked.min(SERVICE_LIST_CAP)
            } else {
                asked
            };
            let leases = source.list(&prefix, asked).await.map_err(fail)?;
            if args.json {
                print_json(&leases.iter().map(output::lease_json).collect());
            } else {
                print!("{}", output::table(&leases));
            }
            if leases.len() == most && most == args.limit {
                eprintln!(
                    "leases: stopped at --limit {}; there may be more leases",
                    args.limit
                );
            } else if leases.len() == most && most == SERVICE_LIST_CAP {
                eprintln!(
                    "leases: stopped at the lease service's most per call, \
                     {SERVICE_LIST_CAP}; there may be more leases (list narrower prefixes)"
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
    let (_, sub_matches) = matches.subcommand().expect("a command is required");
    let serving = matches!(cli.command, Command::Serve(_));
    // A server acquires leases all day: its default leaves out the line each acquire
    // logs at info (the manager's `supervisor` target), which `RUST_LOG=info` shows.
    let default = if serving {
        "info,leases::manager::supervisor=warn"
    } else {
        "warn"
    };
    logging::init(cli.log.log_format, default);
    if let Command::Serve(args) = cli.command {
        return serve::main(args, &matches, cli.source, sub_matches);
    }
    let top = std::mem::take(&mut cli.source);
    let source = cli.command.source_mut().expect("a client command");
    let sub = std::mem::take(source);
    *source = SourceArgs::merge(top, &matches, sub, sub_matches);
    let source = std::mem::take(source);
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
    let outcome = check_before_connecting(&cli.command).and_then(|()| {
        runtime.block_on(async {
            // `list` and `info` only look: they never create or change anything.
            let read_only = match &cli.command {
                Command::List(_) | Command::Info(_) => true,
                Command::Elect(a) => a.observe,
                _ => false,
            };
            let mut retry = cli.command.retry().map(retry::Retry::within);
            let opened = open(&source, read_only, retry.as_mut()).await?;
            let outcome = execute(&opened, cli.command, retry).await;
            opened.shutdown().await;
            // With several servers, the first tells whether TLS was meant.
            let first = source.server.as_deref().and_then(|u| u.split(',').next());
            match (outcome, first.map(str::trim)) {
                (Err(f), Some(url)) if f.code == exit::BACKEND && opened_plain(url) => {
                    if transport::speaks_tls(url).await {
                        Err(Failure::new(
                            f.code,
                            format!("{}\n  ({})", transport::plain_to_tls(url), f.message),
                        ))
                    } else {
                        Err(f)
                    }
                }
                (outcome, _) => outcome,
            }
        })
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("leases: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Opens the source; with `--retry`, tries again while a lease service cannot be
/// reached (a store used directly is reached lazily, by the first operation).
async fn open(
    args: &SourceArgs,
    read_only: bool,
    mut retry: Option<&mut retry::Retry>,
) -> Result<Source, Failure> {
    loop {
        let failure = match Source::open(args, read_only).await {
            Ok(source) => return Ok(source),
            Err(f) => f,
        };
        match retry.as_mut().and_then(|r| r.after(&failure)) {
            Some(pause) => tokio::time::sleep(pause).await,
            None => return Err(failure),
        }
    }
}

/// Was a lease service reached over plain HTTP/2?
fn opened_plain(url: &str) -> bool {
    url.starts_with("http://")
}

/// What can be refused before anything is contacted: a TTL out of the library's bounds,
/// flags that go together.
fn check_before_connecting(command: &Command) -> Result<(), Failure> {
    if let Command::Elect(args) = command {
        if args.json && !args.observe {
            return Err(Failure::new(
                USAGE,
                "elect --json is for --observe (a candidate prints nothing of its own on \
                 stdout)",
            ));
        }
    }
    let ttl = match command {
        Command::Run(args) => Some(args.ttl),
        Command::Elect(args) if !args.observe => Some(args.ttl),
        _ => None,
    };
    if let Some(ttl) = ttl {
        let human = duration::human;
        if ttl < leases::MIN_TTL {
            return Err(Failure::new(
                USAGE,
                format!(
                    "--ttl {} is shorter than the minimum {}",
                    human(ttl),
                    human(leases::MIN_TTL)
                ),
            ));
        }
        if ttl > leases::MAX_TTL {
            return Err(Failure::new(
                USAGE,
                format!(
                    "--ttl {} is longer than the maximum {}",
                    human(ttl),
                    human(leases::MAX_TTL)
                ),
            ));
        }
    }
    Ok(())
}
