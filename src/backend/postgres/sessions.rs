//! Sessions: one row in `<table>_sessions` per (backend, TTL), renewed for all the
//! backend's leases of that TTL by one compare-and-set, so that holding a lease costs no
//! row update per renewal.
//!
//! A lease row names its session (`session`, with `expires_at = 'infinity'`: see
//! `sql.rs`); its expiry is its session's. A lease enters a session at its first
//! renewal through this backend (a new lease: only from detached, so a lease another
//! backend re-attached meanwhile stays there; a lease this backend does not know, that
//! is a re-attach, [`AcquireOptions::resume`](crate::AcquireOptions::resume): also moved
//! from another live session, by compare-and-set on `(key, token)`). It leaves its
//! session when it is released, revoked (at the session's next renewal), taken over
//! after its session expired, moved to another backend's session, or left
//! ([`Backend::leave`](crate::backend::Backend::leave), or its renewals stopped: see
//! [`Sessions::outgoing`]).
//!
//! What this backend remembers, per lease it renews: the session it put it in. A
//! renewal of a lease remembered in the current session asks whether it is still there
//! (a *member*); one remembered in a session that has since expired is lost at once.
//! Renewal statements of one session may run at once (they queue on the session row's
//! lock only for their last part); a new session is created by one of them at a time
//! ([`Sessions::lock`]), so that a TTL never has two current sessions.
//!
//! For group rounds (`rounds.rs`), which count a session's rows instead of naming its
//! members, it also remembers which leases may be in a session without being members
//! here (attaches and exits not yet answered: [`Sessions::settled`] ends each), and per
//! session an epoch bumped by every attach before it is sent ([`Sessions::round`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// What the backend knows of one lease it renews.
struct Member {
    key: String,
    token: i64,
    /// The session it was put in; `None` for a new lease not yet attached.
    session: Option<i64>,
    /// When its renewal was last asked for.
    asked: Instant,
    /// The session's expiry as of its last confirmed renewal (on the database's clock).
    confirmed: Option<SystemTime>,
}

/// How one lease is renewed in a session renewal statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Should be in the session: renewed with it.
    Member,
    /// To attach; `true`: also from another backend's live session (a re-attach).
    Attach(bool),
    /// Was in a session that has expired: lost, without asking.
    Lost,
    /// A statement of this backend that takes it out of its session (a leave, a
    /// release, a renewal carrying its owed leave) has not answered yet: renewing it
    /// now could be undone by that statement after the holder was answered (the
    /// adversarial review of owed leaves, `tests/pg_outgoing_review.rs`). The renewal
    /// fails (`Unavailable`) and its renewer tries again.
    Busy,
}

#[derive(Default)]
struct State {
    /// The current session for each TTL (in ms).
    current: HashMap<i64, i64>,
    /// Leases this backend renews, by `lease_id`.
    members: HashMap<u64, Member>,
    /// When each session's members were last looked at for stale ones.
    swept: HashMap<i64, Instant>,
    /// Leases sent to be attached to a session by a statement whose answer never came
    /// (it may have committed): they may be in that session, by `lease_id`. Cleared by
    /// the next answered renewal of the lease; left when the lease is forgotten, or
    /// swept after a TTL without renewals.
    unsure: HashMap<u64, Unsure>,
    /// Leases that must still leave their session (a leave statement that failed):
    /// key, token, session, expiry as of the last confirmed renewal. Taken out by the
    /// session's next renewal statement ([`Sessions::outgoing`]).
    leaving: Vec<(String, i64, i64, Option<SystemTime>)>,
    /// Leases that may be in a session without being its members here: an attach sent
    /// and not yet answered, or a release or leave of a member not yet known to have
    /// taken it out. By `(key, token)`: the sessions (one entry per such statement).
    /// What a group round's count must leave out (see `rounds.rs`).
    maybe: HashMap<(String, i64), Vec<i64>>,
    /// Per session: how many attaches to it were begun. A group round that saw it
    /// change while its statement ran trusts no count (see `rounds.rs`).
    epochs: HashMap<i64, u64>,
    /// Statements in flight that take `(key, token)` out of its session (leaves,
    /// releases, renewals carrying owed leaves), by `(key, token)`: how many. A lease
    /// with one is not renewed here until it answers ([`Mode::Busy`]).
    exits: HashMap<(String, i64), usize>,
}

impl State {
    fn mode(&mut self, key: &str, token: i64, session: i64) -> Mode {
        let id = super::renewals::lease_id(key, token);
        let state = self;
        if !state.exits.is_empty() && state.exits.contains_key(&(key.to_owned(), token)) {
            return Mode::Busy;
        }
        // Renewed here again (a re-attach after a failed release or leave): it must
        // not be taken out of its session by a leave still owed from before.
        if !state.leaving.is_empty() {
            state
                .leaving
                .retain(|(k, t, ..)| !(k == key && *t == token));
        }
        match state.members.get_mut(&id) {
            Some(m) if m.key == key && m.token == token => {
                m.asked = Instant::now();
                match m.session {
                    None => {
                        state.attaching(key, token, session);
                        Mode::Attach(false)
                    }
                    Some(s) if s == session => Mode::Member,
                    Some(_) => Mode::Lost,
                }
            }
            _ => {
                state.attaching(key, token, session);
                Mode::Attach(true)
            }
        }
    }

    /// See [`Sessions::forget`].
    fn forget(&mut self, key: &str, token: i64) -> Option<(i64, Option<SystemTime>)> {
        let id = super::renewals::lease_id(key, token);
        let state = self;
        let unsure = match state.unsure.remove(&id) {
            Some(u) if u.key == key && u.token == token => Some((u.session, None)),
            Some(u) => {
                state.unsure.insert(id, u);
                None
            }
            None => None,
        };
        let known = match state.members.get(&id) {
            Some(m) if m.key == key && m.token == token => state
                .members
                .remove(&id)
                .and_then(|m| m.session.map(|s| (s, m.confirmed))),
            _ => None,
        };
        // A lease whose attach may have taken effect leaves that session too (with no
        // confirmed expiry: at most the session's own).
        known.or(unsure)
    }

    /// An attach of `(key, token)` to `session` is about to be sent.
    fn attaching(&mut self, key: &str, token: i64, session: i64) {
        *self.epochs.entry(session).or_default() += 1;
        self.maybe
            .entry((key.to_owned(), token))
            .or_default()
            .push(session);
    }

    fn exit_begins(&mut self, key: &str, token: i64) {
        *self.exits.entry((key.to_owned(), token)).or_default() += 1;
    }

    fn settled(&mut self, key: &str, token: i64, session: i64) {
        let k = (key.to_owned(), token);
        if let Some(sessions) = self.maybe.get_mut(&k) {
            if let Some(i) = sessions.iter().position(|s| *s == session) {
                sessions.swap_remove(i);
            }
            if sessions.is_empty() {
                self.maybe.remove(&k);
            }
        }
    }
}

/// What a group round starts from: see [`Sessions::round`].
pub(super) struct RoundStart {
    /// Each lease's mode, in order.
    pub(super) modes: Vec<Mode>,
    /// The members of the session known here; `None`: no count can be trusted.
    pub(super) members: Option<i64>,
    /// Leases that may be in the session but are not members here.
    pub(super) exclude: Vec<(String, i64)>,
    /// The session's attach epoch when the round started.
    pub(super) epoch: u64,
}

/// A lease whose attach to `session` may have taken effect.
struct Unsure {
    key: String,
    token: i64,
    session: i64,
    /// When the attach was sent.
    since: Instant,
}

/// This backend's sessions and the leases in them.
#[derive(Default)]
pub(super) struct Sessions {
    state: Mutex<State>,
    locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Woken whenever an exit ends ([`Sessions::exit_ended`]).
    exits_changed: tokio::sync::Notify,
}

impl Sessions {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock under which the session of one TTL is created.
    pub(super) fn lock(&self, ttl_ms: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(ttl_ms).or_default().clone()
    }

    /// The current session of `ttl_ms`, if there is one.
    pub(super) fn current(&self, ttl_ms: i64) -> Option<i64> {
        self.state().current.get(&ttl_ms).copied()
    }

    /// `session` is now the current session of `ttl_ms`.
    pub(super) fn set_current(&self, ttl_ms: i64, session: i64) {
        self.state().current.insert(ttl_ms, session);
    }

    /// `session` expired: it is no longer the current session of `ttl_ms` (unless
    /// another one already replaced it).
    pub(super) fn expired(&self, ttl_ms: i64, session: i64) {
        let mut state = self.state();
        if state.current.get(&ttl_ms) == Some(&session) {
            state.current.remove(&ttl_ms);
        }
        state.swept.remove(&session);
    }

    /// A lease granted here: its first renewal attaches it, from detached only.
    pub(super) fn granted(&self, key: String, token: i64) {
        let id = super::renewals::lease_id(&key, token);
        self.state().members.insert(
            id,
            Member {
                key,
                token,
                session: None,
                asked: Instant::now(),
                confirmed: None,
            },
        );
    }

    /// How to renew `(key, token)` in `session` (an attach is registered as such until
    /// [`Sessions::settled`]).
    pub(super) fn mode(&self, key: &str, token: i64, session: i64) -> Mode {
        self.state().mode(key, token, session)
    }

    /// The statement that was to attach `(key, token)` to `session` (registered by
    /// [`Sessions::mode`]) or to take it out (registered by [`Sessions::exiting`]) has
    /// been answered and its outcome recorded (or it failed, and [`Sessions::unsure`]
    /// or [`Sessions::leave_later`] remembers it).
    pub(super) fn settled(&self, key: &str, token: i64, session: i64) {
        self.state().settled(key, token, session);
    }

    /// A statement that takes `(key, token)` out of its session, begun by
    /// [`Sessions::forget_exiting`] or [`Sessions::outgoing`], has answered or failed
    /// (after [`Sessions::settled`] or [`Sessions::leave_later`]): the lease may be
    /// renewed here again.
    pub(super) fn exit_ended(&self, key: &str, token: i64) {
        let mut state = self.state();
        let k = (key.to_owned(), token);
        if let Some(n) = state.exits.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                state.exits.remove(&k);
            }
        }
        drop(state);
        self.exits_changed.notify_waiters();
    }

    /// Waits, at most `bound`, until no statement of this backend is taking `(key,
    /// token)` out of its session (a re-attach right after a leave here: the leave
    /// answers first, and the re-attach then finds what it left).
    pub(super) async fn exits_ended(&self, key: &str, token: i64, bound: Duration) {
        let k = (key.to_owned(), token);
        let _ = tokio::time::timeout(bound, async {
            loop {
                let ended = self.exits_changed.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if !self.state().exits.contains_key(&k) {
                    return;
                }
                ended.await;
            }
        })
        .await;
    }

    /// [`Sessions::forget`] for a release or leave about to take `(key, token)` out of
    /// its session: under the same lock, until [`Sessions::settled`], it is registered
    /// as maybe still there, and as exiting until [`Sessions::exit_ended`] whether or
    /// not it was remembered here (a release of a lease renewed elsewhere is one too).
    pub(super) fn forget_exiting(
        &self,
        key: &str,
        token: i64,
    ) -> Option<(i64, Option<SystemTime>)> {
        let mut state = self.state();
        state.exit_begins(key, token);
        let left = state.forget(key, token);
        if let Some((session, _)) = left {
            state
                .maybe
                .entry((key.to_owned(), token))
                .or_default()
                .push(session);
        }
        left
    }

    /// For a group round in `session` (see `rounds.rs`), under one lock: each lease's
    /// mode (attaches registered as by [`Sessions::mode`]), then what the round's count
    /// is compared with: the members of `session` known here, the leases that may be in
    /// it besides them (left out of the count), and the session's attach epoch. `None`
    /// in place of the count when a member is also among those (briefly, while an
    /// answer is recorded): the count would prove nothing.
    pub(super) fn round(&self, leases: &[(String, i64)], session: i64) -> RoundStart {
        let mut state = self.state();
        let modes = leases
            .iter()
            .map(|(k, t)| state.mode(k, *t, session))
            .collect();
        let mut exclude: Vec<(String, i64)> = Vec::new();
        for ((k, t), sessions) in &state.maybe {
            if sessions.contains(&session) {
                exclude.push((k.clone(), *t));
            }
        }
        for u in state.unsure.values() {
            if u.session == session {
                exclude.push((u.key.clone(), u.token));
            }
        }
        for (k, t, s, _) in &state.leaving {
            if *s == session {
                exclude.push((k.clone(), *t));
            }
        }
        exclude.sort();
        exclude.dedup();
        let members = state
            .members
            .values()
            .filter(|m| m.session == Some(session))
            .count();
        let overlap = exclude.iter().any(|(k, t)| {
            state
                .members
                .get(&super::renewals::lease_id(k, *t))
                .is_some_and(|m| m.key == *k && m.token == *t && m.session == Some(session))
        });
        RoundStart {
            modes,
            members: (!overlap).then(|| i64::try_from(members).unwrap_or(i64::MAX)),
            exclude,
            epoch: state.epochs.get(&session).copied().unwrap_or(0),
        }
    }

    /// Which of `leases` are members of `session` here (a look only: nothing is
    /// registered).
    pub(super) fn are_members(&self, leases: &[(String, i64)], session: i64) -> Vec<bool> {
        let state = self.state();
        leases
            .iter()
            .map(|(k, t)| {
                state
                    .members
                    .get(&super::renewals::lease_id(k, *t))
                    .is_some_and(|m| m.key == *k && m.token == *t && m.session == Some(session))
            })
            .collect()
    }

    /// The attach epoch of `session` (see [`Sessions::round`]).
    pub(super) fn epoch(&self, session: i64) -> u64 {
        self.state().epochs.get(&session).copied().unwrap_or(0)
    }

    /// `(key, token)` is in `session` now, renewed until `until`, by a statement that
    /// renewed it as `mode` (a member, or an attach); returns whether it may be answered
    /// Renewed. Not when a statement taking it out of the session (a leave, a release)
    /// began while this one ran: that statement may undo the renewal (a leave writes
    /// the expiry promised before it), so the renewal is answered Lost (the adversarial
    /// review of `Busy`, `tests/pg_busy_review.rs`). A member forgotten meanwhile stays
    /// forgotten (its exit takes it out, or is owed). An attach whose lease was
    /// forgotten meanwhile (or is being let go) put it in the session where nobody
    /// will renew it: it is owed a leave ([`Sessions::leave_later`]).
    pub(super) fn attached(
        &self,
        key: &str,
        token: i64,
        session: i64,
        until: Option<SystemTime>,
        mode: Mode,
    ) -> bool {
        let id = super::renewals::lease_id(key, token);
        let mut state = self.state();
        state.unsure.remove(&id);
        let exiting = state.exits.contains_key(&(key.to_owned(), token));
        match state.members.get_mut(&id) {
            // The usual case: renewed again in the same session.
            Some(m) if m.key == key && m.token == token && !exiting => {
                m.session = Some(session);
                m.confirmed = until;
                true
            }
            // A re-attach of a lease this backend did not know, nobody letting go of it.
            None if mode == Mode::Attach(true) && !exiting => {
                state.members.insert(
                    id,
                    Member {
                        key: key.to_owned(),
                        token,
                        session: Some(session),
                        asked: Instant::now(),
                        confirmed: until,
                    },
                );
                true
            }
            _ => {
                if matches!(mode, Mode::Attach(_)) {
                    state.leaving.push((key.to_owned(), token, session, None));
                }
                false
            }
        }
    }

    /// Forgets `(key, token)` (lost, revoked, released), returning its session and the
    /// session's expiry as of its last confirmed renewal.
    pub(super) fn forget(&self, key: &str, token: i64) -> Option<(i64, Option<SystemTime>)> {
        self.state().forget(key, token)
    }

    /// The statement that would have attached `(key, token)` to `session` got no
    /// answer: it may be in the session now, and must leave it if nobody renews it.
    pub(super) fn unsure(&self, key: &str, token: i64, session: i64) {
        let id = super::renewals::lease_id(key, token);
        self.state().unsure.insert(
            id,
            Unsure {
                key: key.to_owned(),
                token,
                session,
                since: Instant::now(),
            },
        );
    }

    /// A leave of `(key, token)` from `session` failed: the session's next renewal
    /// statement takes it out ([`Sessions::outgoing`]), or the session would keep it
    /// alive while nobody here remembers it.
    pub(super) fn leave_later(
        &self,
        key: String,
        token: i64,
        session: i64,
        until: Option<SystemTime>,
    ) {
        self.state().leaving.push((key, token, session, until));
    }

    /// What the next renewal statement of `session` takes out of it (`gone` in
    /// `sql.rs`), as `(key, token, promised expiry)`: every leave owed to it
    /// ([`Sessions::leave_later`]), and, looked for at most once per third of the TTL,
    /// the members whose renewal nobody asked for in a whole TTL (their holders'
    /// deadlines have passed: the manager stopped renewing them without a release, a
    /// lost lease being left to expire) and the attaches with no answer that nobody
    /// renewed since. They are forgotten here and registered as maybe still in the
    /// session until [`Sessions::settled`]; a statement that fails owes them again
    /// (`renewals::Outgoing`).
    pub(super) fn outgoing(
        &self,
        ttl_ms: i64,
        session: i64,
    ) -> Vec<(String, i64, Option<SystemTime>)> {
        let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
        let now = Instant::now();
        let mut state = self.state();
        let mut stale = Vec::new();
        let scan = state
            .swept
            .get(&session)
            .is_none_or(|at| now.duration_since(*at) >= ttl / 3);
        let current: Vec<i64> = state.current.values().copied().collect();
        if scan {
            state.swept.insert(session, now);
            state.members.retain(|_, m| {
                let old = now.duration_since(m.asked) > ttl;
                if old && m.session == Some(session) {
                    stale.push((std::mem::take(&mut m.key), m.token, m.confirmed));
                    return false;
                }
                // A new lease never renewed here (its grant never reached a holder) is
                // only forgotten: it is not in any session.
                !(old && m.session.is_none())
            });
            // Attaches with no answer that nobody renewed since, for a TTL. Those of a
            // session no longer current anywhere are dropped: that session has
            // expired, and its leases with it.
            state.unsure.retain(|_, u| {
                if u.session == session && now.duration_since(u.since) > ttl {
                    stale.push((std::mem::take(&mut u.key), u.token, None));
                    return false;
                }
                u.session == session || current.contains(&u.session)
            });
        }
        // Leaves that failed, with every statement (dropped alike once their session
        // is not current).
        if !state.leaving.is_empty() {
            state.leaving.retain_mut(|(key, token, s, until)| {
                if *s == session {
                    stale.push((std::mem::take(key), *token, *until));
                    return false;
                }
                current.contains(s)
            });
        }
        if stale.is_empty() {
            return stale;
        }
        stale.sort();
        stale.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        // Until the statement that takes them out is answered they may still be in
        // the session, and they are exiting it.
        for (key, token, _) in &stale {
            state
                .maybe
                .entry((key.clone(), *token))
                .or_default()
                .push(session);
            state.exit_begins(key, *token);
        }
        stale
    }
}
