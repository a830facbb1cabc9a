//! `leases elect`: run a command while this candidate leads (like `etcdctl elect`), and
//! `leases elect --observe`: print who leads at each change (like `etcdctl elect -l`).
//!
//! A candidate campaigns by acquiring the key with its identity as the lease's metadata,
//! waiting inside the leaser for as long as it takes: the convention of the library's
//! [`leases::election`], so that its `Election`s and `Observer`s and these commands see
//! each other. It does not use `Election` itself for the command: an `Election` gives
//! the key back the moment a term ends (revoked, say), while a command being stopped is
//! still a holder until its last process is dead. So each term is a `run`: acquired with
//! `keep_until_released`, the command started anew, its whole tree stopped when the
//! term ends (SIGTERM, then SIGKILL before the key could be granted elsewhere: run.rs),
//! and only then the key given back. After a lost term the candidate pauses (1 s,
//! doubling up to the TTL for terms lost in a row) and campaigns again; when the command
//! exits on its own, `leases` exits with its code. A stop signal (SIGINT, SIGTERM,
//! SIGHUP, SIGQUIT) ends the candidacy: passed on to the command while a term runs, it
//! ends `leases` with the command's code, or with 128 + N once the tree is dead if the
//! term was lost meanwhile (even while being stopped): it is never forgotten for a new
//! campaign. Ctrl-Z between terms stops `leases` like any job; it campaigns on when
//! continued.
//!
//! The observer is the library's `leases::election::Observer`, which looks every `--interval`.

use std::ffi::OsString;
use std::time::Duration;

use leases::election::LeaderInfo;
use leases::{AcquireOptions, Key};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::acquire::{acquire, Acquired};
use crate::exit::{Failure, BACKEND, INTERNAL};
use crate::retry::Retry;
use crate::run::{keep, Term};
use crate::signals::{signal_name, stop_self, Watch};
use crate::source::Source;

/// What `elect` needs, parsed.
pub(crate) struct ElectPlan {
    pub(crate) key: Key,
    pub(crate) identity: String,
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
    pub(crate) retry: bool,
    pub(crate) command: Vec<OsString>,
}

/// The first pause after a lost term.
const FIRST_PAUSE: Duration = Duration::from_secs(1);

/// Campaigns, runs the command while leading, again after every lost term; the exit code
/// is the command's once it exits on its own.
pub(crate) async fn elect(source: &Source, plan: ElectPlan) -> Result<u8, Failure> {
    let ElectPlan {
        key,
        identity,
        ttl,
        grace,
        retry,
        command,
    } = plan;
    let mut watch = Watch::install()?;
    let env = [("LEASES_IDENTITY".to_string(), identity.clone())];
    let mut pause = FIRST_PAUSE;
    loop {
        let options = AcquireOptions::new(ttl)
            .metadata(identity.clone())
            .keep_until_released();
        let mut retry = retry.then(|| Retry::within(Duration::MAX));
        let forever = Some(Duration::MAX);
        let acquired = acquire(
            source,
            &key,
            options,
            forever,
            retry.as_mut(),
            &mut watch.signals,
        )
        .await?;
        let (lease, ctx) = match acquired {
            Acquired::Held(lease, ctx) => (lease, ctx),
            Acquired::Interrupted(code) => return Ok(code),
        };
        let token = lease.token();
        eprintln!("leases: {identity} leads {key} (token {token}); starting the command");
        let started = Instant::now();
        let term = Term {
            ttl,
            grace,
            command: &command,
            env: &env,
        };
        let held = keep(source, &key, lease, ctx, term, &mut watch).await?;
        let Some(lost) = held.lost else {
            return Ok(held.code);
        };
        // Told to stop while the term ran (or while it was being stopped): the
        // candidacy ends with this term, as it would have between terms.
        if let Some(sig) = held.interrupted {
            eprintln!(
                "leases: {lost}; interrupted ({}): not campaigning again",
                signal_name(sig)
            );
            return Ok(interrupted_code(sig));
        }
        // A term that lasted was not part of a run of failures.
        if started.elapsed() > ttl {
            pause = FIRST_PAUSE;
        }
        eprintln!(
            "leases: {lost}; campaigning again in {}",
            crate::duration::human_approx(pause)
        );
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                sig = watch.signals.recv() => {
                    // Ctrl-Z: stopped like any job (no command runs now), and the
                    // pause goes on once continued.
                    if sig == libc::SIGTSTP {
                        stop_self();
                        continue;
                    }
                    eprintln!("leases: interrupted ({}) between terms", signal_name(sig));
                    return Ok(interrupted_code(sig));
                }
            }
        }
        pause = (pause * 2).min(ttl);
    }
}

/// The exit code for a stop signal, as shells report a command killed by it.
fn interrupted_code(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(255)
}

/// Prints the leader of `key` (identity and token, or nobody) at every change, every
/// `interval` at the most, until SIGINT or SIGTERM (exit 0).
pub(crate) async fn observe(
    source: &Source,
    key: &Key,
    interval: Duration,
    json: bool,
) -> Result<u8, Failure> {
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| Failure::new(INTERNAL, format!("cannot handle SIGINT: {e}")))?;
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| Failure::new(INTERNAL, format!("cannot handle SIGTERM: {e}")))?;
    let observer = source
        .observe(key, interval)
        .await
        .map_err(|e| Failure::from_lease_error(&e))?;
    let mut leaders = observer.subscribe();
    loop {
        let leader = leaders.borrow_and_update().clone();
        print_leader(key, leader.as_ref(), json);
        tokio::select! {
            changed = leaders.changed() => {
                if changed.is_err() {
                    return Err(Failure::new(
                        BACKEND,
                        format!("{key}: the observer stopped (see the log above)"),
                    ));
                }
            }
            _ = interrupt.recv() => return Ok(0),
            _ = terminate.recv() => return Ok(0),
        }
    }
}

/// One line: `IDENTITY TOKEN`, or `-` while nobody leads; with `json`, an object whose
/// token is a decimal string (as in `list --json`).
fn print_leader(key: &Key, leader: Option<&LeaderInfo>, json: bool) {
    if json {
        let line = serde_json::json!({
            "key": key.to_string(),
            "identity": leader.map(|l| l.identity.clone()),
            "token": leader.map(|l| l.token.to_string()),
        });
        println!("{line}");
    } else {
        match leader {
            Some(l) => println!("{} {}", l.identity, l.token),
            None => println!("-"),
        }
    }
}
