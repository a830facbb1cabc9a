//! What one held lease reads its requests from and writes its answers to: its own
//! `Hold` stream, or a *lane* of a `HoldMany` stream (see `many.rs`).
//!
//! `hold.rs` serves a lease the same way on either, so that every way a lease or its
//! stream ends (give-back, hand-over, resume, silence, revoke, release races) is one
//! piece of code. A lane is small: the demultiplexer puts a lease's requests in its
//! [`Inbox`] (a count of heartbeats, a release flag, the stream's end) and the lease's
//! answers go, tagged with its id, into one channel per `HoldMany` stream ([`Lane`]).
//! While the lease is held, its task shares its context with the inbox, so that the
//! demultiplexer answers group heartbeats itself ([`Inbox::answer`]): a heartbeat of a
//! group of 100k leases was 100k task wake-ups and 100k answers between tasks. The
//! task takes the answering back ([`Requests::unshare`]) before it hands the lease on
//! or lets go of it, and takes the promises made meanwhile into its own. Flow control
//! is the `HoldMany` stream's, kept by the demultiplexer.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::status::time_left;
use crate::proto::leases::v1::hold_request::Kind as In;
use crate::proto::leases::v1::{Heartbeat, HoldRequest, HoldResponse, Release};
use crate::LeaseContext;

/// Where a held lease reads its requests (after `acquire`).
pub(crate) trait Requests: Send {
    /// The next request; `Ok(None)` when the client closed its side.
    fn message(&mut self) -> impl Future<Output = Result<Option<HoldRequest>, Status>> + Send;

    /// Lets the demultiplexer answer the lease's heartbeats itself from now on, from
    /// its context (a lane; nothing on a stream of its own). See [`Inbox::answer`].
    fn share(&mut self, _ctx: &LeaseContext, _ttl: Duration) {}

    /// What was answered for the lease elsewhere: the last heartbeat's instant and the
    /// furthest instant promised, if any.
    fn answered(&mut self) -> Answered {
        Answered::default()
    }

    /// Stops the answering of [`Requests::share`]: once this returns, no answer is
    /// given for the lease but its task's own. Returns what was answered until then.
    fn unshare(&mut self) -> Answered {
        Answered::default()
    }

    /// Completes when a `release` comes after the requests ended; never on a stream of
    /// its own (nothing comes after its end). On a lane it can: the client closes a
    /// lane whose acquire it gave up, and releases the lease if a grant comes anyway.
    fn release_after_end(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Where a held lease writes its answers.
pub(crate) trait Outgoing: Send + Sync {
    /// Queues an answer; an error when the client is gone (or reads nothing).
    fn try_send(&self, answer: Result<HoldResponse, Status>) -> Result<(), ()>;
    /// Completes when the client is gone.
    fn closed(&self) -> impl Future<Output = ()> + Send;
    /// Whether an answer other than the last fits (the last room is for the end).
    fn has_room(&self) -> bool;
}

impl Requests for Streaming<HoldRequest> {
    fn message(&mut self) -> impl Future<Output = Result<Option<HoldRequest>, Status>> + Send {
        Streaming::message(self)
    }
}

impl Outgoing for mpsc::Sender<Result<HoldResponse, Status>> {
    fn try_send(&self, answer: Result<HoldResponse, Status>) -> Result<(), ()> {
        mpsc::Sender::try_send(self, answer).map_err(|_| ())
    }

    fn closed(&self) -> impl Future<Output = ()> + Send {
        mpsc::Sender::closed(self)
    }

    fn has_room(&self) -> bool {
        self.capacity() > 1
    }
}

/// What the demultiplexer hears from its lanes.
pub(crate) enum Up {
    /// Lane `id`'s lease answered.
    Answer(u64, Result<HoldResponse, Status>),
    /// Lane `id`'s lease is done with (its task ended): it reads no more requests.
    Done(u64),
}

/// The heartbeats answered for a lease by its demultiplexer.
#[derive(Default, Clone, Copy)]
pub(crate) struct Answered {
    /// When the last of them came.
    pub(crate) last: Option<Instant>,
    /// The furthest instant their answers let the client act until.
    pub(crate) promised: Option<Instant>,
}

/// A lane's requests, as the demultiplexer left them.
#[derive(Default)]
struct Pending {
    heartbeats: u32,
    release: bool,
    /// The `HoldMany` stream's end, once it has come: what every lane then reads.
    end: Option<Result<(), Status>>,
    /// The lease's context and TTL while the demultiplexer may answer its heartbeats.
    shared: Option<(LeaseContext, Duration)>,
    answered: Answered,
}

/// The requests of one lane: written by the demultiplexer, read by the lease's task.
#[derive(Default)]
pub(crate) struct Inbox {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl Inbox {
    fn with(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut crate::sync::lock(&self.pending));
        self.ready.notify_one();
    }

    /// One more heartbeat for the lease.
    pub(crate) fn heartbeat(&self) {
        self.with(|p| p.heartbeats = p.heartbeats.saturating_add(1));
    }

    /// The client released the lease.
    pub(crate) fn release(&self) {
        self.with(|p| p.release = true);
    }

    /// Answers a group heartbeat for the lease without waking its task, as its task
    /// would (`hold.rs`): the lease's time left, which also moves the promise its task
    /// keeps the key by (see [`Requests::unshare`]). `None` when its task must answer
    /// (it has not shared its context, has taken it back, or the lease has ended: an
    /// ended lease is never confirmed, and its task tells the client how it ended).
    pub(crate) fn answer(&self) -> Option<Duration> {
        let mut p = crate::sync::lock(&self.pending);
        let (ctx, ttl) = p.shared.as_ref()?;
        if ctx.reason().is_some() {
            return None;
        }
        let now = Instant::now();
        let left = time_left(ctx, *ttl);
        p.answered.last = Some(now);
        p.answered.promised = p.answered.promised.max(Some(now + left));
        Some(left)
    }

    /// The `HoldMany` stream ended (`Ok`: closed by the client) or broke.
    pub(crate) fn end(&self, end: Result<(), Status>) {
        self.with(|p| {
            p.end.get_or_insert(end);
        });
    }
}

/// The reading side of an [`Inbox`].
pub(crate) struct LaneRequests(pub(crate) Arc<Inbox>);

impl Requests for LaneRequests {
    fn share(&mut self, ctx: &LeaseContext, ttl: Duration) {
        crate::sync::lock(&self.0.pending).shared = Some((ctx.clone(), ttl));
    }

    fn answered(&mut self) -> Answered {
        crate::sync::lock(&self.0.pending).answered
    }

    fn unshare(&mut self) -> Answered {
        let mut p = crate::sync::lock(&self.0.pending);
        p.shared = None;
        p.answered
    }

    async fn release_after_end(&mut self) {
        loop {
            let ready = self.0.ready.notified();
            if std::mem::take(&mut crate::sync::lock(&self.0.pending).release) {
                return;
            }
            ready.await;
        }
    }

    async fn message(&mut self) -> Result<Option<HoldRequest>, Status> {
        loop {
            // Registered before looking, so that a request put in meanwhile wakes us.
            let ready = self.0.ready.notified();
            {
                let mut p = crate::sync::lock(&self.0.pending);
                // A release goes first: the client has stopped, whatever heartbeats it
                // sent before.
                if p.release {
                    p.release = false;
                    return Ok(Some(HoldRequest {
                        kind: Some(In::Release(Release {})),
                    }));
                }
                if p.heartbeats > 0 {
                    p.heartbeats -= 1;
                    return Ok(Some(HoldRequest {
                        kind: Some(In::Heartbeat(Heartbeat {})),
                    }));
                }
                match &p.end {
                    Some(Ok(())) => return Ok(None),
                    Some(Err(status)) => return Err(status.clone()),
                    None => {}
                }
            }
            ready.await;
        }
    }
}

/// The writing side of a lane: answers tagged with the lane's id.
pub(crate) struct Lane {
    pub(crate) id: u64,
    pub(crate) up: mpsc::UnboundedSender<Up>,
    /// Cancelled when the `HoldMany` stream's client is gone.
    pub(crate) gone: CancellationToken,
}

impl Outgoing for Lane {
    fn try_send(&self, answer: Result<HoldResponse, Status>) -> Result<(), ()> {
        if self.gone.is_cancelled() {
            return Err(());
        }
        self.up.send(Up::Answer(self.id, answer)).map_err(|_| ())
    }

    fn closed(&self) -> impl Future<Output = ()> + Send {
        self.gone.cancelled()
    }

    fn has_room(&self) -> bool {
        // The demultiplexer keeps the `HoldMany` stream's unread limit.
        true
    }
}

/// Tells the demultiplexer that a lane's lease is done with, however its task ends.
pub(crate) struct DoneGuard(pub(crate) u64, pub(crate) mpsc::UnboundedSender<Up>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.1.send(Up::Done(self.0));
    }
}
