//! The two kinds of stream a held lease is kept on: a `Hold` stream of its own, or a
//! *lane* of the connection's `HoldMany` stream (see `many.rs`). `keep.rs`,
//! `reattach.rs` and `acquire.rs` use both the same way, except that a lane sends no
//! heartbeats of its own: its group's heartbeat keeps it, and each `renewed` it gets
//! comes with the instant that heartbeat was sent.

use tokio::sync::mpsc;
use tonic::Status;

use super::keep::Sent;
use crate::context::ContextSender;
use crate::proto::leases::v1::{HoldRequest, HoldResponse};

/// What a lane's keeper asks of the `HoldMany` stream's task.
pub(super) enum Cmd {
    /// A new lane: send `acquire` with this id, and hand its answers to `answers`.
    Open {
        id: u64,
        acquire: crate::proto::leases::v1::Acquire,
        answers: mpsc::UnboundedSender<LaneAnswer>,
    },
    /// A request of lane `id` (a heartbeat asks for its group's heartbeat now).
    Request(u64, HoldRequest),
    /// Lane `id` is done with (its keeper dropped it).
    Close(u64),
    /// Lane `id`'s lease is kept with this context: the stream's task extends it by its
    /// group's `renewed` itself, without waking the keeper (a group of 100k leases was
    /// 100k keeper wake-ups per heartbeat).
    Keep(u64, ContextSender),
}

/// One answer on a lane, with the send instant of the group heartbeat it answers.
pub(super) type LaneAnswer = (Result<HoldResponse, Status>, Option<Sent>);

/// Where a held lease's requests go.
pub(super) enum Requests {
    /// Its own `Hold` stream.
    Own(mpsc::UnboundedSender<HoldRequest>),
    /// Lane `id` of a `HoldMany` stream.
    Lane(u64, mpsc::UnboundedSender<Cmd>),
}

impl Requests {
    /// Sends a request; an error once the stream is gone.
    pub(super) fn send(&self, request: HoldRequest) -> Result<(), ()> {
        match self {
            Requests::Own(tx) => tx.send(request).map_err(|_| ()),
            Requests::Lane(id, tx) => tx.send(Cmd::Request(*id, request)).map_err(|_| ()),
        }
    }

    /// Whether the lease's group heartbeats for it (it sends none of its own).
    pub(super) fn grouped(&self) -> bool {
        matches!(self, Requests::Lane(..))
    }

    /// Hands a lane's context to its stream's task, which then extends it by each
    /// `renewed` of its group instead of passing the answer on (see [`Cmd::Keep`]).
    pub(super) fn keep(&self, ctx: &ContextSender) {
        if let Requests::Lane(id, tx) = self {
            let _ = tx.send(Cmd::Keep(*id, ctx.clone()));
        }
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        // A lane dropped is closed on the server as a `Hold` stream closed without
        // `release` would be (the release, if any, went first).
        if let Requests::Lane(id, tx) = self {
            let _ = tx.send(Cmd::Close(*id));
        }
    }
}

/// Where a held lease's answers come from.
pub(super) enum Answers {
    /// Its own `Hold` stream.
    Own(Box<tonic::Streaming<HoldResponse>>),
    /// A lane: the answers the `HoldMany` stream's task hands it.
    Lane(mpsc::UnboundedReceiver<LaneAnswer>),
}

impl Answers {
    /// The next answer, with the send instant of the group heartbeat it answers (a
    /// lane's `renewed`); `Ok(None)` at the end of the stream.
    pub(super) async fn next(&mut self) -> Result<Option<(HoldResponse, Option<Sent>)>, Status> {
        match self {
            Answers::Own(s) => Ok(s.message().await?.map(|m| (m, None))),
            Answers::Lane(rx) => match rx.recv().await {
                Some((Ok(m), sent)) => Ok(Some((m, sent))),
                Some((Err(status), _)) => Err(status),
                None => Ok(None),
            },
        }
    }

    /// The next answer alone.
    pub(super) async fn message(&mut self) -> Result<Option<HoldResponse>, Status> {
        Ok(self.next().await?.map(|(m, _)| m))
    }
}
