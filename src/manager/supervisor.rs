//! The supervisor actor: the single owner of the lease table.
//!
//! Every request that changes who holds what goes through its mailbox, so its state
//! needs no locks. Its handlers never await anything but shutdown: backend I/O
//! (acquire attempts, releases, revocations) runs in tasks of their own and reports back
//! by message, so a slow database cannot delay another key's acquire or release; a
//! backend that needs no I/O (the memory backend) answers inline through
//! `acquire_now`/`release_now`; and each lease's renewal actor is started in a task and
//! attaches by message, so starting actors does not bound the mailbox either.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent,
};
use tokio::time::Instant;

use super::renewer::{Renewer, RenewerArgs, Tick};
use super::Config;
use crate::backend::{AcquireOutcome, Backend};
use crate::error::{BackendError, BackendErrorKind, LeaseError};
use crate::key::Key;
use crate::lease::{CancelReason, ContextSender, Lease, LeaseContext, LeaseOwner, LossCause};
use crate::leaser::AcquireOptions;

/// The reply to an acquire: the lease and its context, or why not.
pub type AcquireReply = Result<(Lease, LeaseContext), LeaseError>;

/// A message to the lease manager's supervisor actor.
///
/// Actors that talk to the manager directly build these with the constructors below
/// and send them with `ractor::call!`, for example
/// `ractor::call!(manager_ref, ManagerMessage::acquire, key, options)`.
pub struct ManagerMessage(pub(crate) Msg);

impl std::fmt::Debug for ManagerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.0 {
            Msg::Acquire { .. } => "Acquire",
            Msg::Attempted { .. } => "Attempted",
            Msg::Release { .. } => "Release",
            Msg::Revoke { .. } => "Revoke",
            Msg::WaitExpired { .. } => "WaitExpired",
            Msg::RevokeDone { .. } => "RevokeDone",
            Msg::Attach { .. } => "Attach",
            Msg::Shutdown { .. } => "Shutdown",
        };
        write!(f, "ManagerMessage::{name}")
    }
}

impl ManagerMessage {
    /// Acquire `key` with `options`; the reply carries the lease and its context.
    pub fn acquire(
        key: Key,
        options: AcquireOptions,
        reply: RpcReplyPort<AcquireReply>,
    ) -> ManagerMessage {
        ManagerMessage(Msg::Acquire {
            key,
            options,
            reply,
        })
    }

    /// Revoke whoever holds `key`; the reply says whether anyone did.
    pub fn revoke(key: Key, reply: RpcReplyPort<Result<bool, LeaseError>>) -> ManagerMessage {
        ManagerMessage(Msg::Revoke { key, reply })
    }

    /// Shut the manager down: every context ends with [`CancelReason::Shutdown`], every
    /// lease is released, and the actor stops before the reply.
    pub fn shutdown(reply: RpcReplyPort<()>) -> ManagerMessage {
        ManagerMessage(Msg::Shutdown { reply: Some(reply) })
    }
}

pub(crate) enum Msg {
    Acquire {
        key: Key,
        options: AcquireOptions,
        reply: RpcReplyPort<AcquireReply>,
    },
    /// An acquire attempt (run in a task) finished.
    Attempted {
        key: Key,
        waiter: Waiter,
        outcome: Attempt,
    },
    Release {
        key: Key,
        token: u64,
        reply: Option<RpcReplyPort<Result<(), LeaseError>>>,
    },
    Revoke {
        key: Key,
        reply: RpcReplyPort<Result<bool, LeaseError>>,
    },
    /// A lease's renewal actor has started.
    Attach {
        key: Key,
        token: u64,
        renewer: ActorRef<Tick>,
    },
    /// A revoke of a lease held here has reached the backend: the key may be granted
    /// again.
    RevokeDone {
        key: Key,
    },
    /// A queued waiter's wait ran out.
    WaitExpired {
        key: Key,
        waiter: u64,
    },
    Shutdown {
        reply: Option<RpcReplyPort<()>>,
    },
}

/// The result of one acquire attempt (which may have waited).
pub(crate) enum Attempt {
    /// `started` and `since` are read before the backend was asked: the instant (on
    /// tokio's clock) and the machine's suspended time (see `crate::clock`).
    Granted {
        grant: Grant,
        started: Instant,
        since: Duration,
    },
    Conflict,
    Failed(BackendError),
}

/// A lease the backend granted that nobody holds yet.
///
/// It travels in the message that reports the grant. If that message is never handled
/// (the supervisor stopped, its mailbox was dropped with the message in it, a task
/// panicked on the way), dropping the guard gives the key back, so a grant can never
/// leave a key leased by nobody for a whole TTL. The supervisor takes the token out
/// with [`Grant::hold`] when it makes the grant a holder.
pub(crate) struct Grant {
    backend: Arc<dyn Backend>,
    key: Key,
    token: Option<u64>,
}

impl Grant {
    pub(crate) fn new(backend: Arc<dyn Backend>, key: Key, token: u64) -> Grant {
        Grant {
            backend,
            key,
            token: Some(token),
        }
    }

    fn token(&self) -> u64 {
        self.token.unwrap_or_default()
    }

    /// The grant now has a holder, which is responsible for releasing it.
    fn hold(mut self) -> u64 {
        self.token.take().unwrap_or_default()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        tracing::debug!(key = %self.key, token, "giving back a grant that nobody took");
        if let Some(Ok(_)) = self.backend.release_now(&self.key, token) {
            return;
        }
        let (backend, key) = (self.backend.clone(), self.key.clone());
        // Without a runtime (it is shutting down) the lease simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = backend.release(&key, token).await;
            });
        }
    }
}

/// A caller waiting for an acquire answer.
pub(crate) struct Waiter {
    id: u64,
    options: AcquireOptions,
    reply: RpcReplyPort<AcquireReply>,
    /// When to give up waiting for a held key; `None` means do not wait.
    until: Option<Instant>,
}

struct Holder {
    token: u64,
    ctx: ContextSender,
    /// `None` until the renewal actor has started and attached.
    renewer: Option<ActorRef<Tick>>,
}

impl Drop for Holder {
    /// Runs however the supervisor's state goes away, even after a panic: a holder is
    /// never left with a live context and nobody to end it.
    fn drop(&mut self) {
        self.ctx
            .cancel(CancelReason::Lost(LossCause::ManagerFailed));
    }
}

/// Everything the manager knows about one key it holds, acquires or waits for.
#[derive(Default)]
struct Slot {
    holder: Option<Holder>,
    /// An acquire attempt is running in a task.
    busy: bool,
    /// Callers waiting for the key, first come first served.
    waiters: VecDeque<Waiter>,
}

impl Slot {
    fn is_idle(&self) -> bool {
        self.holder.is_none() && !self.busy && self.waiters.is_empty()
    }
}

/// The supervisor actor.
pub(crate) struct Supervisor;

pub(crate) struct SupervisorArgs {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Config,
}

pub(crate) struct SupervisorState {
    backend: Arc<dyn Backend>,
    config: Config,
    owner: Arc<dyn LeaseOwner>,
    /// This actor, the renewers' supervisor.
    cell: ractor::ActorCell,
    slots: HashMap<Key, Slot>,
    /// Which key each live renewal actor renews.
    renewers: HashMap<ActorId, Key>,
    next_waiter: u64,
    stopping: bool,
}

/// How a [`Lease`] handle reaches the supervisor that granted it.
struct ManagerOwner {
    actor: ActorRef<ManagerMessage>,
}

#[async_trait]
impl LeaseOwner for ManagerOwner {
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = Msg::Release {
            key: key.clone(),
            token,
            reply: Some(tx.into()),
        };
        self.actor
            .send_message(ManagerMessage(msg))
            .map_err(|_| LeaseError::ManagerStopped)?;
        rx.await.map_err(|_| LeaseError::ManagerStopped)?
    }

    fn release_on_drop(&self, key: Key, token: u64) {
        // After shutdown every lease was already released; nothing is left to do.
        let _ = self.actor.send_message(ManagerMessage(Msg::Release {
            key,
            token,
            reply: None,
        }));
    }
}

/// The shortest pause between two tries on a key the backend calls held, so that an
/// answer of "held, expires now" (a lease expiring between two statements) does not
/// turn into a tight loop of round trips.
const RETRY_FLOOR: Duration = Duration::from_millis(10);

/// How often a waiting attempt checks whether its caller is still there (the reply
/// port can only be asked, not awaited).
const CALLER_CHECK: Duration = Duration::from_millis(500);

/// Runs one acquire attempt, waiting (without polling the backend) for the key to be
/// freed or to expire while `until` allows, and giving up as soon as the caller has.
async fn attempt(
    backend: Arc<dyn Backend>,
    key: &Key,
    options: &AcquireOptions,
    until: Option<Instant>,
    gave_up: impl Fn() -> bool,
) -> Attempt {
    // Subscribe before the first try, so that a release between a `Held` answer and
    // the wait is not missed.
    let mut frees = match until {
        Some(_) => backend.subscribe_frees(),
        None => crate::backend::KeyFrees::none(),
    };
    loop {
        let (started, since) = (Instant::now(), crate::clock::suspended());
        match backend.acquire(key, options.ttl, &options.metadata).await {
            Ok(AcquireOutcome::Granted { token }) => {
                let grant = Grant::new(backend.clone(), key.clone(), token);
                return Attempt::Granted {
                    grant,
                    started,
                    since,
                };
            }
            Ok(AcquireOutcome::Held { expires_in }) => {
                let Some(until) = until else {
                    return Attempt::Conflict;
                };
                // Wait for a release, the holder's expiry or our own deadline; look at
                // the caller now and then, without asking the backend anything.
                let wake = Instant::now() + expires_in.max(RETRY_FLOOR);
                loop {
                    let now = Instant::now();
                    if gave_up() || now >= until {
                        return Attempt::Conflict;
                    }
                    let next = wake.min(until).min(now + CALLER_CHECK);
                    if frees.wait_for(key, next - now).await || Instant::now() >= wake {
                        break;
                    }
                }
                if Instant::now() >= until || gave_up() {
                    return Attempt::Conflict;
                }
            }
            Err(e) => return Attempt::Failed(e),
        }
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
            tracing::error!(key = %self.key, "{why}");
            self.send(Attempt::Failed(BackendError::new(
                BackendErrorKind::Failed,
                why,
            )));
        }
    }
}

/// Whether a lease whose context reads `reason` is given back when a revoke or a
/// shutdown ends it: a live one and a revoked one are, one lost by the holder is left to
/// expire (so the holder keeps its safety margin).
fn gives_back(reason: Option<CancelReason>) -> bool {
    matches!(reason, None | Some(CancelReason::Revoked))
}

/// Tells the supervisor that a revoke task is over, however it ends (a drop guard, so
/// that a panic cannot leave the key's slot busy).
struct RevokeDone {
    me: ActorRef<ManagerMessage>,
    /// The key whose slot the revoke keeps busy, if any.
    key: Option<Key>,
}

impl Drop for RevokeDone {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = self
                .me
                .send_message(ManagerMessage(Msg::RevokeDone { key }));
        }
    }
}

/// Runs a backend call that answers inline on the supervisor's mailbox, turning a panic
/// into a backend error: a faulty backend must not take the whole manager down.
fn catch_panic<T>(
    call: impl FnOnce() -> Option<Result<T, BackendError>>,
) -> Option<Result<T, BackendError>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|_| {
        Some(Err(BackendError::new(
            BackendErrorKind::Failed,
            "the backend panicked",
        )))
    })
}

fn stopped_reply<T>(reply: RpcReplyPort<Result<T, LeaseError>>) {
    let _ = reply.send(Err(LeaseError::ManagerStopped));
}

impl SupervisorState {
    fn slot(&mut self, key: &Key) -> &mut Slot {
        self.slots.entry(key.clone()).or_default()
    }

    /// Drops the slot of `key` if nothing refers to it any more.
    fn tidy(&mut self, key: &Key) {
        if self.slots.get(key).is_some_and(Slot::is_idle) {
            self.slots.remove(key);
        }
    }

    fn on_acquire(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        options: AcquireOptions,
        reply: RpcReplyPort<AcquireReply>,
    ) {
        if self.stopping {
            return stopped_reply(reply);
        }
        if let Err(e) = options.validate(&key, self.config.min_ttl) {
            let _ = reply.send(Err(e));
            return;
        }
        let now = Instant::now();
        // A wait too long for the clock is a wait without end, in practice.
        let until = options.wait.map(|w| {
            now.checked_add(w)
                .unwrap_or(now + Duration::from_secs(1 << 32))
        });
        self.next_waiter += 1;
        let waiter = Waiter {
            id: self.next_waiter,
            options,
            reply,
            until,
        };
        let slot = self.slot(&key);
        if slot.holder.is_some() || slot.busy || !slot.waiters.is_empty() {
            // Taken (by us, or being taken, or promised to earlier waiters).
            match until {
                Some(until) => {
                    let id = waiter.id;
                    slot.waiters.push_back(waiter);
                    let me = myself.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(until).await;
                        let _ =
                            me.send_message(ManagerMessage(Msg::WaitExpired { key, waiter: id }));
                    });
                }
                None => {
                    let _ = waiter.reply.send(Err(LeaseError::Conflict));
                }
            }
            return;
        }
        // A backend that can answer without I/O is asked inline (never for waiters,
        // whose attempts may wait).
        if waiter.until.is_none() {
            let (started, since) = (Instant::now(), crate::clock::suspended());
            let answer = catch_panic(|| {
                self.backend
                    .acquire_now(&key, waiter.options.ttl, &waiter.options.metadata)
            });
            if let Some(answer) = answer {
                let outcome = match answer {
                    Ok(AcquireOutcome::Granted { token }) => Attempt::Granted {
                        grant: Grant::new(self.backend.clone(), key.clone(), token),
                        started,
                        since,
                    },
                    Ok(AcquireOutcome::Held { .. }) => Attempt::Conflict,
                    Err(e) => Attempt::Failed(e),
                };
                self.slot(&key).busy = true;
                return self.on_attempted(myself, key, waiter, outcome);
            }
        }
        self.start_attempt(myself, key, waiter);
    }

    fn start_attempt(&mut self, myself: &ActorRef<ManagerMessage>, key: Key, waiter: Waiter) {
        self.slot(&key).busy = true;
        let backend = self.backend.clone();
        let report = Report {
            me: myself.clone(),
            key,
            waiter: Some(waiter),
        };
        tokio::spawn(async move {
            let mut report = report;
            let (key, waiter) = (&report.key, report.waiter.as_ref());
            let Some(waiter) = waiter else { return };
            let outcome = attempt(backend, key, &waiter.options, waiter.until, || {
                waiter.reply.is_closed()
            })
            .await;
            report.send(outcome);
        });
    }

    /// Starts the next waiter's attempt if the key is free of local claims.
    fn serve_next(&mut self, myself: &ActorRef<ManagerMessage>, key: &Key) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.holder.is_none() && !slot.busy && !self.stopping {
            // Skip waiters whose callers have gone away.
            while let Some(w) = slot.waiters.pop_front() {
                if !w.reply.is_closed() {
                    self.start_attempt(myself, key.clone(), w);
                    return;
                }
            }
        }
        self.tidy(key);
    }

    fn on_attempted(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        waiter: Waiter,
        outcome: Attempt,
    ) {
        self.slot(&key).busy = false;
        match outcome {
            Attempt::Granted {
                grant,
                started,
                since,
            } => self.on_granted(myself, &key, waiter, grant, started, since),
            Attempt::Conflict => {
                let _ = waiter.reply.send(Err(LeaseError::Conflict));
            }
            Attempt::Failed(e) => {
                tracing::warn!(%key, error = %e, "lease acquire failed");
                let _ = waiter.reply.send(Err(LeaseError::Backend(e)));
            }
        }
        self.serve_next(myself, &key);
    }

    fn on_granted(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: &Key,
        waiter: Waiter,
        grant: Grant,
        started: Instant,
        since: Duration,
    ) {
        let ttl = waiter.options.ttl;
        let margin = self.config.margin(ttl);
        let deadline = started + ttl - margin;
        // Time the machine spent suspended since the acquire started counts too: the
        // backend's clock ran on meanwhile.
        let slept = crate::clock::suspended().saturating_sub(since);
        let refuse = if self.stopping {
            Some(LeaseError::ManagerStopped)
        } else if Instant::now() + slept >= deadline {
            Some(LeaseError::Backend(BackendError::new(
                BackendErrorKind::Timeout,
                "the acquire was confirmed too late to hold the lease safely",
            )))
        } else if waiter.reply.is_closed() {
            Some(LeaseError::Conflict)
        } else {
            None
        };
        if let Some(error) = refuse {
            let token = grant.token();
            // Dropping the grant gives the key back.
            drop(grant);
            tracing::debug!(%key, token, %error, "grant refused");
            let _ = waiter.reply.send(Err(error));
            return;
        }
        let token = grant.hold();
        let (ctx_tx, ctx) = LeaseContext::new_since(token, Some(deadline), since);
        // The key is ours from here on; the renewal actor attaches when it has started.
        self.slot(key).holder = Some(Holder {
            token,
            ctx: ctx_tx.clone(),
            renewer: None,
        });
        tracing::info!(%key, token, ?ttl, "lease acquired");
        let args = RenewerArgs {
            backend: self.backend.clone(),
            key: key.clone(),
            token,
            ttl,
            margin,
            ctx: ctx_tx.clone(),
            deadline,
        };
        let lease = Lease::new(key.clone(), token, self.owner.clone());
        // Starting an actor is the costliest step of an acquire, so it runs in a task of
        // its own rather than on this mailbox: the supervisor is not the bound on how
        // fast leases can be handed out. The renewer is still this actor's linked child.
        let supervisor = myself.clone();
        let key = key.clone();
        tokio::spawn(async move {
            match Actor::spawn_linked(None, Renewer, args, supervisor.get_cell()).await {
                Ok((renewer, _join)) => {
                    // Sent before the reply, so it is handled before any release the
                    // caller may send once it has the lease.
                    let attach = Msg::Attach {
                        key,
                        token,
                        renewer: renewer.clone(),
                    };
                    if supervisor.send_message(ManagerMessage(attach)).is_err() {
                        // The supervisor stopped meanwhile (and ended the holder): a
                        // renewer nobody will stop must not renew a lease nobody holds.
                        renewer.kill();
                    }
                    // If the caller went away, the lease comes back here and its drop
                    // releases it through the supervisor's mailbox.
                    let _ = waiter.reply.send(Ok((lease, ctx)));
                }
                Err(e) => {
                    // The supervisor is shutting down (or the runtime is): give up the
                    // lease; dropping it sends the release.
                    ctx_tx.cancel(CancelReason::Lost(LossCause::RenewerFailed(e.to_string())));
                    drop(lease);
                    let _ = waiter.reply.send(Err(LeaseError::ManagerStopped));
                }
            }
        });
    }

    fn on_attach(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        token: u64,
        renewer: ActorRef<Tick>,
    ) {
        let holder = self
            .slots
            .get_mut(&key)
            .and_then(|s| s.holder.as_mut())
            .filter(|h| h.token == token && h.renewer.is_none());
        let Some(holder) = holder else {
            // The lease ended before its renewer started.
            renewer.kill();
            return;
        };
        let id = renewer.get_id();
        let running = matches!(
            renewer.get_status(),
            ActorStatus::Running | ActorStatus::Starting
        );
        holder.renewer = Some(renewer);
        self.renewers.insert(id, key);
        if !running {
            // It failed before we knew it: its exit event found nobody to tell.
            self.on_renewer_exit(myself, id, "exited before it was attached".into());
        }
    }

    /// Ends the local holder of `key` (if its token matches, or any holder when `token`
    /// is `None`) with `reason`; returns the token it held.
    fn end_holder(&mut self, key: &Key, token: Option<u64>, reason: CancelReason) -> Option<u64> {
        let slot = self.slots.get_mut(key)?;
        if token.is_some_and(|t| slot.holder.as_ref().map(|h| h.token) != Some(t)) {
            return None;
        }
        let holder = slot.holder.take()?;
        if holder.ctx.cancel(reason.clone()) {
            tracing::debug!(%key, token = holder.token, %reason, "lease ended");
        }
        if let Some(renewer) = &holder.renewer {
            self.renewers.remove(&renewer.get_id());
            // Unlink first: we know why it ends, so its exit event would be one more
            // message on this mailbox for nothing. Kill rather than stop: a renewer
            // blocked on a slow backend must not keep renewing a lease its holder has
            // given up.
            renewer.get_cell().unlink(self.cell.clone());
            renewer.kill();
        }
        Some(holder.token)
    }

    fn release_in_background(
        &self,
        key: Key,
        token: u64,
        reply: Option<RpcReplyPort<Result<(), LeaseError>>>,
    ) {
        fn answer(
            key: &Key,
            token: u64,
            released: Result<bool, BackendError>,
            reply: Option<RpcReplyPort<Result<(), LeaseError>>>,
        ) {
            let result = match released {
                Ok(true) => Ok(()),
                Ok(false) => Err(LeaseError::NotHeld),
                Err(e) => {
                    tracing::warn!(%key, token, error = %e, "lease release failed");
                    Err(LeaseError::Backend(e))
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
        if let Some(released) = catch_panic(|| self.backend.release_now(&key, token)) {
            return answer(&key, token, released, reply);
        }
        let backend = self.backend.clone();
        tokio::spawn(async move {
            let k = key.clone();
            let released = unpanic(async move { backend.release(&k, token).await }).await;
            answer(&key, token, released, reply);
        });
    }

    fn on_release(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        token: u64,
        reply: Option<RpcReplyPort<Result<(), LeaseError>>>,
    ) {
        let not_held = |reply: Option<RpcReplyPort<Result<(), LeaseError>>>| {
            if let Some(reply) = reply {
                let _ = reply.send(Err(LeaseError::NotHeld));
            }
        };
        // Has the lease already ended (its renewer may have told the holder before the
        // supervisor heard of it)? Then the release is `NotHeld`, as promised.
        let ended = match self.holder(&key, token) {
            None => return not_held(reply),
            Some(holder) => holder.ctx.reason(),
        };
        match ended {
            None => {
                self.end_holder(&key, Some(token), CancelReason::Released);
                self.release_in_background(key.clone(), token, reply);
            }
            Some(reason) => {
                self.end_holder(&key, Some(token), reason.clone());
                self.give_back_if_revoked(&key, token, &reason);
                not_held(reply);
            }
        }
        self.serve_next(myself, &key);
    }

    /// The local holder of `key` with this token, if any.
    fn holder(&self, key: &Key, token: u64) -> Option<&Holder> {
        self.slots
            .get(key)
            .and_then(|s| s.holder.as_ref())
            .filter(|h| h.token == token)
    }

    /// After a lease ended: a revoked one is given back at once (the holder has been told
    /// and the revoker wants the key free; compare-and-set on the token, so a newer
    /// holder is never touched). A lost one is left to expire on the backend, so that the
    /// safety margin between the holder being told and a takeover is kept.
    fn give_back_if_revoked(&self, key: &Key, token: u64, reason: &CancelReason) {
        if *reason == CancelReason::Revoked {
            self.release_in_background(key.clone(), token, None);
        }
    }

    fn on_revoke(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        reply: RpcReplyPort<Result<bool, LeaseError>>,
    ) {
        if self.stopping {
            return stopped_reply(reply);
        }
        // Our own holder is told first, so the key is never free while it still acts.
        // A lease whose context had already ended by loss is left to expire instead of
        // given back, so that its holder keeps the safety margin it was promised.
        let was_live = self
            .slots
            .get(&key)
            .and_then(|s| s.holder.as_ref())
            .map(|h| gives_back(h.ctx.reason()));
        let local = self
            .end_holder(&key, None, CancelReason::Revoked)
            .filter(|_| was_live == Some(true));
        if local.is_some() {
            // Nobody here may be granted the key until the revoke has reached the
            // backend: otherwise it could mark the next holder's fresh lease revoked.
            self.slot(&key).busy = true;
        }
        let done = RevokeDone {
            me: myself.clone(),
            key: local.map(|_| key.clone()),
        };
        let backend = self.backend.clone();
        let key2 = key.clone();
        tokio::spawn(async move {
            let revoked = {
                let (backend, key) = (backend.clone(), key2.clone());
                unpanic(async move { backend.revoke(&key).await }).await
            };
            // Our own holder has been told, so its lease is given back whatever the
            // revoke said (compare-and-set on its token: a newer holder is never
            // touched). Were it left to the revoke, a failed revoke would leave the key
            // taken by nobody until it expired.
            let released = match local {
                Some(token) => {
                    let (backend, key) = (backend.clone(), key2.clone());
                    Some(unpanic(async move { backend.release(&key, token).await }).await)
                }
                None => None,
            };
            let result = match (revoked, released) {
                (Ok(Some(token)), _) => {
                    tracing::info!(key = %key2, token, "lease revoked");
                    Ok(true)
                }
                (Ok(None), Some(Ok(true))) => Ok(true),
                (Ok(None), _) => Ok(false),
                (Err(e), Some(Ok(true))) => {
                    tracing::warn!(key = %key2, error = %e, "revoke failed; our own holder gave the key back");
                    Ok(true)
                }
                (Err(e), _) => Err(LeaseError::Backend(e)),
            };
            // The key is free here before the caller hears back, so that an acquire it
            // sends next finds the slot idle.
            drop(done);
            let _ = reply.send(result);
        });
    }

    fn on_revoke_done(&mut self, myself: &ActorRef<ManagerMessage>, key: Key) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.busy = false;
        }
        self.serve_next(myself, &key);
    }

    fn on_wait_expired(&mut self, key: Key, waiter: u64) {
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        if let Some(pos) = slot.waiters.iter().position(|w| w.id == waiter) {
            if let Some(w) = slot.waiters.remove(pos) {
                let _ = w.reply.send(Err(LeaseError::Conflict));
            }
        }
        self.tidy(&key);
    }

    fn on_renewer_exit(&mut self, myself: &ActorRef<ManagerMessage>, id: ActorId, why: String) {
        let Some(key) = self.renewers.remove(&id) else {
            return; // a renewer we already ended
        };
        let ended = self
            .slots
            .get(&key)
            .and_then(|s| s.holder.as_ref())
            .and_then(|h| h.ctx.reason());
        let reason = CancelReason::Lost(LossCause::RenewerFailed(why));
        if let Some(token) = self.end_holder(&key, None, reason.clone()) {
            self.give_back_if_revoked(&key, token, &ended.unwrap_or(reason));
        }
        self.serve_next(myself, &key);
    }

    async fn on_shutdown(&mut self) {
        self.stopping = true;
        let mut held = Vec::new();
        let keys: Vec<Key> = self.slots.keys().cloned().collect();
        for key in keys {
            let was_live = self
                .slots
                .get(&key)
                .and_then(|s| s.holder.as_ref())
                .map(|h| gives_back(h.ctx.reason()));
            if let Some(token) = self.end_holder(&key, None, CancelReason::Shutdown) {
                // A lease already lost is left to expire (its holder keeps the margin).
                if was_live == Some(true) {
                    held.push((key.clone(), token));
                }
            }
            if let Some(slot) = self.slots.get_mut(&key) {
                for w in slot.waiters.drain(..) {
                    stopped_reply(w.reply);
                }
            }
        }
        // Give the keys back so that others need not wait for the TTLs; bounded, since
        // the backend may be down.
        let backend = self.backend.clone();
        let releases = held.into_iter().map(|(key, token)| {
            let backend = backend.clone();
            tokio::spawn(async move { backend.release(&key, token).await })
        });
        let all = futures_join_all(releases.collect());
        if tokio::time::timeout(self.config.shutdown_timeout, all)
            .await
            .is_err()
        {
            tracing::warn!("lease manager shutdown: some releases did not finish in time");
        }
        tracing::info!("lease manager stopped");
    }
}

/// Runs backend I/O in a task of its own and turns a panic there into a backend error,
/// so that whoever waits for the answer gets one.
async fn unpanic<T: Send + 'static>(
    io: impl std::future::Future<Output = Result<T, BackendError>> + Send + 'static,
) -> Result<T, BackendError> {
    match tokio::spawn(io).await {
        Ok(result) => result,
        Err(e) => Err(BackendError::new(
            BackendErrorKind::Failed,
            format!("the backend failed: {e}"),
        )),
    }
}

/// Awaits every handle (a tiny join_all, to avoid a dependency on `futures`).
async fn futures_join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) {
    for h in handles {
        let _ = h.await;
    }
}

impl Actor for Supervisor {
    type Msg = ManagerMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ManagerMessage>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            backend: args.backend,
            config: args.config,
            cell: myself.get_cell(),
            owner: Arc::new(ManagerOwner { actor: myself }),
            slots: HashMap::new(),
            renewers: HashMap::new(),
            next_waiter: 0,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMessage>,
        ManagerMessage(msg): ManagerMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Acquire {
                key,
                options,
                reply,
            } => state.on_acquire(&myself, key, options, reply),
            Msg::Attempted {
                key,
                waiter,
                outcome,
            } => state.on_attempted(&myself, key, waiter, outcome),
            Msg::Release { key, token, reply } => state.on_release(&myself, key, token, reply),
            Msg::Revoke { key, reply } => state.on_revoke(&myself, key, reply),
            Msg::WaitExpired { key, waiter } => state.on_wait_expired(key, waiter),
            Msg::RevokeDone { key } => state.on_revoke_done(&myself, key),
            Msg::Attach {
                key,
                token,
                renewer,
            } => state.on_attach(&myself, key, token, renewer),
            Msg::Shutdown { reply } => {
                if !state.stopping {
                    state.on_shutdown().await;
                }
                myself.stop(Some("shutdown".into()));
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ManagerMessage>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never stop because a child did (ractor's default): a renewer's end is one
        // lease's end.
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                state.on_renewer_exit(&myself, cell.get_id(), error.to_string())
            }
            SupervisionEvent::ActorTerminated(cell, _, why) => state.on_renewer_exit(
                &myself,
                cell.get_id(),
                why.unwrap_or_else(|| "stopped".into()),
            ),
            _ => {}
        }
        Ok(())
    }
}
