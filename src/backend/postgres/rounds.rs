//! Group rounds: [`Backend::renew_many`](crate::backend::Backend::renew_many) for a
//! manager's leases of one TTL, in one statement per session when nothing changed.
//!
//! A round sends `session_round` (`sql.rs`): it renews the session by compare-and-set,
//! attaches the round's new leases, takes the session's revoked leases out of it and
//! answers them by key, and counts, on the statement's snapshot, the rows attached to
//! the session, leaving out those this backend may have put there without knowing it
//! (its attaches and exits not yet answered). No member is named: the server's work for
//! the members is one index scan, with no row locked or written. When the count equals
//! the members this backend knows in the session, each member of the round is renewed;
//! otherwise (or when this backend began an attach to the session while the statement
//! ran) the members go the per-lease way, through the batcher (`renewals.rs`), whose
//! statement asks for each one. So does everything when the session must be created
//! first, and so do the round's new leases when there are more than
//! [`renew_batch_size`](super::options::PostgresOptions::renew_batch_size) of them (they
//! go first, then the round).
//!
//! # Why an equal count proves every member is still attached
//! Let `K` be the members of session `S` this backend knows when the round starts, and
//! `X` the leases that may be in `S` without being members here: attaches sent and not
//! answered (registered by `Sessions::mode` before they are sent), attaches whose answer
//! was lost (`unsure`), releases and leaves of forgotten members not yet answered
//! (`Sessions::forget_exiting`) and leaves that failed (`leaving`).
//! `K` and `X` are read under one lock, with the attach epoch of `S`; a round where a
//! member is also in `X` (between an answer and its bookkeeping) trusts no count.
//!
//! Only this backend's statements put a row in `S` (an attach names `S`, and `S` is
//! this backend's), so on the statement's snapshot the rows attached to `S` are some of
//! `K`, some of `X`, and attaches that this backend began after the round started. The
//! last kind bumps the epoch before it is sent, so before it commits, so before our
//! snapshot and our answer: a round that sees the epoch unchanged when its answer comes
//! has none. Then the rows counted (attached to `S`, not in `X`) are a subset of `K`,
//! and a subset of `K` as large as `K` is `K`: every member is attached to `S` on the
//! snapshot, the same proof the per-lease statement reads row by row.
//!
//! Every way out of `S` changes the count of what is left, unless it comes after the
//! snapshot, where the per-lease statement would have read it the same way:
//! - release or leave from here: forgotten and in `X` until answered, so neither
//!   counted nor missed; from elsewhere (a release by token, an old version's renewal
//!   that gives the row a finite expiry, a row deleted or detached by hand): the row is
//!   no longer attached to `S`, the count falls short, and the members are asked one by
//!   one (the missing one is told Lost, or Revoked);
//! - revoke: the row stays in `S` but `detach` takes it out in this very statement, and
//!   every row revoked in `S` on the snapshot is answered (kind 6), whether this
//!   statement or another one of the session (which locked it first) took it out: it
//!   is Revoked, never Renewed (answering only what `detach` took out confirmed a member
//!   another statement had detached after our snapshot, counted all the same: the
//!   review's finding in `tests/pg_rounds_review.rs`); a revoke after the snapshot is
//!   read at the next round;
//! - a re-attach by another backend (`moved` of its session): out of `S`, as above;
//! - takeover: needs `S` expired, and `S` is never revived: the compare-and-set fails
//!   and every member is Lost (see `acquire` in `sql.rs` for the locks);
//! - an attach whose answer was lost: in `X` until the lease is renewed again or swept;
//! - a dropped round: the statement and its bookkeeping run in a task of their own, not
//!   in the caller's future, so an attach is always settled (or made unsure) and a
//!   member never stays in `X` for ever; every round's statement, as every per-lease
//!   renewal's, takes out members nobody renews and leaves that failed
//!   (`Sessions::outgoing`, `gone` in `sql.rs`). Those it takes out of the count's
//!   members `K` (stale members) were counted in `K` when the round started and are
//!   still attached on the snapshot; failed leaves were in `X`.
//!
//! READ COMMITTED gives the statement one snapshot for its reads; the compare-and-set
//! on the session row re-checks its newest version. A member that left `S` after the
//! snapshot is renewed in name only: its row no longer names `S`, so the session's
//! expiry no longer keeps it, and a holder that let go (or re-attached elsewhere) is
//! the only one told Renewed, exactly as with the per-lease statement.
//!
//! The proof needs the count to be of rows attached by this crate: a row put in `S` by
//! hand could hide one taken out by hand.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::pool::Db;
use super::renewals::{Outgoing, Renewals};
use super::sessions::{Mode, Sessions};
use super::values::{check_ttl, token_to_db, ttl_ms};
use crate::backend::RenewOutcome;
use crate::error::BackendError;
use crate::key::Key;

/// A lease's answer, or `None`: ask for it through the batcher.
pub(super) type Decided = Option<Result<RenewOutcome, BackendError>>;

/// What `session_round` answered.
struct Answer {
    renewed: bool,
    until: Option<SystemTime>,
    count: i64,
    moved: HashSet<i64>,
    refused: HashSet<i64>,
    detached: HashSet<(String, i64)>,
    /// Leases to take out that the statement may have missed (see `Outgoing`).
    missed: HashSet<i64>,
}

/// One round of `leases` (keys' string forms and tokens, all of TTL `ttl` ms) in
/// `session`: one answer per lease, in order. Run it in a task of its own (see the
/// module docs: its bookkeeping must not be dropped half way).
pub(super) async fn round(
    db: Arc<Db>,
    sessions: Arc<Sessions>,
    ttl: i64,
    session: i64,
    leases: Vec<(String, i64)>,
) -> Vec<Decided> {
    let start = sessions.round(&leases, session);
    let (mut keys, mut tokens, mut any) = (Vec::new(), Vec::new(), Vec::new());
    let mut place = Vec::with_capacity(leases.len());
    for ((key, token), mode) in leases.iter().zip(&start.modes) {
        place.push(match mode {
            Mode::Attach(a) => {
                keys.push(key.clone());
                tokens.push(*token);
                any.push(*a);
                i64::try_from(keys.len()).unwrap_or(i64::MAX)
            }
            _ => 0,
        });
    }
    let (ex_keys, ex_tokens): (Vec<String>, Vec<i64>) = start.exclude.into_iter().unzip();
    // What the same statement takes out of the session: taken after the round's start,
    // so that the members it counts (`start.members`) still include the stale ones it
    // takes out (on the statement's snapshot they are still attached), and failed
    // leaves are among the leases left out of the count (`exclude`).
    let out = Outgoing::take(&sessions, ttl, session, (&keys, &tokens));
    let (out_keys, out_tokens, out_untils) =
        (out.keys.clone(), out.tokens.clone(), out.untils.clone());
    tracing::trace!(leases = leases.len(), session, "a group round");
    db.renew_statements
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let answer = db
        .with_client("renew a session", |c, sql| {
            Box::pin(async move {
                let stmt = c.prepare_cached(&sql.session_round).await?;
                let rows = c
                    .query(
                        &stmt,
                        &[
                            &session,
                            &ttl,
                            &ex_keys,
                            &ex_tokens,
                            &keys,
                            &tokens,
                            &any,
                            &out_keys,
                            &out_tokens,
                            &out_untils,
                        ],
                    )
                    .await?;
                let mut a = Answer {
                    renewed: false,
                    until: None,
                    count: -1,
                    moved: HashSet::new(),
                    refused: HashSet::new(),
                    detached: HashSet::new(),
                    missed: HashSet::new(),
                };
                for row in &rows {
                    let kind: i32 = row.try_get(0)?;
                    let n: Option<i64> = row.try_get(1)?;
                    match kind {
                        0 => {
                            a.renewed = n.unwrap_or(0) > 0;
                            a.until = row.try_get(2)?;
                        }
                        5 => a.count = n.unwrap_or(-1),
                        3 => drop(a.moved.insert(n.unwrap_or(0))),
                        4 => drop(a.refused.insert(n.unwrap_or(0))),
                        7 => drop(a.missed.insert(n.unwrap_or(0))),
                        _ => drop(a.detached.insert((row.try_get(3)?, row.try_get(4)?))),
                    }
                }
                Ok(a)
            })
        })
        .await;
    let mut a = match answer {
        Ok(a) => a,
        Err(error) => {
            drop(out);
            tracing::debug!(%error, leases = leases.len(), "a group round failed");
            // Its attaches may have committed (see `Sessions::unsure`).
            return leases
                .iter()
                .zip(start.modes)
                .map(|((key, token), mode)| match mode {
                    Mode::Lost => {
                        sessions.forget(key, *token);
                        Some(Ok(RenewOutcome::Lost))
                    }
                    Mode::Attach(_) => {
                        sessions.unsure(key, *token, session);
                        sessions.settled(key, *token, session);
                        Some(Err(error.clone()))
                    }
                    Mode::Member => Some(Err(error.clone())),
                    Mode::Busy => Some(Err(super::renewals::busy())),
                })
                .collect();
        }
    };
    out.answered(true, std::mem::take(&mut a.missed));
    if !a.renewed {
        // The session expired (never revived): its members are lost; the new leases go
        // again through the batcher, which starts a new session.
        tracing::debug!(session, "a session expired before its group round");
        sessions.expired(ttl, session);
    }
    // Revoked rows taken out of the session that this round does not answer: forgotten,
    // so that their next renewal asks for them again (answered Revoked, as a refused
    // re-attach).
    if !a.detached.is_empty() {
        let asked: HashSet<(&str, i64)> = leases.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        for (key, token) in &a.detached {
            if !asked.contains(&(key.as_str(), *token)) {
                sessions.forget(key, *token);
            }
        }
    }
    let trusted = start.members == Some(a.count) && sessions.epoch(session) == start.epoch;
    if a.renewed && !trusted {
        tracing::debug!(
            session,
            counted = a.count,
            known = ?start.members,
            "a group round's count differs: its members are asked one by one"
        );
    }
    let mut decided = Vec::with_capacity(leases.len());
    for (((key, token), mode), p) in leases.iter().zip(start.modes).zip(place) {
        let outcome = match mode {
            Mode::Busy => {
                decided.push(Some(Err(super::renewals::busy())));
                continue;
            }
            Mode::Lost => Some(RenewOutcome::Lost),
            Mode::Attach(_) if !a.renewed => None,
            Mode::Attach(_) if a.moved.contains(&p) => Some(RenewOutcome::Renewed),
            Mode::Attach(_) if a.refused.contains(&p) => Some(RenewOutcome::Revoked),
            Mode::Attach(_) => Some(RenewOutcome::Lost),
            Mode::Member if !a.renewed => Some(RenewOutcome::Lost),
            Mode::Member
                if !a.detached.is_empty() && a.detached.contains(&(key.clone(), *token)) =>
            {
                Some(RenewOutcome::Revoked)
            }
            Mode::Member if trusted => Some(RenewOutcome::Renewed),
            Mode::Member => None,
        };
        let attach = matches!(mode, Mode::Attach(_));
        let outcome = match outcome {
            Some(RenewOutcome::Renewed) => {
                if sessions.attached(key, *token, session, a.until, mode) {
                    outcome
                } else {
                    // Let go of here while the statement ran (see `Sessions::attached`).
                    Some(RenewOutcome::Lost)
                }
            }
            Some(_) => {
                sessions.forget(key, *token);
                outcome
            }
            None => None,
        };
        if attach {
            sessions.settled(key, *token, session);
        }
        decided.push(outcome.map(Ok));
    }
    decided
}

/// [`Backend::renew_many`](crate::backend::Backend::renew_many) for the PostgreSQL
/// backend: the round's new leases first through the batcher when they are many, then
/// one round (see the module docs) in a task of its own, then through the batcher
/// whatever the round left (everything when there is no session yet: the batcher
/// creates it).
pub(super) async fn renew_many(
    db: &Arc<Db>,
    sessions: &Arc<Sessions>,
    renewals: &Renewals,
    leases: &[(Key, u64)],
    ttl: Duration,
) -> Vec<Result<RenewOutcome, BackendError>> {
    let mut answers: Vec<Option<Result<RenewOutcome, BackendError>>> = vec![None; leases.len()];
    let ms = ttl_ms(ttl);
    // Those the round can answer: by index, key text and token.
    let mut asked: Vec<(usize, String, i64)> = Vec::with_capacity(leases.len());
    let bad_ttl = check_ttl("renew", ttl).err();
    for (i, (key, token)) in leases.iter().enumerate() {
        if let Some(error) = &bad_ttl {
            answers[i] = Some(Err(error.clone()));
        } else if let Some(token) = token_to_db(*token) {
            asked.push((i, key.to_string(), token));
        } else {
            answers[i] = Some(Ok(RenewOutcome::Lost));
        }
    }
    // Without a session yet, the batcher creates it (the manager's first round).
    if let Some(session) = sessions.current(ms).filter(|_| !asked.is_empty()) {
        let pairs: Vec<(String, i64)> = asked.iter().map(|(_, k, t)| (k.clone(), *t)).collect();
        let members = sessions.are_members(&pairs, session);
        let new = members.iter().filter(|m| !**m).count();
        // Many new leases (the manager is filling up): they go first, through the
        // batcher, in statements of `renew_batch_size`; the round then has only
        // members.
        let first: Vec<usize> = if new > db.options.renew_batch_size {
            (0..asked.len()).filter(|j| !members[*j]).collect()
        } else {
            Vec::new()
        };
        let done = futures_util::future::join_all(first.iter().map(|j| {
            let (_, k, t) = &asked[*j];
            renewals.renew(k.clone(), *t, ttl, &db.options)
        }))
        .await;
        for (j, answer) in first.iter().zip(done) {
            answers[asked[*j].0] = Some(answer);
        }
        let rest: Vec<(usize, String, i64)> = asked
            .into_iter()
            .filter(|(i, ..)| answers[*i].is_none())
            .collect();
        let pairs: Vec<(String, i64)> = rest.iter().map(|(_, k, t)| (k.clone(), *t)).collect();
        // In a task of its own: dropped here, the round still records what it did.
        let task = tokio::spawn(round(db.clone(), sessions.clone(), ms, session, pairs));
        match task.await {
            Ok(decided) => {
                for ((i, ..), d) in rest.iter().zip(decided) {
                    answers[*i] = d;
                }
            }
            Err(error) => tracing::warn!(%error, "a group round's task failed"),
        }
        asked = rest;
    }
    // What the round left to the batcher (all of it, without a session).
    let todo: Vec<&(usize, String, i64)> = asked
        .iter()
        .filter(|(i, ..)| answers[*i].is_none())
        .collect();
    let done = futures_util::future::join_all(
        todo.iter()
            .map(|(_, k, t)| renewals.renew(k.clone(), *t, ttl, &db.options)),
    )
    .await;
    for ((i, ..), answer) in todo.into_iter().zip(done) {
        answers[*i] = Some(answer);
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Ok(RenewOutcome::Lost)))
        .collect()
}
