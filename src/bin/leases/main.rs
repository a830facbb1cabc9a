//! The `leases` command line.

mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Leases with fencing tokens: serve them, or use them from the shell.
#[derive(Parser, Debug)]
#[command(name = "leases", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve leases over gRPC.
    Serve(serve::ServeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
    }
}
