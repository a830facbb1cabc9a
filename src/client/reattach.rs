//! A held lease's stream, and re-attaching the lease on a new one when the stream
//! breaks: through another server of the same store, or the same server, before the
//! lease's deadline (see RE-ATTACHING in `proto/leases/v1/leases.proto`).
//!
//! The holder does not notice a re-attach: its context keeps the deadline of the last
//! confirmed answer until the re-attach's `granted` moves it (counted, as every answer,
//! from the instant the request was sent). If no server takes the lease back before the
//! deadline, the context ends there by itself, as it would have without re-attaching; a
//! server that answers that the lease is gone (`FAILED_PRECONDITION`) ends it at once.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Code, Status};

use super::connection::ClientLeaser;
use super::keep::{time_left_of, Sent};
use super::lanes::{Answers, Requests};
use crate::context::ContextSender;
use crate::proto::leases::v1::hold_request::Kind as In;
use crate::proto::leases::v1::hold_response::Kind as Out;
use crate::proto::leases::v1::{Acquire, HoldRequest, HoldResponse};
use crate::{CancelReason, Key, LeaseContext, LossCause};

/// The longest pause between two tries of a re-attach.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// One lease's stream (its own `Hold` stream, or a lane of a `HoldMany` stream): the
/// requests we send and the answers.
pub(super) struct Stream {
    pub(super) requests: Requests,
    pub(super) answers: Answers,
}

/// What re-attaching a lease needs: where it is held, and what to ask.
pub(super) struct Resume {
    pub(super) leaser: ClientLeaser,
    pub(super) key: Key,
    pub(super) ttl: Duration,
    pub(super) metadata: Vec<u8>,
    pub(super) token: u64,
    /// The server the lease's stream is on.
    pub(super) server: usize,
}

impl Resume {
    /// The `acquire` that re-attaches the lease (`resume` with its token).
    pub(super) fn acquire(&self) -> Acquire {
        Acquire {
            key: self.key.to_string(),
            ttl: Some(crate::proto::duration(self.ttl)),
            metadata: self.metadata.clone(),
            wait: None,
            resume: Some(self.token),
        }
    }
}

/// Whether a status that ended a lease's stream is a break, after which the lease may
/// live on (re-attach it), rather than an answer about the lease or the request.
pub(super) fn is_break(status: &Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// Opens a lane of server `server`'s `HoldMany` stream (or, on a server without it, a
/// `Hold` stream) and sends `acquire` on it.
pub(super) async fn open(
    leaser: &ClientLeaser,
    server: usize,
    acquire: Acquire,
) -> Result<(Stream, Sent), Status> {
    if let Some(opened) = leaser.open_lane(server, &acquire).await {
        return opened;
    }
    let (requests, mut rx) = mpsc::unbounded_channel::<HoldRequest>();
    let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let sent = Sent::now();
    let _ = requests.send(HoldRequest {
        kind: Some(In::Acquire(acquire)),
    });
    let mut request = leaser.request(outgoing);
    // The stream lives as long as the lease: no gRPC deadline on it (a server or proxy
    // that honours one would end the lease when it passed).
    request.metadata_mut().remove("grpc-timeout");
    let answers = leaser.client_at(server).hold(request).await?.into_inner();
    let stream = Stream {
        requests: Requests::Own(requests),
        answers: Answers::Own(Box::new(answers)),
    };
    Ok((stream, sent))
}

/// How one try to re-attach ended.
enum Try {
    /// Re-attached: the stream, and the deadline its answer sets.
    Attached(Box<Stream>, Sent, Duration),
    /// The lease is gone (or the server answered nonsense): it is lost.
    Refused(String),
    /// This server could not take it now: try again, or another.
    Again(String),
}

/// Re-attaches the lease of `sender` on a new stream, trying the servers in turn
/// (starting with the one after the lease's) with a growing pause, until one takes it,
/// one says it is gone, or the context ends (its deadline passes). Returns the new
/// stream, or `None` once the context has ended.
pub(super) async fn reattach(
    r: &mut Resume,
    sender: &ContextSender,
    watch: &LeaseContext,
    why: &str,
) -> Option<Stream> {
    tracing::info!(key = %r.key, token = r.token, why, "lease stream broke: re-attaching");
    let mut pause = Duration::from_millis(50);
    let mut server = r.server + 1;
    loop {
        if watch.reason().is_some() {
            return None;
        }
        let outcome = tokio::select! {
            _ = watch.cancelled() => return None,
            o = attempt(r, server) => o,
        };
        match outcome {
            Try::Attached(stream, sent, left) => {
                if !sender.extend(sent.at + left, sent.since) {
                    // The deadline passed meanwhile: the context has ended.
                    return None;
                }
                r.server = server % r.leaser.servers();
                tracing::info!(key = %r.key, token = r.token, server = r.leaser.url_at(server), "lease re-attached");
                return Some(*stream);
            }
            Try::Refused(why) => {
                sender.cancel(CancelReason::Lost(LossCause::Remote(format!(
                    "the lease could not be re-attached: {why}"
                ))));
                return None;
            }
            Try::Again(why) => {
                tracing::debug!(key = %r.key, server = r.leaser.url_at(server), why, "re-attach failed; trying again");
                r.leaser.move_on_from(server);
                server += 1;
                let wake = Instant::now() + pause;
                pause = (pause * 2).min(MAX_PAUSE);
                tokio::select! {
                    _ = watch.cancelled() => return None,
                    _ = tokio::time::sleep_until(wake) => {}
                }
            }
        }
    }
}

/// Re-attaches a granted lease that its holder has not been handed yet: its grant's
/// confirmation met a drain (`HANDED_OVER`) or a broken stream. As [`reattach`] does,
/// the servers in turn (starting with the one after the lease's), until one takes it,
/// one says it is gone, or `until` has passed. The new stream, the instant its
/// `acquire` was sent, and the time left it answered: what the holder's context starts
/// from, as from any confirmed answer.
pub(super) async fn reattach_grant(
    r: &mut Resume,
    until: Instant,
    why: &str,
) -> Result<(Stream, super::keep::Sent, Duration), crate::LeaseError> {
    use super::status::unavailable;
    tracing::info!(key = %r.key, token = r.token, why, "a grant's stream broke before it was confirmed: re-attaching");
    let mut pause = Duration::from_millis(50);
    let mut server = r.server + 1;
    loop {
        let Ok(outcome) = tokio::time::timeout_at(until, attempt(r, server)).await else {
            return Err(unavailable(format!(
                "no lease server took the grant back in time ({why})"
            )));
        };
        match outcome {
            Try::Attached(stream, sent, left) => {
                r.server = server % r.leaser.servers();
                return Ok((*stream, sent, left));
            }
            Try::Refused(gone) => {
                return Err(unavailable(format!("the lease ended at once: {gone}")));
            }
            Try::Again(_) => {
                r.leaser.move_on_from(server);
                server += 1;
                tokio::time::sleep_until((Instant::now() + pause).min(until)).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// One try to re-attach on server `server`, bounded by the request timeout.
async fn attempt(r: &Resume, server: usize) -> Try {
    let acquire = r.acquire();
    let limit = r.leaser.options().request_timeout;
    let tried = tokio::time::timeout(limit, async {
        let (mut stream, sent) = open(&r.leaser, server, acquire).await?;
        let first = stream.answers.message().await?;
        Ok::<_, Status>((stream, sent, first))
    })
    .await;
    match tried {
        Err(_) => Try::Again("no answer in time".into()),
        Ok(Err(status)) if is_break(&status) || status.code() == Code::ResourceExhausted => {
            Try::Again(status.message().to_string())
        }
        Ok(Err(status)) => Try::Refused(status.message().to_string()),
        Ok(Ok((stream, sent, first))) => match first {
            Some(HoldResponse {
                kind: Some(Out::Granted(g)),
            }) if g.token == r.token => {
                Try::Attached(Box::new(stream), sent, time_left_of(g.time_left, r.ttl))
            }
            Some(other) => Try::Refused(format!("unexpected answer to a re-attach: {other:?}")),
            None => Try::Again("the stream ended at once".into()),
        },
    }
}
