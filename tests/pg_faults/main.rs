//! Several OS processes contend for the same keys through one PostgreSQL database,
//! while this process injects faults: a holder killed with SIGKILL, a holder frozen
//! with SIGSTOP past its TTL and resumed, connections killed with
//! `pg_terminate_backend`, the server crashed and restarted mid-run, and one live
//! holder cut off from the database (its role may no longer log in) while it keeps
//! working: it must stop at its local deadline, before anyone else is granted the key.
//!
//! Every contender logs what it does on the database's clock (`clock_timestamp()`):
//! `got` when granted, `work` for each side effect it performs as holder (a write
//! through `leases::fence::Fence`, recorded with whether the fence accepted it), `lost`
//! or `released` when the lease ends. The checker then asserts, per key:
//! - tokens only grow, in the order the database granted them (a trigger records each
//!   grant; a process frozen right after its grant logs `got` late), and every token a
//!   process was handed is one the database granted;
//! - no two holders overlap: every action of a holder comes before the next holder's
//!   grant, except a write by a process that was frozen, which the fence must refuse;
//! - the killed holder's key is taken over after its TTL, the frozen holder reports
//!   `Lost` and never acts again, and every process keeps working across connection
//!   kills and the server restart, with the same managers.
//!
//!
//! Then a **chaos phase**: every process reaches the database through a TCP fault
//! proxy of its own (`support/proxy/`), and each proxy follows a random schedule of
//! delays, blackholes, resets, half-open connections and slow drips, switched at random
//! moments, so that single statements are cut off mid-flight. Throughout the run the
//! orchestrator samples the database every 200 ms and also asserts, on the database's
//! clock:
//! - no key stays taken by nobody longer than TTL + statement timeout (a holder that
//!   ended, or a grant whose answer was lost, leaves a row that must expire by then);
//! - no session sits `idle in transaction` (a connection left mid-transaction).
//!
//! The schedules' seed is `PG_FAULTS_SEED` (default 1), printed with the faults.
//!
//! Runs as a plain program (`harness = false`); `cargo test --all-features` runs it.
//! The same binary, started with `contender …`, is one contending process.
//!
//! The parts: `scenario.rs` (what every process shares), `contender.rs` (one contending
//! process), `orchestrator.rs` (the processes and the faults), `sampler.rs` (the looks
//! taken throughout) and `checker.rs` (the guarantees, judged on the history).

#[path = "../support/mod.rs"]
mod support;

mod checker;
mod contender;
mod orchestrator;
mod sampler;
mod scenario;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("contender") {
        let seconds = args[4].parse().unwrap();
        rt.block_on(contender::contender(
            args[2].clone(),
            args[3].clone(),
            seconds,
            args[5].clone(),
        ));
        return;
    }
    if args.iter().skip(1).any(|a| a == "--list") {
        println!("pg_faults: test");
        return;
    }
    let checks = checker::check(rt.block_on(orchestrator::run()));
    println!("{} passed, {} failed", checks.passed, checks.failed.len());
    if !checks.failed.is_empty() {
        std::process::exit(1);
    }
}
