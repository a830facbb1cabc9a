//! Acquire attempts: asked inline of a backend that needs no I/O, or run in a task of
//! their own, which waits (without polling the backend) while its caller allows, and
//! which reports back to the supervisor whatever happens to it ([`Report`]).
//!
//! Its log events keep the target `leases::manager::io` they had before the manager was split
//! into files, so that users' log filters still match them.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, ActorStatus};
use tokio::time::Instant;

use super::grant::Grant;
use super::messages::{Attempt, ManagerMessage, Msg, Waiter};
use super::tasks::{catch_panic, InFlight};
use crate::backend::{AcquireOutcome, Backend, RenewOutcome};
use crate::error::{BackendError, BackendErrorKind, LeaseError};
use crate::key::Key;
use crate::leaser::AcquireOptions;

/// The shortest pause between two tries on a key the backend calls held, so that an
/// answer of "held, expires now" (a lease expiring between two statements) does not
/// turn into a tight loop of round trips.
const RETRY_FLOOR: Duration = Duration::from_millis(10);

/// How often a waiting attempt checks whether its caller is still there (the reply
/// port can only be asked, not awaited).
const CALLER_CHECK: Duration = Duration::from_millis(500);

/// Asks a backend that can answer without I/O (see
/// [`InlineBackend`](crate::backend::InlineBackend)) to acquire,
/// on the supervisor's mailbox. `None`: it cannot answer now; run [`start_attempt`].
pub(crate) fn acquire_inline(
    backend: &Arc<dyn Backend>,
    inflight: &InFlight,
    key: &Key,
    options: &AcquireOptions,
) -> Option<Attempt> {
    let (started, since) = (Instant::now(), crate::clock::suspended());
    let answer = catch_panic(|| {
        backend
            .inline()
            .and_then(|b| b.acquire_now(key, options.ttl, &options.metadata))
    })?;
    Some(Attempt::from_answer(
        answer, backend, inflight, key, started, since,
    ))
}

/// Starts an acquire attempt for `waiter` in a task; it reports back with
/// [`Msg::Attempted`], whatever happens (see [`Report`]).
pub(crate) fn start_attempt(
    me: &ActorRef<ManagerMessage>,
    backend: Arc<dyn Backend>,
    inflight: &InFlight,
    key: Key,
    waiter: Waiter,
) {
    let report = Report {
        me: me.clone(),
        key,
        waiter: Some(waiter),
    };
    let grants = inflight.clone();
    inflight.spawn(async move {
        let mut report = report;
        let (me, key, waiter) = (&report.me, &report.key, report.waiter.as_ref());
        let Some(waiter) = waiter else { return };
        // Give up when the caller has, or when the manager has stopped: a shutdown ends
        // waiters whose attempts are running too, not only those still queued (the
        // report then finds nobody, and the caller hears `ManagerStopped`).
        let gave_up = || {
            waiter.reply.is_closed()
                || !matches!(
                    me.get_status(),
                    ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
                )
        };
        let outcome = attempt(
            backend,
            &grants,
            key,
            &waiter.options,
            waiter.until,
            gave_up,
        )
        .await;
        report.send(outcome);
    });
}

/// Runs one acquire attempt, waiting (without polling the backend) for the key to be
/// freed or to expire while `until` allows, and giving up as soon as the caller has.
async fn attempt(
    backend: Arc<dyn Backend>,
    inflight: &InFlight,
    key: &Key,
    options: &AcquireOptions,
    until: Option<Instant>,
    gave_up: impl Fn() -> bool,
) -> Attempt {
    // Subscribe before the first try, so that a release between a `Held` answer and
    // the wait is not missed.
    let mut freed = match until {
        Some(_) => backend.subscribe_freed(),
        None => crate::backend::FreedKeys::none(),
    };
    if let Some(token) = options.resume {
        return resume(backend, inflight, key, options.ttl, token).await;
    }
    loop {
        let (started, since) = (Instant::now(), crate::clock::suspended());
        let answer = backend.acquire(key, options.ttl, &options.metadata).await;
        let expires_in = match answer {
            Ok(AcquireOutcome::Held { expires_in }) if until.is_some() => expires_in,
            answer => return Attempt::from_answer(answer, &backend, inflight, key, started, since),
        };
        let until = until.unwrap_or(started);
        // Wait for a release, the holder's expiry or our own deadline; look at the
        // caller now and then, without asking the backend anything.
        let wake = Instant::now() + expires_in.max(RETRY_FLOOR);
        loop {
            let now = Instant::now();
            if gave_up() {
                return Attempt::Conflict;
            }
            if now >= until {
                return Attempt::TimedOut;
            }
            let next = wake.min(until).min(now + CALLER_CHECK);
            if freed.wait_for(key, next - now).await || Instant::now() >= wake {
                break;
            }
        }
        if gave_up() {
            return Attempt::Conflict;
        }
        if Instant::now() >= until {
            return Attempt::TimedOut;
        }
    }
}

/// Re-attaches the live lease `(key, token)` (see
/// [`AcquireOptions::resume`](crate::AcquireOptions::resume)): one renewal by
/// compare-and-set, which never revives a lease that has ended.
async fn resume(
    backend: Arc<dyn Backend>,
    inflight: &InFlight,
    key: &Key,
    ttl: Duration,
    token: u64,
) -> Attempt {
    // The lease keeps its TTL: renewed with two TTLs at once (here and by the manager
    // that held it, until it lets go), the shorter would cut the longer one's promise
    // short. Its TTL never changes, so a look before the renewal is enough.
    match backend.info(key).await {
        Ok(Some(info)) if info.token == token && !info.revoked => {
            // Stores keep TTLs to their precision (PostgreSQL: whole milliseconds).
            if info.ttl.abs_diff(ttl) >= Duration::from_millis(1) {
                return Attempt::Refused(LeaseError::ResumeTtl {
                    asked: ttl,
                    held: info.ttl,
                });
            }
        }
        Ok(_) => return Attempt::Refused(LeaseError::NotHeld),
        Err(e) => return Attempt::Failed(e),
    }
    let (started, since) = (Instant::now(), crate::clock::suspended());
    match backend.renew(key, token, ttl).await {
        Ok(RenewOutcome::Renewed) => Attempt::Granted {
            grant: Grant::resumed(backend.clone(), inflight.clone(), key.clone(), token),
            started,
            since,
        },
        Ok(RenewOutcome::Revoked | RenewOutcome::Lost) => Attempt::Refused(LeaseError::NotHeld),
        Err(e) => Attempt::Failed(e),
    }
}

/// The way an attempt task reports back, whatever happens to it: if the task ends
/// without reporting (a panic in the backend, say), dropping this sends a failure, so
/// the key's slot is never left busy and the caller gets an answer.
struct Report {
    me: ActorRef<ManagerMessage>,
    key: Key,
    waiter: Option<Waiter>,
}

impl Report {
    fn send(&mut self, outcome: Attempt) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let msg = Msg::Attempted {
            key: self.key.clone(),
            waiter,
            outcome,
        };
        // If the manager stopped meanwhile, the message comes back and is dropped here,
        // and with it any grant it carries, which gives the key back (see `Grant`).
        let _ = self.me.send_message(ManagerMessage(msg));
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if self.waiter.is_some() {
            let why = if std::thread::panicking() {
                "the backend panicked during an acquire"
            } else {
                "the acquire attempt ended without an answer"
            };
            tracing::error!(target: "leases::manager::io", key = %self.key, "{why}");
            self.send(Attempt::Failed(BackendError::new(
                BackendErrorKind::Failed,
                why,
            )));
        }
    }
}
