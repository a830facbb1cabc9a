//! FTL's `xyz.block.ftl.lease.v1.LeaseService`, as FTL's runtimes call it.
//!
//! Each `AcquireLease` stream may hold several keys. For each request:
//! - the key is made of the request's segments (`["module", m, ...]` or
//!   `["system", ...]`); a bad key, or a TTL below the minimum or above the maximum,
//!   ends the stream with `INVALID_ARGUMENT`. A request without a TTL uses the server's
//!   default ([`ServeOptions::default_ttl`](super::options::ServeOptions::default_ttl), 30 s);
//! - a key this stream does not hold is acquired (without waiting): held by someone
//!   else → the stream ends with `RESOURCE_EXHAUSTED` "lease already held";
//! - a key this stream holds is kept alive: the request is the client's heartbeat, and
//!   its TTL becomes the key's heartbeat window (at most the TTL it was acquired
//!   with). The store holds the key for 1.5 times the acquiring TTL, renewed every half
//!   of it, so that a key the server must keep after the stream ends (below) is still
//!   held in the store until the window of its last request has run out;
//! - the answer is one empty response, in request order.
//!
//! A held lease that ends without the client asking (lost by the backend, revoked,
//! or no request for it within its TTL: the client is gone) ends the stream at once
//! with `RESOURCE_EXHAUSTED`: the client learns it no longer holds the key, and a
//! later request never silently re-acquires it.
//!
//! Only the client's half-close of its request stream is FTL's release: the leases are
//! released at once, and the call ends (OK) only after the releases, so a client that
//! reads its call to the end knows its keys are free. However else the stream ends (a
//! lease ended, a bad request, an HTTP/2 reset of any code, a lost connection, the
//! server shutting down), each key stays taken until its heartbeat window has run out
//! from the last request for it (the service's remote-holder rule, in `give_back.rs`): FTL's runtimes
//! act until they see an error, and the protocol gives them no deadline, so that is
//! the time the client may still be acting. (Behind FTL's runner proxy, which
//! half-closes upstream when its downstream breaks, a broken module looks like a
//! release: a limit of FTL's protocol that the native protocol does not have.)
//!
//! A slow acquire does not stop the stream: requests go on being read (heartbeats of
//! the other keys count at once) while it runs, and answers still go out in request
//! order.
//!
//! FTL's Go runtime sends its heartbeats every ttl/2 and never reads the responses.
//! Answers are therefore never queued: the stream keeps a count of answers owed and
//! hands them out as the client reads, so an unread stream costs a few bytes and
//! blocks neither this stream's heartbeats nor any other stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

mod owed;

use owed::Owed;

use super::first::NoFirst;
use super::give_back::give_back;
use super::handover::LetGo;
use super::shared::{Shared, StreamSlot};
use super::status::{duration_of, status_of};
use crate::proto::xyz::block::ftl::lease::v1::lease_service_server::LeaseService;
use crate::proto::xyz::block::ftl::lease::v1::{AcquireLeaseRequest, AcquireLeaseResponse};
use crate::proto::xyz::block::ftl::v1::{PingRequest, PingResponse};
use crate::{AcquireOptions, Key, Lease, LeaseContext, LeaseError};

/// The FTL-compatible service.
#[derive(Clone)]
pub struct FtlService {
    shared: Shared,
}

impl std::fmt::Debug for FtlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FtlService")
    }
}

impl FtlService {
    pub(crate) fn new(shared: Shared) -> FtlService {
        FtlService { shared }
    }
}

/// What a stream has produced so far: answers owed and, at the end, its status.
#[derive(Debug, Clone, Default)]
struct Produced {
    answers: u64,
    end: Option<Status>,
}

type Answers = Pin<Box<dyn Stream<Item = Result<AcquireLeaseResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LeaseService for FtlService {
    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            not_ready: super::probes::readiness(&self.shared.manager).await,
        }))
    }

    type AcquireLeaseStream = Answers;

    async fn acquire_lease(
        &self,
        request: Request<Streaming<AcquireLeaseRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let slot = self.shared.open_stream(request.remote_addr())?;
        let (tx, rx) = watch::channel(Produced::default());
        let counted = self.shared.stream();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            run_stream(shared, request.into_inner(), tx, slot).await;
            drop(counted);
        });
        Ok(Response::new(Box::pin(answers(rx))))
    }
}

/// The response stream: every owed answer, then the end status (if any).
fn answers(
    rx: watch::Receiver<Produced>,
) -> impl Stream<Item = Result<AcquireLeaseResponse, Status>> {
    futures_util::stream::unfold((rx, 0u64, false), |(mut rx, sent, done)| async move {
        if done {
            return None;
        }
        loop {
            let produced = rx.borrow_and_update().clone();
            if sent < produced.answers {
                return Some((Ok(AcquireLeaseResponse {}), (rx, sent + 1, false)));
            }
            if let Some(end) = produced.end {
                return Some((Err(end), (rx, sent, true)));
            }
            if rx.changed().await.is_err() {
                // The stream's task ended without a status: a clean end.
                let last = rx.borrow().clone();
                if sent < last.answers {
                    continue;
                }
                return last.end.map(|end| (Err(end), (rx, sent, true)));
            }
        }
    })
}

/// One key held by a stream.
struct Held {
    lease: Lease,
    ctx: LeaseContext,
    /// The heartbeat window: the lease ends when no request for it comes within this
    /// long of the last one. A request's TTL sets it, up to `acquired`.
    window: Duration,
    /// The TTL of the request that acquired the key: the store holds the lease for
    /// half as long again (see [`store_ttl`]), which no window may outgrow.
    acquired: Duration,
    last: Instant,
    watcher: AbortHandle,
}

impl Held {
    /// Until when the client may act on this key without hearing more: FTL's protocol
    /// promises nothing explicitly, and its runtimes act until they see an error, so
    /// the server keeps the key until the heartbeat window of the last request has run
    /// out (when it would have lapsed anyway).
    fn promised(&self) -> Instant {
        self.last + self.window
    }
}

/// The TTL an FTL key is held with in the store: its heartbeat window and half again.
///
/// Why: a lease that ends on the server (a revoke through any server) stops being
/// renewed, and the store frees it one TTL after its last renewal, which may have
/// started up to a renewal interval (a third of the TTL) before the client's last
/// request. With the store's TTL at 1.5 windows, renewed every half window, the store
/// keeps the key at least until that request's window has run out, so the server's
/// promise ([`Held::promised`]) holds. Capped at [`MAX_TTL`](crate::MAX_TTL).
fn store_ttl(window: Duration) -> Duration {
    window.saturating_add(window / 2).min(crate::MAX_TTL)
}

/// An acquire that is running, in a stream that keeps reading meanwhile.
type Acquiring = Pin<
    Box<
        dyn std::future::Future<Output = (Key, Duration, Result<(Lease, LeaseContext), Status>)>
            + Send,
    >,
>;

/// How a stream ended.
enum End {
    /// The client half-closed its request stream: FTL's release.
    Released,
    /// Anything else, with the status the client is told.
    Broken(Status),
    /// The client dropped its answers (a reset, its connection gone): nobody to tell.
    Gone,
}

/// Serves one `AcquireLease` stream until it ends, then gives its leases back.
async fn run_stream(
    shared: Shared,
    mut incoming: Streaming<AcquireLeaseRequest>,
    tx: watch::Sender<Produced>,
    slot: StreamSlot,
) {
    let mut first = match super::first::first_request(&shared, &mut incoming, tx.closed()).await {
        Ok(request) => Some(request),
        Err(NoFirst::Gone) => return,
        // The loop below ends the stream as every stopping server's.
        Err(NoFirst::Stopping) => None,
        Err(NoFirst::End(status)) => {
            tx.send_modify(|p| p.end = Some(status));
            return;
        }
    };
    let mut held: HashMap<Key, Held> = HashMap::new();
    let mut acquiring: FuturesUnordered<Acquiring> = FuturesUnordered::new();
    let mut owed = Owed::default();
    // Leases that ended by themselves report here (key, why).
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(Key, String)>();
    let end: End = loop {
        // Hand out the answers that are known, in order; a failed request ends the
        // stream when its turn comes.
        let (answers, failed) = owed.take_ready();
        if answers > 0 {
            tx.send_modify(|p| p.answers += answers);
        }
        if let Some(status) = failed {
            break End::Broken(status);
        }
        let next_lapse = held.values().map(|h| h.last + h.window).min();
        tokio::select! {
            biased;
            _ = shared.stopping.cancelled() => {
                break End::Broken(Status::unavailable("the lease service is shutting down"));
            }
            _ = tx.closed() => {
                break if half_closed_already(&mut incoming, &mut held) {
                    End::Released
                } else {
                    End::Gone
                };
            }
            Some((key, why)) = ended_rx.recv() => {
                if held.contains_key(&key) {
                    break End::Broken(Status::resource_exhausted(format!("lease {key} ended: {why}")));
                }
            }
            _ = sleep_until_opt(next_lapse) => {
                let now = Instant::now();
                let lapsed = held
                    .iter()
                    .find(|(_, h)| h.last + h.window <= now)
                    .map(|(k, _)| k.clone());
                if let Some(key) = lapsed {
                    break End::Broken(Status::resource_exhausted(format!(
                        "lease {key} expired: no request for it within its TTL"
                    )));
                }
            }
            Some((key, window, result)) = acquiring.next(), if !acquiring.is_empty() => {
                let answer = result.map(|(lease, ctx)| {
                    held.insert(key.clone(), hold(lease, ctx, window, &key, &ended_tx));
                });
                owed.resolve(&key, answer);
            }
            message = super::first::next_request(&mut first, &mut incoming) => match message {
                // A stream that is failing starts nothing more: its end is on its way.
                Ok(Some(_)) if owed.failing => {}
                Ok(Some(request)) => {
                    match request_of(&shared, request, &mut held, &owed.acquiring()) {
                        Ok(Next::Answered) => owed.ok(),
                        Ok(Next::Acquire(key, window)) => {
                            acquiring.push(acquire(&shared, key.clone(), window));
                            owed.acquire(key);
                        }
                        Err(status) => owed.fail(status),
                    }
                }
                // The client closed its side: FTL's release.
                Ok(None) => break End::Released,
                // A request that could not be read (too large, malformed), a reset, or
                // the connection is gone: the status says which (and reaches the client
                // if it still can).
                Err(status) => break End::Broken(status),
            },
        }
    };
    // The stream itself is over: it no longer counts against its connection's limit,
    // even while its keys wait to be given back.
    drop(slot);
    // Acquires still running are dropped: their callers went away, so the manager gives
    // back whatever they are granted, and the client was never told it held them.
    drop(acquiring);
    for h in held.values() {
        h.watcher.abort();
    }
    match end {
        // The client released: give the keys back first, then end the call (OK), so
        // that a client that sees its call end knows its keys are free.
        End::Released => {
            let mut releases = tokio::task::JoinSet::new();
            for (_, h) in held {
                releases.spawn(async move {
                    let _ = h.lease.release().await;
                });
            }
            while releases.join_next().await.is_some() {}
            drop(tx);
        }
        // Tell the client first (a lost lease must be reported at once); each key goes
        // back when the time its client may act on has passed (see `give_back`).
        End::Broken(status) => {
            tx.send_modify(|p| p.end = Some(status));
            drop(tx);
            give_back_all(held, &shared.let_go).await;
        }
        End::Gone => {
            drop(tx);
            give_back_all(held, &shared.let_go).await;
        }
    }
}

/// Gives back every lease of a stream that did not end by the client's release, each
/// when its promise has run out (see [`give_back`]), even when the server stops on a
/// shared store: an FTL client cannot re-attach, and the store alone may not keep the
/// key that long (see [`LetGo::keeping_promises`]).
async fn give_back_all(held: HashMap<Key, Held>, how: &LetGo) {
    let how = &how.keeping_promises();
    let mut releases = tokio::task::JoinSet::new();
    for (_, h) in held {
        let promised = h.promised();
        let how = how.clone();
        releases
            .spawn(async move { give_back(h.lease, promised, std::future::pending(), &how).await });
    }
    while releases.join_next().await.is_some() {}
}

/// Whether the client had half-closed its request stream before it dropped its answers
/// (FTL's Go runtime releases with a half-close and then a reset), reading only what
/// has already arrived. Heartbeats read on the way still count for their keys.
fn half_closed_already(
    incoming: &mut Streaming<AcquireLeaseRequest>,
    held: &mut HashMap<Key, Held>,
) -> bool {
    use futures_util::FutureExt;
    loop {
        match incoming.message().now_or_never() {
            Some(Ok(Some(request))) => {
                if let Some(h) = Key::from_segments(request.key)
                    .ok()
                    .and_then(|key| held.get_mut(&key))
                {
                    h.last = Instant::now();
                }
            }
            Some(Ok(None)) => return true,
            Some(Err(_)) | None => return false,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The key and TTL of one request, checked (`INVALID_ARGUMENT` when they cannot be
/// used): a pure function of the request, so that it can be fuzzed.
#[doc(hidden)]
pub fn key_and_ttl(
    request: AcquireLeaseRequest,
    default_ttl: Duration,
    min_ttl: Duration,
) -> Result<(Key, Duration), Status> {
    let key = Key::from_segments(request.key).map_err(|e| status_of(&LeaseError::InvalidKey(e)))?;
    let ttl = match &request.ttl {
        None => default_ttl,
        Some(d) => duration_of(d).ok_or_else(|| {
            Status::invalid_argument(format!("lease TTL {d:?} is negative or malformed"))
        })?,
    };
    AcquireOptions::new(ttl)
        .validate(&key, min_ttl)
        .map_err(|e| status_of(&e))?;
    Ok((key, ttl))
}

/// What one request asks for.
enum Next {
    /// A heartbeat of a held key (or of one being acquired): answered as it stands.
    Answered,
    /// A key to acquire, with its heartbeat window.
    Acquire(Key, Duration),
}

/// Reads one request: a heartbeat is handled here; an acquire is returned to be run
/// while the stream keeps reading.
fn request_of(
    shared: &Shared,
    request: AcquireLeaseRequest,
    held: &mut HashMap<Key, Held>,
    acquiring: &[Key],
) -> Result<Next, Status> {
    let (key, ttl) = key_and_ttl(
        request,
        shared.options.default_ttl,
        shared.manager.min_ttl(),
    )?;
    if let Some(h) = held.get_mut(&key) {
        // A heartbeat. A lease that has ended is reported by its watcher; check here
        // too, so that the answer never confirms an ended lease.
        if let Some(reason) = h.ctx.reason() {
            return Err(Status::resource_exhausted(format!(
                "lease {key} ended: {reason}"
            )));
        }
        h.last = Instant::now();
        h.window = ttl.min(h.acquired);
        return Ok(Next::Answered);
    }
    if acquiring.contains(&key) {
        // Its answer follows the acquire's, which ends the stream if it fails.
        return Ok(Next::Answered);
    }
    if held.len() + acquiring.len() >= shared.options.max_keys_per_stream {
        return Err(Status::resource_exhausted(format!(
            "too many keys on one stream (at most {})",
            shared.options.max_keys_per_stream
        )));
    }
    Ok(Next::Acquire(key, ttl))
}

/// Acquires `key` for the stream, held in the store for [`store_ttl`] of its heartbeat
/// `window`, as a holder that keeps its key until the stream gives it back.
fn acquire(shared: &Shared, key: Key, window: Duration) -> Acquiring {
    let manager = shared.manager.clone();
    let events = shared.events.clone();
    Box::pin(async move {
        let options = AcquireOptions::new(store_ttl(window)).keep_until_released();
        let result = manager
            .acquire_lease_with(key.clone(), options)
            .await
            .inspect(|(_, ctx)| {
                events.granted(&key, ctx.token(), "ftl", false);
                events.watch_end(&key, ctx, "ftl");
            })
            .map_err(|e| match e {
                LeaseError::Conflict | LeaseError::WaitTimedOut { .. } => {
                    Status::resource_exhausted("lease already held")
                }
                other => status_of(&other),
            });
        (key, window, result)
    })
}

/// A key the stream now holds, with a watcher that reports its end.
fn hold(
    lease: Lease,
    ctx: LeaseContext,
    ttl: Duration,
    key: &Key,
    ended_tx: &mpsc::UnboundedSender<(Key, String)>,
) -> Held {
    let watcher = {
        let ctx = ctx.clone();
        let key = key.clone();
        let ended_tx = ended_tx.clone();
        tokio::spawn(async move {
            let reason = ctx.cancelled().await;
            let _ = ended_tx.send((key, reason.to_string()));
        })
        .abort_handle()
    };
    Held {
        lease,
        ctx,
        window: ttl,
        acquired: ttl,
        last: Instant::now(),
        watcher,
    }
}
