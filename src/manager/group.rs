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
//!   deadline its acquire earned until a later call confirms it. Rounds come every TTL/3
//!   (measured from the start of the previous call), so a lease is renewed within TTL/3
//!   of joining, unless its own deadline comes first (then it ends at it).
//! - A call is bounded by the earliest deadline of its members: at that instant the call
//!   is given up, that member ends, and the others are retried (a failed call, or a
//!   failed lease in it, is retried after TTL/10) until their own deadlines.
//! - Before each call, members whose context has ended (released, revoked, lost, shut
//!   down) or whose renewer has stopped leave the group: a lease whose holder has been
//!   told it is over is never renewed again. Outcomes apply to the member they were
//!   asked for (by position in the call, so by `(key, token)` and its own context), never
//!   to a newer lease of the same key.
//! - A backend that panics in a group call is asked again lease by lease, so that only
//!   the leases whose renewal panics are lost (their renewers fail with the panic).
//!
//! The group's task ends when every handle on it is gone (the supervisor keeps a weak one;
//! each renewer a strong one) and its last member has left.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use ractor::{ActorRef, ActorStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{Backend, RenewOutcome};
use crate::context::ContextSender;
use crate::error::BackendError;
use crate::key::Key;

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
pub(crate) struct Group {
    tx: mpsc::UnboundedSender<Member>,
}

impl Group {
    /// Adds `member` to the group (from its next round on); `false` if the group's task
    /// is gone.
    pub(crate) fn join(&self, member: Member) -> bool {
        self.tx.send(member).is_ok()
    }
}

/// A manager's groups, one per TTL, started when a lease of that TTL is first held.
/// Weak handles: a group whose leases have all gone stops, and the next lease of its TTL
/// starts a new one.
#[derive(Default)]
pub(crate) struct Groups {
    by_ttl: foldhash::HashMap<Duration, mpsc::WeakUnboundedSender<Member>>,
}

impl Groups {
    /// The group of leases of `ttl` (with safety margin `margin`), started if needed.
    pub(crate) fn get(
        &mut self,
        backend: &Arc<dyn Backend>,
        ttl: Duration,
        margin: Duration,
    ) -> Group {
        if let Some(tx) = self.by_ttl.get(&ttl).and_then(|w| w.upgrade()) {
            return Group { tx };
        }
        let (tx, rx) = mpsc::unbounded_channel();
        // Forget the groups that have stopped, so that many TTLs used once cost nothing.
        self.by_ttl.retain(|_, w| w.strong_count() > 0);
        self.by_ttl.insert(ttl, tx.downgrade());
        let round = Rounds {
            backend: backend.clone(),
            ttl,
            margin,
            leases: Vec::new(),
            members: Vec::new(),
            joins: rx,
            closed: false,
            next: Instant::now() + ttl / 3,
        };
        tokio::spawn(round.run());
        Group { tx }
    }
}

/// A member as the group's task keeps it; its `(key, token)` is at the same index in
/// [`Rounds::leases`], so that the whole group can be handed to the backend as it is.
struct Kept {
    ctx: ContextSender,
    deadline: Instant,
    renewer: ActorRef<Fate>,
}

/// What one group call came to.
enum Called {
    /// One answer per member of the call.
    Answered(Vec<Answer>),
    /// No answer before the earliest member deadline.
    TimedOut,
}

/// The answer for one member of a call.
enum Answer {
    Done(Result<RenewOutcome, BackendError>),
    /// Renewing this lease panicked (see [`Rounds::lease_by_lease`]).
    Panicked(String),
}

/// The group's task.
struct Rounds {
    backend: Arc<dyn Backend>,
    ttl: Duration,
    margin: Duration,
    leases: Vec<(Key, u64)>,
    members: Vec<Kept>,
    joins: mpsc::UnboundedReceiver<Member>,
    /// Every handle is gone: no more joins.
    closed: bool,
    /// When the next round starts.
    next: Instant,
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
        self.leases.push((m.key, m.token));
        self.members.push(Kept {
            ctx: m.ctx,
            deadline: m.deadline,
            renewer: m.renewer,
        });
    }

    /// Takes member `i` out of the group, telling its renewer `fate` (if any).
    fn remove(&mut self, i: usize, fate: Option<Fate>) {
        let kept = self.members.swap_remove(i);
        self.leases.swap_remove(i);
        if let Some(fate) = fate {
            // A renewer already gone has nothing left to end.
            let _ = kept.renewer.send_message(fate);
        }
    }

    /// Removes the members that are over (context ended, deadline passed, renewer
    /// stopped), telling their renewers; returns the earliest deadline of those left.
    fn prune(&mut self, now: Instant, since: Duration) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut i = 0;
        while i < self.members.len() {
            let m = &self.members[i];
            if matches!(
                m.renewer.get_status(),
                ActorStatus::Stopping | ActorStatus::Stopped
            ) {
                self.remove(i, None);
                continue;
            }
            // Reading the reason also ends the context if its own deadline has passed.
            let ended = m.ctx.reason_at(now, since).is_some();
            if ended || now >= m.deadline {
                self.remove(i, Some(Fate::Expired));
                continue;
            }
            earliest = Some(earliest.map_or(m.deadline, |e| e.min(m.deadline)));
            i += 1;
        }
        earliest
    }

    async fn run(mut self) {
        loop {
            while let Ok(m) = self.joins.try_recv() {
                self.add(m);
            }
            let earliest = self.prune(Instant::now(), crate::clock::suspended());
            let Some(earliest) = earliest else {
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
            if now < self.next {
                let wake = self.next.min(earliest);
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    m = self.joins.recv(), if !self.closed => match m {
                        Some(m) => self.add(m),
                        None => self.closed = true,
                    },
                }
                continue;
            }
            self.round(earliest).await;
        }
    }

    /// One round: renews every member in one call, bounded by `bound` (the earliest
    /// member deadline), and applies the answers.
    async fn round(&mut self, bound: Instant) {
        let (start, since) = (Instant::now(), crate::clock::suspended());
        let n = self.leases.len();
        let mut joined = Vec::new();
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
                let first_joined = joined.iter().map(|m: &Member| m.deadline).min();
                let wake = first_joined.map_or(bound, |d| d.min(bound));
                tokio::select! {
                    answer = &mut call => break Some(answer),
                    () = tokio::time::sleep_until(wake) => {
                        if Instant::now() >= bound {
                            break None;
                        }
                        let now = Instant::now();
                        joined.retain(|m| {
                            let over = now >= m.deadline;
                            if over {
                                let _ = m.renewer.send_message(Fate::Expired);
                            }
                            !over
                        });
                    }
                    m = joins.recv(), if !*closed => match m {
                        Some(m) => joined.push(m),
                        None => *closed = true,
                    },
                }
            }
        };
        let called = match called {
            None => Called::TimedOut,
            Some(Ok(answers)) if answers.len() == n => {
                Called::Answered(answers.into_iter().map(Answer::Done).collect())
            }
            Some(Ok(answers)) => {
                let error = BackendError::new(
                    crate::error::BackendErrorKind::Failed,
                    format!(
                        "the backend answered {} renewals for {n} leases",
                        answers.len()
                    ),
                );
                Called::Answered((0..n).map(|_| Answer::Done(Err(error.clone()))).collect())
            }
            Some(Err(_panic)) => self.lease_by_lease(bound).await,
        };
        self.settle(start, since, called);
        for m in joined {
            self.add(m);
        }
    }

    /// After a group call panicked: each lease on its own, so that only those whose
    /// renewal panics are lost.
    async fn lease_by_lease(&self, bound: Instant) -> Called {
        let each = self
            .leases
            .iter()
            .map(|(key, token)| renew_one(&*self.backend, key, *token, self.ttl));
        let all = futures_util::future::join_all(each);
        match tokio::time::timeout_at(bound, all).await {
            Ok(answers) => Called::Answered(answers),
            Err(_elapsed) => Called::TimedOut,
        }
    }

    /// Applies a call's answers: confirmed members get their new deadline, the others
    /// leave the group (and their renewers are told) or are retried.
    fn settle(&mut self, start: Instant, since: Duration, called: Called) {
        let answers = match called {
            Called::Answered(answers) => answers,
            Called::TimedOut => {
                // The member whose deadline bounded the call leaves at the next prune;
                // the others are tried again.
                self.next = Instant::now() + self.retry();
                return;
            }
        };
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
            self.remove(i, Some(fate));
        }
        if let Some(error) = first_error {
            tracing::warn!(ttl = ?self.ttl, failed, %error,
                "lease renewal failed; retrying until the local deadlines");
            self.next = Instant::now() + self.retry();
        } else {
            self.next = start + self.interval();
        }
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
