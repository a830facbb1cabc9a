//! Groups: the unit of renewal. A group is the leases of one manager with one TTL; it is
//! renewed once per TTL/3 by one backend call ([`Backend::renew_many`]), in a task of its
//! own, instead of each lease renewing itself on a timer of its own.
//!
//! Each held lease still has its renewal actor (see `renewer.rs`), which joins its
//! group when it starts. The group does the lease's I/O and keeps its local deadline:
//! - a **confirmed renewal** moves the lease's deadline to the start of the group call +
//!   TTL − margin, straight on the lease's context (no message per lease);
//! - a **revoked** or **refused** lease, and one whose deadline **passed** without a
//!   confirmed renewal (or whose context ended), leaves the group, and its renewer is
//!   told by one message ([`Fate`]); the renewer ends the context and fails as it did
//!   when it renewed by itself.
//!
//! The rules that keep the guarantees:
//! - A lease's deadline is the start of the last call *that confirmed it* + TTL −
//!   margin; a lease that joined after a call started is not in that call, and keeps the
//!   deadline its acquire earned until a later call confirms it. Rounds come TTL/3 after
//!   the previous call answered (as each renewer's did), so a lease is renewed within
//!   TTL/3 of joining plus the length of a call running when it joined, unless its own
//!   deadline comes first (then it ends at it).
//! - A call is bounded by the earliest deadline of its members: at that instant the call
//!   is given up, that member ends (and any other whose deadline has passed), and the
//!   others are renewed at once one lease at a time, each bounded by its own deadline
//!   (as after a panic, below), so that a slow call does not take the leases with later
//!   deadlines with it. A failed call, or a failed lease in an answered call, is retried
//!   after TTL/10 until the deadlines. So a lease whose renewal alone hangs, inside a
//!   call that waits for every lease, holds up the call for the others until its
//!   deadline: a backend whose renewals can hang one by one should answer a group call
//!   lease by lease (`FaultyBackend` answers a stalled key's renewal in a group call
//!   with an error, so that its other leases are answered).
//! - Before each call, members whose context has ended (released, revoked, lost, shut
//!   down) leave the group: a lease whose holder has been told it is over is never
//!   renewed again. Outcomes apply to the member they were
//!   asked for (by position in the call, so by `(key, token)` and its own context), never
//!   to a newer lease of the same key.
//! - A backend that panics in a group call is asked again lease by lease (each answer
//!   applied as it comes, each lease bounded by its own deadline), so that only the
//!   leases whose renewal panics are lost (their renewers fail with the panic).
//!
//! The group's task ends when every handle on it is gone and its last member has left.
//! Each renewer keeps a strong handle; the supervisor keeps one while leases of the
//! group's TTL were handed out within the last [`LINGER`], and a weak one after, so that
//! leases acquired and released one at a time share one group rather than start one
//! each. A member whose renewer has stopped is taken out once half the group has left,
//! or at the next round, whichever comes first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{Backend, RenewOutcome};
use crate::context::ContextSender;
use crate::error::BackendError;
use crate::key::Key;
use crate::reason::{CancelReason, LossCause};

/// What a group tells one lease's renewer: the lease's renewal is over, and why.
#[derive(Debug)]
pub(crate) enum Fate {
    /// The lease was revoked.
    Revoked,
    /// The backend refused to renew: the lease expired there or is no longer ours.
    Refused,
    /// Its local deadline passed without a confirmed renewal, or its context ended.
    Expired,
    /// The backend panicked renewing it.
    Panicked(String),
}

impl Fate {
    /// The reason a context ends with for this fate.
    fn reason(&self) -> CancelReason {
        match self {
            Fate::Revoked => CancelReason::Revoked,
            Fate::Refused => CancelReason::Lost(LossCause::RenewalRefused),
            Fate::Expired => CancelReason::Lost(LossCause::DeadlineExceeded),
            Fate::Panicked(why) => CancelReason::Lost(LossCause::RenewerFailed(why.clone())),
        }
    }
}

/// A lease in its group: what the group needs to renew it and to tell its renewer.
pub(crate) struct Member {
    pub(crate) key: Key,
    pub(crate) token: u64,
    pub(crate) ctx: ContextSender,
    /// The local deadline the lease has earned so far.
    pub(crate) deadline: Instant,
    pub(crate) renewer: ActorRef<Fate>,
}

/// A strong handle on a group: joins leases to it, and keeps its task alive.
#[derive(Clone)]
pub(crate) struct Group(Arc<Handle>);

/// What the handles of a group share (one allocation, so that a renewer's handle is a
/// pointer).
struct Handle {
    tx: mpsc::UnboundedSender<Member>,
    /// How many members have left since the group started (see [`Membership`]).
    left: Arc<AtomicUsize>,
}

impl Group {
    /// Adds `member` to the group (from its next round on); `false` if the group's task
    /// is gone. The member counts as in the group until the returned [`Membership`]
    /// is dropped.
    pub(crate) fn join(&self, member: Member) -> Option<Membership> {
        self.0.tx.send(member).ok()?;
        Some(Membership(self.clone()))
    }
}

/// A renewer's place in its group: it keeps the group's task alive, and dropping it
/// (the renewer has stopped, its lease is over) tells the group that one member has
/// left. The group does not look for that member at once (that would take a map from
/// leases to places in the group, bytes per lease); it takes out the members whose
/// context has ended once as many have left as half the group, and before each round.
pub(crate) struct Membership(Group);

impl Drop for Membership {
    fn drop(&mut self) {
        self.0 .0.left.fetch_add(1, Ordering::Relaxed);
    }
}

/// How long a group with no lease left stays ready for the next one of its TTL: a
/// manager that acquires and releases leases one at a time would otherwise start a
/// group (a task, a channel, a timer) for each.
const LINGER: Duration = Duration::from_secs(30);

/// A manager's groups, one per TTL, started when a lease of that TTL is first held.
/// A group is kept (a strong handle) while leases of its TTL were handed out within
/// [`LINGER`]; after that only a weak handle is kept, and a group whose leases have all
/// gone stops, and the next lease of its TTL starts a new one. The groups are looked
/// over when a lease is handed out, at most once per [`LINGER`].
#[derive(Default)]
pub(crate) struct Groups {
    by_ttl: foldhash::HashMap<Duration, Known>,
    /// When the groups were last looked over.
    swept: Option<Instant>,
}

/// A group as the supervisor keeps it.
struct Known {
    weak: std::sync::Weak<Handle>,
    /// Kept while a lease of the group's TTL was handed out within [`LINGER`].
    warm: Option<Group>,
    /// When a lease of the group's TTL was last handed out.
    used: Instant,
}

impl Groups {
    /// The group of leases of `ttl` (with safety margin `margin`), started if needed.
    pub(crate) fn get(
        &mut self,
        backend: &Arc<dyn Backend>,
        ttl: Duration,
        margin: Duration,
    ) -> Group {
        let now = Instant::now();
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= LINGER)
        {
            self.swept = Some(now);
            self.by_ttl.retain(|_, kept| {
                if now.saturating_duration_since(kept.used) >= LINGER {
                    kept.warm = None;
                }
                kept.weak.strong_count() > 0
            });
        }
        if let Some(kept) = self.by_ttl.get_mut(&ttl) {
            if let Some(handle) = kept.weak.upgrade() {
                let group = Group(handle);
                kept.used = now;
                kept.warm.get_or_insert_with(|| group.clone());
                return group;
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let left = Arc::new(AtomicUsize::new(0));
        let group = Group(Arc::new(Handle {
            tx,
            left: left.clone(),
        }));
        self.by_ttl.insert(
            ttl,
            Known {
                weak: Arc::downgrade(&group.0),
                warm: Some(group.clone()),
                used: now,
            },
        );
        let round = Rounds {
            backend: backend.clone(),
            ttl,
            margin,
            leases: Vec::new(),
            members: Vec::new(),
            joins: rx,
            closed: false,
            next: Instant::now() + ttl / 3,
            earliest: None,
            left,
            pruned_at: 0,
        };
        tokio::spawn(round.run());
        group
    }
}

/// A member as the group's task keeps it; its `(key, token)` is at the same index in
/// [`Rounds::leases`], so that the whole group can be handed to the backend as it is.
struct InGroup {
    ctx: ContextSender,
    deadline: Instant,
    renewer: ActorRef<Fate>,
}

/// The answer for one member of a call.
enum Answer {
    Done(Result<RenewOutcome, BackendError>),
    /// Renewing this lease panicked (see [`Rounds::one_by_one`]).
    Panicked(String),
}

/// The group's task.
struct Rounds {
    backend: Arc<dyn Backend>,
    ttl: Duration,
    margin: Duration,
    leases: Vec<(Key, u64)>,
    members: Vec<InGroup>,
    joins: mpsc::UnboundedReceiver<Member>,
    /// Every handle is gone: no more joins.
    closed: bool,
    /// When the next round starts.
    next: Instant,
    /// No member's deadline is earlier (`None`: no members): when to look for members
    /// that are over before the next round.
    earliest: Option<Instant>,
    /// How many members have left (see [`Membership`]).
    left: Arc<AtomicUsize>,
    /// `left` when the members were last pruned.
    pruned_at: usize,
}

impl Rounds {
    fn interval(&self) -> Duration {
        self.ttl / 3
    }

    fn retry(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(10))
    }

    fn add(&mut self, m: Member) {
        if self.members.is_empty() {
            // The group was idle: its first round is TTL/3 after this lease joined.
            self.next = Instant::now() + self.interval();
        }
        self.earliest = Some(self.earliest.map_or(m.deadline, |e| e.min(m.deadline)));
        self.leases.push((m.key, m.token));
        self.members.push(InGroup {
            ctx: m.ctx,
            deadline: m.deadline,
            renewer: m.renewer,
        });
    }

    /// Takes member `i` out of the group, telling its renewer `fate`.
    fn remove(&mut self, i: usize, fate: Fate) {
        let kept = self.members.swap_remove(i);
        self.leases.swap_remove(i);
        tell(&kept, fate);
    }

    /// The earliest deadline of the members, recomputed.
    fn recompute_earliest(&mut self) {
        self.earliest = self.members.iter().map(|m| m.deadline).min();
    }

    /// Removes the members that are over (context ended, deadline passed), telling
    /// their renewers; returns the earliest deadline of those left.
    fn prune(&mut self, now: Instant, since: Duration) -> Option<Instant> {
        self.pruned_at = self.left.load(Ordering::Relaxed);
        let mut i = 0;
        while i < self.members.len() {
            let m = &self.members[i];
            // Reading the reason also ends the context if its own deadline has passed.
            if now >= m.deadline || m.ctx.reason_at(now, since).is_some() {
                self.remove(i, Fate::Expired);
                continue;
            }
            i += 1;
        }
        self.recompute_earliest();
        self.earliest
    }

    async fn run(mut self) {
        loop {
            while let Ok(m) = self.joins.try_recv() {
                self.add(m);
            }
            // Members whose renewer has stopped (released, revoked, lost) are taken out
            // once half the group has left since the last look, so that a group that
            // lives long among short leases does not grow by every lease it had.
            let left = self
                .left
                .load(Ordering::Relaxed)
                .wrapping_sub(self.pruned_at);
            if left > 0 && left.saturating_mul(2) >= self.members.len() {
                self.prune(Instant::now(), crate::clock::suspended());
            }
            let Some(earliest) = self.earliest else {
                // No members.
                if self.closed {
                    return;
                }
                match self.joins.recv().await {
                    Some(m) => self.add(m),
                    None => self.closed = true,
                }
                continue;
            };
            let now = Instant::now();
            if now < self.next && now < earliest {
                // Joins do not make the group look at its members: that is done once
                // per round, and when a deadline falls due.
                tokio::select! {
                    () = tokio::time::sleep_until(self.next.min(earliest)) => {}
                    m = self.joins.recv(), if !self.closed => match m {
                        Some(m) => self.add(m),
                        None => self.closed = true,
                    },
                }
                continue;
            }
            let Some(earliest) = self.prune(now, crate::clock::suspended()) else {
                continue;
            };
            if now >= self.next {
                self.round(earliest).await;
            }
        }
    }

    /// One round: renews every member in one call, bounded by `bound` (the earliest
    /// member deadline), and applies the answers. A call that panicked is replaced by
    /// renewals one lease at a time (see [`one_by_one`](Self::one_by_one)).
    async fn round(&mut self, bound: Instant) {
        let (start, since) = (Instant::now(), crate::clock::suspended());
        let n = self.leases.len();
        let mut joined = Joined::default();
        let called = {
            let Rounds {
                backend,
                ttl,
                leases,
                joins,
                closed,
                ..
            } = self;
            let call = AssertUnwindSafe(backend.renew_many(leases, *ttl)).catch_unwind();
            let call = crate::metrics::timed_renewal(call, start)
                .instrument(tracing::debug_span!("lease.renew", ttl = ?*ttl, leases = n));
            tokio::pin!(call);
            loop {
                // Leases that join while the call runs wait for the next round; if the
                // deadline one of them brought comes first, it ends at it.
                let wake = joined.earliest.map_or(bound, |d| d.min(bound));
                tokio::select! {
                    answer = &mut call => break Some(answer),
                    () = tokio::time::sleep_until(wake) => {
                        if Instant::now() >= bound {
                            break None;
                        }
                        joined.expire(Instant::now());
                    }
                    m = joins.recv(), if !*closed => match m {
                        Some(m) => joined.push(m),
                        None => *closed = true,
                    },
                }
            }
        };
        match called {
            Some(Ok(answers)) if answers.len() == n => {
                let answers = answers.into_iter().map(Answer::Done).collect();
                self.settle(start, since, answers);
            }
            Some(Ok(answers)) => {
                let error = BackendError::new(
                    crate::error::BackendErrorKind::Failed,
                    format!(
                        "the backend answered {} renewals for {n} leases",
                        answers.len()
                    ),
                );
                let answers = (0..n).map(|_| Answer::Done(Err(error.clone()))).collect();
                self.settle(start, since, answers);
            }
            None => {
                // No answer by the earliest deadline: the members whose deadline has
                // passed end now, and the others are renewed one by one at once, each
                // bounded by its own deadline. Retrying the group instead (bounded by
                // the next earliest deadline) lost every lease, one deadline after
                // another, on a link where a call takes longer than the gaps between
                // the members' deadlines; one hung lease still takes no other with it.
                tracing::warn!(ttl = ?self.ttl, leases = n, waited = ?start.elapsed(),
                    "a group renewal did not answer by its earliest lease's deadline: \
                     its leases are renewed one by one");
                self.one_by_one(&mut joined).await;
            }
            Some(Err(_panic)) => self.one_by_one(&mut joined).await,
        }
        for m in joined.members {
            self.add(m);
        }
    }

    /// Renews the members one lease at a time, all at once, applying each answer as it
    /// comes, each member bounded by its own deadline (then it ends), as each renewer
    /// did by itself before groups.
    async fn one_by_one(&mut self, joined: &mut Joined) {
        let (start, since) = (Instant::now(), crate::clock::suspended());
        let deadline = start + self.ttl - self.margin;
        let n = self.leases.len();
        let mut pending: FuturesUnordered<_> = self
            .leases
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, (key, token))| {
                let (backend, ttl) = (self.backend.clone(), self.ttl);
                async move { (i, renew_one(&*backend, &key, token, ttl).await) }
            })
            .collect();
        // Answered (or ended) members; those to take out of the group.
        let mut settled = vec![false; n];
        let mut unsettled = n;
        // The members by deadline, earliest first (answered ones are skipped when they
        // come up): each member is looked at once when its deadline passes, not every
        // member each time one does (a group of many leases with many deadlines, as
        // after a burst of acquires, made that quadratic).
        let mut by_deadline: BinaryHeap<_> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| Reverse((m.deadline, i)))
            .collect();
        let mut out = Vec::new();
        let mut failed = 0usize;
        loop {
            let now = Instant::now();
            // Unanswered members whose deadline has passed end now.
            while let Some(&Reverse((deadline, i))) = by_deadline.peek() {
                if settled[i] {
                    by_deadline.pop();
                } else if now >= deadline {
                    by_deadline.pop();
                    settled[i] = true;
                    unsettled -= 1;
                    tell(&self.members[i], Fate::Expired);
                    out.push(i);
                } else {
                    break;
                }
            }
            let Some(&Reverse((check, _))) = by_deadline.peek() else {
                break; // every member answered or ended
            };
            // Leases that joined meanwhile end at their own deadlines, which may come
            // before any unanswered member's (an acquire that started before their last
            // renewal): woken for one, it must go, or the wake-up is due again at once.
            joined.expire(now);
            if pending.is_empty() {
                break;
            }
            let wake = joined.earliest.map_or(check, |d| d.min(check));
            tokio::select! {
                Some((i, answer)) = pending.next() => {
                    if settled[i] {
                        continue;
                    }
                    settled[i] = true;
                    unsettled -= 1;
                    let fate = match answer {
                        Answer::Done(Ok(RenewOutcome::Renewed)) => {
                            let m = &mut self.members[i];
                            if m.ctx.extend(deadline, since) {
                                m.deadline = deadline;
                                continue;
                            }
                            Fate::Expired
                        }
                        Answer::Done(Ok(RenewOutcome::Revoked)) => Fate::Revoked,
                        Answer::Done(Ok(RenewOutcome::Lost)) => Fate::Refused,
                        Answer::Panicked(why) => Fate::Panicked(why),
                        Answer::Done(Err(error)) => {
                            crate::metrics::backend_error(crate::metrics::Op::Renew);
                            tracing::warn!(key = %self.leases[i].0, token = self.leases[i].1,
                                %error, "lease renewal failed; retrying until the local deadline");
                            failed += 1;
                            continue;
                        }
                    };
                    tell(&self.members[i], fate);
                    out.push(i);
                }
                () = tokio::time::sleep_until(wake) => {}
                m = self.joins.recv(), if !self.closed => match m {
                    Some(m) => joined.push(m),
                    None => self.closed = true,
                },
            }
        }
        let unanswered = unsettled;
        drop(pending);
        // Highest index first, so that `swap_remove` only moves members kept.
        out.sort_unstable_by(|a, b| b.cmp(a));
        for i in out {
            self.members.swap_remove(i);
            self.leases.swap_remove(i);
        }
        self.recompute_earliest();
        // No later than TTL/3 after these renewals started, even if a hung lease kept
        // us here until its deadline: the leases confirmed here are due again then.
        let pause = if failed + unanswered > 0 {
            self.retry()
        } else {
            self.interval()
        };
        self.next = (Instant::now() + pause).min(start + self.interval());
    }

    /// Applies a call's answers: confirmed members get their new deadline, the others
    /// leave the group (and their renewers are told) or are retried.
    fn settle(&mut self, start: Instant, since: Duration, answers: Vec<Answer>) {
        let deadline = start + self.ttl - self.margin;
        let mut failed = 0usize;
        let mut first_error = None;
        // Backwards, so that `swap_remove` only moves members already seen.
        for (i, answer) in answers.into_iter().enumerate().rev() {
            let fate = match answer {
                Answer::Done(Ok(RenewOutcome::Renewed)) => {
                    let m = &mut self.members[i];
                    if m.ctx.extend(deadline, since) {
                        m.deadline = deadline;
                        continue;
                    }
                    // Confirmed too late, or the context ended meanwhile.
                    Fate::Expired
                }
                Answer::Done(Ok(RenewOutcome::Revoked)) => Fate::Revoked,
                Answer::Done(Ok(RenewOutcome::Lost)) => Fate::Refused,
                Answer::Panicked(why) => Fate::Panicked(why),
                Answer::Done(Err(e)) => {
                    crate::metrics::backend_error(crate::metrics::Op::Renew);
                    failed += 1;
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            self.remove(i, fate);
        }
        self.recompute_earliest();
        if let Some(error) = first_error {
            tracing::warn!(ttl = ?self.ttl, failed, %error,
                "lease renewal failed; retrying until the local deadlines");
            self.next = Instant::now() + self.retry();
        } else {
            self.next = Instant::now() + self.interval();
        }
    }
}

/// Tells a member's renewer its lease's `fate`. The renewer goes only once the context
/// has ended, but should it be gone with the context live, the holder is told directly
/// (the first reason stays).
fn tell(m: &InGroup, fate: Fate) {
    let reason = fate.reason();
    if m.renewer.send_message(fate).is_err() {
        m.ctx.cancel(reason);
    }
}

/// The leases that joined during a call (they wait for the next round), and the
/// earliest of their deadlines, kept as they join: a call of a large group takes joins
/// by the thousand, and each wake-up must not look at every one of them.
#[derive(Default)]
struct Joined {
    members: Vec<Member>,
    earliest: Option<Instant>,
}

impl Joined {
    fn push(&mut self, m: Member) {
        self.earliest = Some(self.earliest.map_or(m.deadline, |e| e.min(m.deadline)));
        self.members.push(m);
    }

    /// Ends the leases whose deadline has passed by `now` (a look at each only when the
    /// earliest deadline has passed).
    fn expire(&mut self, now: Instant) {
        if self.earliest.is_none_or(|e| now < e) {
            return;
        }
        self.members.retain(|m| {
            let over = now >= m.deadline;
            if over && m.renewer.send_message(Fate::Expired).is_err() {
                m.ctx.cancel(Fate::Expired.reason());
            }
            !over
        });
        self.earliest = self.members.iter().map(|m| m.deadline).min();
    }
}

/// One lease's renewal, with a panic caught.
async fn renew_one(backend: &dyn Backend, key: &Key, token: u64, ttl: Duration) -> Answer {
    match AssertUnwindSafe(backend.renew(key, token, ttl))
        .catch_unwind()
        .await
    {
        Ok(answer) => Answer::Done(answer),
        Err(panic) => Answer::Panicked(panic_message(&*panic)),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_owned()
    }
}
