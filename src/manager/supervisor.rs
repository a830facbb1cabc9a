//! The supervisor actor: the single owner of the lease table.
//!
//! Every request that changes who holds what goes through its mailbox, so its state
//! needs no locks. Its handlers never await anything but shutdown: backend I/O
//! (acquire attempts, releases, revocations) runs in tasks of their own (see `io.rs`)
//! and reports back by message, so a slow database cannot delay another key's acquire
//! or release; a backend that needs no I/O (the memory backend) answers inline through
//! its [`InlineBackend`](crate::backend::InlineBackend) capability; and each lease's
//! renewal actor is started in a task and attaches by message, so starting actors does
//! not bound the mailbox either.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent,
};
use tokio::time::Instant;
use tracing::Instrument;

use super::alarms::Alarms;
use super::io::{self, Grant};
use super::messages::{call, AcquireReply, Attempt, ManagerMessage, Msg, Waiter};
use super::renewer::{Renewer, RenewerArgs, Tick};
use super::table::{LeaseTable, LocalHolder};
use super::Config;
use crate::backend::Backend;
use crate::context::{CancelReason, LeaseContext, LossCause};
use crate::error::{BackendError, BackendErrorKind, LeaseError};
use crate::key::Key;
use crate::lease::{Lease, LeaseOwner};
use crate::leaser::AcquireOptions;

/// The supervisor actor.
pub(crate) struct Supervisor;

pub(crate) struct SupervisorArgs {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Config,
}

pub(crate) struct SupervisorState {
    backend: Arc<dyn Backend>,
    config: Config,
    owner: Arc<dyn LeaseOwner>,
    /// This actor, the renewers' supervisor.
    cell: ractor::ActorCell,
    table: LeaseTable,
    stopping: bool,
    /// The alarm clock every renewer of this manager ticks by.
    alarms: Alarms,
}

/// How a [`Lease`] handle reaches the supervisor that granted it.
struct ManagerOwner {
    actor: ActorRef<ManagerMessage>,
}

#[async_trait]
impl LeaseOwner for ManagerOwner {
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError> {
        let span = tracing::info_span!("lease.release", %key, token);
        let key = key.clone();
        let released = call(&self.actor, |reply| Msg::Release {
            key,
            token,
            reply: Some(reply),
        })
        .instrument(span)
        .await;
        match released {
            // The manager is gone, and every lease it held ended with it (released at
            // shutdown, or lost with the manager): this one is not held any more.
            Err(LeaseError::ManagerStopped) => Err(LeaseError::NotHeld),
            other => other,
        }
    }

    fn release_on_drop(&self, key: Key, token: u64) {
        // After shutdown every lease was already released; nothing is left to do.
        let _ = self.actor.send_message(ManagerMessage(Msg::Release {
            key,
            token,
            reply: None,
        }));
    }
}

/// Whether a lease whose context reads `reason` is given back when a revoke or a
/// shutdown ends it: a live one and a revoked one are; one lost by the holder is left to
/// expire (so the holder keeps its safety margin).
fn gives_back(reason: Option<CancelReason>) -> bool {
    matches!(reason, None | Some(CancelReason::Revoked))
}

/// What [`SupervisorState::end_holder`] did.
struct Ended {
    /// The ended holder's token.
    token: u64,
    /// The holder was taken out of the table and its lease should be given back.
    give_back: bool,
    /// The holder keeps its key: it stays in the table and nothing is given back.
    kept: bool,
}

fn stopped_reply<T>(reply: RpcReplyPort<Result<T, LeaseError>>) {
    let _ = reply.send(Err(LeaseError::ManagerStopped));
}

impl SupervisorState {
    fn on_acquire(
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
        let until = options.wait.map(|w| {
            now.checked_add(w)
                .unwrap_or(now + Duration::from_secs(1 << 32))
        });
        let waiter = Waiter {
            id: self.table.next_waiter_id(),
            options,
            reply,
            until,
        };
        if self.table.slot(&key).is_claimed() {
            // Taken (by us, or being taken, or promised to earlier waiters).
            match until {
                Some(until) => {
                    let id = waiter.id;
                    self.table.push_waiter(&key, waiter);
                    let me = myself.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(until).await;
                        let _ =
                            me.send_message(ManagerMessage(Msg::WaitExpired { key, waiter: id }));
                    });
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
        if waiter.until.is_none() {
            if let Some(outcome) =
                io::acquire_inline(&self.backend, &self.config.inflight, &key, &waiter.options)
            {
                self.table.slot(&key).busy = true;
                return self.on_attempted(myself, key, waiter, outcome);
            }
        }
        self.start_attempt(myself, key, waiter);
    }

    fn start_attempt(&mut self, myself: &ActorRef<ManagerMessage>, key: Key, waiter: Waiter) {
        self.table.slot(&key).busy = true;
        io::start_attempt(
            myself,
            self.backend.clone(),
            &self.config.inflight,
            key,
            waiter,
        );
    }

    /// Starts the next waiter's attempt if the key is free of local claims.
    fn serve_next(&mut self, myself: &ActorRef<ManagerMessage>, key: &Key) {
        if !self.stopping {
            if let Some(w) = self.table.next_waiter(key) {
                return self.start_attempt(myself, key.clone(), w);
            }
        }
        self.table.tidy(key);
    }

    fn on_attempted(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        waiter: Waiter,
        outcome: Attempt,
    ) {
        self.table.slot(&key).busy = false;
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
            Attempt::TimedOut => {
                let waited = waiter.options.wait.unwrap_or_default();
                let error = LeaseError::WaitTimedOut { waited };
                crate::metrics::acquire_failed(&error);
                let _ = waiter.reply.send(Err(error));
            }
            Attempt::Failed(e) => {
                tracing::warn!(%key, error = %e, "lease acquire failed");
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
        } else {
            None
        };
        if let Some(error) = refuse {
            let token = grant.token();
            // Dropping the grant gives the key back.
            drop(grant);
            tracing::debug!(%key, token, %error, "grant refused");
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
        tracing::info!(%key, token, ?ttl, "lease acquired");
        let args = RenewerArgs {
            backend: self.backend.clone(),
            key: key.clone(),
            token,
            ttl,
            margin,
            ctx: ctx_tx.clone(),
            deadline,
            alarms: self.alarms.clone(),
        };
        let lease = Lease::new(key.clone(), token, self.owner.clone());
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

    fn on_attach(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        token: u64,
        renewer: ActorRef<Tick>,
    ) {
        let id = renewer.get_id();
        let running = matches!(
            renewer.get_status(),
            ActorStatus::Running | ActorStatus::Starting
        );
        if !self.table.attach(&key, token, renewer.clone()) {
            // The lease ended before its renewer started.
            renewer.kill();
            return;
        }
        if !running {
            // It failed before we knew it: its exit event found nobody to tell.
            self.on_renewer_exit(myself, id, "exited before it was attached".into());
        }
    }

    /// Ends the local holder of `key` (if its token matches, or any holder when `token`
    /// is `None`) with `reason`, and stops its renewer.
    ///
    /// The one place that decides who gives a key back after its holder's context
    /// ended: a holder that keeps its key (`keep_until_released`, as the lease service
    /// and `leases run` ask for) stays in the table, claimed, and nothing is given back
    /// here, however its lease ended, unless `by_holder` (its own `Lease` is being
    /// released). Any other holder is taken out of the table; `give_back` then says
    /// whether its lease should be given back (see [`gives_back`]).
    fn end_holder(
        &mut self,
        key: &Key,
        token: Option<u64>,
        reason: CancelReason,
        by_holder: bool,
    ) -> Option<Ended> {
        let cell = self.cell.clone();
        let stop = |renewer: &ActorRef<Tick>| {
            // Unlink first: we know why it ends, so its exit event would be one more
            // message on this mailbox for nothing. Kill rather than stop: a renewer
            // blocked on a slow backend must not keep renewing a lease its holder has
            // given up.
            renewer.get_cell().unlink(cell.clone());
            renewer.kill();
        };
        let keeps = self
            .table
            .holder(key)
            .is_some_and(|h| h.keep && token.is_none_or(|t| t == h.token));
        if keeps && !by_holder {
            let (holder, renewer) = self.table.stop_renewal(key, token)?;
            if holder.ctx.cancel(reason.clone()) {
                tracing::debug!(%key, token = holder.token, %reason, "lease ended; its holder keeps the key");
            }
            let token = holder.token;
            if let Some(renewer) = &renewer {
                stop(renewer);
            }
            return Some(Ended {
                token,
                give_back: false,
                kept: true,
            });
        }
        let holder = self.table.take_holder(key, token)?;
        let give_back = gives_back(holder.ctx.reason());
        if holder.ctx.cancel(reason.clone()) {
            tracing::debug!(%key, token = holder.token, %reason, "lease ended");
        }
        if let Some(renewer) = &holder.renewer {
            stop(renewer);
        }
        Some(Ended {
            token: holder.token,
            give_back,
            kept: false,
        })
    }

    fn on_release(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        token: u64,
        reply: Option<RpcReplyPort<Result<(), LeaseError>>>,
    ) {
        let not_held = |reply: Option<RpcReplyPort<Result<(), LeaseError>>>| {
            if let Some(reply) = reply {
                let _ = reply.send(Err(LeaseError::NotHeld));
            }
        };
        // Has the lease already ended (its renewer may have told the holder before the
        // supervisor heard of it)? Then the release is `NotHeld`, as promised.
        let ended = match self.table.holder_of(&key, token) {
            None => return not_held(reply),
            Some(holder) => holder.ctx.reason(),
        };
        match ended {
            None => {
                self.end_holder(&key, Some(token), CancelReason::Released, true);
                io::release(
                    &self.backend,
                    &self.config.inflight,
                    key.clone(),
                    token,
                    reply,
                );
            }
            Some(reason) => {
                self.end_holder(&key, Some(token), reason.clone(), true);
                self.give_back_if_revoked(&key, token, &reason);
                not_held(reply);
            }
        }
        self.serve_next(myself, &key);
    }

    /// After a lease ended: a revoked one is given back at once (the holder has been told
    /// and the revoker wants the key free; compare-and-set on the token, so a newer
    /// holder is never touched). A lost one is left to expire on the backend, so that the
    /// safety margin between the holder being told and a takeover is kept.
    fn give_back_if_revoked(&self, key: &Key, token: u64, reason: &CancelReason) {
        if *reason == CancelReason::Revoked {
            io::release(
                &self.backend,
                &self.config.inflight,
                key.clone(),
                token,
                None,
            );
        }
    }

    fn on_revoke(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        key: Key,
        reply: RpcReplyPort<Result<bool, LeaseError>>,
    ) {
        if self.stopping {
            return stopped_reply(reply);
        }
        // Our own holder is told first, so the key is never free while it still acts.
        // A lease whose context had already ended by loss is left to expire instead of
        // given back, so that its holder keeps the safety margin it was promised; a
        // holder that keeps its key gives it back itself (see `end_holder`).
        let ended = self.end_holder(&key, None, CancelReason::Revoked, false);
        let kept = ended.as_ref().is_some_and(|e| e.kept);
        let local = ended.and_then(|e| e.give_back.then_some(e.token));
        if local.is_some() || kept {
            // Nobody here may be granted the key until the revoke has reached the
            // backend (see `io::revoke`): a kept holder may let go at once, and a
            // revoke still on its way must not mark the next holder's lease.
            self.table.slot(&key).busy = true;
        }
        io::revoke(
            myself,
            self.backend.clone(),
            &self.config.inflight,
            key,
            local,
            kept,
            reply,
        );
    }

    fn on_revoke_done(&mut self, myself: &ActorRef<ManagerMessage>, key: Key) {
        if let Some(slot) = self.table.get(&key) {
            slot.busy = false;
        }
        self.serve_next(myself, &key);
    }

    fn on_wait_expired(&mut self, key: Key, waiter: u64) {
        if let Some(w) = self.table.remove_waiter(&key, waiter) {
            let waited = w.options.wait.unwrap_or_default();
            let error = LeaseError::WaitTimedOut { waited };
            crate::metrics::acquire_failed(&error);
            let _ = w.reply.send(Err(error));
        }
        self.table.tidy(&key);
    }

    fn on_renewer_exit(&mut self, myself: &ActorRef<ManagerMessage>, id: ActorId, why: String) {
        let Some((key, token)) = self.table.renewer_exited(id) else {
            return; // a renewer we already ended
        };
        let ended = self
            .table
            .holder_of(&key, token)
            .and_then(|h| h.ctx.reason());
        let reason = CancelReason::Lost(LossCause::RenewerFailed(why));
        if let Some(e) = self.end_holder(&key, Some(token), reason.clone(), false) {
            if !e.kept {
                self.give_back_if_revoked(&key, e.token, &ended.unwrap_or(reason));
            }
        }
        self.serve_next(myself, &key);
    }

    async fn on_shutdown(&mut self) {
        self.stopping = true;
        let mut held = Vec::new();
        for key in self.table.keys() {
            if let Some(e) = self.end_holder(&key, None, CancelReason::Shutdown, false) {
                // A lease already lost is left to expire (its holder keeps the margin),
                // and so is one whose holder keeps its key and has not let go of it.
                if e.give_back {
                    held.push((key.clone(), e.token));
                }
            }
            for w in self.table.drain_waiters(&key) {
                stopped_reply(w.reply);
            }
        }
        // Give the keys back so that others need not wait for the TTLs; bounded, since
        // the backend may be down.
        if !io::release_all(&self.backend, held, self.config.shutdown_timeout).await {
            tracing::warn!("lease manager shutdown: some releases did not finish in time");
        }
        tracing::info!("lease manager stopped");
    }
}

impl Actor for Supervisor {
    type Msg = ManagerMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ManagerMessage>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            backend: args.backend,
            config: args.config,
            cell: myself.get_cell(),
            owner: Arc::new(ManagerOwner { actor: myself }),
            table: LeaseTable::default(),
            stopping: false,
            alarms: Alarms::start(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMessage>,
        ManagerMessage(msg): ManagerMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Acquire {
                key,
                options,
                reply,
            } => state.on_acquire(&myself, key, options, reply),
            Msg::Attempted {
                key,
                waiter,
                outcome,
            } => state.on_attempted(&myself, key, waiter, outcome),
            Msg::Release { key, token, reply } => state.on_release(&myself, key, token, reply),
            Msg::Revoke { key, reply } => state.on_revoke(&myself, key, reply),
            Msg::RevokeDone { key } => state.on_revoke_done(&myself, key),
            Msg::WaitExpired { key, waiter } => state.on_wait_expired(key, waiter),
            Msg::Attach {
                key,
                token,
                renewer,
            } => state.on_attach(&myself, key, token, renewer),
            Msg::Shutdown { reply } => {
                if !state.stopping {
                    state.on_shutdown().await;
                }
                myself.stop(Some("shutdown".into()));
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ManagerMessage>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never stop because a child did (ractor's default): a renewer's end is one
        // lease's end.
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                state.on_renewer_exit(&myself, cell.get_id(), error.to_string())
            }
            SupervisionEvent::ActorTerminated(cell, _, why) => state.on_renewer_exit(
                &myself,
                cell.get_id(),
                why.unwrap_or_else(|| "stopped".into()),
            ),
            _ => {}
        }
        Ok(())
    }
}
