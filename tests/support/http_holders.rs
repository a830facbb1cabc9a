//! The whole-stack checker's HTTP holders (issue #23): clients of the HTTP/JSON API
//! (`POST /v1/acquire`, `/v1/heartbeat`, `/v1/release`, raw HTTP/1.1 from
//! support/http_wire.rs, one connection per request) on the same keys as every other
//! kind of client, through byte-level fault proxies (see `world::Chain::http`).
//!
//! A holder keeps the protocol's deadline rule by hand, as a shell script with `curl`
//! would (docs/http.md): its deadline is the instant it *sent* the request whose answer
//! it last got plus that answer's `time_left_ms`, on a monotonic clock, and it acts
//! only before it (each act stamped, then checked). It heartbeats every
//! `heartbeat_every_ms` (TTL/4), once at once after an acquire that waited, and stops
//! at a `410`, telling the server so with a `release`. On PostgreSQL, where a lease
//! outlives its server, a `410 handed_over` or a server it cannot reach sends it to the
//! store's other servers in turn with `resume: <token>` until one takes the lease back
//! or its deadline passes. So does a `410 not_held` from the server that holds its
//! lease, starting with that server: after a restart quicker than a heartbeat's period
//! a server has forgotten its HTTP leases and says `not_held` (its `handed_over` was
//! said to nobody), while the store still holds the lease. That goes beyond what
//! docs/http.md tells a client (stop at any 410), and is safe all the same: the holder
//! acts only before its deadline meanwhile, and a resume succeeds only for a lease the
//! store still holds with its token. At the end of its hold it stops acting, then
//! releases.
//!
//! Some holds misbehave in ways the protocol allows: a holder that stops heartbeating
//! mid-hold, acts until its deadline and vanishes without a release (the server must
//! keep the key until what it promised has passed); and one that releases twice, the
//! second time a moment later through any server of its store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::clients::{Env, Store, ACT_EVERY, TTL};
use crate::h2proxy::Seen;
use crate::history::{now_ns, End, Grant};
use crate::http_wire::{Http, Reply};
use crate::support::rng::XorShift;

/// How long a heartbeat, a re-attach or a release may take before the holder counts
/// its server as unreachable.
const REQUEST_LIMIT: Duration = Duration::from_millis(2500);

/// The codes of a heartbeat's 410 after which a holder on a shared store re-attaches
/// (the others end its lease).
const RESUMED: &[&str] = &["handed_over", "not_held"];

/// How a hold behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Manner {
    /// Heartbeats, acts, releases.
    Proper,
    /// Stops heartbeating mid-hold, acts until its deadline, never releases.
    Vanishes,
    /// Releases, then releases again a moment later through any server of its store.
    ReleasesTwice,
}

/// A lease as its holder knows it: what its acting and its keeper share.
struct Held {
    key: String,
    token: u64,
    holder: String,
    metadata: String,
    state: Mutex<State>,
}

struct State {
    /// The deadline rule's deadline: sent + `time_left_ms` of the latest answer.
    deadline: Instant,
    /// The server (index into the store's `http`) the lease is held through now.
    way: usize,
    /// When it came to be held through that server (its answer), and whether by a
    /// re-attach.
    since: u64,
    resumed: bool,
    /// The server said the lease is over (a 410's code, or why a re-attach failed).
    ended: Option<String>,
    /// The servers it was held through before, and when.
    ways: Vec<(String, Seen)>,
}

impl Held {
    fn id(&self) -> Value {
        json!({ "key": self.key, "token": self.token.to_string() })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// An answer to a request sent at `sent` kept the lease alive.
    fn extend(&self, sent: Instant, reply: &Reply) {
        let left = Duration::from_millis(reply.body["time_left_ms"].as_u64().unwrap_or(0));
        let mut st = self.state();
        st.deadline = st.deadline.max(sent + left);
    }

    /// The lease is now held through server `way` (a re-attach when `resumed`): the
    /// way it was held through before ends now.
    fn moved(&self, store: &Store, way: usize, resumed: bool) {
        let now = now_ns();
        let mut st = self.state();
        let old = self.way_seen(store, &st, now);
        st.ways.push(old);
        st.way = way;
        st.since = now;
        st.resumed = resumed;
    }

    fn way_seen(&self, store: &Store, st: &State, closed: u64) -> (String, Seen) {
        let resume = match st.resumed {
            true => format!(" resume {}", self.token),
            false => String::new(),
        };
        let seen = Seen {
            label: format!("HTTP {} by {}{resume}", self.key, self.metadata),
            opened: st.since,
            closed: Some(closed),
        };
        (store.http[st.way].1.clone(), seen)
    }
}

fn http(store: &Store, way: usize) -> Http {
    let addr = store.http[way]
        .0
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    Http::new(addr).within(REQUEST_LIMIT)
}

fn code(reply: &Reply) -> String {
    format!("{} {}", reply.status, reply.code())
}

/// Holds leases over the HTTP API until the run ends.
pub async fn http_worker(env: Arc<Env>, n: u64, mut rng: XorShift) {
    let mut attempts = 0;
    while env.running() {
        attempts += 1;
        let s = rng.below(env.stores.len() as u64) as usize;
        let store = &env.stores[s];
        let key = Env::pick(&mut rng, &store.keys).clone();
        let way = rng.below(store.http.len() as u64) as usize;
        let manner = match rng.below(8) {
            0 => Manner::Vanishes,
            1 => Manner::ReleasesTwice,
            _ => Manner::Proper,
        };
        let holder = format!("http{n}.{attempts}");
        let wait = match rng.below(3) {
            0 => Duration::ZERO,
            _ => rng.millis(Duration::ZERO, Duration::from_secs(4)),
        };
        let hold = rng.millis(Duration::from_millis(100), Duration::from_secs(8));
        if !hold_once(&env, s, &key, way, &holder, wait, hold, manner, &mut rng).await {
            tokio::time::sleep(rng.millis(Duration::from_millis(20), Duration::from_millis(300)))
                .await;
        }
    }
}

/// One HTTP holder: acquires `key` of store `s` through server `way` (waiting up to
/// `wait`), acts for `hold` or until its deadline or a 410, and lets go as `manner`
/// says. False if it got no lease.
#[allow(clippy::too_many_arguments)]
async fn hold_once(
    env: &Arc<Env>,
    s: usize,
    key: &str,
    way: usize,
    holder: &str,
    wait: Duration,
    hold: Duration,
    manner: Manner,
    rng: &mut XorShift,
) -> bool {
    let store = &env.stores[s];
    let url = &store.http[way].0;
    let metadata = format!("{holder} via {url}");
    let mut body = json!({
        "key": key,
        "ttl_ms": TTL.as_millis() as u64,
        "metadata": metadata,
    });
    if !wait.is_zero() {
        body["wait_ms"] = json!(wait.as_millis() as u64);
    }
    env.history.want(key);
    let sent = Instant::now();
    let acquired = http(store, way)
        .within(wait + REQUEST_LIMIT)
        .try_post("/v1/acquire", body)
        .await;
    let reply = match acquired {
        Ok(r) if r.status == 200 => r,
        Ok(r) if r.status == 409 || r.status == 504 => return false,
        other => {
            let what = other.map_or_else(|e| e.to_string(), |r| format!("{} {}", code(&r), r.body));
            env.history
                .event(format!("{holder} HTTP acquire of {key} via {url}: {what}"));
            return false;
        }
    };
    let token: u64 = reply.body["token"].as_str().unwrap().parse().unwrap();
    let every = Duration::from_millis(reply.body["heartbeat_every_ms"].as_u64().unwrap());
    let held = Arc::new(Held {
        key: key.to_string(),
        token,
        holder: holder.to_string(),
        metadata,
        state: Mutex::new(State {
            deadline: sent,
            way,
            since: now_ns(),
            resumed: false,
            ended: None,
            ways: Vec::new(),
        }),
    });
    held.extend(sent, &reply);
    let grant = Grant {
        key: key.to_string(),
        token: Some(token),
        holder: holder.to_string(),
    };
    env.history.count("grants: HTTP");
    env.history.event(format!(
        "{holder} HTTP granted {key} token {token} via {url} ({manner:?}, {}ms left)",
        reply.body["time_left_ms"]
    ));
    // The acquire's deadline counts from before the wait: after a wait, a heartbeat at
    // once counts from now (docs/http.md).
    if !wait.is_zero() {
        beat(env, store, &held).await;
    }
    let stop_beating = match manner {
        Manner::Vanishes => Some(Instant::now() + rng.millis(Duration::ZERO, hold)),
        _ => None,
    };
    let keeper = tokio::spawn(keep(env.clone(), s, held.clone(), every, stop_beating));
    // A vanishing holder acts until its deadline.
    let until = Instant::now()
        + if stop_beating.is_some() {
            hold + 3 * TTL
        } else {
            hold
        };
    let why = loop {
        let t = now_ns();
        // Stamp first, then check: the act happened before the deadline.
        {
            let st = held.state();
            if let Some(why) = &st.ended {
                break why.clone();
            }
            if Instant::now() >= st.deadline {
                break "deadline passed".to_string();
            }
        }
        env.history.act(&grant, t);
        if Instant::now() >= until {
            break "hold over".to_string();
        }
        tokio::time::sleep(ACT_EVERY).await;
    };
    keeper.abort();
    let _ = keeper.await;
    let end = match why.as_str() {
        "hold over" => {
            let end = release(env, store, &held).await;
            if manner == Manner::ReleasesTwice {
                tokio::time::sleep(rng.millis(Duration::ZERO, Duration::from_millis(1500))).await;
                let again = rng.below(store.http.len() as u64) as usize;
                let r = http(store, again).try_post("/v1/release", held.id()).await;
                env.history.count("http: released twice");
                env.history.event(format!(
                    "{holder} {key} released again via {}: {}",
                    store.http[again].0,
                    r.map_or_else(|e| e.to_string(), |r| format!("{} {}", r.status, r.body))
                ));
            }
            end
        }
        "deadline passed" if manner == Manner::Vanishes => {
            env.history.count("http: vanished");
            env.history.event(format!(
                "{holder} {key} stopped at its deadline and vanished"
            ));
            End::Other
        }
        _ => {
            env.history.count(format!("http: ended: {why}"));
            env.history.event(format!("{holder} {key} stopped: {why}"));
            if why == "deadline passed" {
                // Stopped: say so, so that the key goes back at once. (After a 410
                // the keeper has said so.)
                let _ = release(env, store, &held).await;
            }
            match why.contains("revoked") {
                true => End::Other,
                false => End::Lost,
            }
        }
    };
    env.history.end(holder, end);
    let st = held.state();
    let mut ways = env.http_ways.lock().unwrap();
    ways.extend(st.ways.iter().cloned());
    ways.push(held.way_seen(store, &st, now_ns()));
    true
}

/// Releases the lease through the server it is held through now: `Released` if the
/// server confirmed it.
async fn release(env: &Env, store: &Store, held: &Held) -> End {
    let way = held.state().way;
    let r = http(store, way).try_post("/v1/release", held.id()).await;
    let released = matches!(&r, Ok(r) if r.status == 200 && r.body["released"] == json!(true));
    env.history.event(format!(
        "{} {} released via {}: {}",
        held.holder,
        held.key,
        store.http[way].0,
        r.map_or_else(|e| e.to_string(), |r| format!("{} {}", r.status, r.body))
    ));
    if released {
        End::Released
    } else {
        End::Other
    }
}

/// Heartbeats every `every` (on a fixed schedule) until the lease ends, or, for a
/// vanishing holder, until `stop_beating`.
async fn keep(
    env: Arc<Env>,
    s: usize,
    held: Arc<Held>,
    every: Duration,
    stop_beating: Option<Instant>,
) {
    let store = &env.stores[s];
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if held.state().ended.is_some() {
            return;
        }
        if stop_beating.is_some_and(|t| Instant::now() >= t) {
            (env.history).event(format!("{} {} stops heartbeating", held.holder, held.key));
            return;
        }
        beat(&env, store, &held).await;
    }
}

/// One heartbeat through the server the lease is held through, and what its answer
/// (or its silence) calls for.
async fn beat(env: &Env, store: &Store, held: &Held) {
    let way = held.state().way;
    let sent = Instant::now();
    match http(store, way).try_post("/v1/heartbeat", held.id()).await {
        Ok(r) if r.status == 200 => held.extend(sent, &r),
        Ok(r) if r.status == 410 && store.shared && RESUMED.contains(&r.code()) => {
            env.history.event(format!(
                "{} {} heartbeat via {}: {}: re-attaching",
                held.holder,
                held.key,
                store.http[way].0,
                code(&r)
            ));
            // `handed_over`: its server is going; the others first. `not_held`: its
            // server most likely restarted and forgot the lease: it first.
            let first = match r.code() {
                "not_held" => way,
                _ => (way + 1) % store.http.len(),
            };
            reattach(env, store, held, first).await;
        }
        Ok(r) if r.status == 410 => stop(env, store, held, way, code(&r)).await,
        // Anything else (a 503: the store is away): the next heartbeat may do better;
        // the deadline decides.
        Ok(_) => {}
        Err(e) if store.shared => {
            env.history.count("http: heartbeat unanswered");
            env.history.event(format!(
                "{} {} heartbeat via {}: {e}: re-attaching",
                held.holder, held.key, store.http[way].0
            ));
            reattach(env, store, held, (way + 1) % store.http.len()).await;
        }
        Err(e) => {
            env.history.count("http: heartbeat unanswered");
            env.history.event(format!(
                "{} {} heartbeat via {}: {e}: the deadline decides",
                held.holder, held.key, store.http[way].0
            ));
        }
    }
}

/// The lease is over (`why`): stop acting, then say so through server `way`, so that
/// the key goes back at once.
async fn stop(env: &Env, store: &Store, held: &Held, way: usize, why: String) {
    held.state().ended = Some(why);
    let r = http(store, way).try_post("/v1/release", held.id()).await;
    env.history.event(format!(
        "{} {} stopped; release via {}: {}",
        held.holder,
        held.key,
        store.http[way].0,
        r.map_or_else(|e| e.to_string(), |r| format!("{} {}", r.status, r.body))
    ));
}

/// Re-attaches the lease through the store's servers in turn from `first`, until one
/// takes it back, one says it is over, or the deadline passes.
async fn reattach(env: &Env, store: &Store, held: &Held, first: usize) {
    let n = store.http.len();
    for tried in 1.. {
        if Instant::now() >= held.state().deadline {
            return;
        }
        let way = (first + tried - 1) % n;
        let body = json!({
            "key": held.key,
            "ttl_ms": TTL.as_millis() as u64,
            "metadata": held.metadata,
            "resume": held.token.to_string(),
        });
        let sent = Instant::now();
        let url = &store.http[way].0;
        match http(store, way).try_post("/v1/acquire", body).await {
            Ok(r) if r.status == 200 && r.body["token"] == json!(held.token.to_string()) => {
                held.extend(sent, &r);
                held.moved(store, way, true);
                env.history.count("http: re-attached");
                env.history.event(format!(
                    "{} {} re-attached via {url} ({}ms left)",
                    held.holder, held.key, r.body["time_left_ms"]
                ));
                return;
            }
            // A 200 here granted another lease than this one (no resume does that).
            Ok(r) if r.status == 410 || r.status == 200 => {
                env.history.event(format!(
                    "{} {} re-attach via {url}: {} {}",
                    held.holder, held.key, r.status, r.body
                ));
                let why = format!("re-attach refused: {}", code(&r));
                return stop(env, store, held, way, why).await;
            }
            Ok(r) => env.history.event(format!(
                "{} {} re-attach via {url}: {}",
                held.holder,
                held.key,
                code(&r)
            )),
            Err(e) => env.history.event(format!(
                "{} {} re-attach via {url}: {e}",
                held.holder, held.key
            )),
        }
        if tried % n == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
