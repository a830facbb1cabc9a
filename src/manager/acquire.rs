//! The supervisor's handlers that hand out leases: an acquire (answered at once, queued
//! behind a claimed key, asked inline, or started as an attempt in a task), an
//! attempt's outcome, a grant made into a holder with its renewal actor, the next
//! waiter served, and a wait that ran out.
//!
//! Its log events keep the target `leases::manager::supervisor` they had before the manager was split
//! into files, so that users' log filters still match them.

use std::time::Duration;

use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::attempt;
use super::grant::Grant;
use super::messages::{AcquireReply, Attempt, ManagerMessage, Msg, Waiter};
use super::renewer::{Renewer, RenewerArgs};
use super::state::{stopped_reply, SupervisorState};
use super::table::LocalHolder;
use crate::context::LeaseContext;
use crate::error::{BackendError, BackendErrorKind, LeaseError};
use crate::key::Key;
use crate::lease::Lease;
use crate::leaser::AcquireOptions;
use crate::reason::{CancelReason, LossCause};

impl SupervisorState {
    pub(super) fn on_acquire(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        options: AcquireOptions,
        reply: RpcReplyPort<AcquireReply>,
    ) {
        if self.stopping {
            return stopped_reply(reply);
        }
        // Every way in (the handle, the trait, a raw `ManagerMessage`) comes through
        // here; the handle has also checked already, to answer bad input at once.
        if let Err(e) = options.validate(&key, self.config.min_ttl) {
            let _ = reply.send(Err(e));
            return;
        }
        let now = Instant::now();
        // A wait too long for the clock is a wait without end, in practice.
        // A resume never waits: the lease it continues is live or it is not.
        let wait = options.wait.filter(|_| options.resume.is_none());
        let until = wait.map(|w| {
            now.checked_add(w)
                .unwrap_or(now + Duration::from_secs(1 << 32))
        });
        let waiter = Waiter {
            id: self.table.next_waiter_id(),
            options,
            reply,
            until,
        };
        if let Some(token) = waiter.options.resume {
            // A resume of a lease another holder here has replaced: that lease is gone.
            // On a store that is not shared (memory), a lease can only be resumed while
            // this manager holds it: the store's leases die with their process, and a
            // lease some other manager of it resumed could be released under its new
            // holder by the old one, which cannot tell.
            let here = self.table.holder(&key).map(|h| h.token);
            if here.is_some_and(|t| t != token) || (here.is_none() && !self.backend.shared()) {
                crate::metrics::acquire_failed(&LeaseError::NotHeld);
                let _ = waiter.reply.send(Err(LeaseError::NotHeld));
                return;
            }
        }
        if waiter.options.resume.is_some() && self.table.holder(&key).is_none() {
            // A resume renews a live lease by its token: it neither queues behind the
            // waiters of the key (none of them can have it while that lease lives) nor
            // waits for an attempt in flight, and it leaves their slot's `busy` alone.
            return attempt::start_attempt(
                myself,
                self.backend.clone(),
                &self.config.inflight,
                key,
                waiter,
            );
        }
        if self.table.slot(&key).is_claimed() {
            // Taken (by us, or being taken, or promised to earlier waiters).
            match until {
                Some(until) => {
                    let id = waiter.id;
                    self.table.push_waiter(&key, waiter);
                    watch_wait(myself, key, id, until);
                }
                None => {
                    crate::metrics::acquire_failed(&LeaseError::Conflict);
                    let _ = waiter.reply.send(Err(LeaseError::Conflict));
                    self.table.tidy(&key);
                }
            }
            return;
        }
        // A backend that can answer without I/O is asked inline (never for waiters,
        // whose attempts may wait).
        if waiter.until.is_none() && waiter.options.resume.is_none() {
            if let Some(outcome) =
                attempt::acquire_inline(&self.backend, &self.config.inflight, &key, &waiter.options)
            {
                self.table.slot(&key).busy = true;
                return self.on_attempted(myself, key, waiter, outcome);
            }
        }
        self.start_attempt(myself, key, waiter);
    }

    fn start_attempt(&mut self, myself: &ActorRef<ManagerMessage>, key: Key, waiter: Waiter) {
        self.table.slot(&key).busy = true;
        attempt::start_attempt(
            myself,
            self.backend.clone(),
            &self.config.inflight,
            key,
            waiter,
        );
    }

    /// Starts the next waiter's attempt if the key is free of local claims.
    pub(super) fn serve_next(&mut self, myself: &ActorRef<ManagerMessage>, key: &Key) {
        if !self.stopping {
            if let Some(w) = self.table.next_waiter(key) {
                return self.start_attempt(myself, key.clone(), w);
            }
        }
        self.table.tidy(key);
    }

    pub(super) fn on_attempted(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        waiter: Waiter,
        outcome: Attempt,
    ) {
        // A resume ran beside the key's own attempts (see `on_acquire`).
        if waiter.options.resume.is_none() {
            self.table.slot(&key).busy = false;
        }
        match outcome {
            Attempt::Granted {
                grant,
                started,
                since,
            } => self.on_granted(myself, &key, waiter, grant, started, since),
            Attempt::Conflict => {
                crate::metrics::acquire_failed(&LeaseError::Conflict);
                let _ = waiter.reply.send(Err(LeaseError::Conflict));
            }
            Attempt::Refused(error) => {
                crate::metrics::acquire_failed(&error);
                let _ = waiter.reply.send(Err(error));
            }
            Attempt::TimedOut => {
                let waited = waiter.options.wait.unwrap_or_default();
                let error = LeaseError::WaitTimedOut { waited };
                crate::metrics::acquire_failed(&error);
                let _ = waiter.reply.send(Err(error));
            }
            Attempt::Failed(e) => {
                tracing::warn!(target: "leases::manager::supervisor", %key, error = %e, "lease acquire failed");
                crate::metrics::backend_error(crate::metrics::Op::Acquire);
                let error = LeaseError::Backend(e);
                crate::metrics::acquire_failed(&error);
                let _ = waiter.reply.send(Err(error));
            }
        }
        self.serve_next(myself, &key);
    }

    fn on_granted(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: &Key,
        waiter: Waiter,
        grant: Grant,
        started: Instant,
        since: Duration,
    ) {
        let ttl = waiter.options.ttl;
        let keep = waiter.options.keep;
        let margin = self.config.margin(ttl);
        let deadline = started + ttl - margin;
        // Time the machine spent suspended since the acquire started counts too: the
        // backend's clock ran on meanwhile.
        let slept = crate::clock::suspended().saturating_sub(since);
        let refuse = if self.stopping {
            Some(LeaseError::ManagerStopped)
        } else if Instant::now() + slept >= deadline {
            Some(LeaseError::Backend(BackendError::new(
                BackendErrorKind::Timeout,
                "the acquire was confirmed too late to hold the lease safely",
            )))
        } else if waiter.reply.is_closed() {
            Some(LeaseError::Conflict)
        } else if waiter.options.resume.is_some() && self.table.holder(key).is_some() {
            // Another resume of the lease here got there first.
            Some(LeaseError::Conflict)
        } else {
            None
        };
        if let Some(error) = refuse {
            let token = grant.token();
            // Dropping the grant gives the key back.
            drop(grant);
            tracing::debug!(target: "leases::manager::supervisor", %key, token, %error, "grant refused");
            crate::metrics::acquire_failed(&error);
            let _ = waiter.reply.send(Err(error));
            return;
        }
        let token = grant.hold();
        let (ctx_tx, ctx) = LeaseContext::new_since(token, Some(deadline), since);
        // The key is ours from here on; the renewal actor attaches when it has started.
        self.table.hold(
            key,
            LocalHolder {
                token,
                ctx: ctx_tx.clone(),
                renewer: None,
                _held: crate::metrics::HeldGauge::new(),
                keep,
            },
        );
        tracing::info!(target: "leases::manager::supervisor", %key, token, ?ttl, "lease acquired");
        let args = RenewerArgs {
            key: key.clone(),
            token,
            ctx: ctx_tx.clone(),
            deadline,
            group: self.groups.get(&self.backend, ttl, margin),
        };
        // A re-attached lease that never reaches its caller is left, not released.
        let owner = match waiter.options.resume {
            Some(_) => super::grant::Resumed::owning(self.owner.clone()),
            None => self.owner.clone(),
        };
        let lease = Lease::new(key.clone(), token, owner);
        // Starting an actor is the costliest step of an acquire, so it runs in a task of
        // its own rather than on this mailbox: the supervisor is not the bound on how
        // fast leases can be handed out. The renewer is still this actor's linked child.
        let supervisor = myself.clone();
        let key = key.clone();
        tokio::spawn(async move {
            match Actor::spawn_linked(None, Renewer, args, supervisor.get_cell()).await {
                Ok((renewer, _join)) => {
                    // Sent before the reply, so it is handled before any release the
                    // caller may send once it has the lease.
                    let attach = Msg::Attach {
                        key,
                        token,
                        renewer: renewer.clone(),
                    };
                    if supervisor.send_message(ManagerMessage(attach)).is_err() {
                        // The supervisor stopped meanwhile (and ended the holder): a
                        // renewer nobody will stop must not renew a lease nobody holds.
                        renewer.kill();
                    }
                    // If the caller went away, the lease comes back here and its drop
                    // releases it through the supervisor's mailbox.
                    crate::metrics::acquire_granted();
                    let _ = waiter.reply.send(Ok((lease, ctx)));
                }
                Err(e) => {
                    // The supervisor is shutting down (or the runtime is): give up the
                    // lease; dropping it sends the release.
                    ctx_tx.cancel(CancelReason::Lost(LossCause::RenewerFailed(e.to_string())));
                    drop(lease);
                    let _ = waiter.reply.send(Err(LeaseError::ManagerStopped));
                }
            }
        });
    }

    /// A queued waiter's check (see [`watch_wait`]): a waiter whose caller went away is
    /// forgotten, one whose wait ran out is answered so, and any other is checked again
    /// later.
    pub(super) fn on_wait_expired(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        waiter: u64,
    ) {
        let now = Instant::now();
        let Some((gone, until)) = self
            .table
            .waiter(&key, waiter)
            .map(|w| (w.reply.is_closed(), w.until))
        else {
            return self.table.tidy(&key);
        };
        if !gone {
            if let Some(until) = until.filter(|u| now < *u) {
                return watch_wait(myself, key, waiter, until);
            }
        }
        if let Some(w) = self.table.remove_waiter(&key, waiter) {
            if !gone {
                let waited = w.options.wait.unwrap_or_default();
                let error = LeaseError::WaitTimedOut { waited };
                crate::metrics::acquire_failed(&error);
                let _ = w.reply.send(Err(error));
            }
        }
        self.table.tidy(&key);
    }
}

/// How often a queued waiter's caller is looked at: one that went away (a client that
/// hung up during its `wait`) is forgotten within this, rather than kept, with a task
/// asleep for it, until its wait would have run out (which may be never).
const WAITER_CHECK: Duration = Duration::from_secs(5);

/// Has the supervisor check the queued waiter `id` of `key` at `until` (its wait runs
/// out), or sooner, every [`WAITER_CHECK`], to see whether its caller went away.
fn watch_wait(myself: &ActorRef<ManagerMessage>, key: Key, id: u64, until: Instant) {
    let me = myself.clone();
    let at = until.min(Instant::now() + WAITER_CHECK);
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        let _ = me.send_message(ManagerMessage(Msg::WaitExpired { key, waiter: id }));
    });
}
