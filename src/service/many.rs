//! One native `HoldMany` stream: many leases of one client, one heartbeat per group.
//!
//! Each lease of the stream is served by `hold.rs` exactly as on a `Hold` stream of its
//! own, on a *lane* (see `lanes.rs`): the demultiplexer here turns the stream's
//! `acquire{id}` into a lane and its task, `release{id}` into the lane's release, and
//! each group `heartbeat{ttl}` into one heartbeat of every lane of the group (the
//! stream's *granted* leases of that TTL). A lane whose task has shared its context is
//! answered here, as its task would answer, without waking the task (`Inbox::answer`:
//! the time left, which also moves the promise the task keeps the key by); any other
//! (not shared yet, taken back, or its lease ended) gets the heartbeat in its inbox and
//! answers it, or ends. The group's `renewed` carries the least time left, once every
//! lane that was in the group when the heartbeat came has answered or ended (an ended
//! lane's `ended`/`failed` goes out first). So a lease the client knew granted when it sent the heartbeat may act
//! until that send instant plus the `renewed` time left: never past its own lane's
//! promise, which `hold.rs` keeps as for any answer.
//!
//! A status ends the whole stream: every lane reads it as its own stream's break (or,
//! for the client's half-close, as a close without release) and lets its lease go by
//! the remote-holder rule, exactly as when many `Hold` streams of a connection break.
//! Flow control: while more answers are unread than [`UNREAD_LIMIT`] plus two per lease
//! of the stream, or a group has [`UNREAD_LIMIT`] heartbeats unanswered, the
//! demultiplexer reads no request (so HTTP/2's windows hold the client back); the lanes'
//! own answers always go out. A lane's answers are bounded (its grant, its end, one per
//! round it was asked), so what waits unread is too. The stream is never cut off for a
//! backlog: a backlog of `ended`s while many leases end at once (a drain, a burst of
//! revokes or releases) is read late, not fatal to the leases still held, and a client
//! that reads nothing has its heartbeats go unread, so its leases end by silence.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::first::{first_request, next_request, NoFirst};
use super::hold::{serve_hold, UNREAD_LIMIT};
use super::lanes::{DoneGuard, Inbox, Lane, LaneRequests, Up};
use super::shared::{Shared, StreamSlot};
use super::status::{duration_of, proto_duration};
use crate::proto::leases::v1::ended::Reason;
use crate::proto::leases::v1::hold_many_request::Kind as In;
use crate::proto::leases::v1::hold_many_response::Kind as Out;
use crate::proto::leases::v1::hold_response::Kind as LaneOut;
use crate::proto::leases::v1::{
    Ended, GroupRenewed, HoldManyRequest, HoldManyResponse, HoldResponse, LeaseEnded, LeaseFailed,
    LeaseGranted,
};

/// The answers of a `HoldMany` stream, and how many the client has not read yet.
pub(crate) struct Answers {
    pub(crate) tx: mpsc::UnboundedSender<Result<HoldManyResponse, Status>>,
    pub(crate) unread: Arc<AtomicUsize>,
    /// Told each time the transport takes an answer (one fewer unread).
    pub(crate) read: Arc<Notify>,
}

/// One lane of the stream.
struct LaneState {
    inbox: Arc<Inbox>,
    /// The lease's TTL (its group), when the acquire had a readable one.
    ttl: Option<Duration>,
    /// Whether the lane is in its group (granted, and not ended).
    member: bool,
    /// The rounds (group heartbeats) this lane has still to answer, oldest first.
    owed: VecDeque<u64>,
    /// Its `ended` (or `failed`) has gone out: a `release` from now on says the client
    /// has stopped, and is confirmed once the lease is let go of.
    told: bool,
    /// A `release` came after its end, or before an end other than `RELEASED` (it
    /// crossed that end: the client cannot tell the two apart): answer `ended
    /// RELEASED` once the lane is done.
    confirm: bool,
    /// A `release` came (the lane's task reads it, at its end if not before).
    released: bool,
}

/// One group heartbeat, waiting for its lanes.
struct Round {
    seq: u64,
    waiting: usize,
    least: Option<Duration>,
}

#[derive(Default)]
struct Group {
    members: HashSet<u64>,
    rounds: VecDeque<Round>,
}

/// The demultiplexer's state.
struct Many {
    shared: Shared,
    lanes: HashMap<u64, LaneState>,
    groups: HashMap<Duration, Group>,
    next_round: u64,
    /// The groups with [`UNREAD_LIMIT`] rounds unanswered (then no request is read).
    full_groups: usize,
    up: mpsc::UnboundedSender<Up>,
    gone: CancellationToken,
    answers: Answers,
}

/// Why the demultiplexer stops: end the stream with this status, and every lane with
/// it (`Ok`: the client closed its side).
struct Stop(Result<(), Status>);

/// Serves one `HoldMany` stream.
pub(crate) async fn run_many(
    shared: Shared,
    mut incoming: Streaming<HoldManyRequest>,
    answers: Answers,
    slot: StreamSlot,
) {
    let gone = CancellationToken::new();
    let closed = answers.tx.clone();
    let mut first = match first_request(&shared, &mut incoming, closed.closed()).await {
        Ok(first) => Some(first),
        Err(NoFirst::End(status)) => {
            let _ = answers.tx.send(Err(status));
            return;
        }
        Err(NoFirst::Gone | NoFirst::Stopping) => return,
    };
    let (up, mut ups) = mpsc::unbounded_channel();
    let mut many = Many {
        shared: shared.clone(),
        lanes: HashMap::new(),
        groups: HashMap::new(),
        next_round: 0,
        full_groups: 0,
        up,
        gone: gone.clone(),
        answers,
    };
    let stopping = shared.stopping.clone();
    let read = many.answers.read.clone();
    let mut draining = false;
    let Stop(end) = loop {
        let backlog = many.backlogged();
        let step = tokio::select! {
            biased;
            _ = closed.closed() => Err(Stop(Err(Status::cancelled("the client went away")))),
            Some(up) = ups.recv() => {
                many.up(up);
                Ok(())
            }
            _ = stopping.cancelled(), if !draining => {
                draining = true;
                Ok(())
            }
            // Read on once the transport has taken some answers.
            _ = read.notified(), if backlog => Ok(()),
            m = next_request(&mut first, &mut incoming), if !backlog => match m {
                Ok(Some(request)) => many.request(request),
                Ok(None) => Err(Stop(Ok(()))),
                Err(status) => Err(Stop(Err(status))),
            },
        };
        if let Err(stop) = step {
            break stop;
        }
        // A draining server ends the stream once each lease has let go (its lane told
        // the client how it ended, and heard its release if one came).
        if draining && many.lanes.is_empty() {
            break Stop(Err(Status::unavailable(
                "the lease service is shutting down",
            )));
        }
    };
    // Every lane reads the stream's end as its own: a close without `release`, or a
    // break. Nothing more reaches the client from them.
    let lane_end = match &end {
        Ok(()) => Ok(()),
        Err(status) => Err(status.clone()),
    };
    for lane in many.lanes.values() {
        lane.inbox.end(lane_end.clone());
    }
    gone.cancel();
    if let Err(status) = end {
        let _ = many.answers.tx.send(Err(status));
    } else {
        let _ = many.answers.tx.send(Err(Status::cancelled(
            "the client closed the stream without releasing",
        )));
    }
    drop(slot);
}

impl Many {
    /// Whether more answers wait unread than the stream allows: then no request is
    /// read until the transport takes some.
    fn backlogged(&self) -> bool {
        self.full_groups > 0
            || self.answers.unread.load(Ordering::Relaxed) > UNREAD_LIMIT + 2 * self.lanes.len()
    }

    /// Sends an answer. Never refused: what may wait unread is bounded by reading no
    /// request while [`Many::backlogged`].
    fn send(&self, kind: Out) {
        self.answers.unread.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .answers
            .tx
            .send(Ok(HoldManyResponse { kind: Some(kind) }));
    }

    fn request(&mut self, request: HoldManyRequest) -> Result<(), Stop> {
        match request.kind {
            Some(In::Acquire(a)) => {
                let id = a.id;
                if self.lanes.contains_key(&id) {
                    return Err(Stop(Err(Status::invalid_argument(format!(
                        "lease id {id} is in use on this stream"
                    )))));
                }
                let Some(acquire) = a.acquire else {
                    self.send(failed(
                        id,
                        &Status::invalid_argument("`acquire` without its `Acquire`"),
                    ));
                    return Ok(());
                };
                let limit = self.shared.options.max_leases_per_stream;
                if self.lanes.len() >= limit {
                    self.send(failed(
                        id,
                        &Status::resource_exhausted(format!(
                            "too many leases on one stream (at most {limit})"
                        )),
                    ));
                    return Ok(());
                }
                let inbox = Arc::new(Inbox::default());
                let ttl = acquire.ttl.as_ref().and_then(duration_of);
                self.lanes.insert(
                    id,
                    LaneState {
                        inbox: inbox.clone(),
                        ttl,
                        member: false,
                        owed: VecDeque::new(),
                        told: false,
                        confirm: false,
                        released: false,
                    },
                );
                let lane = Lane {
                    id,
                    up: self.up.clone(),
                    gone: self.gone.clone(),
                };
                let done = DoneGuard(id, self.up.clone());
                let shared = self.shared.clone();
                let counted = shared.stream();
                tokio::spawn(serve_hold(
                    shared,
                    acquire,
                    LaneRequests(inbox),
                    lane,
                    None,
                    (done, counted),
                ));
                Ok(())
            }
            Some(In::Heartbeat(h)) => {
                let Some(ttl) = h.ttl.as_ref().and_then(duration_of) else {
                    return Err(Stop(Err(Status::invalid_argument(
                        "a heartbeat needs its group's TTL",
                    ))));
                };
                let seq = self.next_round;
                self.next_round += 1;
                let group = self.groups.entry(ttl).or_default();
                // Each lane's answer, here if its task shared its context (no wake-up
                // per lease per heartbeat), else by its task (a lane not answered here
                // is waited for: its renewal or its end).
                let (mut waiting, mut least) = (0, None::<Duration>);
                for id in &group.members {
                    if let Some(lane) = self.lanes.get_mut(id) {
                        match lane.inbox.answer() {
                            Some(left) => least = Some(least.map_or(left, |l| l.min(left))),
                            None => {
                                waiting += 1;
                                lane.owed.push_back(seq);
                                lane.inbox.heartbeat();
                            }
                        }
                    }
                }
                group.rounds.push_back(Round {
                    seq,
                    waiting,
                    least,
                });
                // No request is read while a group has this many rounds unanswered.
                if group.rounds.len() == UNREAD_LIMIT {
                    self.full_groups += 1;
                }
                self.flush(ttl);
                Ok(())
            }
            // The client takes a lease out of its group when it releases or closes it, so
            // its group's later `renewed` never apply to it: it leaves the group here at
            // once too, and a slow release (the store's) holds up no group heartbeat.
            // A release after the lease's end (the client has stopped) is confirmed with
            // a second `ended RELEASED` once the key is given back, so that a client can
            // wait for it before it goes away (a `Hold` stream shows it by its end).
            Some(In::Release(r)) => {
                match self.lanes.get_mut(&r.id) {
                    Some(lane) => {
                        lane.inbox.release();
                        lane.confirm = lane.told;
                        lane.released = true;
                    }
                    // Done with already: its key was given back (or never held).
                    None => self.send(released(r.id)),
                }
                let group = self.leave(r.id);
                self.flush_opt(group);
                Ok(())
            }
            Some(In::Close(c)) => {
                if let Some(lane) = self.lanes.get(&c.id) {
                    lane.inbox.end(Ok(()));
                }
                let group = self.leave(c.id);
                self.flush_opt(group);
                Ok(())
            }
            None => Err(Stop(Err(Status::invalid_argument("an empty request")))),
        }
    }

    fn up(&mut self, up: Up) {
        match up {
            Up::Answer(id, Ok(HoldResponse { kind: Some(kind) })) => match kind {
                LaneOut::Granted(granted) => {
                    if let Some(lane) = self.lanes.get_mut(&id) {
                        if let Some(ttl) = lane.ttl {
                            lane.member = true;
                            self.groups.entry(ttl).or_default().members.insert(id);
                        }
                    }
                    self.send(Out::Granted(LeaseGranted {
                        id,
                        granted: Some(granted),
                    }));
                }
                LaneOut::Renewed(renewed) => {
                    let left = renewed
                        .time_left
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or_default();
                    let Some(lane) = self.lanes.get_mut(&id) else {
                        return;
                    };
                    let (Some(seq), Some(ttl)) = (lane.owed.pop_front(), lane.ttl) else {
                        return;
                    };
                    if let Some(round) = self
                        .groups
                        .get_mut(&ttl)
                        .and_then(|g| g.rounds.iter_mut().find(|r| r.seq == seq))
                    {
                        round.waiting = round.waiting.saturating_sub(1);
                        round.least = Some(round.least.map_or(left, |l| l.min(left)));
                    }
                    self.flush(ttl);
                }
                LaneOut::Ended(ended) => {
                    self.told(id);
                    // A release read before an end other than its own answer crossed
                    // that end: the client waits for its confirmation too.
                    if ended.reason != Reason::Released as i32 {
                        if let Some(lane) = self.lanes.get_mut(&id) {
                            lane.confirm |= lane.released;
                        }
                    }
                    let group = self.leave(id);
                    self.send(Out::Ended(LeaseEnded {
                        id,
                        ended: Some(ended),
                    }));
                    self.flush_opt(group);
                }
            },
            Up::Answer(_, Ok(HoldResponse { kind: None })) => {}
            Up::Answer(id, Err(status)) => {
                self.told(id);
                // A release read before this end crossed it: confirm it too.
                if let Some(lane) = self.lanes.get_mut(&id) {
                    lane.confirm |= lane.released;
                }
                let group = self.leave(id);
                self.send(failed(id, &status));
                self.flush_opt(group);
            }
            Up::Done(id) => {
                let group = self.leave(id);
                if self.lanes.remove(&id).is_some_and(|lane| lane.confirm) {
                    self.send(released(id));
                }
                self.flush_opt(group);
            }
        }
    }

    /// Lane `id`'s end (`ended` or `failed`) goes out now.
    fn told(&mut self, id: u64) {
        if let Some(lane) = self.lanes.get_mut(&id) {
            lane.told = true;
        }
    }

    /// Lane `id` has ended: it leaves its group, and the rounds it owed stop waiting
    /// for it. Its end goes out *before* any of those rounds' `renewed`, so that the
    /// client never applies them to it.
    /// Returns the lane's group, to flush once the end has gone out.
    fn leave(&mut self, id: u64) -> Option<Duration> {
        let lane = self.lanes.get_mut(&id)?;
        let ttl = lane.ttl?;
        let owed = std::mem::take(&mut lane.owed);
        let was = std::mem::replace(&mut lane.member, false);
        if let Some(group) = self.groups.get_mut(&ttl) {
            if was {
                group.members.remove(&id);
            }
            for seq in owed {
                if let Some(round) = group.rounds.iter_mut().find(|r| r.seq == seq) {
                    round.waiting = round.waiting.saturating_sub(1);
                }
            }
        }
        Some(ttl)
    }

    fn flush_opt(&mut self, ttl: Option<Duration>) {
        if let Some(ttl) = ttl {
            self.flush(ttl);
        }
    }

    /// Answers the group's rounds that no lane is waiting for any more, in order.
    fn flush(&mut self, ttl: Duration) {
        loop {
            let Some(group) = self.groups.get_mut(&ttl) else {
                return;
            };
            match group.rounds.front() {
                Some(round) if round.waiting == 0 => {}
                _ => {
                    if group.members.is_empty() && group.rounds.is_empty() {
                        self.groups.remove(&ttl);
                    }
                    return;
                }
            }
            let round = group.rounds.pop_front().expect("checked above");
            if group.rounds.len() + 1 == UNREAD_LIMIT {
                self.full_groups -= 1;
            }
            // No lane left to answer: nothing the client holds in this group may act on
            // it, so it promises nothing.
            let least = round.least.unwrap_or_default();
            self.send(Out::Renewed(GroupRenewed {
                ttl: Some(proto_duration(ttl)),
                time_left: Some(proto_duration(least)),
            }));
        }
    }
}

/// The confirmation of a release that came after lease `id`'s end.
fn released(id: u64) -> Out {
    Out::Ended(LeaseEnded {
        id,
        ended: Some(Ended {
            reason: Reason::Released as i32,
            message: "the release was read: this stream holds the lease no more".to_string(),
        }),
    })
}

/// A lane's status as a `failed` answer.
fn failed(id: u64, status: &Status) -> Out {
    Out::Failed(LeaseFailed {
        id,
        code: status.code() as i32,
        message: status.message().to_string(),
        ttl_refusal: status
            .metadata()
            .get(crate::proto::TTL_REFUSAL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    })
}
