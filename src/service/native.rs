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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::hold::UNREAD_LIMIT;
use super::shared::Shared;
use super::status::{duration_of, proto_duration, status_of};
use crate::proto::leases::v1::leases_server::Leases;
use crate::proto::leases::v1::{
    Acquire, HoldManyRequest, HoldManyResponse, HoldRequest, HoldResponse, InfoResponse,
    KeyRequest, ListRequest, ListResponse, RevokeResponse,
};
use crate::{AcquireOptions, Key, LeaseError, LeaseInfo};

// The most leases one `List` answers with.
use crate::proto::LIST_LIMIT;

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
type HoldManyAnswers = Pin<Box<dyn Stream<Item = Result<HoldManyResponse, Status>> + Send>>;

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
            super::hold::run_hold(shared, request.into_inner(), tx, slot).await;
            drop(counted);
        });
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    type HoldManyStream = HoldManyAnswers;

    async fn hold_many(
        &self,
        request: Request<Streaming<HoldManyRequest>>,
    ) -> Result<Response<HoldManyAnswers>, Status> {
        if !self.shared.options.hold_many {
            return Err(Status::unimplemented(
                "HoldMany is not served here: use Hold",
            ));
        }
        let slot = self.shared.open_stream(request.remote_addr())?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let unread = Arc::new(AtomicUsize::new(0));
        let read = Arc::new(tokio::sync::Notify::new());
        let answers = super::many::Answers {
            tx,
            unread: unread.clone(),
            read: read.clone(),
        };
        let counted = self.shared.stream();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            super::many::run_many(shared, request.into_inner(), answers, slot).await;
            drop(counted);
        });
        // Each answer handed to the transport is one fewer unread (see `many.rs`).
        let out = futures_util::stream::poll_fn(move |cx| {
            let next = rx.poll_recv(cx);
            if let std::task::Poll::Ready(Some(Ok(_))) = &next {
                unread.fetch_sub(1, Ordering::Relaxed);
                read.notify_one();
            }
            next
        });
        Ok(Response::new(Box::pin(out)))
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
