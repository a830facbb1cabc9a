//! The whole-stack checker's clients, one worker loop per kind, each recording its acts:
//!
//! - `ClientLeaser` (native `HoldMany` streams; the leaders' on `Hold` streams): acts
//!   from the grant while its context lives, checked right after each act is stamped; on PostgreSQL with every server's
//!   URL, so that its lease re-attaches through another when its own goes; and
//!   leaders, `ClientLeaser`s that hold keys of their own for long;
//! - a raw FTL client behaving as FTL's Go runtime: heartbeats every TTL/2 without
//!   waiting for answers, releases by half-closing then resetting; acts from the first
//!   answer until it sees an error or it half-closes;
//! - `leases run` with commands that work, ignore SIGTERM, fork background jobs or exit
//!   early; their processes (this test binary in actor mode, see [`actor_main`]) append
//!   `<ns> <key> <token> <pid> <run>` to the act file every 20 ms while they live;
//! - HTTP holders, clients of the HTTP/JSON API that keep the deadline rule by hand,
//!   re-attach with `resume`, and sometimes vanish or release twice: in
//!   http_holders.rs, which shares [`Env`], [`Store`] and the act pace with this file.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leases::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseRequest;
use leases::{AcquireOptions, ClientLeaser, ClientOptions, Key};
use tokio::sync::mpsc;

use crate::history::{now_ns, End, Grant, History};
use crate::support::rng::XorShift;

/// Every lease's TTL (the service's minimum).
pub const TTL: Duration = Duration::from_secs(5);
/// How often a holder acts.
pub const ACT_EVERY: Duration = Duration::from_millis(25);

/// One store: its keys and the ways to reach it.
pub struct Store {
    /// `pg` or `mem`.
    pub name: &'static str,
    /// Key strings.
    pub keys: Vec<String>,
    /// Server URLs through the general fault chains.
    pub urls: Vec<String>,
    /// Server URLs through the FTL chains (no silent-link faults).
    pub ftl_urls: Vec<String>,
    /// The PostgreSQL URL, for `leases run --postgres`.
    pub postgres: Option<String>,
    /// Its servers share the store (PostgreSQL): a lease held through one can move to
    /// another, so the clients that can re-attach get every URL.
    pub shared: bool,
    /// Keys only the leaders hold (see [`leader_worker`]); none on a store that is not
    /// shared.
    pub leader_keys: Vec<String>,
    /// The HTTP holders' ways in (see http_holders.rs): (URL, the server behind it).
    pub http: Vec<(String, String)>,
}

impl Store {
    /// The URLs a client that starts at `url` is given: `url` first, then, on a shared
    /// store, the others in order (where a lease re-attaches when its server goes).
    pub fn urls_from(&self, url: &str) -> Vec<String> {
        let mut v = vec![url.to_string()];
        if self.shared {
            v.extend(self.urls.iter().filter(|u| *u != url).cloned());
        }
        v
    }
}

/// What every worker shares.
pub struct Env {
    /// The stores.
    pub stores: Vec<Store>,
    /// The history.
    pub history: History,
    /// Workers start nothing new after this.
    pub stop_at: Instant,
    /// The `leases` binary.
    pub leases_bin: String,
    /// This test binary (actor mode).
    pub actor_bin: String,
    /// Where `leases run` commands record their acts.
    pub act_file: String,
    /// Running `leases run` processes: pid → whether its command forks.
    pub runs: Mutex<HashMap<u32, bool>>,
    /// The servers the HTTP holders held their leases through, and when (their
    /// `Hold` streams' counterpart, for whole_stack/kept.rs): (server, way).
    pub http_ways: Mutex<Vec<(String, crate::h2proxy::Seen)>>,
}

impl Env {
    /// Whether workers may still start something new.
    pub fn running(&self) -> bool {
        Instant::now() < self.stop_at
    }

    /// A random element of `v`.
    pub fn pick<'a, T>(rng: &mut XorShift, v: &'a [T]) -> &'a T {
        &v[rng.below(v.len() as u64) as usize]
    }
}

/// Holds leases through `ClientLeaser`s until the run ends. A `leader` holds a key of
/// its own (the shared store's leader key `n`) as a leader does: long holds (4-12 s),
/// and it asks again as soon as it has let go (so that its key is always wanted, and
/// one left taken shows in the liveness count). Such a lease outlives a restart of its
/// server or two, which is what re-attaching is for (see whole_stack/kept.rs).
pub async fn leaser_worker(env: Arc<Env>, n: u64, mut rng: XorShift, leader: bool) {
    let mut leasers: HashMap<String, ClientLeaser> = HashMap::new();
    let mut attempts = 0;
    while env.running() {
        let (store, key) = if leader {
            let store = env.stores.iter().find(|s| s.shared).unwrap();
            let keys = &store.leader_keys;
            (store, keys[n as usize % keys.len()].clone())
        } else {
            let store = Env::pick(&mut rng, &env.stores);
            (store, Env::pick(&mut rng, &store.keys).clone())
        };
        let url = Env::pick(&mut rng, &store.urls).clone();
        let leaser = match leasers.get(&url) {
            Some(l) => l.clone(),
            None => {
                // Leaders hold each lease on a `Hold` stream of its own, which the
                // proxies label with its key (whole_stack/kept.rs counts the leases
                // kept across restarts from those labels); the others share their
                // server's one `HoldMany` stream, whose leases no label names.
                let options = ClientOptions::endpoints(store.urls_from(&url))
                    .unwrap()
                    .connect_timeout(Duration::from_secs(2))
                    .request_timeout(Duration::from_secs(3))
                    .hold_many(!leader);
                match ClientLeaser::connect_with(options).await {
                    Ok(l) => {
                        leasers.insert(url.clone(), l.clone());
                        l
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
        };
        attempts += 1;
        let (holder, wait, hold) = if leader {
            (
                format!("leader{n}.{attempts}"),
                rng.millis(Duration::ZERO, Duration::from_secs(4)),
                rng.millis(Duration::from_secs(4), Duration::from_secs(12)),
            )
        } else {
            (
                format!("client{n}.{attempts}"),
                rng.millis(Duration::ZERO, Duration::from_secs(6)),
                rng.millis(Duration::from_millis(100), Duration::from_secs(8)),
            )
        };
        if !hold_once(&env, &leaser, &key, &url, &holder, wait, hold).await {
            tokio::time::sleep(rng.millis(Duration::from_millis(20), Duration::from_millis(300)))
                .await;
        }
    }
}

/// One `ClientLeaser` holder: acquires `key` through `url` (waiting up to `wait`), acts
/// for `hold` or until its context ends, releases. False if it got no lease.
pub async fn hold_once(
    env: &Env,
    leaser: &ClientLeaser,
    key: &str,
    url: &str,
    holder: &str,
    wait: Duration,
    hold: Duration,
) -> bool {
    // The way in is part of the metadata: the nemesis aims revokes at holders of the
    // far server (see nemesis.rs).
    let options = AcquireOptions::new(TTL)
        .wait(wait)
        .metadata(format!("{holder} via {url}"));
    env.history.want(key);
    let acquired = tokio::time::timeout(
        wait + Duration::from_secs(10),
        leases::Leaser::acquire_lease_with(leaser, Key::parse(key).unwrap(), options),
    )
    .await;
    let Ok(Ok((lease, ctx))) = acquired else {
        return false;
    };
    let grant = Grant {
        key: key.to_string(),
        token: Some(lease.token()),
        holder: holder.to_string(),
    };
    env.history.count("grants: ClientLeaser");
    env.history.event(format!(
        "{holder} ClientLeaser granted {key} token {} via {url}",
        lease.token()
    ));
    let until = Instant::now() + hold;
    loop {
        let t = now_ns();
        // Stamp first, then check: the act happened while the context was live.
        if let Some(reason) = ctx.reason() {
            env.history
                .event(format!("{holder} {key} context ended: {reason}"));
            let end = match reason {
                leases::CancelReason::Lost(_) => End::Lost,
                _ => End::Other,
            };
            env.history.end(holder, end);
            return true;
        }
        env.history.act(&grant, t);
        if Instant::now() >= until {
            let r = tokio::time::timeout(Duration::from_secs(12), lease.release()).await;
            env.history
                .event(format!("{holder} {key} released ({r:?})"));
            let confirmed = matches!(r, Ok(Ok(())));
            let end = if confirmed { End::Released } else { End::Other };
            env.history.end(holder, end);
            return true;
        }
        tokio::time::sleep(ACT_EVERY).await;
    }
}

/// The segments of a key string, as FTL sends them.
fn segments(key: &str) -> Vec<String> {
    // Our keys use only characters that need no escaping.
    key.trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect()
}

/// The key a lease stream's first gRPC message asks for (FTL's or ours), for the log.
pub fn stream_label(path: &str, first: &[u8]) -> String {
    use prost::Message as _;
    // A gRPC message: compressed flag, length (4 bytes), then the protobuf.
    let Some(msg) = first.get(5..) else {
        return String::new();
    };
    if path.ends_with("/AcquireLease") {
        if let Ok(r) = AcquireLeaseRequest::decode(msg) {
            return format!("FTL /{}", r.key.join("/"));
        }
    } else if path.ends_with("/Hold") {
        use leases::proto::leases::v1::{hold_request::Kind, HoldRequest};
        if let Ok(HoldRequest {
            kind: Some(Kind::Acquire(a)),
        }) = HoldRequest::decode(msg)
        {
            // A re-attach (`resume`) says so at the end: `... resume <token>`.
            let resume = a.resume.map(|t| format!(" resume {t}")).unwrap_or_default();
            let meta = String::from_utf8_lossy(&a.metadata);
            return format!("Hold {} by {meta}{resume}", a.key);
        }
    }
    String::new()
}

/// Holds leases as FTL's Go runtime does, until the run ends.
pub async fn ftl_worker(env: Arc<Env>, n: u64, mut rng: XorShift) {
    let mut clients: HashMap<String, LeaseServiceClient<tonic::transport::Channel>> =
        HashMap::new();
    let mut grants = 0;
    while env.running() {
        let store = Env::pick(&mut rng, &env.stores);
        let key = Env::pick(&mut rng, &store.keys).clone();
        let url = Env::pick(&mut rng, &store.ftl_urls).clone();
        let mut client = match clients.get(&url) {
            Some(c) => c.clone(),
            None => {
                let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                    .unwrap()
                    .connect_timeout(Duration::from_secs(2));
                let c = LeaseServiceClient::new(endpoint.connect_lazy());
                clients.insert(url.clone(), c.clone());
                c
            }
        };
        let request = AcquireLeaseRequest {
            key: segments(&key),
            ttl: Some(prost_types::Duration {
                seconds: TTL.as_secs() as i64,
                nanos: 0,
            }),
        };
        let (tx, rx) = mpsc::unbounded_channel::<AcquireLeaseRequest>();
        let outgoing =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let _ = tx.send(request.clone());
        env.history.want(&key);
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            let mut answers = client.acquire_lease(outgoing).await?.into_inner();
            match answers.message().await? {
                Some(_) => Ok(answers),
                None => Err(tonic::Status::unavailable("closed")),
            }
        })
        .await;
        let Ok(Ok(mut answers)) = answered else {
            tokio::time::sleep(rng.millis(Duration::from_millis(50), Duration::from_millis(500)))
                .await;
            continue;
        };
        grants += 1;
        let holder = format!("ftl{n}.{grants}");
        let grant = Grant {
            key: key.clone(),
            token: None,
            holder: holder.clone(),
        };
        env.history.count("grants: FTL");
        env.history
            .event(format!("{holder} FTL granted {key} via {url}"));
        // The runtime never waits for answers; an error is all it can see.
        let broken = Arc::new(AtomicBool::new(false));
        let reader = {
            let broken = broken.clone();
            let history = env.history.clone();
            let holder = holder.clone();
            tokio::spawn(async move {
                let end = loop {
                    match answers.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break "stream ended".to_string(),
                        Err(s) => break format!("error {:?}: {}", s.code(), s.message()),
                    }
                };
                broken.store(true, Ordering::SeqCst);
                history.event(format!("{holder} FTL sees {end}"));
            })
        };
        let until = Instant::now() + rng.millis(Duration::from_millis(100), Duration::from_secs(8));
        let mut next_beat = Instant::now() + TTL / 2;
        loop {
            let t = now_ns();
            if broken.load(Ordering::SeqCst) {
                break;
            }
            env.history.act(&grant, t);
            if Instant::now() >= until {
                env.history
                    .event(format!("{holder} FTL releases {key} (half-close, reset)"));
                break;
            }
            if Instant::now() >= next_beat {
                next_beat += TTL / 2;
                let _ = tx.send(request.clone());
            }
            tokio::time::sleep(ACT_EVERY).await;
        }
        // CloseRequest (the release), then CloseResponse (a reset).
        drop(tx);
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
        reader.abort();
    }
}

/// The commands `leases run` runs: (name, script, ignores SIGTERM, forks).
const COMMANDS: &[(&str, &str, bool, bool)] = &[
    ("works", "exec \"$WS_ACTOR\"", false, false),
    ("ignores-term", "exec \"$WS_ACTOR\"", true, false),
    ("forks", "\"$WS_ACTOR\" & wait", true, true),
    ("exits-early", "\"$WS_ACTOR\" & exit 0", false, true),
    ("setsid", "setsid \"$WS_ACTOR\" & wait", true, true),
];

/// Runs `leases run` commands until the run ends.
pub async fn run_worker(env: Arc<Env>, n: u64, mut rng: XorShift) {
    let mut runs = 0;
    while env.running() {
        let store = Env::pick(&mut rng, &env.stores);
        let key = Env::pick(&mut rng, &store.keys).clone();
        let via_pg = store.postgres.is_some() && rng.below(3) == 0;
        // `--server URL,URL,...`: the picked server first, then the store's others.
        let (flag, url, target) = if via_pg {
            let pg = store.postgres.clone().unwrap();
            ("--postgres", pg.clone(), pg)
        } else {
            let url = Env::pick(&mut rng, &store.urls).clone();
            ("--server", url.clone(), store.urls_from(&url).join(","))
        };
        let (name, script, ignore_term, forks) = *Env::pick(&mut rng, COMMANDS);
        let wait = rng.millis(Duration::from_secs(1), Duration::from_secs(6));
        let grace = rng.millis(Duration::from_millis(300), Duration::from_secs(4));
        let act_ms = rng.millis(Duration::from_millis(200), Duration::from_secs(8));
        let who = format!("run{n}.{}/{name}", runs + 1);
        runs += 1;
        env.history.want(&key);
        let mut cmd = tokio::process::Command::new(&env.leases_bin);
        cmd.arg("run")
            .arg(flag)
            .arg(&target)
            .arg(&key)
            .arg("--ttl")
            .arg(format!("{}s", TTL.as_secs()))
            .arg("--wait")
            .arg(format!("{}ms", wait.as_millis()))
            .arg("--grace")
            .arg(format!("{}ms", grace.as_millis()))
            .arg("--metadata")
            .arg(format!("{who} via {url}"))
            .arg("--")
            .args(["sh", "-c", script])
            .env("WS_ACTOR", &env.actor_bin)
            .env("WS_ACT_FILE", &env.act_file)
            .env("WS_WHO", &who)
            .env("WS_ACT_MS", act_ms.as_millis().to_string())
            .env("WS_ACT_IGNORE_TERM", if ignore_term { "1" } else { "0" })
            .env_remove("LEASES_SERVER")
            .env_remove("LEASES_POSTGRES_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let Ok(child) = cmd.spawn() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let pid = child.id().unwrap_or(0);
        env.runs.lock().unwrap().insert(pid, forks);
        env.history.event(format!(
            "{who} pid {pid}: leases run {flag} {target} {key} --grace {}ms -- {name} ({}ms)",
            grace.as_millis(),
            act_ms.as_millis()
        ));
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await;
        env.runs.lock().unwrap().remove(&pid);
        match out {
            Ok(Ok(out)) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
                // Our commands exit 0 unless killed: 0, with no word of a failed
                // release, is a clean run and release. A lost lease ends `leases run`
                // with 79 and says so (see run.rs).
                let released =
                    !err.contains("could not release") && !err.contains("release of the lease on");
                let end = if out.status.success() && released {
                    End::Released
                } else if err.contains("ended while the command ran (lost")
                    || err.contains("about to run out")
                {
                    End::Lost
                } else {
                    End::Other
                };
                env.history.end(&format!("leases-run:{who}"), end);
                env.history.event(format!(
                    "{who} pid {pid}: exited {} {}",
                    out.status,
                    last.join(" | ")
                ));
            }
            _ => {
                // Not reaped yet (its wait was cut off), so the pid is still its own.
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                env.history
                    .event(format!("{who} pid {pid}: did not exit in 60s; SIGKILL"));
            }
        }
    }
}

/// Actor mode: the process a `leases run` command runs. Appends an act line every
/// 20 ms for `WS_ACT_MS`, ignoring SIGTERM when `WS_ACT_IGNORE_TERM=1`.
pub fn actor_main() {
    let file = std::env::var("WS_ACT_FILE").expect("WS_ACT_FILE");
    let ms: u64 = std::env::var("WS_ACT_MS").unwrap().parse().unwrap();
    if std::env::var("WS_ACT_IGNORE_TERM").as_deref() == Ok("1") {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let key = std::env::var("LEASES_KEY").expect("LEASES_KEY");
    let token = std::env::var("LEASES_TOKEN").expect("LEASES_TOKEN");
    let pid = std::process::id();
    let who = std::env::var("WS_WHO").unwrap_or_default();
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .expect("open the act file");
    let until = Instant::now() + Duration::from_millis(ms);
    loop {
        // One write per line, under PIPE_BUF: lines from many processes never mix.
        let line = format!("{} {key} {token} {pid} {who}\n", now_ns());
        let _ = out.write_all(line.as_bytes());
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
