//! Backend I/O that the supervisor starts in tasks of its own, so that a slow backend
//! never blocks its mailbox, and the guards that make every such task report back.
//!
//! Each task ends in a message to the supervisor, whatever happens to it: a task that
//! panics, or whose message the stopping supervisor drops, still frees the key's slot
//! ([`Report`], [`RevokeDone`]) and still gives back a grant nobody took ([`Grant`]).

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, ActorStatus, RpcReplyPort};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::messages::{Attempt, ManagerMessage, Msg, Waiter};
use crate::backend::{AcquireOutcome, Backend};
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

/// Backend I/O a manager started in tasks of its own and that has not finished yet
/// (acquire attempts, releases, revokes, grants given back), so that shutdown can wait
/// for it: a process that exits when `shutdown` returns must not leave a key that is
/// being given back taken by nobody for a TTL.
#[derive(Clone, Debug)]
pub(crate) struct InFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl Default for InFlight {
    fn default() -> InFlight {
        InFlight(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl InFlight {
    /// Runs `io` in a task that is counted until it ends (or is dropped).
    pub(crate) fn spawn(&self, io: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.send_modify(|n| *n += 1);
        let counted = Counted(self.0.clone());
        let spawned = tokio::runtime::Handle::try_current().map(|rt| {
            rt.spawn(async move {
                let _counted = counted;
                io.await;
            })
        });
        // Without a runtime (it is shutting down) nothing runs, and the guard inside the
        // dropped future has already uncounted it.
        drop(spawned);
    }

    /// Waits until no counted task is left.
    pub(crate) async fn idle(&self) {
        let _ = self.0.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// Uncounts one task of an [`InFlight`] when dropped.
struct Counted(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
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
    inflight: InFlight,
    key: Key,
    token: Option<u64>,
}

impl Grant {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        inflight: InFlight,
        key: Key,
        token: u64,
    ) -> Grant {
        Grant {
            backend,
            inflight,
            key,
            token: Some(token),
        }
    }

    pub(crate) fn token(&self) -> u64 {
        self.token.unwrap_or_default()
    }

    /// The grant now has a holder, which is responsible for releasing it.
    pub(crate) fn hold(mut self) -> u64 {
        self.token.take().unwrap_or_default()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        tracing::debug!(key = %self.key, token, "giving back a grant that nobody took");
        if let Some(Ok(_)) = catch_panic(|| {
            self.backend
                .inline()
                .and_then(|b| b.release_now(&self.key, token))
        }) {
            return;
        }
        let (backend, key) = (self.backend.clone(), self.key.clone());
        // Without a runtime (it is shutting down) the lease simply expires.
        self.inflight.spawn(async move {
            let _ = backend.release(&key, token).await;
        });
    }
}

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

/// Releases `(key, token)` (inline if the backend can, else in a task) and sends the
/// outcome to `reply`, if any.
pub(crate) fn release(
    backend: &Arc<dyn Backend>,
    inflight: &InFlight,
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
                crate::metrics::backend_error(crate::metrics::Op::Release);
                tracing::warn!(%key, token, error = %e, "lease release failed");
                Err(LeaseError::Backend(e))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
    let inline = catch_panic(|| backend.inline().and_then(|b| b.release_now(&key, token)));
    if let Some(released) = inline {
        return answer(&key, token, released, reply);
    }
    let backend = backend.clone();
    let span = tracing::info_span!("lease.release", %key, token);
    inflight.spawn(
        async move {
            let k = key.clone();
            let released = unpanic(async move { backend.release(&k, token).await }).await;
            answer(&key, token, released, reply);
        }
        .instrument(span),
    );
}

/// Revokes `key` on the backend in a task and answers `reply`. `local` is the token of
/// our own holder, already told `Revoked`: its lease is given back whatever the revoke
/// said (compare-and-set on its token, so a newer holder is never touched); were it
/// left to the revoke, a failed revoke would leave the key taken by nobody until it
/// expired. While `local` is set the key's slot stays busy, and the task frees it (with
/// [`Msg::RevokeDone`]) before it answers, so that the caller's next acquire finds it
/// free, and nobody here is granted the key before the revoke reached the backend
/// (where it could mark the new lease revoked); so too while `kept`. `kept`: our holder keeps its key until it
/// releases it (see `AcquireOptions::keep_until_released`), and was told; it may give
/// the key back before the revoke reaches the backend (which then finds nothing to
/// mark), and the answer is `true` either way.
pub(crate) fn revoke(
    me: &ActorRef<ManagerMessage>,
    backend: Arc<dyn Backend>,
    inflight: &InFlight,
    key: Key,
    local: Option<u64>,
    kept: bool,
    reply: RpcReplyPort<Result<bool, LeaseError>>,
) {
    let done = RevokeDone {
        me: me.clone(),
        key: (local.is_some() || kept).then(|| key.clone()),
    };
    inflight.spawn(async move {
        let revoked = {
            let (backend, key) = (backend.clone(), key.clone());
            unpanic(async move { backend.revoke(&key).await }).await
        };
        let released = match local {
            Some(token) => {
                let (backend, key) = (backend.clone(), key.clone());
                Some(unpanic(async move { backend.release(&key, token).await }).await)
            }
            None => None,
        };
        let result = match (revoked, released) {
            (Ok(Some(token)), _) => {
                tracing::info!(%key, token, "lease revoked");
                Ok(true)
            }
            (Ok(None), Some(Ok(true))) => Ok(true),
            // Our keeping holder was told (and may already have given the key back).
            (Ok(None), _) if kept => Ok(true),
            (Ok(None), _) => Ok(false),
            (Err(e), Some(Ok(true))) => {
                crate::metrics::backend_error(crate::metrics::Op::Revoke);
                tracing::warn!(%key, error = %e, "revoke failed; our own holder gave the key back");
                Ok(true)
            }
            (Err(e), _) => {
                crate::metrics::backend_error(crate::metrics::Op::Revoke);
                Err(LeaseError::Backend(e))
            }
        };
        drop(done);
        let _ = reply.send(result);
    });
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

/// Releases every `(key, token)` at once, waiting at most `timeout` (the backend may be
/// down); returns `false` if some did not finish in time.
pub(crate) async fn release_all(
    backend: &Arc<dyn Backend>,
    held: Vec<(Key, u64)>,
    timeout: Duration,
) -> bool {
    let mut releases = JoinSet::new();
    for (key, token) in held {
        let backend = backend.clone();
        releases.spawn(async move {
            let released = backend.release(&key, token).await;
            if released.is_err() {
                crate::metrics::backend_error(crate::metrics::Op::Release);
            }
            released
        });
    }
    let finished = tokio::time::timeout(timeout, async {
        while releases.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    // Releases still running when we stop waiting go on by themselves: each frees its
    // key as soon as the backend answers, rather than leaving it to expire.
    releases.detach_all();
    finished
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
