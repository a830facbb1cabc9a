//! The lease table: what one manager knows about the keys it holds, is acquiring or is
//! waiting for. Plain data, owned by the supervisor actor and changed only from its
//! handlers, so it needs no locks; the actor does the I/O and the actor wiring.

use std::collections::VecDeque;

// A fast, randomly seeded hasher: SipHash showed in the profile of renewals.
use foldhash::HashMap;

use ractor::ActorId;

use super::messages::Waiter;
use super::renewer::RenewerRef;
use crate::context::ContextSender;
use crate::key::Key;
use crate::reason::{CancelReason, LossCause};

/// A lease this manager holds for one of its callers.
pub(crate) struct LocalHolder {
    pub(crate) token: u64,
    pub(crate) ctx: ContextSender,
    /// `None` until the renewal actor has started and attached.
    pub(crate) renewer: Option<RenewerRef>,
    /// Counts it in the `leases_held` gauge while it is in the table.
    pub(crate) _held: crate::metrics::HeldGauge,
    /// The holder gives the key back itself (see `AcquireOptions::keep_until_released`):
    /// whatever ends its context (a revoke, the renewer's exit, a shutdown) also stops
    /// its renewal but leaves it in the table, and gives nothing back, until its
    /// `Lease` is released or dropped.
    pub(crate) keep: bool,
}

impl Drop for LocalHolder {
    /// Runs however the table goes away, even after a panic of the supervisor: a holder
    /// is never left with a live context and nobody to end it.
    fn drop(&mut self) {
        self.ctx
            .cancel(CancelReason::Lost(LossCause::ManagerFailed));
    }
}

/// Everything the manager knows about one key.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) holder: Option<LocalHolder>,
    /// An acquire attempt (or a revoke of our own lease) is running in a task: nobody
    /// else here may be granted the key until it reports back.
    pub(crate) busy: bool,
    /// Callers waiting for the key, first come first served.
    pub(crate) waiters: Waiters,
}

/// The callers waiting for one key: boxed, and only while there are any, because
/// nearly every slot has none and a slot's size is paid for every key in the table.
#[derive(Default)]
// Boxed on purpose: 8 bytes in the slot instead of a `VecDeque`'s 32.
#[allow(clippy::box_collection)]
pub(crate) struct Waiters(Option<Box<VecDeque<Waiter>>>);

impl Waiters {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|w| w.is_empty())
    }

    fn push_back(&mut self, waiter: Waiter) {
        self.0.get_or_insert_with(Box::default).push_back(waiter);
    }

    fn iter(&self) -> impl Iterator<Item = &Waiter> {
        self.0.iter().flat_map(|w| w.iter())
    }

    /// Drops the queue once it is empty.
    fn tidy(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }

    fn remove(&mut self, pos: usize) -> Option<Waiter> {
        let w = self.0.as_mut()?.remove(pos);
        self.tidy();
        w
    }

    fn pop_front(&mut self) -> Option<Waiter> {
        let w = self.0.as_mut()?.pop_front();
        self.tidy();
        w
    }

    fn take(&mut self) -> Vec<Waiter> {
        self.0
            .take()
            .map(|w| w.into_iter().collect())
            .unwrap_or_default()
    }
}

impl Slot {
    fn is_idle(&self) -> bool {
        self.holder.is_none() && !self.busy && self.waiters.is_empty()
    }

    /// Taken here: held, being taken, or promised to earlier waiters.
    pub(crate) fn is_claimed(&self) -> bool {
        !self.is_idle()
    }
}

/// The lease table.
#[derive(Default)]
pub(crate) struct LeaseTable {
    slots: HashMap<Key, Slot>,
    next_waiter: u64,
}

impl LeaseTable {
    /// The slot of `key`, made if needed.
    pub(crate) fn slot(&mut self, key: &Key) -> &mut Slot {
        self.slots.entry(key.clone()).or_default()
    }

    /// The slot of `key`, if there is one.
    pub(crate) fn get(&mut self, key: &Key) -> Option<&mut Slot> {
        self.slots.get_mut(key)
    }

    /// Drops the slot of `key` if nothing refers to it any more.
    pub(crate) fn tidy(&mut self, key: &Key) {
        if self.slots.get(key).is_some_and(Slot::is_idle) {
            self.slots.remove(key);
        }
    }

    /// Every key with a slot.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.slots.keys().cloned().collect()
    }

    /// A fresh waiter id.
    pub(crate) fn next_waiter_id(&mut self) -> u64 {
        self.next_waiter += 1;
        self.next_waiter
    }

    /// The local holder of `key`, if any.
    pub(crate) fn holder(&self, key: &Key) -> Option<&LocalHolder> {
        self.slots.get(key).and_then(|s| s.holder.as_ref())
    }

    /// The local holder of `key` with this token, if any.
    pub(crate) fn holder_of(&self, key: &Key, token: u64) -> Option<&LocalHolder> {
        self.holder(key).filter(|h| h.token == token)
    }

    /// Makes `holder` the holder of `key`.
    pub(crate) fn hold(&mut self, key: &Key, holder: LocalHolder) {
        self.slot(key).holder = Some(holder);
    }

    /// Removes the holder of `key` (only if its token is `token`, when given) and
    /// forgets its renewer. The caller ends its context and stops its renewer.
    pub(crate) fn take_holder(&mut self, key: &Key, token: Option<u64>) -> Option<LocalHolder> {
        let slot = self.slots.get_mut(key)?;
        if token.is_some_and(|t| slot.holder.as_ref().map(|h| h.token) != Some(t)) {
            return None;
        }
        slot.holder.take()
    }

    /// Records that the renewal actor `id` renews the lease `(key, token)`, if that
    /// lease is still held here and has no renewer yet. Returns `false` otherwise (the
    /// lease ended before its renewer started: the caller stops the renewer).
    pub(crate) fn attach(&mut self, key: &Key, token: u64, renewer: RenewerRef) -> bool {
        let holder = self
            .slots
            .get_mut(key)
            .and_then(|s| s.holder.as_mut())
            .filter(|h| h.token == token && h.renewer.is_none())
            // A keeping holder ended before its renewer started keeps its place in the
            // table but must not be renewed.
            .filter(|h| !(h.keep && h.ctx.reason().is_some()));
        match holder {
            Some(holder) => {
                holder.renewer = Some(renewer);
                true
            }
            None => false,
        }
    }

    /// Takes the renewer of `key`'s holder (if its token matches, or any holder when
    /// `token` is `None`) out of the table, leaving the holder in place; the caller
    /// stops it. Returns the holder, or `None` if there is no such holder.
    pub(crate) fn stop_renewal(
        &mut self,
        key: &Key,
        token: Option<u64>,
    ) -> Option<(&LocalHolder, Option<RenewerRef>)> {
        let holder = self.slots.get_mut(key)?.holder.as_mut()?;
        if token.is_some_and(|t| t != holder.token) {
            return None;
        }
        let renewer = holder.renewer.take();
        Some((holder, renewer))
    }

    /// Whether the renewal actor `id` is the renewer of `key`'s holder, and that
    /// holder's token is `token`: the lease a renewer's exit may end. (A renewer we
    /// stopped ourselves is not any holder's any more; nor is one whose holder was
    /// replaced, nor one not attached yet: see `on_attach`.)
    pub(crate) fn renews(&self, key: &Key, token: u64, id: ActorId) -> bool {
        self.holder_of(key, token)
            .and_then(|h| h.renewer.as_ref())
            .is_some_and(|r| r.get_id() == id)
    }

    /// The lease whose holder's renewer is the actor `id`, found by looking at every
    /// holder: for a renewer that failed (its exit event names only the actor), which
    /// its own code never does on purpose (see `renewer.rs`).
    pub(crate) fn renewed_by(&self, id: ActorId) -> Option<(Key, u64)> {
        self.slots.iter().find_map(|(key, slot)| {
            let h = slot.holder.as_ref()?;
            let r = h.renewer.as_ref()?;
            (r.get_id() == id).then(|| (key.clone(), h.token))
        })
    }

    /// Queues a waiter for `key`.
    pub(crate) fn push_waiter(&mut self, key: &Key, waiter: Waiter) {
        self.slot(key).waiters.push_back(waiter);
    }

    /// The waiter `id` of `key`, if it is still queued.
    pub(crate) fn waiter(&self, key: &Key, id: u64) -> Option<&Waiter> {
        self.slots.get(key)?.waiters.iter().find(|w| w.id == id)
    }

    /// Removes the waiter `id` of `key`, if it is still queued.
    pub(crate) fn remove_waiter(&mut self, key: &Key, id: u64) -> Option<Waiter> {
        let slot = self.slots.get_mut(key)?;
        let pos = slot.waiters.iter().position(|w| w.id == id)?;
        slot.waiters.remove(pos)
    }

    /// The next waiter for `key` whose caller is still there, if the key is free of
    /// local claims (no holder, no attempt running); callers who went away are dropped.
    pub(crate) fn next_waiter(&mut self, key: &Key) -> Option<Waiter> {
        let slot = self.slots.get_mut(key)?;
        if slot.holder.is_some() || slot.busy {
            return None;
        }
        while let Some(w) = slot.waiters.pop_front() {
            if !w.reply.is_closed() {
                return Some(w);
            }
        }
        None
    }

    /// Every waiter of `key`, removed.
    pub(crate) fn drain_waiters(&mut self, key: &Key) -> Vec<Waiter> {
        self.slots
            .get_mut(key)
            .map(|s| s.waiters.take())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::LeaseContext;
    use crate::leaser::AcquireOptions;
    use std::time::Duration;

    fn waiter(
        table: &mut LeaseTable,
    ) -> (
        Waiter,
        tokio::sync::oneshot::Receiver<crate::manager::messages::AcquireReply>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let w = Waiter {
            id: table.next_waiter_id(),
            options: AcquireOptions::new(Duration::from_secs(5)),
            reply: tx.into(),
            until: None,
        };
        (w, rx)
    }

    fn holder(token: u64) -> (LocalHolder, LeaseContext) {
        let (ctx, view) = LeaseContext::new(token, None);
        (
            LocalHolder {
                token,
                ctx,
                renewer: None,
                _held: crate::metrics::HeldGauge::new(),
                keep: false,
            },
            view,
        )
    }

    #[test]
    fn slots_come_and_go() {
        let mut t = LeaseTable::default();
        let k = Key::system(["a"]);
        assert!(!t.slot(&k).is_claimed());
        t.tidy(&k);
        assert!(t.get(&k).is_none(), "an idle slot is dropped");
        t.slot(&k).busy = true;
        t.tidy(&k);
        assert!(t.get(&k).is_some_and(|s| s.is_claimed()));
    }

    #[test]
    fn holders_are_taken_by_token() {
        let mut t = LeaseTable::default();
        let k = Key::system(["a"]);
        let (h, view) = holder(7);
        t.hold(&k, h);
        assert!(t.holder_of(&k, 7).is_some());
        assert!(t.holder_of(&k, 8).is_none());
        assert!(t.take_holder(&k, Some(8)).is_none(), "another token's end");
        let taken = t.take_holder(&k, Some(7)).unwrap();
        assert!(t.holder(&k).is_none());
        // A holder dropped without being ended tells its holder the manager failed.
        drop(taken);
        assert_eq!(
            view.reason(),
            Some(CancelReason::Lost(LossCause::ManagerFailed))
        );
    }

    /// An actor that only stands in for a renewer.
    struct Idle;

    impl ractor::Actor for Idle {
        type Msg = super::super::group::Fate;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: RenewerRef, _: ()) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn renewers_are_known_while_attached_to_their_holder() {
        let mut t = LeaseTable::default();
        let k = Key::system(["a"]);
        let (h, _view) = holder(7);
        t.hold(&k, h);
        let (r, _) = ractor::Actor::spawn(None, Idle, ()).await.unwrap();
        let id = r.get_id();
        assert!(!t.renews(&k, 7, id), "not attached yet");
        assert!(t.attach(&k, 7, r.clone()));
        assert!(t.renews(&k, 7, id));
        assert!(!t.renews(&k, 8, id), "another token");
        assert_eq!(t.renewed_by(id), Some((k.clone(), 7)));

        // A renewer whose holder was replaced renews nothing: its exit ends nobody.
        let (h, _view) = holder(8);
        t.hold(&k, h);
        assert!(!t.renews(&k, 7, id) && !t.renews(&k, 8, id));
        assert_eq!(t.renewed_by(id), None);
        // Nor one taken out to be stopped.
        let (r2, _) = ractor::Actor::spawn(None, Idle, ()).await.unwrap();
        assert!(t.attach(&k, 8, r2.clone()));
        let (_, taken) = t.stop_renewal(&k, Some(8)).unwrap();
        assert!(taken.is_some());
        assert!(!t.renews(&k, 8, r2.get_id()));
        assert_eq!(t.renewed_by(r2.get_id()), None);
        r.stop(None);
        r2.stop(None);
    }

    #[tokio::test]
    async fn waiters_are_served_in_order_skipping_the_gone() {
        let mut t = LeaseTable::default();
        let k = Key::system(["a"]);
        let (w1, rx1) = waiter(&mut t);
        let (w2, _rx2) = waiter(&mut t);
        let (w3, _rx3) = waiter(&mut t);
        let (id2, id3) = (w2.id, w3.id);
        t.push_waiter(&k, w1);
        t.push_waiter(&k, w2);
        t.push_waiter(&k, w3);
        // While held, nobody is served.
        let (h, _view) = holder(1);
        t.hold(&k, h);
        assert!(t.next_waiter(&k).is_none());
        t.take_holder(&k, None);
        // The first caller went away: the second is next.
        drop(rx1);
        assert_eq!(t.next_waiter(&k).map(|w| w.id), Some(id2));
        assert_eq!(t.remove_waiter(&k, id3).map(|w| w.id), Some(id3));
        assert!(t.remove_waiter(&k, id3).is_none());
        assert!(t.drain_waiters(&k).is_empty());
    }
}
