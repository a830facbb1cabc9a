//! The native `leases.v1.Leases` service (see `proto/leases/v1/leases.proto`).
//!
//! A `Hold` stream holds one lease. The client acquires it with its first request and
//! keeps it with heartbeats; every `granted` and `renewed` answer carries the fencing
//! token or the holder's time left: the server's own local deadline for the lease,
//! measured when it answered. A client that adds the time left to the instant it
//! *sent* the request ends its context before the server's deadline, which itself
//! ends before the backend could grant the key to anyone else (see
//! [`ClientLeaser`](crate::ClientLeaser)).
//!
//! The stream ends with an `ended` answer (released, revoked, lost, shutdown) when the
//! lease ends, or with a status. Only the client's `release` is a clean end: the server
//! then releases at once. However else the lease or the stream ends (revoked through
//! any server, lost, no request within the TTL, the client closed its side without
//! `release`, a reset or a broken connection, the server shutting down), the server
//! keeps the key taken until the client sends `release` (it may, after an `ended`
//! answer, once it has stopped) or the time left it last told the client has run out:
//! a client whose connection broke on the server's side only, or whose `ended` answer
//! is still on its way, may act until then (see
//! `give_back.rs`). A client that does not read its answers (more than
//! 64 unread) is treated as gone: the stream ends with `RESOURCE_EXHAUSTED`, and its
//! lease is given back in the same way.

use std::pin::Pin;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::first::NoFirst;
use super::give_back::give_back;
use super::shared::{Shared, StreamSlot};
use super::status::{duration_of, proto_duration, status_of, time_left};
use crate::proto::leases::v1::ended::Reason;
use crate::proto::leases::v1::hold_request::Kind as In;
use crate::proto::leases::v1::hold_response::Kind as Out;
use crate::proto::leases::v1::leases_server::Leases;
use crate::proto::leases::v1::{
    Acquire, Ended, Granted, HoldRequest, HoldResponse, InfoResponse, KeyRequest, ListRequest,
    ListResponse, Renewed, RevokeResponse,
};
use crate::{AcquireOptions, CancelReason, Key, LeaseError, LeaseInfo};

// The most leases one `List` answers with.
use crate::proto::LIST_LIMIT;

/// Unread answers after which a client is treated as gone.
const UNREAD_LIMIT: usize = 64;

/// The native service.
#[derive(Clone)]
pub struct NativeService {
    shared: Shared,
}

impl std::fmt::Debug for NativeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NativeService")
    }
}

impl NativeService {
    pub(crate) fn new(shared: Shared) -> NativeService {
        NativeService { shared }
    }
}

type HoldAnswers = Pin<Box<dyn Stream<Item = Result<HoldResponse, Status>> + Send>>;

fn parse_key(s: &str) -> Result<Key, Status> {
    Key::parse(s).map_err(|e| status_of(&LeaseError::InvalidKey(e)))
}

/// A lease's description on the wire.
pub(crate) fn info_to_proto(info: LeaseInfo) -> crate::proto::leases::v1::LeaseInfo {
    crate::proto::leases::v1::LeaseInfo {
        key: info.key.to_string(),
        token: info.token,
        ttl: Some(proto_duration(info.ttl)),
        expires_in: Some(proto_duration(info.expires_in)),
        metadata: info.metadata,
        revoked: info.revoked,
        acquired_at: info.acquired_at.map(prost_types::Timestamp::from),
    }
}

#[tonic::async_trait]
impl Leases for NativeService {
    type HoldStream = HoldAnswers;

    async fn hold(
        &self,
        request: Request<Streaming<HoldRequest>>,
    ) -> Result<Response<HoldAnswers>, Status> {
        let slot = self.shared.open_stream(request.remote_addr())?;
        // One slot more than the limit: the stream's end always fits.
        let (tx, rx) = mpsc::channel(UNREAD_LIMIT + 1);
        let counted = self.shared.stream();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            run_hold(shared, request.into_inner(), tx, slot).await;
            drop(counted);
        });
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    async fn revoke(
        &self,
        request: Request<KeyRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let key = parse_key(&request.into_inner().key)?;
        let revoked = self
            .shared
            .manager
            .revoke(&key)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(RevokeResponse { revoked }))
    }

    async fn info(&self, request: Request<KeyRequest>) -> Result<Response<InfoResponse>, Status> {
        let key = parse_key(&request.into_inner().key)?;
        let info = self
            .shared
            .manager
            .lease_info(&key)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(InfoResponse {
            lease: info.map(info_to_proto),
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => LIST_LIMIT,
            n => (n as usize).min(LIST_LIMIT),
        };
        let leases = self
            .shared
            .manager
            .list(&request.prefix, limit)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(ListResponse {
            leases: leases.into_iter().map(info_to_proto).collect(),
        }))
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<HoldResponse, Status>>,
) -> impl Stream<Item = Result<HoldResponse, Status>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn answer(kind: Out) -> Result<HoldResponse, Status> {
    Ok(HoldResponse { kind: Some(kind) })
}

fn ended(reason: Reason, message: impl Into<String>) -> Result<HoldResponse, Status> {
    answer(Out::Ended(Ended {
        reason: reason as i32,
        message: message.into(),
    }))
}

fn ended_by(reason: &CancelReason) -> Result<HoldResponse, Status> {
    let r = match reason {
        CancelReason::Released => Reason::Released,
        CancelReason::Revoked => Reason::Revoked,
        CancelReason::Shutdown => Reason::Shutdown,
        _ => Reason::Lost,
    };
    ended(r, reason.to_string())
}

/// The acquire options of the first request (unchecked: the manager checks them).
/// Public, hidden, for the fuzz targets.
#[doc(hidden)]
pub fn options_of(acquire: Acquire) -> Result<(Key, AcquireOptions), Status> {
    let key = parse_key(&acquire.key)?;
    let ttl = acquire
        .ttl
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("acquire needs a TTL"))?;
    let ttl = duration_of(ttl).ok_or_else(|| {
        Status::invalid_argument(format!("lease TTL {ttl:?} is negative or malformed"))
    })?;
    let mut options = AcquireOptions::new(ttl).metadata(acquire.metadata);
    if let Some(wait) = &acquire.wait {
        let wait = duration_of(wait).ok_or_else(|| {
            Status::invalid_argument(format!("wait {wait:?} is negative or malformed"))
        })?;
        options = options.wait(wait);
    }
    Ok((key, options))
}

/// Serves one `Hold` stream.
async fn run_hold(
    shared: Shared,
    mut incoming: Streaming<HoldRequest>,
    tx: mpsc::Sender<Result<HoldResponse, Status>>,
    slot: StreamSlot,
) {
    let stopping = shared.stopping.clone();
    // The first request: acquire.
    let first = match super::first::first_request(&shared, &mut incoming, tx.closed()).await {
        Ok(first) => first,
        Err(NoFirst::End(status)) => {
            let _ = tx.try_send(Err(status));
            return;
        }
        Err(NoFirst::Gone | NoFirst::Stopping) => return,
    };
    let acquire = match first {
        HoldRequest {
            kind: Some(In::Acquire(a)),
        } => a,
        _ => {
            let _ = tx.try_send(Err(Status::invalid_argument(
                "the first request of a Hold stream must be `acquire`",
            )));
            return;
        }
    };
    let (key, options) = match options_of(acquire) {
        Ok(x) => x,
        Err(status) => {
            let _ = tx.try_send(Err(status));
            return;
        }
    };
    let ttl = options.ttl();
    let acquired = tokio::select! {
        _ = stopping.cancelled() => Err(Status::unavailable("the lease service is shutting down")),
        // The client is gone: dropping the acquire gives up (the manager cleans up).
        _ = tx.closed() => return,
        r = shared.manager.acquire_lease_with(key.clone(), options.keep_until_released()) => r.map_err(|e| status_of(&e)),
    };
    let (lease, ctx) = match acquired {
        Ok(x) => x,
        Err(status) => {
            let _ = tx.try_send(Err(status));
            return;
        }
    };
    // How long the client may act on what it was told: the server's deadline when it
    // last answered (the client counts from the earlier instant it sent the request).
    // Until then nobody else may have the key, unless the client says it has stopped.
    let left = time_left(&ctx, ttl);
    let mut promised = Instant::now() + left;
    let granted = answer(Out::Granted(Granted {
        token: lease.token(),
        time_left: Some(proto_duration(left)),
    }));
    if tx.try_send(granted).is_err() {
        let _ = lease.release().await;
        return;
    }
    let mut last = Instant::now();
    let end = loop {
        tokio::select! {
            biased;
            _ = stopping.cancelled() => {
                break ended(Reason::Shutdown, "the lease service is shutting down");
            }
            reason = ctx.cancelled() => break ended_by(&reason),
            // The client dropped its answers (a reset, or its connection is gone).
            _ = tx.closed() => {
                if released_already(&mut incoming) {
                    let _ = lease.release().await;
                    return;
                }
                break Err(Status::cancelled("the client went away"));
            }
            _ = tokio::time::sleep_until(last + ttl) => {
                break ended(Reason::Lost, "no request within the TTL: the client is gone");
            }
            m = incoming.message() => match m {
                Ok(Some(HoldRequest { kind: Some(In::Heartbeat(_)) })) => {
                    last = Instant::now();
                    // Never confirm an ended lease.
                    if let Some(reason) = ctx.reason() {
                        break ended_by(&reason);
                    }
                    let left = time_left(&ctx, ttl);
                    promised = promised.max(Instant::now() + left);
                    let renewed = answer(Out::Renewed(Renewed {
                        time_left: Some(proto_duration(left)),
                    }));
                    // Keep the last slot for the end (its status must reach the client).
                    if tx.capacity() <= 1 || tx.try_send(renewed).is_err() {
                        break Err(Status::resource_exhausted(
                            "the client does not read its answers",
                        ));
                    }
                }
                Ok(Some(HoldRequest { kind: Some(In::Release(_)) })) => {
                    let _ = lease.release().await;
                    let _ = tx.try_send(ended(Reason::Released, "released"));
                    return;
                }
                Ok(Some(_)) => {
                    break Err(Status::invalid_argument("only heartbeat and release may follow acquire"));
                }
                // Not a release: a client that has stopped says `release` first.
                Ok(None) => break Err(Status::cancelled("the client closed the stream without releasing")),
                Err(status) => break Err(status),
            },
        }
    };
    // Tell the client first; then the remote-holder rule decides when the key goes back:
    // at the client's `release`, or when the time it was last promised has passed.
    let _ = tx.try_send(end);
    drop(tx);
    // The stream is over: it no longer counts against its connection's limit.
    drop(slot);
    give_back(lease, promised, release_of(&mut incoming)).await;
}

/// Whether a `release` is already waiting among the requests read so far (a client
/// that released and dropped its answers at once), without waiting for more.
fn released_already(incoming: &mut Streaming<HoldRequest>) -> bool {
    use futures_util::FutureExt;
    loop {
        match incoming.message().now_or_never() {
            Some(Ok(Some(HoldRequest {
                kind: Some(In::Release(_)),
            }))) => return true,
            Some(Ok(Some(_))) => {}
            _ => return false,
        }
    }
}

/// Returns when the client sends `release` (after its lease ended, it says so once it
/// has stopped); never if the stream ends or breaks first, since neither tells whether
/// the client has stopped.
async fn release_of(incoming: &mut Streaming<HoldRequest>) {
    loop {
        match incoming.message().await {
            Ok(Some(HoldRequest {
                kind: Some(In::Release(_)),
            })) => return,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => std::future::pending().await,
        }
    }
}
