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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leases::backend::{Backend, FaultyBackend, MemoryBackend, RenewFault};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager, Leaser};

/// Short, so that the story fits in seconds; production leases use MIN_TTL (5 s) or more.
const TTL: Duration = Duration::from_secs(1);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Prints timeline lines, in seconds since the story began (shared across processes
/// through the wall clock).
#[derive(Clone, Copy)]
struct Clock {
    start_ms: u128,
}

impl Clock {
    fn now_ms() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    }
    fn say(&self, what: impl AsRef<str>) {
        let s = Self::now_ms().saturating_sub(self.start_ms) as f64 / 1000.0;
        println!("[{s:5.2}s] {}", what.as_ref());
    }
}

/// A resource that remembers the highest fencing token per job and refuses lower ones:
/// what makes a stale holder harmless.
/// In-process ledger: the highest token per key, and every accepted write.
type MemoryLedger = Mutex<(HashMap<Key, u64>, Vec<(Key, u64, String)>)>;

enum Ledger {
    Memory(MemoryLedger),
    #[cfg(feature = "postgres")]
    Postgres(tokio_postgres::Client),
}

impl Ledger {
    /// Records a unit of work by `who` with `token`; `Err(newer)` if a newer token wrote.
    async fn write(&self, key: &Key, token: u64, who: &str) -> Result<Result<(), u64>, Error> {
        match self {
            Ledger::Memory(m) => {
                let mut m = m.lock().unwrap();
                let seen = m.0.entry(key.clone()).or_insert(0);
                if token < *seen {
                    return Ok(Err(*seen));
                }
                *seen = token;
                m.1.push((key.clone(), token, who.to_string()));
                Ok(Ok(()))
            }
            #[cfg(feature = "postgres")]
            Ledger::Postgres(c) => {
                let (k, t) = (key.to_string(), token as i64);
                let row = c
                    .query_one(
                        "WITH f AS (
                            INSERT INTO failover_fence (key, token) VALUES ($1, $2)
                            ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token
                            WHERE failover_fence.token <= EXCLUDED.token RETURNING 1),
                         w AS (INSERT INTO failover_writes (key, token, who)
                            SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM f))
                         SELECT EXISTS (SELECT 1 FROM f),
                                (SELECT token FROM failover_fence WHERE key = $1)",
                        &[&k, &t, &who],
                    )
                    .await?;
                let accepted: bool = row.get(0);
                let seen: Option<i64> = row.get(1);
                Ok(if accepted {
                    Ok(())
                } else {
                    Err(seen.unwrap_or(0) as u64)
                })
            }
        }
    }

    /// Who wrote, in order: (key, token, worker), one line per change of hands.
    async fn history(&self) -> Result<Vec<(String, u64, String)>, Error> {
        let all: Vec<(String, u64, String)> = match self {
            Ledger::Memory(m) => {
                let m = m.lock().unwrap();
                m.1.iter()
                    .map(|(k, t, w)| (k.to_string(), *t, w.clone()))
                    .collect()
            }
            #[cfg(feature = "postgres")]
            Ledger::Postgres(c) => c
                .query(
                    "SELECT key, token, who FROM failover_writes ORDER BY id",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2)))
                .collect(),
        };
        let mut out: Vec<(String, u64, String)> = Vec::new();
        for w in all {
            let last_of_key = out.iter().rev().find(|o| o.0 == w.0);
            if last_of_key.is_none_or(|o| o.1 != w.1) {
                out.push(w);
            }
        }
        Ok(out)
    }
}

/// Set when the story ends, for workers whose leaser cannot say so itself (a client of
/// a lease service that is stopping only sees the service go away).
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn worker(
    name: String,
    job: Key,
    leaser: Arc<dyn Leaser>,
    ledger: Arc<Ledger>,
    clock: Clock,
) -> Result<(), Error> {
    loop {
        let options = AcquireOptions::new(TTL)
            .metadata(format!("{name} pid={}", std::process::id()))
            .wait(Duration::from_secs(30));
        let (lease, ctx) = match leaser.acquire_lease_with(job.clone(), options).await {
            Ok(got) => got,
            Err(LeaseError::ManagerStopped) => return Ok(()),
            // The story is over (the lease service is stopping).
            Err(_) if STOPPING.load(std::sync::atomic::Ordering::SeqCst) => return Ok(()),
            Err(e) => {
                clock.say(format!("{name}: could not acquire {job}: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let token = lease.token();
        clock.say(format!("{name}: acquired {job} with token {token}"));
        let mut units = 0;
        let reason = loop {
            tokio::select! {
                reason = ctx.cancelled() => break reason,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    // Check the context right before the side effect, and fence it.
                    if ctx.is_cancelled() { continue; }
                    match ledger.write(&job, token, &name).await {
                        Ok(Ok(())) => units += 1,
                        Ok(Err(newer)) => clock.say(format!("{name}: write refused, token {newer} seen")),
                        Err(e) => clock.say(format!("{name}: ledger unavailable: {e}")),
                    }
                }
            }
        };
        clock.say(format!(
            "{name}: told the lease on {job} ended ({reason}) after {units} units of work; stopping"
        ));
        match reason {
            CancelReason::Shutdown => return Ok(()),
            CancelReason::Lost(_) => {
                // A holder that was paused and wakes up late would try to write with its
                // old token. The ledger has seen a newer one, so the write does no harm.
                tokio::time::sleep(TTL).await;
                match ledger.write(&job, token, &name).await? {
                    Ok(()) => clock.say(format!(
                        "{name}: late write with token {token} accepted (no newer holder yet)"
                    )),
                    Err(newer) => clock.say(format!(
                        "{name}: late write with stale token {token} refused: the ledger has seen {newer}"
                    )),
                }
            }
            _ => {}
        }
        // Queue up again as a standby.
        drop(lease);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn jobs() -> (Key, Key) {
    (
        Key::system(["jobs", "billing"]),
        Key::system(["jobs", "emails"]),
    )
}

fn holder_name(info: &leases::LeaseInfo) -> String {
    String::from_utf8_lossy(&info.metadata).into_owned()
}

/// What the operator uses: the manager, or (through the service) a client.
trait Operator {
    async fn info(&self, key: &Key) -> Result<Option<leases::LeaseInfo>, LeaseError>;
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError>;
}

impl Operator for LeaseManager {
    async fn info(&self, key: &Key) -> Result<Option<leases::LeaseInfo>, LeaseError> {
        self.lease_info(key).await
    }
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        LeaseManager::revoke(self, key).await
    }
}

#[cfg(feature = "server")]
impl Operator for leases::ClientLeaser {
    async fn info(&self, key: &Key) -> Result<Option<leases::LeaseInfo>, LeaseError> {
        self.lease_info(key).await
    }
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        leases::ClientLeaser::revoke(self, key).await
    }
}

/// The operator's part, the same in every mode: after two seconds revoke whoever holds
/// the billing job; after two more, report who holds the emails job.
async fn revoke_billing_then_look_at_emails(
    operator: &impl Operator,
    clock: &Clock,
) -> Result<leases::LeaseInfo, Error> {
    let (billing, emails) = jobs();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = operator
        .info(&billing)
        .await?
        .ok_or("billing is not held")?;
    clock.say(format!(
        "operator: revoking {billing} (held by {}, token {})",
        holder_name(&info),
        info.token
    ));
    operator.revoke(&billing).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(operator.info(&emails).await?.ok_or("emails is not held")?)
}

async fn print_history(ledger: &Ledger) -> Result<(), Error> {
    println!("\nwho wrote, in order (key, token, worker):");
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, token, who) in ledger.history().await? {
        println!("  {key}  {token}  {who}");
        if let Some(t) = last.insert(key, token) {
            assert!(token > t, "fencing tokens only grow");
        }
    }
    println!("every job changed hands with a larger token; nothing was written by two holders");
    Ok(())
}

/// The whole story in one process, on the in-memory backend; with `service`, the
/// workers and the operator reach the leases through a lease service (`leases serve`
/// in-process, on port 0) with `ClientLeaser`s, as programs in other processes or
/// languages would.
async fn in_process(service: bool) -> Result<(), Error> {
    let clock = Clock {
        start_ms: Clock::now_ms(),
    };
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    // The fault injector lets the story stall one job's renewals.
    let faults = Arc::new(FaultyBackend::new(memory));
    let manager = LeaseManager::builder()
        .min_ttl(TTL)
        .backend(faults.clone())
        .start()
        .await?;
    let ledger = Arc::new(Ledger::Memory(Mutex::default()));
    let (billing, emails) = jobs();
    clock.say(format!(
        "manager started: in-memory backend, TTL {TTL:?}, renewal every {:?}, safety margin {:?}",
        TTL / 3,
        manager.safety_margin(TTL)
    ));
    #[cfg(feature = "server")]
    let served = if service {
        let options = leases::service::ServeOptions {
            bind: "127.0.0.1:0".parse()?,
            ..Default::default()
        };
        let server = leases::service::LeaseServer::start(manager.clone(), options).await?;
        let url = format!("http://{}", server.local_addr());
        clock.say(format!(
            "lease service listening on {url}; workers connect to it"
        ));
        let connect = || {
            leases::ClientLeaser::connect_with(leases::ClientOptions::new(url.clone()).min_ttl(TTL))
        };
        Some((server, connect().await?, url))
    } else {
        None
    };
    #[cfg(not(feature = "server"))]
    if service {
        return Err("this build has no lease service: run with --features server".into());
    }
    let mut workers = Vec::new();
    for (i, job) in [&billing, &billing, &emails, &emails]
        .into_iter()
        .enumerate()
    {
        let name = format!("worker-{}", i + 1);
        let leaser: Arc<dyn Leaser> = match () {
            #[cfg(feature = "server")]
            () if served.is_some() => {
                let url = served.as_ref().map(|s| s.2.clone()).unwrap_or_default();
                Arc::new(
                    leases::ClientLeaser::connect_with(
                        leases::ClientOptions::new(url).min_ttl(TTL),
                    )
                    .await?,
                )
            }
            () => Arc::new(manager.clone()),
        };
        workers.push(tokio::spawn(worker(
            name,
            job.clone(),
            leaser,
            ledger.clone(),
            clock,
        )));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[cfg(feature = "server")]
    let info = match &served {
        Some((_, operator, _)) => revoke_billing_then_look_at_emails(operator, &clock).await?,
        None => revoke_billing_then_look_at_emails(&manager, &clock).await?,
    };
    #[cfg(not(feature = "server"))]
    let info = revoke_billing_then_look_at_emails(&manager, &clock).await?;
    clock.say(format!(
        "fault: renewals of {emails} stall (held by {}, token {})",
        holder_name(&info),
        info.token
    ));
    faults.fail_renewals(&emails, RenewFault::Stall);
    tokio::time::sleep(TTL / 2).await;
    // The stalled renewal is still hanging; later holders' renewals work again.
    faults.heal_renewals(&emails);

    tokio::time::sleep(Duration::from_secs(3)).await;
    clock.say("shutting down");
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    #[cfg(feature = "server")]
    if let Some((server, _, _)) = served {
        server.shutdown().await?;
    }
    manager.shutdown().await;
    for w in workers {
        w.await??;
    }
    print_history(&ledger).await
}

#[cfg(feature = "postgres")]
mod distributed {
    //! The same story across processes sharing one PostgreSQL database.

    use super::*;
    use leases::backend::PostgresOptions;
    use std::process::{Child, Command};

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
    pub(super) async fn worker_process(
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
    pub(super) async fn coordinator(url: String) -> Result<(), Error> {
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
}

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
    in_process(args.iter().any(|a| a == "--service")).await
}
