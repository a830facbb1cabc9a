//! The whole-stack checker's nemesis: every 250–900 ms one random fault or operation,
//! each logged in the history (with the time) and counted by kind.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use h2::Reason;
use leases::{ClientLeaser, Key};

use crate::clients::hold_once;
use crate::h2proxy::{ConnFault, StreamReset};
use crate::history::History;
use crate::support::proxy::Fault;
use crate::support::rng::XorShift;
use crate::world::{Chain, World, LEASES};

/// The `RST_STREAM` codes injected upstream.
const CODES: &[(Reason, &str)] = &[
    (Reason::NO_ERROR, "NO_ERROR"),
    (Reason::CANCEL, "CANCEL"),
    (Reason::INTERNAL_ERROR, "INTERNAL_ERROR"),
    (Reason::PROTOCOL_ERROR, "PROTOCOL_ERROR"),
    (Reason::REFUSED_STREAM, "REFUSED_STREAM"),
    (Reason::ENHANCE_YOUR_CALM, "ENHANCE_YOUR_CALM"),
];

/// The least of each counter a run of `seconds` must reach, or it proves nothing.
pub fn minimums(seconds: u64) -> Vec<(&'static str, u64)> {
    // About 100 actions a minute, dealt from a deck of 20 slots: every slot comes up ~5
    // times a minute; a few find nothing to act on (a fault already in force there).
    let k = (seconds / 60).max(1);
    let mut v = vec![
        ("grants: ClientLeaser", 10 * k),
        ("grants: FTL", 5 * k),
        ("grants: leases run", 5 * k),
        ("grants: HTTP", 5 * k),
        ("fault: delay", k),
        ("fault: blackhole", k),
        ("fault: tcp reset", k),
        ("fault: half-open", k),
        ("fault: GOAWAY graceful", k),
        ("fault: GOAWAY abrupt", k),
        ("fault: server SIGSTOP", k),
        ("fault: server SIGKILL", k),
        ("fault: server SIGTERM", k),
        // The rolling restarts (restarts.rs): one every 3.5-7 s, SIGKILL one in four.
        ("roll: SIGTERM", 3 * k),
        ("roll: SIGKILL", k),
        ("fault: postgres restart", k),
        ("fault: leases run SIGTERM", k),
        ("op: revoke", 3 * k),
        ("op: revoke twice", k),
    ];
    v.push(("fault: RST_STREAM (any code)", 3 * k));
    v
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Runs until the clients' stop time, then heals everything.
pub async fn run(world: Arc<World>, mut rng: XorShift) {
    let stop_at = world.env.stop_at;
    let mut tasks = tokio::task::JoinSet::new();
    // Slots are dealt from a shuffled deck, so that every kind comes up as often in
    // every run (the minimum counts must not depend on luck).
    let mut deck: Vec<u64> = Vec::new();
    while Instant::now() < stop_at {
        tokio::time::sleep(rng.millis(Duration::from_millis(250), Duration::from_millis(900)))
            .await;
        if deck.is_empty() {
            deck = (0..20).collect();
            for i in (1..deck.len()).rev() {
                deck.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let pick = deck.pop().unwrap();
        let world2 = world.clone();
        let seed = rng.next();
        tasks.spawn(async move { act(world2, pick, XorShift::new(seed)).await });
    }
    while tasks.join_next().await.is_some() {}
    for c in &world.chains {
        c.set_link(c.base);
    }
    for s in &world.servers {
        s.signal(libc::SIGCONT);
    }
    world.env.history.event("nemesis: healed, faults over");
}

async fn act(world: Arc<World>, pick: u64, mut rng: XorShift) {
    let h = &world.env.history;
    let log = |kind: &str, what: String| {
        h.count(kind.to_string());
        h.event(format!("{kind}: {what}"));
    };
    match pick {
        // Link faults on a general chain (ClientLeaser and `leases run --server`); delays
        // most often, as a slow link is what hides an ended lease from its holder.
        0..=4 => {
            let general: Vec<_> = world.chains.iter().filter(|c| !c.ftl).collect();
            let c = general[rng.below(general.len() as u64) as usize];
            if c.busy.swap(true, Ordering::SeqCst) {
                return;
            }
            let hold = rng.millis(Duration::from_millis(300), Duration::from_secs(4));
            let (kind, fault) = match pick {
                0 | 1 => (
                    "fault: delay",
                    Fault::Delay(
                        rng.millis(Duration::from_millis(100), Duration::from_millis(800)),
                    ),
                ),
                2 => ("fault: blackhole", Fault::Blackhole),
                3 => ("fault: tcp reset", Fault::Reset),
                _ => ("fault: half-open", Fault::HalfOpen),
            };
            log(kind, format!("{} {fault} for {}", c.name, secs(hold)));
            link_fault(h, c, fault, hold).await;
        }
        // FTL chains: resets and short delays only.
        5 => {
            let ftl: Vec<_> = world.chains.iter().filter(|c| c.ftl).collect();
            let c = ftl[rng.below(ftl.len() as u64) as usize];
            if c.busy.swap(true, Ordering::SeqCst) {
                return;
            }
            let (kind, fault, hold) = if rng.below(2) == 0 {
                (
                    "fault: tcp reset",
                    Fault::Reset,
                    rng.millis(Duration::from_millis(50), Duration::from_millis(800)),
                )
            } else {
                (
                    "fault: delay",
                    Fault::Delay(rng.millis(Duration::from_millis(20), Duration::from_millis(500))),
                    rng.millis(Duration::from_millis(300), Duration::from_secs(3)),
                )
            };
            log(kind, format!("{} {fault} for {}", c.name, secs(hold)));
            link_fault(h, c, fault, hold).await;
        }
        // RST_STREAM upstream on a lease stream; the client hears nothing for a while.
        6..=8 => {
            let streams: Vec<_> = (world.chains.iter())
                .flat_map(|c| c.h2.streams().into_iter().map(move |s| (c, s)))
                .filter(|(_, (_, p, _))| p.ends_with("/Hold") || p.ends_with("/AcquireLease"))
                .collect();
            if streams.is_empty() {
                return;
            }
            let (c, (id, path, label)) = &streams[rng.below(streams.len() as u64) as usize];
            let (reason, name) = CODES[rng.below(CODES.len() as u64) as usize];
            let client_after = rng.millis(Duration::ZERO, Duration::from_millis(1500));
            if c.h2.reset_stream(
                *id,
                StreamReset {
                    reason,
                    client_after,
                },
            ) {
                h.count("fault: RST_STREAM (any code)");
                log(
                    &format!("fault: RST_STREAM {name}"),
                    format!(
                        "{} stream {id} {path} ({label}) upstream; the client's side reset after {}",
                        c.name,
                        secs(client_after)
                    ),
                );
                // Someone wants the key the broken stream held, as after any fault
                // that cuts a holder off: a key freed too early is then taken at once.
                if let Some(key) = label_key(label) {
                    contend(&world, key, &mut rng).await;
                }
            }
        }
        // GOAWAY to a client connection: graceful in slot 9, abrupt in slot 15.
        9 | 15 => {
            let conns: Vec<_> = (world.chains.iter())
                .flat_map(|c| c.h2.conns().into_iter().map(move |id| (c, id)))
                .collect();
            if conns.is_empty() {
                return;
            }
            let (c, id) = conns[rng.below(conns.len() as u64) as usize];
            if pick == 9 {
                if c.h2.conn_fault(id, ConnFault::GracefulGoaway) {
                    log("fault: GOAWAY graceful", format!("{} conn {id}", c.name));
                }
            } else {
                let (reason, name) = CODES[rng.below(CODES.len() as u64) as usize];
                if c.h2.conn_fault(id, ConnFault::AbruptGoaway(reason)) {
                    log(
                        "fault: GOAWAY abrupt",
                        format!("{} conn {id} {name}", c.name),
                    );
                }
            }
        }
        // Servers: SIGSTOP/SIGCONT any; SIGKILL or SIGTERM and restart a PostgreSQL one.
        10..=12 => crate::restarts::server_fault(&world, pick, &mut rng).await,
        // `leases run` processes: SIGTERM any; SIGKILL one whose command does not fork
        // (a killed `leases run` cannot stop forked jobs: the documented limit).
        13 => {
            let runs: Vec<(u32, bool)> = world
                .env
                .runs
                .lock()
                .unwrap()
                .iter()
                .map(|(p, f)| (*p, *f))
                .collect();
            if runs.is_empty() {
                return;
            }
            let (pid, forks) = runs[rng.below(runs.len() as u64) as usize];
            let (sig, kind) = if !forks && rng.below(3) == 0 {
                (libc::SIGKILL, "fault: leases run SIGKILL")
            } else {
                (libc::SIGTERM, "fault: leases run SIGTERM")
            };
            // Only while the worker still waits for it (it is in `runs`): not reaped.
            if world.env.runs.lock().unwrap().contains_key(&pid) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, sig) };
                log(kind, format!("pid {pid}"));
            }
        }
        // PostgreSQL stopped (immediate) and started again.
        14 => {
            if world.pg_busy.swap(true, Ordering::SeqCst) {
                return;
            }
            let down = rng.millis(Duration::from_millis(300), Duration::from_secs(3));
            log(
                "fault: postgres restart",
                format!("stopped for {}", secs(down)),
            );
            let pg = world.pg.clone();
            let _ = tokio::task::spawn_blocking(move || {
                pg.stop();
                std::thread::sleep(down);
                pg.start_again();
            })
            .await;
            h.event("heal: postgres started");
            world.pg_busy.store(false, Ordering::SeqCst);
        }
        // Revoke through any server or the CLI; sometimes twice.
        _ => {
            let store = &world.env.stores[rng.below(world.env.stores.len() as u64) as usize];
            let mut key = store.keys[rng.below(store.keys.len() as u64) as usize].clone();
            // Half of the PostgreSQL revokes aim at a key held through the far server,
            // and go through another way (issue #19's first defect).
            let mut elsewhere = false;
            if store.name == "pg" && rng.below(2) == 0 {
                if let Some(k) = held_via_far(&world, store, &mut rng).await {
                    key = k;
                    elsewhere = true;
                }
            }
            let twice = rng.below(2) == 0;
            h.count("op: revoke");
            if twice {
                h.count("op: revoke twice");
            }
            // A revoke aimed at a far holder hands the key over, as an operator would:
            // someone waits for it through pg-b meanwhile.
            let mut taker = None;
            if elsewhere {
                let env = world.env.clone();
                let url = (world.chains.iter())
                    .find(|c| c.name == "pg-b")
                    .map(|c| format!("http://{}", c.tcp.addr()))
                    .unwrap();
                let (key, hold) = (
                    key.clone(),
                    rng.millis(Duration::from_millis(200), Duration::from_secs(3)),
                );
                let holder = format!("taker{}", rng.below(1_000_000));
                taker = Some(tokio::spawn(async move {
                    let Ok(leaser) = ClientLeaser::connect(url.clone()).await else {
                        return;
                    };
                    let wait = Duration::from_secs(6);
                    hold_once(&env, &leaser, &key, &url, &holder, wait, hold).await;
                }));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for n in 0..(1 + twice as u64) {
                if n == 1 {
                    tokio::time::sleep(rng.millis(Duration::ZERO, Duration::from_millis(1500)))
                        .await;
                }
                revoke(&world, store.name, &key, elsewhere, &mut rng).await;
            }
            if let Some(taker) = taker {
                let _ = taker.await;
            }
        }
    }
}

/// The key of a lease stream's label (see `clients::stream_label`).
/// Puts `fault` on the link of chain `c` (taken busy by the caller) for `hold`, then
/// heals it and frees the chain.
async fn link_fault(h: &History, c: &Chain, fault: Fault, hold: Duration) {
    c.set_link(fault);
    tokio::time::sleep(hold).await;
    c.set_link(c.base);
    h.event(format!("heal: {} {}", c.name, c.base));
    c.busy.store(false, Ordering::SeqCst);
}

fn label_key(label: &str) -> Option<String> {
    if let Some(key) = label.strip_prefix("FTL ") {
        return Some(key.to_string());
    }
    let rest = label.strip_prefix("Hold ")?;
    rest.split(' ').next().map(str::to_string)
}

/// A client that waits a few seconds for `key` through a random server of its store,
/// and holds it for a moment if it gets it.
async fn contend(world: &Arc<World>, key: String, rng: &mut XorShift) {
    let Some(store) =
        (world.env.stores.iter()).find(|s| s.keys.contains(&key) || s.leader_keys.contains(&key))
    else {
        return;
    };
    let url = store.urls[rng.below(store.urls.len() as u64) as usize].clone();
    let env = &world.env;
    let hold = rng.millis(Duration::from_millis(200), Duration::from_secs(2));
    let holder = format!("taker{}", rng.below(1_000_000));
    // Awaited here, in this fault's own task, so that the run waits for it.
    let Ok(leaser) = ClientLeaser::connect(url.clone()).await else {
        return;
    };
    hold_once(
        env,
        &leaser,
        &key,
        &url,
        &holder,
        Duration::from_secs(5),
        hold,
    )
    .await;
}

/// A key of `store` whose holder came in through the far server (pg-a), if any.
async fn held_via_far(
    world: &World,
    store: &crate::clients::Store,
    rng: &mut XorShift,
) -> Option<String> {
    let far: Vec<String> = (world.chains.iter())
        .filter(|c| world.servers[c.server].name == "pg-a")
        .flat_map(|c| {
            // The HTTP holders' way in to pg-a too.
            let http = c.http.as_ref().map(|p| p.addr());
            [Some(c.tcp.addr()), http].into_iter().flatten()
        })
        .map(|addr| format!("via http://{addr}"))
        .collect();
    let near = world.servers.iter().find(|s| s.name == "pg-b")?;
    let c = tokio::time::timeout(
        Duration::from_secs(2),
        ClientLeaser::connect(format!("http://{}", near.addr())),
    )
    .await
    .ok()?
    .ok()?;
    let mut found = Vec::new();
    for key in &store.keys {
        let info = tokio::time::timeout(
            Duration::from_secs(2),
            c.lease_info(&Key::parse(key).unwrap()),
        )
        .await;
        if let Ok(Ok(Some(info))) = info {
            let meta = String::from_utf8_lossy(&info.metadata);
            if !info.revoked && far.iter().any(|f| meta.ends_with(f.as_str())) {
                found.push(key.clone());
            }
        }
    }
    (!found.is_empty()).then(|| found[rng.below(found.len() as u64) as usize].clone())
}

/// One revoke of `key` in `store`, through a random way (`elsewhere`: not through
/// pg-a); logged with its outcome.
async fn revoke(world: &World, store: &str, key: &str, elsewhere: bool, rng: &mut XorShift) {
    let h = &world.env.history;
    let servers: Vec<_> = (world.servers.iter())
        .filter(|s| s.store == store && !(elsewhere && s.name == "pg-a"))
        .collect();
    let s = servers[rng.below(servers.len() as u64) as usize];
    let url = format!("http://{}", s.addr());
    let how = if store == "pg" {
        rng.below(3)
    } else {
        rng.below(2)
    };
    let aim = if elsewhere {
        " (held through the far pg-a)"
    } else {
        ""
    };
    h.event(format!("op: revoke {key} starts{aim}"));
    let outcome = match how {
        0 => {
            let r = tokio::time::timeout(Duration::from_secs(5), async {
                let c = ClientLeaser::connect(url.clone()).await?;
                c.revoke(&Key::parse(key).unwrap()).await
            })
            .await;
            format!("via {} (ClientLeaser::revoke): {r:?}", s.name)
        }
        _ => {
            let (flag, target) = if how == 1 {
                ("--server", url.clone())
            } else {
                ("--postgres", world.pg.url())
            };
            let out = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::process::Command::new(LEASES)
                    .args(["revoke", flag, &target, key])
                    .env_remove("LEASES_SERVER")
                    .env_remove("LEASES_POSTGRES_URL")
                    .output(),
            )
            .await;
            match out {
                Ok(Ok(o)) => format!(
                    "via `leases revoke {flag}` ({}): {} {}",
                    if how == 1 {
                        s.name.as_str()
                    } else {
                        "postgres"
                    },
                    o.status,
                    String::from_utf8_lossy(&o.stdout).trim()
                ),
                other => format!("via `leases revoke {flag}`: {other:?}"),
            }
        }
    };
    h.event(format!("op: revoke {key} {outcome}"));
}
