//! Batched renewals: many leases renewed by one statement.
//!
//! Each [`renew`](Renewals::renew) call queues its lease and waits for the answer. One
//! task, the *batcher*, gathers the queue: when the oldest queued renewal has waited its
//! share of the batch window (at most [`renew_batch_window`], and at most 1/20 of its
//! TTL), or when a full chunk is queued, it sends the oldest queued renewals as
//! statements of at most [`renew_batch_size`] leases each, keys in order, each in a task
//! of its own (so a slow statement does not hold up the next batch).
//!
//! At most half the pool's connections (at least one) run renewal statements at once.
//! When the database falls behind, renewals wait here and join larger
//! statements, instead of queueing for connections, where acquires and releases would
//! queue behind them and everything would time out together. A queued renewal keeps its
//! place until its renewer stops waiting (at the holder's deadline) or its TTL is spent;
//! it is not failed and re-queued at the back, behind everyone else. The queue is served
//! oldest first while its oldest renewal has waited less than a sixth of its TTL, newest
//! first after that, so that an overloaded database loses the leases it cannot keep
//! rather than all of them (see `Batcher::send`).
//!
//! No lease is in two running statements at once: a renewal of a lease whose earlier
//! renewal is still running (its renewer gave up waiting and tried again) waits for
//! that statement to end, then goes first. (The statements lock their rows in key order
//! too, so even a statement the server still runs after we gave up on it cannot
//! deadlock with the retry.) The statement answers with the leases it renewed; each caller is told its own
//! outcome:
//!
//! - in the answer, not revoked: [`RenewOutcome::Renewed`];
//! - in the answer, revoked: [`RenewOutcome::Revoked`] (matched, not extended);
//! - missing from the answer (expired, released, taken over): [`RenewOutcome::Lost`],
//!   at once;
//! - the statement failed or timed out: every lease in it gets the error (none is
//!   renewed, as far as its holder knows), and its renewer retries.
//!
//! The holder's local deadline counts from its renewer's start instant, taken before
//! the renewal was queued, hence before the batch was sent; the database extends each
//! lease from the statement's `now()`, which is later. Waiting in the queue therefore
//! only delays a renewal; it never stretches a deadline.
//!
//! # Cancellation
//! A caller whose future is dropped while its renewal is queued or in flight (its
//! deadline passed, the manager stopped) leaves nothing behind: the statement belongs
//! to the batcher, not to the caller, so no connection is cut mid-statement. A renewal
//! still queued is left out of the batch when it is sent; one already sent may extend a
//! lease nobody waits for, exactly like a renewal whose answer was lost (see the module
//! docs of the backend). When the backend is dropped, the batcher and its statements
//! are aborted; their connections are discarded by [`Checkout`](super::pool::Checkout), and
//! waiting callers get an error.
//!
//! [`renew_batch_window`]: super::options::PostgresOptions::renew_batch_window
//! [`renew_batch_size`]: super::options::PostgresOptions::renew_batch_size

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::options::PostgresOptions;
use super::pool::Db;
use super::sessions::{Mode, Sessions};
use super::values::ttl_ms;
use crate::backend::RenewOutcome;
use crate::error::{BackendError, BackendErrorKind};

type Answer = Result<RenewOutcome, BackendError>;

/// One queued renewal.
struct Request {
    key: String,
    token: i64,
    ttl_ms: i64,
    /// When the batch must be sent, at the latest, for this renewal's sake.
    due: Instant,
    /// Past this instant still queued (a sixth of its TTL after it was queued, half its
    /// renewal interval), it shows the database is not keeping up: see
    /// [`Batcher::send`].
    late: Instant,
    reply: oneshot::Sender<Answer>,
}

/// One lease in a batch statement, with everyone waiting for its answer (normally one
/// renewer; several only if one lease was queued twice).
struct Lease {
    key: String,
    token: i64,
    ttl_ms: i64,
    replies: Vec<oneshot::Sender<Answer>>,
}

/// The queue of renewals and the batcher task that sends them.
pub(super) struct Renewals {
    queue: mpsc::UnboundedSender<Request>,
    task: JoinHandle<()>,
}

impl Renewals {
    /// Starts the batcher on `runtime`.
    pub(super) fn start(
        runtime: &tokio::runtime::Handle,
        db: Arc<Db>,
        sessions: Arc<Sessions>,
    ) -> Renewals {
        let (queue, requests) = mpsc::unbounded_channel();
        let task = runtime.spawn(batcher(db, sessions, requests));
        Renewals { queue, task }
    }

    /// Stops the batcher and every statement it is running.
    pub(super) fn stop(&self) {
        self.task.abort();
    }

    /// Renews `(key, token)` by `ttl` in the next batch. Bounded by the lease's TTL
    /// (how long it may wait in the queue: a renewal sent later cannot keep the lease
    /// anyway), the batch window and the statement timeout. The manager's renewers
    /// bound it by the holder's deadline, which comes first.
    pub(super) async fn renew(
        &self,
        key: String,
        token: i64,
        ttl: Duration,
        options: &PostgresOptions,
    ) -> Answer {
        let wait = options
            .renew_batch_window
            .min(ttl / 20)
            .min(options.statement_timeout);
        let now = Instant::now();
        let due = now
            .checked_add(wait)
            .unwrap_or(now + options.statement_timeout.min(Duration::from_secs(3600)));
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key,
            token,
            ttl_ms: ttl_ms(ttl),
            due,
            late: now.checked_add(ttl / 6).unwrap_or(due),
            reply,
        };
        if self.queue.send(request).is_err() {
            return Err(stopped());
        }
        // Under load, renewals queue here for a free statement slot. A renewal that
        // gave up sooner would retry at the back of the queue, after everyone else:
        // it keeps its place until its TTL is spent.
        let bound = ttl
            .max(wait)
            .saturating_add(wait)
            .saturating_add(options.statement_timeout);
        match tokio::time::timeout(bound, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Timeout,
                format!("renew: no answer from the database in {bound:?}"),
            )),
        }
    }
}

fn stopped() -> BackendError {
    BackendError::new(
        BackendErrorKind::Unavailable,
        "renew: the backend's renewal batcher stopped",
    )
}

/// The batcher's state: what is queued, what is running.
struct Batcher {
    db: Arc<Db>,
    sessions: Arc<Sessions>,
    /// The most leases in one statement.
    size: usize,
    /// The most statements running at once.
    max_running: usize,
    /// Queued renewals, oldest first.
    pending: VecDeque<Request>,
    /// When the batch must be sent, for the sake of the most urgent queued renewal.
    earliest: Option<Instant>,
    /// Renewals of a lease that is in a running statement: they wait for it to end.
    deferred: Vec<Request>,
    /// Running statements; each returns the [`lease_id`]s it covered.
    running: JoinSet<Vec<u64>>,
    /// The [`lease_id`]s of the leases in running statements.
    in_flight: HashSet<u64>,
}

/// Gathers queued renewals into batches until the backend is dropped.
async fn batcher(
    db: Arc<Db>,
    sessions: Arc<Sessions>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let mut b = Batcher {
        sessions,
        size: db.options.renew_batch_size.max(1),
        max_running: (db.options.pool_size / 2).max(1),
        db,
        pending: VecDeque::new(),
        earliest: None,
        deferred: Vec::new(),
        running: JoinSet::new(),
        in_flight: HashSet::new(),
    };
    loop {
        let send_at = b.earliest.unwrap_or_else(Instant::now);
        let free = b.running.len() < b.max_running;
        tokio::select! {
            request = requests.recv() => match request {
                Some(request) => b.queue(request),
                // Every sender is gone: the backend was dropped.
                None => return,
            },
            () = tokio::time::sleep_until(send_at), if b.earliest.is_some() && free => {
                // Renewals already queued ride along (a bounded number, so that a flood
                // cannot hold the batch back).
                for _ in 0..b.size {
                    match requests.try_recv() {
                        Ok(request) => b.queue(request),
                        Err(_) => break,
                    }
                }
                b.send();
            }
            // A statement ended (its answers are already sent): its leases may be sent
            // again, and its connection is free for the next batch.
            Some(done) = b.running.join_next(), if !b.running.is_empty() => {
                if let Ok(ids) = done {
                    for id in ids {
                        b.in_flight.remove(&id);
                    }
                } else {
                    // A statement task cannot panic or be cancelled while the batcher
                    // runs; should it, forget what was in flight rather than hold
                    // those leases back for ever (the server re-checks every row).
                    b.in_flight.clear();
                }
                // Back at the front, in their order: they have waited their turn.
                for request in std::mem::take(&mut b.deferred).into_iter().rev() {
                    b.queue_front(request);
                }
            }
        }
        if b.pending.len() >= b.size && b.running.len() < b.max_running {
            b.send();
        }
    }
}

/// Identifies a lease `(key, token)` among those in flight. Two leases with the same
/// identifier only make one of them wait for the other's statement.
pub(super) fn lease_id(key: &str, token: i64) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x6c65_6173_6573).build_hasher();
    key.hash(&mut h);
    token.hash(&mut h);
    h.finish()
}

impl Batcher {
    /// Queues `request` last, and arms the timer for its due instant.
    fn queue(&mut self, request: Request) {
        self.arm(request.due);
        self.pending.push_back(request);
    }

    /// Queues `request` first, and arms the timer for its due instant.
    fn queue_front(&mut self, request: Request) {
        self.arm(request.due);
        self.pending.push_front(request);
    }

    fn arm(&mut self, due: Instant) {
        self.earliest = Some(self.earliest.map_or(due, |e| e.min(due)));
    }

    /// Drops the renewals at the front whose renewers stopped waiting.
    fn drop_abandoned_front(&mut self) {
        while self.pending.front().is_some_and(|r| r.reply.is_closed()) {
            self.pending.pop_front();
        }
    }

    /// Sends queued renewals, as many as the free statement slots take, as statements of
    /// at most `size` leases each, keys in order: the oldest first, unless the oldest
    /// has waited past its `late` instant (a sixth of its TTL), then the newest first.
    ///
    /// Why the newest when the queue is that late: renewals then arrive faster than the
    /// database renews them, and serving them in order would delay every one of them
    /// alike, until every holder reaches its deadline at about the same time and nearly
    /// all leases are lost together. Served newest first, renewals that were just
    /// queued go through at once (their holders keep their leases) and the oldest wait
    /// until their holders' deadlines: those leases are lost, and told, until what is
    /// left is what the database can renew. A queue that drains within a sixth of the
    /// TTL (a short burst) stays in order: every holder still has two thirds of its TTL.
    fn send(&mut self) {
        let slots = self.max_running.saturating_sub(self.running.len());
        // A renewer that stopped waiting (its future was dropped) needs no renewal. Only
        // what is sent is looked at: under load the queue is long, and this runs for
        // every batch.
        let most = slots.saturating_mul(self.size);
        self.drop_abandoned_front();
        let now = Instant::now();
        let backlog = self.pending.front().is_some_and(|r| r.late <= now);
        let mut batch = Vec::with_capacity(most.min(self.pending.len()));
        while batch.len() < most {
            let next = if backlog {
                // Renewers at the front that gave up leave with no work.
                self.drop_abandoned_front();
                self.pending.pop_back()
            } else {
                self.pending.pop_front()
            };
            match next {
                Some(r) if r.reply.is_closed() => {}
                Some(r) => batch.push(r),
                None => break,
            }
        }
        self.earliest = if self.pending.len() >= self.size {
            // A backlog: send again as soon as a statement slot is free.
            self.pending.front().map(|_| Instant::now())
        } else {
            self.pending.iter().map(|r| r.due).min()
        };
        // Keys in one fixed order: duplicates side by side, and chunks over ranges of
        // keys (neighbouring index pages).
        batch.sort_unstable_by(|a, b| (&a.key, a.token).cmp(&(&b.key, b.token)));
        let mut leases: Vec<Lease> = Vec::with_capacity(batch.len());
        for r in batch {
            match leases.last_mut() {
                // The same lease twice: one element, renewed by the longest TTL asked
                // for, and both callers get its answer.
                Some(l) if l.key == r.key && l.token == r.token => {
                    l.ttl_ms = l.ttl_ms.max(r.ttl_ms);
                    l.replies.push(r.reply);
                }
                // Already in a running statement (a renewer that gave up on it and
                // tried again): never in two at once, so it waits for that one to end.
                _ if self.in_flight.contains(&lease_id(&r.key, r.token)) => {
                    self.deferred.push(r);
                }
                _ => leases.push(Lease {
                    key: r.key,
                    token: r.token,
                    ttl_ms: r.ttl_ms,
                    replies: vec![r.reply],
                }),
            }
        }
        // One session per TTL: the leases of one TTL go together (still in key order).
        let mut by_ttl: Vec<(i64, Vec<Lease>)> = Vec::new();
        for l in leases {
            match by_ttl.iter_mut().find(|(ttl, _)| *ttl == l.ttl_ms) {
                Some((_, group)) => group.push(l),
                None => by_ttl.push((l.ttl_ms, vec![l])),
            }
        }
        for (ttl, mut leases) in by_ttl {
            while !leases.is_empty() {
                let rest = leases.split_off(leases.len().min(self.size));
                let chunk = std::mem::replace(&mut leases, rest);
                let ids: Vec<u64> = chunk.iter().map(|l| lease_id(&l.key, l.token)).collect();
                self.in_flight.extend(ids.iter().copied());
                let (db, sessions) = (self.db.clone(), self.sessions.clone());
                self.running.spawn(async move {
                    renew_in_session(db, sessions, ttl, chunk).await;
                    ids
                });
            }
        }
    }
}

/// Renews one chunk of leases of one TTL with one statement that renews the TTL's
/// session (creating it first if there is none), and tells every caller its lease's
/// outcome.
async fn renew_in_session(db: Arc<Db>, sessions: Arc<Sessions>, ttl: i64, leases: Vec<Lease>) {
    // A session found expired loses its members, but not the leases that were to join
    // it (new or re-attached ones, alive on their own): they go again, into a new
    // session. (A backend whose leases of a TTL were all released for longer than the
    // TTL finds its session expired at the next one's first renewal.)
    let retry = renew_once(&db, &sessions, ttl, leases, false).await;
    if !retry.is_empty() {
        renew_once(&db, &sessions, ttl, retry, true).await;
    }
}

/// One statement of [`renew_in_session`]; returns the leases to attach again, in a new
/// session, when the session had expired (unless `last_try`: they are lost then).
async fn renew_once(
    db: &Arc<Db>,
    sessions: &Arc<Sessions>,
    ttl: i64,
    leases: Vec<Lease>,
    last_try: bool,
) -> Vec<Lease> {
    let session = match sessions.current(ttl) {
        Some(s) => Ok(s),
        None => {
            // One task creates it; the others wait and use it.
            let lock = sessions.lock(ttl);
            let _creating = lock.lock().await;
            match sessions.current(ttl) {
                Some(s) => Ok(s),
                None => db
                    .with_client("create a session", |c, sql| {
                        Box::pin(async move {
                            let stmt = c.prepare_cached(&sql.session_new).await?;
                            Ok(c.query_one(&stmt, &[&ttl]).await?.get::<_, i64>(0))
                        })
                    })
                    .await
                    .inspect(|s| sessions.set_current(ttl, *s)),
            }
        }
    };
    let session = match session {
        Ok(s) => s,
        Err(error) => {
            for reply in leases.into_iter().flat_map(|l| l.replies) {
                let _ = reply.send(Err(error.clone()));
            }
            return Vec::new();
        }
    };
    // Each lease's place: in the statement's member or attach arrays, or lost already.
    enum Place {
        Member(usize),
        Attach(usize),
        Lost,
        Busy,
    }
    let mut places = Vec::with_capacity(leases.len());
    let mut modes = Vec::with_capacity(leases.len());
    let (mut member_keys, mut member_tokens) = (Vec::new(), Vec::new());
    let (mut attach_keys, mut attach_tokens, mut attach_any) = (Vec::new(), Vec::new(), Vec::new());
    for l in &leases {
        let mode = sessions.mode(&l.key, l.token, session);
        modes.push(mode);
        places.push(match mode {
            Mode::Member => {
                member_keys.push(l.key.clone());
                member_tokens.push(l.token);
                Place::Member(member_keys.len())
            }
            Mode::Attach(any) => {
                attach_keys.push(l.key.clone());
                attach_tokens.push(l.token);
                attach_any.push(any);
                Place::Attach(attach_keys.len())
            }
            Mode::Lost => Place::Lost,
            Mode::Busy => Place::Busy,
        });
    }
    // What the same statement takes out of the session (after the modes: a lease
    // renewed again here owes no leave any more).
    let out = Outgoing::take(sessions, ttl, session, (&attach_keys, &attach_tokens));
    let (out_keys, out_tokens, out_untils) =
        (out.keys.clone(), out.tokens.clone(), out.untils.clone());
    tracing::trace!(leases = leases.len(), session, "renewing a session");
    db.renew_statements
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let answer = db
        .with_client("renew", |c, sql| {
            Box::pin(async move {
                let stmt = c.prepare_cached(&sql.session_renew).await?;
                let rows = c
                    .query(
                        &stmt,
                        &[
                            &session,
                            &ttl,
                            &member_keys,
                            &member_tokens,
                            &attach_keys,
                            &attach_tokens,
                            &attach_any,
                            &out_keys,
                            &out_tokens,
                            &out_untils,
                        ],
                    )
                    .await?;
                let mut renewed = false;
                let mut until: Option<std::time::SystemTime> = None;
                // By position (from 1): revoked or lost members, attaches that worked,
                // leases to take out that are still owed.
                let (mut revoked, mut lost, mut moved, mut refused, mut missed) = (
                    HashSet::<i64>::new(),
                    HashSet::<i64>::new(),
                    HashSet::<i64>::new(),
                    HashSet::<i64>::new(),
                    HashSet::<i64>::new(),
                );
                for row in &rows {
                    let kind: i32 = row.try_get(0)?;
                    let i: i64 = row.try_get(1)?;
                    match kind {
                        0 => {
                            renewed = i > 0;
                            until = row.try_get(2)?;
                        }
                        1 => drop(revoked.insert(i)),
                        2 => drop(lost.insert(i)),
                        3 => drop(moved.insert(i)),
                        4 => drop(refused.insert(i)),
                        _ => drop(missed.insert(i)),
                    }
                }
                Ok((renewed, until, revoked, lost, moved, refused, missed))
            })
        })
        .await;
    let (renewed, until, revoked, lost, moved, refused) = match answer {
        Ok((renewed, until, revoked, lost, moved, refused, missed)) => {
            out.answered(true, missed);
            (renewed, until, revoked, lost, moved, refused)
        }
        Err(error) => {
            drop(out);
            tracing::debug!(%error, leases = leases.len(), "a session renewal failed");
            // The statement may have committed: the leases it was to attach may be in
            // the session now (see `Sessions::unsure`).
            for (l, place) in leases.iter().zip(&places) {
                if matches!(place, Place::Attach(_)) {
                    sessions.unsure(&l.key, l.token, session);
                    sessions.settled(&l.key, l.token, session);
                }
            }
            for reply in leases.into_iter().flat_map(|l| l.replies) {
                let _ = reply.send(Err(error.clone()));
            }
            return Vec::new();
        }
    };
    if !renewed {
        // The session expired (never revived): every lease in it is lost, and the next
        // renewal starts a new session.
        tracing::debug!(session, "a session expired before its renewal");
        sessions.expired(ttl, session);
    }
    let mut retry = Vec::new();
    for ((l, place), mode) in leases.into_iter().zip(places).zip(modes) {
        let position = |p: usize| i64::try_from(p).unwrap_or(i64::MAX);
        if matches!(place, Place::Busy) {
            // Not in the statement: see `Mode::Busy`.
            for reply in l.replies {
                let _ = reply.send(Err(busy()));
            }
            continue;
        }
        if !renewed && !last_try && matches!(place, Place::Attach(_)) {
            sessions.settled(&l.key, l.token, session);
            retry.push(l);
            continue;
        }
        let outcome = match place {
            _ if !renewed => RenewOutcome::Lost,
            Place::Lost => RenewOutcome::Lost,
            Place::Member(p) if revoked.contains(&position(p)) => RenewOutcome::Revoked,
            Place::Member(p) if lost.contains(&position(p)) => RenewOutcome::Lost,
            Place::Member(_) => RenewOutcome::Renewed,
            Place::Attach(p) if moved.contains(&position(p)) => RenewOutcome::Renewed,
            Place::Attach(p) if refused.contains(&position(p)) => RenewOutcome::Revoked,
            Place::Attach(_) | Place::Busy => RenewOutcome::Lost,
        };
        let attach = matches!(place, Place::Attach(_));
        let outcome = if outcome != RenewOutcome::Renewed {
            sessions.forget(&l.key, l.token);
            outcome
        } else if sessions.attached(&l.key, l.token, session, until, mode) {
            outcome
        } else {
            // Let go of here while the statement ran (see `Sessions::attached`).
            RenewOutcome::Lost
        };
        if attach {
            sessions.settled(&l.key, l.token, session);
        }
        for reply in l.replies {
            let _ = reply.send(Ok(outcome));
        }
    }
    retry
}

/// The answer to a renewal of a lease that a statement of this backend is taking out of
/// its session ([`Mode::Busy`]): its renewer tries again.
pub(super) fn busy() -> BackendError {
    BackendError::new(
        BackendErrorKind::Unavailable,
        "renew: a statement taking this lease out of its session has not answered yet",
    )
}

/// The leases a renewal statement of a session takes out of it (`gone` in `sql.rs`):
/// [`Sessions::outgoing`], less any the same statement attaches. Unless
/// [`Outgoing::answered`] says the statement ran, they are owed again to the session's
/// next statement ([`Sessions::leave_later`]), also when this is dropped mid-statement.
pub(super) struct Outgoing {
    sessions: Arc<Sessions>,
    session: i64,
    pub(super) keys: Vec<String>,
    pub(super) tokens: Vec<i64>,
    pub(super) untils: Vec<Option<std::time::SystemTime>>,
    answered: bool,
    /// Positions (from 1) of those the answered statement did not lock: still owed.
    missed: HashSet<i64>,
}

impl Outgoing {
    /// Takes what `session`'s statement must take out, but for the leases it attaches
    /// (`attaching`, keys and tokens in parallel): those are renewed again here, so no
    /// leave is owed for them any more.
    pub(super) fn take(
        sessions: &Arc<Sessions>,
        ttl: i64,
        session: i64,
        attaching: (&[String], &[i64]),
    ) -> Outgoing {
        let mut out = Outgoing {
            sessions: sessions.clone(),
            session,
            keys: Vec::new(),
            tokens: Vec::new(),
            untils: Vec::new(),
            answered: false,
            missed: HashSet::new(),
        };
        for (key, token, until) in sessions.outgoing(ttl, session) {
            let again = attaching
                .0
                .iter()
                .zip(attaching.1)
                .any(|(k, t)| *k == key && *t == token);
            if again {
                sessions.settled(&key, token, session);
                sessions.exit_ended(&key, token);
            } else {
                out.keys.push(key);
                out.tokens.push(token);
                out.untils.push(until);
            }
        }
        if !out.keys.is_empty() {
            tracing::debug!(
                session,
                leases = out.keys.len(),
                "a session renewal takes out leases no longer renewed here"
            );
        }
        out
    }

    /// The statement answered (`ok`: the leases are out, but for `missed`, positions
    /// from 1 of those it did not lock although they were attached on its snapshot)
    /// or failed (all are owed again).
    pub(super) fn answered(mut self, ok: bool, missed: HashSet<i64>) {
        self.answered = ok;
        self.missed = missed;
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        let untils = std::mem::take(&mut self.untils);
        let tokens = std::mem::take(&mut self.tokens);
        for (i, ((key, token), until)) in keys.into_iter().zip(tokens).zip(untils).enumerate() {
            let position = i64::try_from(i + 1).unwrap_or(i64::MAX);
            if !self.answered || self.missed.contains(&position) {
                self.sessions
                    .leave_later(key.clone(), token, self.session, until);
            }
            self.sessions.settled(&key, token, self.session);
            self.sessions.exit_ended(&key, token);
        }
    }
}
