//! Failover, told as a timeline.
//!
//! Four workers compete for two jobs. For each job one worker holds the lease and
//! works; the other waits. Then:
//! - an operator revokes the billing job's lease: its holder is told and stops, and the
//!   waiting worker takes over with a larger fencing token;
//! - the emails job's holder stops renewing (its renewals stall in-process, or, across
//!   processes, the whole process is frozen with SIGSTOP): it is told at its local
//!   deadline, the waiting worker takes over once the lease has expired, and the stale
//!   holder's late write is refused by a fenced ledger;
//! - everything shuts down cleanly.
//!
//! In-process, on the in-memory backend (about eight seconds):
//!     cargo run --example failover
//! The same story through the lease service (workers use `ClientLeaser`s):
//!     cargo run --features server --example failover -- --service
//! Across processes sharing PostgreSQL (the coordinator starts four worker processes):
//!     cargo run --features postgres --example failover -- --postgres postgres://user@host/db
//! (or set LEASES_POSTGRES_URL).

//!
//! The parts: `story.rs` (the TTL, the jobs, the timeline), `ledger.rs` (the fenced
//! ledger), `worker.rs`, `operator.rs`, `in_process.rs` and `distributed.rs` (the two
//! ways to tell the story); here, choosing one.

#[cfg(feature = "postgres")]
mod distributed;
mod in_process;
mod ledger;
mod operator;
mod story;
mod worker;

use story::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = match args.iter().position(|a| a == "--postgres") {
        Some(i) => Some(args.get(i + 1).cloned().ok_or("--postgres needs a URL")?),
        None => std::env::var("LEASES_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty()),
    };
    #[cfg(feature = "postgres")]
    {
        if args.first().map(String::as_str) == Some("--worker") {
            let a = |i: usize| args.get(i).cloned().ok_or("worker arguments");
            return distributed::worker_process(
                a(1)?,
                a(2)?,
                a(3)?,
                a(4)?.parse()?,
                a(5)?.parse()?,
            )
            .await;
        }
        if let Some(url) = url {
            return distributed::coordinator(url).await;
        }
    }
    #[cfg(not(feature = "postgres"))]
    if url.is_some() {
        return Err("this build has no PostgreSQL support: run with --features postgres".into());
    }
    in_process::in_process(args.iter().any(|a| a == "--service")).await
}
