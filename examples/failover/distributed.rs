//! The same story across processes sharing one PostgreSQL database.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use leases::backend::PostgresOptions;
use leases::{Key, LeaseManager, Leaser};

use crate::ledger::{print_history, Ledger};
use crate::operator::revoke_billing_then_look_at_emails;
use crate::story::{holder_name, jobs, Clock, Error, TTL};
use crate::worker::worker;

async fn ledger(url: &str) -> Result<Ledger, Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(Ledger::Postgres(client))
}

async fn manager(url: &str) -> Result<LeaseManager, Error> {
    Ok(LeaseManager::builder()
        .min_ttl(TTL)
        .postgres(PostgresOptions::new(url).pool_size(2))
        .start()
        .await?)
}

/// One worker process: works until `stop_ms` (wall clock), then shuts down.
pub async fn worker_process(
    url: String,
    name: String,
    job: String,
    start_ms: u128,
    stop_ms: u128,
) -> Result<(), Error> {
    let clock = Clock { start_ms };
    let manager = manager(&url).await?;
    let leaser: Arc<dyn Leaser> = Arc::new(manager.clone());
    let ledger = Arc::new(ledger(&url).await?);
    let job = Key::parse(&job)?;
    let work = tokio::spawn(worker(name, job, leaser, ledger, clock));
    let left = stop_ms.saturating_sub(Clock::now_ms());
    tokio::time::sleep(Duration::from_millis(left as u64)).await;
    manager.shutdown().await;
    work.await?
}

fn pid_of(info: &leases::LeaseInfo) -> Option<i32> {
    holder_name(info).split("pid=").nth(1)?.parse().ok()
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: signalling one of our own worker processes.
    unsafe { libc::kill(pid, sig) };
}

/// The coordinator: sets up the ledger, starts four worker processes, plays the
/// operator, and prints who wrote.
pub async fn coordinator(url: String) -> Result<(), Error> {
    let clock = Clock {
        start_ms: Clock::now_ms(),
    };
    let admin = ledger(&url).await?;
    if let Ledger::Postgres(c) = &admin {
        c.batch_execute(
            "DROP TABLE IF EXISTS failover_writes, failover_fence;
             CREATE TABLE failover_fence (key TEXT PRIMARY KEY, token BIGINT NOT NULL);
             CREATE TABLE failover_writes (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, token BIGINT NOT NULL, who TEXT NOT NULL);",
        )
        .await?;
    }
    let operator = manager(&url).await?;
    let (billing, emails) = jobs();
    clock.say(format!(
        "coordinator: PostgreSQL backend, TTL {TTL:?}; starting four worker processes"
    ));
    let stop_ms = clock.start_ms + 9_000;
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = Vec::new();
    for (i, job) in [&billing, &billing, &emails, &emails]
        .into_iter()
        .enumerate()
    {
        children.push(
            Command::new(&exe)
                .args([
                    "--worker",
                    &url,
                    &format!("worker-{}", i + 1),
                    &job.to_string(),
                ])
                .args([clock.start_ms.to_string(), stop_ms.to_string()])
                .spawn()?,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let info = revoke_billing_then_look_at_emails(&operator, &clock).await?;
    let pid = pid_of(&info).ok_or("no pid in the metadata")?;
    clock.say(format!(
        "fault: freezing {} (token {}) with SIGSTOP for {:?}",
        holder_name(&info),
        info.token,
        TTL * 2
    ));
    signal(pid, libc::SIGSTOP);
    tokio::time::sleep(TTL * 2).await;
    signal(pid, libc::SIGCONT);
    clock.say("fault: resumed it with SIGCONT");

    for mut c in children {
        c.wait()?;
    }
    operator.shutdown().await;
    clock.say("all workers stopped");
    print_history(&admin).await
}
