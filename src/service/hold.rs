//! One native `Hold` stream: the acquire (or re-attach), the heartbeats, and how the
//! stream's lease is let go of when the stream ends (see `give_back.rs` and
//! `handover.rs`).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use super::first::NoFirst;
use super::give_back::give_back_listed;
use super::handover::{hand, Claim, EndLog, Hold, Listed};
use super::lanes::{Outgoing, Requests};
use super::native::options_of;
use super::shared::{Shared, StreamSlot};
use super::status::{proto_duration, status_of, time_left};
use crate::proto::leases::v1::ended::Reason;
use crate::proto::leases::v1::hold_request::Kind as In;
use crate::proto::leases::v1::hold_response::Kind as Out;
use crate::proto::leases::v1::{Acquire, Ended, Granted, HoldRequest, HoldResponse, Renewed};
use crate::{AcquireOptions, CancelReason, Key, LeaseError};

/// Unread answers after which a client is treated as gone.
pub(crate) const UNREAD_LIMIT: usize = 64;

pub(crate) type Answers = mpsc::Sender<Result<HoldResponse, Status>>;

fn answer(kind: Out) -> Result<HoldResponse, Status> {
    Ok(HoldResponse { kind: Some(kind) })
}

pub(crate) fn ended(reason: Reason, message: impl Into<String>) -> Result<HoldResponse, Status> {
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

/// Serves one `Hold` stream.
pub(crate) async fn run_hold(
    shared: Shared,
    mut incoming: Streaming<HoldRequest>,
    tx: Answers,
    slot: StreamSlot,
) {
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
    serve_hold(shared, acquire, incoming, tx, Some(slot), ()).await
}

/// Serves one lease from its `acquire` on: on a `Hold` stream of its own, or on a lane
/// of a `HoldMany` stream (see `lanes.rs`). `slot` counts the stream against its
/// connection's limit until the lease's stream is over; `kept` is dropped when the
/// lease is done with (given back, handed over, or never got).
///
/// The future lives as long as the lease is held, one per held lease (100k on one
/// `HoldMany` stream), so it keeps only what the holding needs: getting the lease (and
/// every way of letting go of it) runs in boxed futures of their own, and what moves
/// from one part to the next moves boxed, by value (not an `async fn`, whose arguments
/// are kept for the future's whole life, nor a borrow, which keeps its place too).
pub(crate) fn serve_hold<R: Requests, A: Outgoing, K: Send + 'static>(
    shared: Shared,
    acquire: Acquire,
    incoming: R,
    tx: A,
    slot: Option<StreamSlot>,
    kept: K,
) -> impl std::future::Future<Output = ()> + Send {
    let parts = Box::new((shared, acquire, incoming, tx, slot, kept));
    async move {
        if let Some(holding) = Box::pin(begin(parts)).await {
            hold_on(holding).await
        }
    }
}

/// A lease held for a client, and all its stream's task holds it with.
struct Holding<R, A, K> {
    shared: Shared,
    hold: Hold,
    listed: Listed,
    ttl: Duration,
    incoming: R,
    tx: A,
    slot: Option<StreamSlot>,
    kept: K,
}

/// Gets the lease (acquired or re-attached), lists it, and tells the client: what to
/// hold on to, or `None` once it is over (no lease, or one let go of at once).
async fn begin<R: Requests, A: Outgoing, K: Send + 'static>(
    parts: Box<(Shared, Acquire, R, A, Option<StreamSlot>, K)>,
) -> Option<Box<Holding<R, A, K>>> {
    let (shared, acquire, mut incoming, tx, slot, kept) = *parts;
    let resume = acquire.resume;
    let (key, options) = match options_of(acquire) {
        Ok(x) => x,
        Err(status) => {
            let _ = tx.try_send(Err(status));
            return None;
        }
    };
    let ttl = options.ttl();
    let got = tokio::select! {
        _ = shared.stopping.cancelled() => Err(Status::unavailable("the lease service is shutting down")),
        // The client is gone: dropping the acquire gives up (the manager cleans up, and
        // a hold being taken over from another stream stays with it).
        _ = tx.closed() => return None,
        got = obtain(&shared, key.clone(), options, resume) => got,
    };
    let mut hold = match got {
        Ok(hold) => hold,
        Err(status) => {
            let _ = tx.try_send(Err(status));
            return None;
        }
    };
    let token = hold.token();
    let listed = shared.holds.list(&key, token, ttl);
    if let Some(reason) = hold.ctx.reason() {
        // A re-attached lease that had already ended: say so, and let it go as the
        // stream that held it would have.
        let _ = tx.try_send(Err(Status::failed_precondition(format!(
            "lease {key} is no longer held: {reason}"
        ))));
        drop((tx, slot));
        let clean_end = release_of(&mut incoming);
        give_back_listed(hold, listed, clean_end, &shared.let_go).await;
        return None;
    }
    // How long the client may act on what it was told: the server's deadline when it
    // last answered (the client counts from the earlier instant it sent the request).
    // Until then nobody else may have the key, unless the client says it has stopped.
    let left = time_left(&hold.ctx, ttl);
    let promised_before = hold.promised;
    hold.promised = hold.promised.max(Instant::now() + left);
    let granted = answer(Out::Granted(Granted {
        token,
        time_left: Some(proto_duration(left)),
    }));
    if tx.try_send(granted).is_err() {
        // The client went away before it heard of the lease: a new lease goes back at
        // once (nobody can act on it); a re-attached one keeps what was promised to
        // the client on its earlier stream.
        drop(tx);
        if resume.is_none() {
            drop(listed);
            hold.release().await;
            return None;
        }
        hold.promised = promised_before;
        give_back_listed(hold, listed, std::future::pending(), &shared.let_go).await;
        return None;
    }
    Some(Box::new(Holding {
        shared,
        hold,
        listed,
        ttl,
        incoming,
        tx,
        slot,
        kept,
    }))
}

/// Holds the lease for its client: answers heartbeats, hands it over to a stream that
/// re-attaches it, and lets go of it by the rule when the stream ends or the lease does.
async fn hold_on<R: Requests, A: Outgoing, K: Send + 'static>(holding: Box<Holding<R, A, K>>) {
    let Holding {
        shared,
        mut hold,
        mut listed,
        ttl,
        mut incoming,
        tx,
        slot,
        kept: _kept,
    } = *holding;
    let stopping = &shared.stopping;
    // On a lane, the demultiplexer answers group heartbeats from here on without
    // waking this task (see `Inbox::answer`); what it answered moves `last` (checked when
    // the silence timer fires) and the promise (taken in before the lease is handed on
    // or given back, once the demultiplexer has stopped answering).
    incoming.share(&hold.ctx, ttl);
    let mut last = Instant::now();
    let exit = loop {
        let event = tokio::select! {
            biased;
            _ = stopping.cancelled() => Event::Stopping,
            // Not every second: see `cancelled_lazily`.
            reason = hold.ctx.cancelled_lazily() => Event::Ended(reason),
            // The client dropped its answers (a reset, or its connection is gone).
            _ = tx.closed() => Event::Gone,
            claim = listed.claims.recv() => Event::Claimed(claim),
            _ = tokio::time::sleep_until(last + ttl) => Event::Silent,
            m = incoming.message() => Event::Request(m),
        };
        match event {
            Event::Stopping if shared.let_go.shared_store => {
                let why = "the lease service is shutting down: \
                           re-attach the lease through another server";
                break Exit::End(ended(Reason::HandedOver, why));
            }
            Event::Stopping => {
                break Exit::End(ended(
                    Reason::Shutdown,
                    "the lease service is shutting down",
                ))
            }
            Event::Ended(reason) => {
                hold.noted_end(&reason);
                break Exit::End(ended_by(&reason));
            }
            Event::Gone => {
                if released_already(&mut incoming) {
                    break Exit::Released { tell: false };
                }
                break Exit::End(Err(Status::cancelled("the client went away")));
            }
            Event::Claimed(claim) => {
                take_answered(&mut hold, &mut incoming);
                match hand(claim, hold) {
                    Ok(()) => {
                        let _ = tx.try_send(Err(Status::cancelled(
                            "the lease was re-attached on another stream",
                        )));
                        return;
                    }
                    Err(back) => {
                        hold = back;
                        incoming.share(&hold.ctx, ttl);
                    }
                }
            }
            Event::Silent => {
                // Heartbeats answered by the demultiplexer count as requests.
                if let Some(at) = incoming.answered().last {
                    last = last.max(at);
                }
                if last + ttl > Instant::now() {
                    continue;
                }
                break Exit::End(ended(
                    Reason::Lost,
                    "no request within the TTL: the client is gone",
                ));
            }
            Event::Request(Ok(Some(HoldRequest {
                kind: Some(In::Heartbeat(_)),
            }))) => {
                last = Instant::now();
                // Never confirm an ended lease.
                if let Some(reason) = hold.ctx.reason() {
                    break Exit::End(ended_by(&reason));
                }
                let left = time_left(&hold.ctx, ttl);
                hold.promised = hold.promised.max(Instant::now() + left);
                let renewed = answer(Out::Renewed(Renewed {
                    time_left: Some(proto_duration(left)),
                }));
                // Keep the last slot for the end (its status must reach the client).
                if !tx.has_room() || tx.try_send(renewed).is_err() {
                    break Exit::End(Err(Status::resource_exhausted(
                        "the client does not read its answers",
                    )));
                }
            }
            Event::Request(Ok(Some(HoldRequest {
                kind: Some(In::Release(_)),
            }))) => {
                break Exit::Released { tell: true };
            }
            Event::Request(Ok(Some(_))) => {
                break Exit::End(Err(Status::invalid_argument(
                    "only heartbeat and release may follow acquire",
                )));
            }
            // Not a release: a client that has stopped says `release` first.
            Event::Request(Ok(None)) => {
                break Exit::End(Err(Status::cancelled(
                    "the client closed the stream without releasing",
                )))
            }
            Event::Request(Err(status)) => break Exit::End(Err(status)),
        }
    };
    let end = match exit {
        Exit::End(end) => end,
        Exit::Released { tell } => {
            drop(listed);
            Box::pin(hold.release()).await;
            if tell {
                let _ = tx.try_send(ended(Reason::Released, "released"));
            }
            return;
        }
    };
    // Nothing is answered for the lease but by this task from here on, and every
    // promise made for it counts.
    take_answered(&mut hold, &mut incoming);
    // Tell the client first; then the remote-holder rule decides when the key goes back:
    // at the client's `release`, or when the time it was last promised has passed (or,
    // on a shared store, at once when this server stops: the client re-attaches
    // elsewhere). Until then a re-attach on another stream of this server takes it over.
    let _ = tx.try_send(end);
    drop(tx);
    // The stream is over: it no longer counts against its connection's limit.
    drop(slot);
    Box::pin(give_back_listed(
        hold,
        listed,
        release_of(&mut incoming),
        &shared.let_go,
    ))
    .await;
}

/// Stops the demultiplexer answering for the lease (a lane) and takes its promises into
/// `hold`'s: from here on the promise `hold` keeps is every promise made for the lease.
fn take_answered<R: Requests>(hold: &mut Hold, incoming: &mut R) {
    if let Some(promised) = incoming.unshare().promised {
        hold.promised = hold.promised.max(promised);
    }
}

/// How a holding stream's loop ended (no await in the loop but its wait, so that what
/// woke it is not kept in the task for its whole life).
enum Exit {
    /// With this last answer for the client; the lease is given back by the rule.
    End(Result<HoldResponse, Status>),
    /// By the client's release: the key goes back at once (`tell`: say so).
    Released { tell: bool },
}

/// What woke a holding stream.
enum Event {
    Stopping,
    Ended(CancelReason),
    Gone,
    Claimed(Claim),
    Silent,
    Request(Result<Option<HoldRequest>, Status>),
}

/// The stream's lease: acquired, or re-attached (taken over from another stream of this
/// server, or resumed from the store).
async fn obtain(
    shared: &Shared,
    key: Key,
    options: AcquireOptions,
    resume: Option<u64>,
) -> Result<Hold, Status> {
    obtain_hold(shared, key.clone(), options, resume, "native")
        .await
        .map_err(|e| match e {
            NotObtained::Refused(e) => status_of(&e),
            NotObtained::Gone => Status::failed_precondition(gone(&key, resume)),
            NotObtained::Busy => Status::unavailable(busy(&key)),
        })
}

/// Why a lease could not be obtained for a client.
pub(crate) enum NotObtained {
    /// The manager refused it.
    Refused(LeaseError),
    /// A re-attach: the lease is no longer held.
    Gone,
    /// A re-attach: another stream of this server holds the lease and is letting go of
    /// it: try again.
    Busy,
}

/// The message of [`NotObtained::Gone`].
pub(crate) fn gone(key: &Key, token: Option<u64>) -> String {
    format!(
        "lease {key} with token {} is no longer held: it expired, was released, \
         revoked or taken over",
        token.unwrap_or_default()
    )
}

/// The message of [`NotObtained::Busy`].
pub(crate) fn busy(key: &Key) -> String {
    format!(
        "lease {key} is held by another stream of this server that is letting go of \
         it: try again"
    )
}

/// A client's lease (held until released: see `give_back.rs`): acquired, or, with
/// `resume`, re-attached (taken over from the stream or HTTP keeper of this server
/// that lists it, or resumed from the store).
pub(crate) async fn obtain_hold(
    shared: &Shared,
    key: Key,
    options: AcquireOptions,
    resume: Option<u64>,
    via: &'static str,
) -> Result<Hold, NotObtained> {
    let manager = &shared.manager;
    let options = options.keep_until_released();
    let Some(token) = resume else {
        let (lease, ctx) = manager
            .acquire_lease_with(key, options)
            .await
            .map_err(NotObtained::Refused)?;
        shared.events.granted(lease.key(), ctx.token(), via, false);
        return Ok(Hold::new(
            lease,
            ctx,
            &shared.let_go,
            Some(log(shared, via)),
        ));
    };
    match shared.holds.take(&key, token, options.ttl()).await {
        Ok(Some(hold)) => return Ok(hold),
        Ok(None) => {}
        Err(e) => return Err(NotObtained::Refused(e)),
    }
    match manager
        .acquire_lease_with(key.clone(), options.resume(token))
        .await
    {
        Ok((lease, ctx)) => {
            shared.events.granted(&key, ctx.token(), via, true);
            Ok(Hold::new(
                lease,
                ctx,
                &shared.let_go,
                Some(log(shared, via)),
            ))
        }
        Err(LeaseError::NotHeld) => Err(NotObtained::Gone),
        // Held here by a stream that has not handed it over (yet): try again.
        Err(LeaseError::Conflict) => Err(NotObtained::Busy),
        Err(e) => Err(NotObtained::Refused(e)),
    }
}

/// Where a lease obtained for a client through `via` records its end.
fn log(shared: &Shared, via: &'static str) -> EndLog {
    EndLog {
        events: shared.events.clone(),
        via,
    }
}

/// Whether a `release` is already waiting among the requests read so far (a client
/// that released and dropped its answers at once), without waiting for more.
fn released_already<R: Requests>(incoming: &mut R) -> bool {
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
/// the client has stopped (except on a lane, where a release may still follow its
/// close: see [`Requests::release_after_end`]).
async fn release_of<R: Requests>(incoming: &mut R) {
    loop {
        match incoming.message().await {
            Ok(Some(HoldRequest {
                kind: Some(In::Release(_)),
            })) => return,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return incoming.release_after_end().await,
        }
    }
}
