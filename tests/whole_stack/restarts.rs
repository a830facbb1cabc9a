//! Servers stopped, killed and restarted: the nemesis's server faults (a random server
//! frozen, or a PostgreSQL one killed or terminated and started again), and the
//! rolling restarts that run beside the nemesis for the whole run, as an operator's
//! deploy does: the PostgreSQL servers one at a time, each stopped (SIGTERM, which hands
//! its leases over; sometimes SIGKILL), started again on the same address, then a
//! pause before the next. A lease held through a server that goes must re-attach
//! through another, or the same one once back (see `kept.rs` for the count).
//!
//! Every fault takes its server busy through the [`World`], which keeps another server
//! of the store up, so that the nemesis and the rolling restarts never take down the
//! same server, nor every server of a store at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::rng::XorShift;
use crate::world::{Server, World};

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The nemesis's server faults: slot 10 freezes any server for a moment; 11 and 12
/// SIGKILL or SIGTERM a PostgreSQL one and start it again.
pub async fn server_fault(world: &World, pick: u64, rng: &mut XorShift) {
    let h = &world.env.history;
    // SIGKILL and SIGTERM only for PostgreSQL servers (a memory server's leases die
    // with it).
    let servers: Vec<_> = (world.servers.iter())
        .filter(|s| pick == 10 || s.store == "pg")
        .collect();
    let s = servers[rng.below(servers.len() as u64) as usize].clone();
    if pick == 10 {
        if !world.take(&s) {
            return;
        }
        // At most 2 s: a lease renewed every TTL/3 cannot lapse meanwhile, so FTL
        // clients (no deadline rule in FTL's protocol) hear of any loss before the key
        // can go to someone else.
        let hold = rng.millis(Duration::from_millis(200), Duration::from_secs(2));
        if s.signal(libc::SIGSTOP) {
            h.count("fault: server SIGSTOP");
            h.event(format!(
                "fault: server SIGSTOP: {} for {}",
                s.name,
                secs(hold)
            ));
            tokio::time::sleep(hold).await;
            s.signal(libc::SIGCONT);
            h.event(format!("heal: {} SIGCONT", s.name));
        }
    } else {
        // Keep another PostgreSQL server up.
        if !world.take_down(&s) {
            return;
        }
        let (sig, kind) = if pick == 11 {
            (libc::SIGKILL, "fault: server SIGKILL")
        } else {
            (libc::SIGTERM, "fault: server SIGTERM")
        };
        let down = rng.millis(Duration::from_millis(300), Duration::from_secs(2));
        restart(world, &s, sig, kind, down).await;
    }
    s.busy.store(false, Ordering::SeqCst);
}

/// Sends `sig` to `s` (taken busy by the caller), waits until it has exited, waits
/// `down`, and starts it again on its address; logged and counted as `kind`, and
/// recorded as a restart of `s` in the history.
async fn restart(world: &World, s: &Arc<Server>, sig: i32, kind: &str, down: Duration) {
    let h = &world.env.history;
    if !s.signal(sig) {
        return;
    }
    h.restart(&s.name);
    h.count(kind);
    h.event(format!("{kind}: {}, restart after {}", s.name, secs(down)));
    let s2 = s.clone();
    let began = Instant::now();
    let (exited, started) = tokio::task::spawn_blocking(move || {
        s2.reap(Duration::from_secs(15));
        let exited = began.elapsed();
        std::thread::sleep(down);
        (exited, s2.start(Duration::from_secs(60)))
    })
    .await
    .unwrap_or((Duration::ZERO, false));
    h.event(format!(
        "heal: {} restarted (it exited after {}){}",
        s.name,
        secs(exited),
        if started { "" } else { " -- IT DID NOT START" }
    ));
}

/// Rolling restarts until the clients' stop time: the PostgreSQL servers in turn, each
/// taken down when another stays up (waiting while a fault of the nemesis holds it),
/// SIGTERM three times in four and SIGKILL the fourth (dealt from a shuffled deck, so
/// that every run has both), started again at once, then 3–6 s before the next.
pub async fn rolling(world: Arc<World>, mut rng: XorShift) {
    let stop_at = world.env.stop_at;
    let pg: Vec<Arc<Server>> = (world.servers.iter())
        .filter(|s| s.store == "pg")
        .cloned()
        .collect();
    let mut deck: Vec<bool> = Vec::new();
    // Let the clients get going first.
    tokio::time::sleep(rng.millis(Duration::from_secs(2), Duration::from_secs(4))).await;
    for s in pg.iter().cycle() {
        loop {
            if Instant::now() >= stop_at {
                return;
            }
            if world.take_down(s) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if deck.is_empty() {
            deck = vec![false, false, false, true];
            for i in (1..deck.len()).rev() {
                deck.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let (sig, kind) = if deck.pop().unwrap() {
            (libc::SIGKILL, "roll: SIGKILL")
        } else {
            (libc::SIGTERM, "roll: SIGTERM")
        };
        let down = rng.millis(Duration::ZERO, Duration::from_millis(500));
        restart(&world, s, sig, kind, down).await;
        s.busy.store(false, Ordering::SeqCst);
        tokio::time::sleep(rng.millis(Duration::from_secs(3), Duration::from_secs(6))).await;
    }
}
