//! FTL's `xyz.block.ftl.lease.v1.LeaseService`, as FTL's runtimes call it.
//!
//! Each `AcquireLease` stream may hold several keys. For each request:
//! - the key is made of the request's segments (`["module", m, ...]` or
//!   `["system", ...]`); a bad key, or a TTL below the minimum or above the maximum,
//!   ends the stream with `INVALID_ARGUMENT`. A request without a TTL uses the server's
//!   default ([`ServeOptions::default_ttl`](super::ServeOptions::default_ttl), 30 s);
//! - a key this stream does not hold is acquired (without waiting): held by someone
//!   else → the stream ends with `RESOURCE_EXHAUSTED` "lease already held";
//! - a key this stream holds is kept alive: the request is the client's heartbeat, and
//!   its TTL becomes the key's heartbeat window;
//! - the answer is one empty response, in request order.
//!
//! A held lease that ends without the client asking (lost by the backend, revoked,
//! or no request for it within its TTL: the client is gone) ends the stream at once
//! with `RESOURCE_EXHAUSTED`: the client learns it no longer holds the key, and a
//! later request never silently re-acquires it. When the stream ends (closed, reset,
//! connection lost), every lease it holds is released at once; when the client closed
//! its side, the call ends (OK) only after the releases, so a client that reads its
//! call to the end knows its keys are free.
//!
//! FTL's Go runtime sends its heartbeats every ttl/2 and never reads the responses.
//! Answers are therefore never queued: the stream keeps a count of answers owed and
//! hands them out as the client reads, so an unread stream costs a few bytes and
//! blocks neither this stream's heartbeats nor any other stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::first::NoFirst;
use super::{duration_of, status_of, Shared};
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
            not_ready: super::readiness(&self.shared.manager).await,
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
            run_stream(shared, request.into_inner(), tx).await;
            drop(counted);
            drop(slot);
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
    /// The heartbeat window: the lease is released when no request for it comes
    /// within this long of the last one.
    window: Duration,
    last: Instant,
    watcher: AbortHandle,
}

/// Serves one `AcquireLease` stream until it ends, then releases its leases.
async fn run_stream(
    shared: Shared,
    mut incoming: Streaming<AcquireLeaseRequest>,
    tx: watch::Sender<Produced>,
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
    // Leases that ended by themselves report here (key, why).
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(Key, String)>();
    let end: Option<Status> = loop {
        let next_lapse = held.values().map(|h| h.last + h.window).min();
        tokio::select! {
            biased;
            _ = shared.stopping.cancelled() => {
                break Some(Status::unavailable("the lease service is shutting down"));
            }
            _ = tx.closed() => break None,
            Some((key, why)) = ended_rx.recv() => {
                if held.contains_key(&key) {
                    break Some(Status::resource_exhausted(format!("lease {key} ended: {why}")));
                }
            }
            _ = sleep_until_opt(next_lapse) => {
                let now = Instant::now();
                let lapsed = held
                    .iter()
                    .find(|(_, h)| h.last + h.window <= now)
                    .map(|(k, _)| k.clone());
                if let Some(key) = lapsed {
                    break Some(Status::resource_exhausted(format!(
                        "lease {key} expired: no request for it within its TTL"
                    )));
                }
            }
            message = super::first::next_request(&mut first, &mut incoming) => match message {
                Ok(Some(request)) => {
                    let handled = tokio::select! {
                        biased;
                        _ = shared.stopping.cancelled() => {
                            Err(Status::unavailable("the lease service is shutting down"))
                        }
                        _ = tx.closed() => break None,
                        handled = handle(&shared, request, &mut held, &ended_tx) => handled,
                    };
                    match handled {
                        Ok(()) => {
                            tx.send_modify(|p| p.answers += 1);
                        }
                        Err(status) => break Some(status),
                    }
                }
                // The client closed its side.
                Ok(None) => break None,
                // A request that could not be read (too large, malformed), or the
                // connection is gone: the status says which (and reaches the client
                // if it still can).
                Err(status) => break Some(status),
            },
        }
    };
    match end {
        // The client closed its side (or is gone): release first, then end the call,
        // so that a client that sees its call end knows its keys are free.
        None => {
            release_all(held).await;
            drop(tx);
        }
        // Tell the client first (a lost lease must be reported at once), then release.
        Some(status) => {
            tx.send_modify(|p| p.end = Some(status));
            drop(tx);
            release_all(held).await;
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

/// Acquires or keeps alive the key of one request.
async fn handle(
    shared: &Shared,
    request: AcquireLeaseRequest,
    held: &mut HashMap<Key, Held>,
    ended_tx: &mpsc::UnboundedSender<(Key, String)>,
) -> Result<(), Status> {
    let (key, ttl) = key_and_ttl(
        request,
        shared.options.default_ttl,
        shared.manager.min_ttl(),
    )?;
    let options = AcquireOptions::new(ttl);
    if let Some(h) = held.get_mut(&key) {
        // A heartbeat. A lease that has ended is reported by its watcher; check here
        // too, so that the answer never confirms an ended lease.
        if let Some(reason) = h.ctx.reason() {
            return Err(Status::resource_exhausted(format!(
                "lease {key} ended: {reason}"
            )));
        }
        h.last = Instant::now();
        h.window = ttl;
        return Ok(());
    }
    if held.len() >= shared.options.max_keys_per_stream {
        return Err(Status::resource_exhausted(format!(
            "too many keys on one stream (at most {})",
            shared.options.max_keys_per_stream
        )));
    }
    let (lease, ctx) = shared
        .manager
        .acquire_lease_with(key.clone(), options.keep_until_released())
        .await
        .map_err(|e| match e {
            LeaseError::Conflict | LeaseError::WaitTimedOut { .. } => {
                Status::resource_exhausted("lease already held")
            }
            other => status_of(&other),
        })?;
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
    held.insert(
        key,
        Held {
            lease,
            ctx,
            window: ttl,
            last: Instant::now(),
            watcher,
        },
    );
    Ok(())
}

/// Releases every lease of an ended stream, concurrently. A lease dropped here (this
/// task cancelled) is still released: dropping a [`Lease`] releases it.
async fn release_all(held: HashMap<Key, Held>) {
    let mut releases = tokio::task::JoinSet::new();
    for (_, h) in held {
        h.watcher.abort();
        releases.spawn(async move {
            let _ = h.lease.release().await;
        });
    }
    while releases.join_next().await.is_some() {}
}
