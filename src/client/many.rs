//! The connection's one `HoldMany` stream: every lease a [`ClientLeaser`] holds through
//! a server rides it as a *lane* (see `lanes.rs`), and one heartbeat per group (the
//! stream's granted leases of one TTL) every TTL/4 keeps them all.
//!
//! The deadline rule holds per lease: a group's `renewed` answers the heartbeat sent
//! at instant `t`, and applies only to the leases whose `granted` had come before `t`
//! (the server counted them in the group, and its time left is the least of theirs),
//! each of which may then act until `t` plus the time left. A lease that ended on the
//! server is told so before any later `renewed` of its group, and leaves the group.
//!
//! When the stream breaks (or a group heartbeat goes unanswered for a third of the
//! TTL), every lane breaks, as many `Hold` streams on a broken connection do, and each
//! lease is re-attached by its keeper (`reattach.rs`). A server that answers
//! `UNIMPLEMENTED` gets one `Hold` stream per lease from then on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Code, Status};

use super::connection::ClientLeaser;
use super::keep::{time_left_of, Sent};
use super::lanes::{Answers, Cmd, LaneAnswer, Requests};
use super::reattach::Stream;
use crate::context::ContextSender;
use crate::proto::leases::v1::ended::Reason;
use crate::proto::leases::v1::hold_many_request::Kind as Wire;
use crate::proto::leases::v1::hold_many_response::Kind as Back;
use crate::proto::leases::v1::hold_request::Kind as In;
use crate::proto::leases::v1::hold_response::Kind as Out;
use crate::proto::leases::v1::{
    Acquire, GroupHeartbeat, HoldManyRequest, HoldManyResponse, HoldResponse, LeaseAcquire,
    LeaseClose, LeaseRelease, Renewed,
};

/// The `HoldMany` streams of a leaser, one per server, opened when first needed.
pub(super) struct Streams {
    per_server: Vec<tokio::sync::Mutex<Option<mpsc::UnboundedSender<Cmd>>>>,
    /// Servers that answered `UNIMPLEMENTED`: they get `Hold` streams.
    hold_only: Vec<AtomicBool>,
    next_id: AtomicU64,
}

impl Streams {
    pub(super) fn new(servers: usize) -> Streams {
        Streams {
            per_server: (0..servers).map(|_| Default::default()).collect(),
            hold_only: (0..servers).map(|_| AtomicBool::new(false)).collect(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl ClientLeaser {
    /// Opens a lane for `acquire` on server `server`'s `HoldMany` stream (opening the
    /// stream first if it has none, or its last one ended), and sends the `acquire`.
    /// `None` when the lease should have a `Hold` stream instead.
    pub(super) async fn open_lane(
        &self,
        server: usize,
        acquire: &Acquire,
    ) -> Option<Result<(Stream, Sent), Status>> {
        if !self.options().hold_many {
            return None;
        }
        let i = server % self.servers();
        let streams = self.streams();
        if streams.hold_only[i].load(Ordering::Relaxed) {
            return None;
        }
        let id = streams.next_id.fetch_add(1, Ordering::Relaxed);
        let (answers, rx) = mpsc::unbounded_channel();
        let sent = Sent::now();
        let open = Cmd::Open {
            id,
            acquire: acquire.clone(),
            answers,
        };
        let cmds = {
            let mut slot = streams.per_server[i].lock().await;
            match slot.as_ref() {
                Some(cmds) if !cmds.is_closed() => {
                    if cmds.send(open).is_err() {
                        return Some(Err(Status::unavailable("the lease stream ended")));
                    }
                    cmds.clone()
                }
                // A new stream carries the acquire from its start.
                _ => match self.start_many(i, open).await {
                    Ok(cmds) => {
                        *slot = Some(cmds.clone());
                        cmds
                    }
                    Err(status) if status.code() == Code::Unimplemented => {
                        tracing::info!(
                            server = self.url_at(i),
                            "the lease service has no HoldMany: one Hold stream per lease"
                        );
                        streams.hold_only[i].store(true, Ordering::Relaxed);
                        return None;
                    }
                    Err(status) => return Some(Err(status)),
                },
            }
        };
        let stream = Stream {
            requests: Requests::Lane(id, cmds),
            answers: Answers::Lane(rx),
        };
        Some(Ok((stream, sent)))
    }

    /// Opens a `HoldMany` stream on server `i` and starts its task.
    /// `first` (a lane's opening) goes out with the stream's start.
    async fn start_many(&self, i: usize, first: Cmd) -> Result<mpsc::UnboundedSender<Cmd>, Status> {
        let (wire, mut wire_rx) = mpsc::unbounded_channel::<HoldManyRequest>();
        let mut mux = Mux {
            wire,
            lanes: HashMap::new(),
            groups: HashMap::new(),
            beats: 0,
            closing: HashSet::new(),
        };
        mux.cmd(first);
        let outgoing = futures_util::stream::poll_fn(move |cx| wire_rx.poll_recv(cx));
        let mut request = self.request(outgoing);
        // The stream lives as long as its leases: no gRPC deadline on it.
        request.metadata_mut().remove("grpc-timeout");
        let answers = self.client_at(i).hold_many(request).await?.into_inner();
        let (cmds, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(mux, answers, rx));
        Ok(cmds)
    }
}

/// One lane, as the stream's task knows it.
struct Lane {
    answers: mpsc::UnboundedSender<LaneAnswer>,
    ttl: Option<Duration>,
    /// Whether its `acquire` re-attaches a lease (`resume`).
    resume: bool,
    /// Closed by its keeper before its acquire was answered: kept only to let the
    /// grant, if one comes, go (see [`Mux::answer`]).
    abandoned: bool,
    /// The heartbeat count when its `granted` came: the group heartbeats sent after
    /// it (with a larger count) renew it.
    granted: Option<u64>,
    /// Its keeper's context, once the keeper has it ([`Cmd::Keep`]): a `renewed`
    /// extends it here; before, the answer goes to the lane (its acquire confirms the
    /// grant with it).
    ctx: Option<ContextSender>,
    /// Its keeper sent `release`.
    released: bool,
    /// The server told its end (`ended`): it is out of its group, and kept only until
    /// its keeper closes it, or, if that end was not the answer to its release, until
    /// the server confirms a release sent after it (see [`Lane::awaits`]).
    ended: Option<Reason>,
    /// Closed by its keeper while it awaits that confirmation.
    closed: bool,
}

impl Lane {
    /// Whether a release of the lane's is still to be confirmed by an `ended`: one sent
    /// after (or crossing) an end other than `RELEASED`. The server answers it with
    /// `ended RELEASED` once it has read it, and a keeper closing the lane reads on
    /// until then, so that its process does not go before the server has the release
    /// (a revoked `leases run` left its key taken until the TTL ran out). Not after
    /// `HANDED_OVER`: the draining server left the lease in the store for its holder
    /// to re-attach elsewhere, and a release it reads then frees nothing, though it
    /// confirms it (it no longer holds the lease).
    fn awaits(&self) -> bool {
        self.released
            && self
                .ended
                .is_some_and(|r| r != Reason::Released && r != Reason::HandedOver)
    }
}

/// The leases of one TTL, and their heartbeats not answered yet.
struct Group {
    members: HashSet<u64>,
    sent: VecDeque<(Sent, u64)>,
    next: Instant,
    /// A lease granted after the last heartbeat in flight was sent wants its time left
    /// confirmed (a waited acquire): one more heartbeat goes as soon as that one is
    /// answered, for all such leases at once (see [`Mux::confirm`]).
    wanted: bool,
}

/// The stream task's state.
struct Mux {
    wire: mpsc::UnboundedSender<HoldManyRequest>,
    lanes: HashMap<u64, Lane>,
    groups: HashMap<Duration, Group>,
    /// Group heartbeats sent so far, on this stream.
    beats: u64,
    /// Lanes closed while they await a release's confirmation (see [`Mux::sweep`]).
    closing: HashSet<u64>,
}

/// Runs one `HoldMany` stream until it breaks, or every lane and the leaser are gone.
async fn run(
    mut mux: Mux,
    mut answers: tonic::Streaming<HoldManyResponse>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let broke = loop {
        let wake = mux.wake();
        tokio::select! {
            biased;
            answer = answers.message() => match answer {
                Ok(Some(m)) => mux.answer(m),
                Ok(None) => break Status::unavailable("the lease service ended the stream"),
                Err(status) => break status,
            },
            cmd = cmds.recv() => match cmd {
                Some(cmd) => mux.cmd(cmd),
                // Nobody can open a lane any more, and none is left.
                None => return,
            },
            _ = sleep_until_opt(wake) => {
                if let Err(status) = mux.tick() {
                    break status;
                }
            }
        }
    };
    // Every lane breaks with the stream (each keeper re-attaches its lease).
    for (_, lane) in mux.lanes.drain() {
        let _ = lane.answers.send((Err(broke.clone()), None));
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long a group heartbeat may go unanswered before the stream counts as broken.
fn overdue(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(500))
}

impl Mux {
    fn send(&self, kind: Wire) {
        let _ = self.wire.send(HoldManyRequest { kind: Some(kind) });
    }

    /// The next instant a group heartbeat is due, or one is overdue.
    fn wake(&self) -> Option<Instant> {
        self.groups
            .iter()
            .flat_map(|(ttl, g)| {
                let late = g.sent.front().map(|(s, _)| s.at + overdue(*ttl));
                let next = (!g.members.is_empty()).then_some(g.next);
                [late, next]
            })
            .flatten()
            .min()
    }

    /// Sends the heartbeats that are due; a break if one is overdue.
    fn tick(&mut self) -> Result<(), Status> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (ttl, g) in &mut self.groups {
            if let Some((s, _)) = g.sent.front() {
                if s.at + overdue(*ttl) <= now {
                    return Err(Status::unavailable("a group heartbeat went unanswered"));
                }
            }
            if !g.members.is_empty() && g.next <= now {
                g.next = (g.next + *ttl / 4).max(now);
                due.push(*ttl);
            }
        }
        for ttl in due {
            self.beat(ttl);
        }
        self.groups
            .retain(|_, g| !(g.members.is_empty() && g.sent.is_empty()));
        self.sweep();
        Ok(())
    }

    /// Drops the closed lanes awaiting a release's confirmation whose keeper stopped
    /// reading (it waits a while only; a server of an earlier version never confirms).
    fn sweep(&mut self) {
        let lanes = &mut self.lanes;
        self.closing.retain(|id| {
            let gone = lanes.get(id).is_none_or(|l| l.answers.is_closed());
            if gone {
                lanes.remove(id);
            }
            !gone
        });
    }

    /// Sends group `ttl`'s heartbeat now.
    fn beat(&mut self, ttl: Duration) {
        let Some(group) = self.groups.get_mut(&ttl) else {
            return;
        };
        self.beats += 1;
        group.sent.push_back((Sent::now(), self.beats));
        self.send(Wire::Heartbeat(GroupHeartbeat {
            ttl: Some(crate::proto::duration(ttl)),
        }));
    }

    /// Lane `id` wants its time left confirmed (a waited grant): by a group heartbeat
    /// sent after its grant came. One already in flight does, if sent after the grant;
    /// else one goes now if none is in flight, or once the one in flight is answered.
    /// So a burst of waited grants costs at most two heartbeats in flight per group,
    /// not one each (each of which the server answers only once every lease of the
    /// group has: a burst of N grants was N × N lease answers, and cut the stream off
    /// for the unanswered heartbeats or broke it for a late one: the review's
    /// `many_review::a_burst_of_waited_grants_does_not_get_the_stream_cut_off`).
    fn confirm(&mut self, id: u64) {
        let Some((ttl, granted)) = self.lanes.get(&id).and_then(|l| l.ttl.zip(l.granted)) else {
            return;
        };
        let Some(group) = self.groups.get_mut(&ttl) else {
            return;
        };
        match group.sent.back() {
            Some((_, beat)) if *beat > granted => {}
            Some(_) => group.wanted = true,
            None => self.beat(ttl),
        }
    }

    /// Takes lane `id` out of its group.
    fn leave(&mut self, id: u64) {
        if let Some(ttl) = self.lanes.get(&id).and_then(|l| l.ttl) {
            if let Some(group) = self.groups.get_mut(&ttl) {
                group.members.remove(&id);
            }
        }
    }

    fn answer(&mut self, answer: HoldManyResponse) {
        match answer.kind {
            Some(Back::Granted(g)) => {
                let Some(lane) = self.lanes.get_mut(&g.id) else {
                    return;
                };
                if lane.abandoned {
                    // Its acquire was given up before the grant: nobody was told of a
                    // new lease, so it goes back at once. A re-attached one is another
                    // matter: its holder may be acting on it (through another try), so
                    // it stays closed, and the key taken until its promise runs out,
                    // as on a `Hold` stream given up.
                    if !lane.resume {
                        self.send(Wire::Release(LeaseRelease { id: g.id }));
                    }
                    self.lanes.remove(&g.id);
                    return;
                }
                lane.granted = Some(self.beats);
                if let Some(ttl) = lane.ttl {
                    let group = self.groups.entry(ttl).or_insert_with(|| Group {
                        members: HashSet::new(),
                        sent: VecDeque::new(),
                        next: Instant::now() + ttl / 4,
                        wanted: false,
                    });
                    group.members.insert(g.id);
                }
                let granted = Out::Granted(g.granted.unwrap_or_default());
                let _ = lane.answers.send((
                    Ok(HoldResponse {
                        kind: Some(granted),
                    }),
                    None,
                ));
            }
            Some(Back::Failed(f)) => {
                self.leave(f.id);
                let Some(lane) = self.lanes.get_mut(&f.id) else {
                    return;
                };
                let mut status = Status::new(Code::from_i32(f.code), f.message);
                if let Ok(v) = f.ttl_refusal.parse() {
                    if !f.ttl_refusal.is_empty() {
                        status.metadata_mut().insert(crate::proto::TTL_REFUSAL, v);
                    }
                }
                let _ = lane.answers.send((Err(status), None));
                // A lane released before its `failed` came: the server confirms that
                // release too (a revoked lease's release said again on a new lane, see
                // `keep.rs`); kept until then, as an ended lane is.
                if lane.released && lane.ended.is_none() {
                    lane.ended = Some(Reason::Lost);
                } else {
                    self.closing.remove(&f.id);
                    self.lanes.remove(&f.id);
                }
            }
            Some(Back::Ended(e)) => {
                self.leave(e.id);
                let Some(lane) = self.lanes.get_mut(&e.id) else {
                    return;
                };
                let ended = e.ended.unwrap_or_default();
                let reason = Reason::try_from(ended.reason).unwrap_or(Reason::Lost);
                // A second `ended` confirms a release sent after the first.
                let confirms = lane.awaits();
                if lane.ended.is_none() || confirms {
                    lane.ended = Some(reason);
                    let ended = Out::Ended(ended);
                    let _ = lane
                        .answers
                        .send((Ok(HoldResponse { kind: Some(ended) }), None));
                }
                if lane.closed && !lane.awaits() {
                    self.closing.remove(&e.id);
                    self.lanes.remove(&e.id);
                }
            }
            Some(Back::Renewed(r)) => {
                let Some(ttl) = r.ttl.and_then(|d| Duration::try_from(d).ok()) else {
                    return;
                };
                let Some(group) = self.groups.get_mut(&ttl) else {
                    return;
                };
                let Some((sent, beat)) = group.sent.pop_front() else {
                    return;
                };
                let again = std::mem::take(&mut group.wanted);
                for id in &group.members {
                    let Some(lane) = self.lanes.get(id) else {
                        continue;
                    };
                    if lane.granted.is_none_or(|g| g >= beat) {
                        continue;
                    }
                    if let Some(ctx) = &lane.ctx {
                        // As the keeper would (`keep.rs`): from the heartbeat's send
                        // instant. An ended lease left the lanes before this answer.
                        ctx.extend(sent.at + time_left_of(r.time_left, ttl), sent.since);
                    } else {
                        let renewed = Out::Renewed(Renewed {
                            time_left: r.time_left,
                        });
                        let answer = Ok(HoldResponse {
                            kind: Some(renewed),
                        });
                        let _ = lane.answers.send((answer, Some(sent)));
                    }
                }
                if again {
                    self.beat(ttl);
                }
            }
            None => {}
        }
    }

    fn cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Open {
                id,
                acquire,
                answers,
            } => {
                let ttl = acquire.ttl.and_then(|d| Duration::try_from(d).ok());
                self.lanes.insert(
                    id,
                    Lane {
                        answers,
                        ttl,
                        resume: acquire.resume.is_some(),
                        abandoned: false,
                        granted: None,
                        ctx: None,
                        released: false,
                        ended: None,
                        closed: false,
                    },
                );
                self.send(Wire::Acquire(LeaseAcquire {
                    id,
                    acquire: Some(acquire),
                }));
            }
            Cmd::Request(id, request) => match request.kind {
                // A lease that wants its time left confirmed now (after a waited
                // acquire).
                Some(In::Heartbeat(_)) => self.confirm(id),
                Some(In::Release(_)) => {
                    self.leave(id);
                    if let Some(lane) = self.lanes.get_mut(&id) {
                        lane.released = true;
                    }
                    self.send(Wire::Release(LeaseRelease { id }));
                }
                Some(In::Acquire(_)) | None => {}
            },
            Cmd::Keep(id, ctx) => {
                if let Some(lane) = self.lanes.get_mut(&id) {
                    lane.ctx = Some(ctx);
                }
            }
            Cmd::Close(id) => {
                self.leave(id);
                self.sweep();
                let Some(lane) = self.lanes.get_mut(&id) else {
                    return;
                };
                // A lane whose end the server told needs no close: the server reads
                // nothing from it but a release, which its keeper sent or never will.
                // One whose release is still to be confirmed stays until it is.
                if lane.ended.is_some() {
                    if lane.awaits() {
                        lane.closed = true;
                        self.closing.insert(id);
                    } else {
                        self.lanes.remove(&id);
                    }
                    return;
                }
                // Released before any end came: its end (and, after an end other than
                // `RELEASED`, the confirmation) is still to come.
                if lane.released {
                    lane.closed = true;
                    self.closing.insert(id);
                    self.send(Wire::Close(LeaseClose { id }));
                    return;
                }
                if lane.granted.is_none() {
                    // Not answered yet: wait for its answer (see `answer`).
                    lane.abandoned = true;
                } else {
                    self.lanes.remove(&id);
                }
                self.send(Wire::Close(LeaseClose { id }));
            }
        }
    }
}
