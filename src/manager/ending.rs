//! How a lease held here ends, and who gives its key back: a release, a revoke, a
//! renewer's exit, a shutdown. [`SupervisorState::end_holder`] is the one place that
//! ends a holder; the handlers around it decide what goes back to the backend (a
//! revoked lease at once; a lost one is left to expire, so that its holder keeps its
//! safety margin; a holder that keeps its key gives it back itself).
//!
//! Its log events keep the target `leases::manager::supervisor` they had before the manager was split
//! into files, so that users' log filters still match them.

use ractor::{ActorId, ActorRef, RpcReplyPort};

use super::io;
use super::messages::ManagerMessage;
use super::renewer::RenewerRef;
use super::state::{stopped_reply, SupervisorState};
use crate::error::LeaseError;
use crate::key::Key;
use crate::reason::{CancelReason, LossCause};

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

impl SupervisorState {
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
        let stop = |renewer: &RenewerRef| {
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
                tracing::debug!(target: "leases::manager::supervisor", %key, token = holder.token, %reason, "lease ended; its holder keeps the key");
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
            tracing::debug!(target: "leases::manager::supervisor", %key, token = holder.token, %reason, "lease ended");
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

    pub(super) fn on_release(
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

    /// The holder of `(key, token)` lets go of it without giving the key back (see
    /// [`Lease::leave`](crate::Lease)): the holder leaves the table and its renewer
    /// stops, and the key stays taken in the store until the lease expires or another
    /// manager re-attaches it. The backend is told ([`Backend::leave`](crate::backend::Backend::leave)):
    /// a backend that renews leases together (PostgreSQL's sessions) must stop keeping
    /// it alive, so that it lasts only as long as was promised.
    pub(super) fn on_leave(&mut self, myself: &ActorRef<ManagerMessage>, key: Key, token: u64) {
        if self
            .end_holder(&key, Some(token), CancelReason::HandedOver, true)
            .is_some()
        {
            tracing::debug!(target: "leases::manager::supervisor", %key, token, "lease handed over: left to expire or be re-attached");
            io::leave(&self.backend, &self.config.inflight, key.clone(), token);
        }
        self.serve_next(myself, &key);
    }

    /// After a lease ended: a revoked one is given back at once (the holder has been told
    /// and the revoker wants the key free; compare-and-set on the token, so a newer
    /// holder is never touched). A lost one is left to expire on the backend, so that the
    /// safety margin between the holder being told and a takeover is kept.
    ///
    /// A lost one is also left by the backend ([`Backend::leave`](crate::backend::Backend::leave)):
    /// a backend that renews leases together (PostgreSQL's sessions) must stop keeping
    /// it alive, so that it expires when it would have.
    fn give_back_if_revoked(&self, key: &Key, token: u64, reason: &CancelReason) {
        if matches!(reason, CancelReason::Lost(_)) {
            io::leave(&self.backend, &self.config.inflight, key.clone(), token);
        }
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

    pub(super) fn on_revoke(
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

    pub(super) fn on_revoke_done(&mut self, myself: &ActorRef<ManagerMessage>, key: Key) {
        if let Some(slot) = self.table.get(&key) {
            slot.busy = false;
        }
        self.serve_next(myself, &key);
    }

    /// The renewal actor `id` of the lease `(key, token)` has exited (`why`): its holder
    /// ends, unless the actor is not that holder's renewer any more (we stopped it, or
    /// the holder was replaced) or not yet (see `on_attach`).
    pub(super) fn on_renewer_exit(
        &mut self,
        myself: &ActorRef<ManagerMessage>,
        (key, token): (Key, u64),
        id: ActorId,
        why: String,
    ) {
        if !self.table.renews(&key, token, id) {
            return;
        }
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

    pub(super) async fn on_shutdown(&mut self) {
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
            tracing::warn!(target: "leases::manager::supervisor", "lease manager shutdown: some releases did not finish in time");
        }
        tracing::info!(target: "leases::manager::supervisor", "lease manager stopped");
    }
}
