//! Re-attaching a lease to a new stream, and handing leases over when a server goes
//! away: what lets a lease outlive the stream (and the server) that held it.
//!
//! Every native `Hold` stream of a server lists its lease here by key and token, for as
//! long as it holds it: while the stream lives, and after it broke while the server
//! waits out what it promised the client. A client that re-attaches its lease
//! (`acquire` with `resume`, see `proto/leases/v1/leases.proto`) on a new stream of the
//! same server takes the lease over from the stream that lists it ([`Holds::take`]):
//! that stream ends, and the new one carries the same lease (same token, same renewal,
//! the promise made so far). Only when no stream of this server lists it does the new
//! stream ask the manager to resume it from the store
//! ([`AcquireOptions::resume`](crate::AcquireOptions::resume)), which is how a lease
//! moves between servers.
//!
//! A server whose store outlives it ([`Backend::shared`](crate::backend::Backend::shared))
//! therefore never frees a key its client did not release: once the promise has run
//! out, or at once when the server stops, it lets go of the lease without releasing it
//! ([`LetGo`]), so that a client that re-attached it elsewhere keeps it, and the key is
//! otherwise free when it expires. On the memory backend, whose leases die with the
//! server, nothing can re-attach elsewhere: the server keeps its promises before it
//! stops and then releases, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::Events;
use crate::{CancelReason, Key, Lease, LeaseContext, LeaseError};

/// A lease held for a client, as it passes from one stream to another.
///
/// However a hold is dropped (its stream's task ends without letting go of it, or it is
/// dropped on its way to a stream that gave up taking it over), it is let go of by the
/// rule, never released early: on a shared store it is left there at once (a client may
/// have re-attached it elsewhere); otherwise it is released once its promise has run
/// out.
pub(crate) struct Hold {
    lease: Option<Lease>,
    pub(crate) ctx: LeaseContext,
    /// The latest instant the client was told it may act until.
    pub(crate) promised: Instant,
    let_go: LetGo,
    /// Where the lease's end goes while nobody records it yet.
    log: Option<EndLog>,
}

/// The event log a held lease's end goes to (see `events.rs`), and through which
/// protocol it was asked for. Its end is recorded once: by the stream that sees it while
/// it waits (`Hold::noted_end`), or, once the lease leaves such a stream's watch
/// otherwise, by a task of its own (`Hold::watch_end`): a task per held lease would be
/// most of a kilobyte each for 100k leases on one stream.
pub(crate) struct EndLog {
    pub(crate) events: Events,
    pub(crate) via: &'static str,
}

impl Hold {
    pub(crate) fn new(
        lease: Lease,
        ctx: LeaseContext,
        let_go: &LetGo,
        log: Option<EndLog>,
    ) -> Hold {
        Hold {
            lease: Some(lease),
            ctx,
            promised: Instant::now(),
            let_go: let_go.clone(),
            log,
        }
    }

    /// Records the lease's end, seen by its stream, unless it is recorded already.
    pub(crate) fn noted_end(&mut self, reason: &CancelReason) {
        if let (Some(log), Some(lease)) = (self.log.take(), self.lease.as_ref()) {
            log.events
                .ended(lease.key(), lease.token(), log.via, reason);
        }
    }

    /// Leaves the recording of the lease's end to a task of its own, unless it is
    /// recorded (or so left) already: for whoever stops watching the lease's context
    /// before it ended.
    pub(crate) fn watch_end(&mut self) {
        if let (Some(log), Some(lease)) = (self.log.take(), self.lease.as_ref()) {
            log.events.watch_end(lease.key(), &self.ctx, log.via);
        }
    }

    /// The lease's fencing token.
    pub(crate) fn token(&self) -> u64 {
        self.lease.as_ref().map(Lease::token).unwrap_or_default()
    }

    /// Releases the lease: its client said it has stopped.
    pub(crate) async fn release(mut self) {
        self.watch_end();
        if let Some(lease) = self.lease.take() {
            let _ = lease.release().await;
        }
    }

    /// Lets go of the lease now that nothing more is owed to its client (see
    /// [`LetGo::let_go`]).
    pub(crate) async fn let_go(mut self) {
        self.watch_end();
        if let Some(lease) = self.lease.take() {
            self.let_go.let_go(lease).await;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.watch_end();
        let Some(lease) = self.lease.take() else {
            return;
        };
        if self.let_go.shared_store {
            return lease.leave();
        }
        let promised = self.promised;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep_until(promised).await;
                    let _ = lease.release().await;
                });
            }
            // No runtime to wait in: the lease is left to expire.
            Err(_) => lease.leave(),
        }
    }
}

/// A request to hand a hold over: the hold goes into the channel.
pub(crate) type Claim = oneshot::Sender<Hold>;

/// A listed lease: the id of its listing, its TTL, and where claims for it go.
type Entries = HashMap<(Key, u64), (u64, Duration, Arc<ClaimBox>)>;

/// Where the claims for one listed lease wait until its stream reads them: a few words
/// where a channel was about a kilobyte (a server lists every lease it holds).
#[derive(Default)]
struct ClaimBox {
    /// `None` once the listing is gone: a claim put then is refused.
    claims: Mutex<Option<Vec<Claim>>>,
    ready: Notify,
}

impl ClaimBox {
    fn open() -> Arc<ClaimBox> {
        Arc::new(ClaimBox {
            claims: Mutex::new(Some(Vec::new())),
            ready: Notify::new(),
        })
    }

    /// Puts a claim in; gives it back if the listing is gone.
    fn put(&self, claim: Claim) -> Result<(), Claim> {
        match crate::sync::lock(&self.claims).as_mut() {
            Some(claims) => claims.push(claim),
            None => return Err(claim),
        }
        self.ready.notify_one();
        Ok(())
    }
}

/// The claims for a listed lease, as its stream reads them.
pub(crate) struct Claims(Arc<ClaimBox>);

impl Claims {
    /// The next claim. Cancel-safe: a claim is taken only by a call that returns it.
    pub(crate) async fn recv(&mut self) -> Claim {
        loop {
            // Registered before looking, so that a claim put in meanwhile wakes us.
            let ready = self.0.ready.notified();
            if let Some(claim) = crate::sync::lock(&self.0.claims)
                .as_mut()
                .and_then(|claims| (!claims.is_empty()).then(|| claims.remove(0)))
            {
                return claim;
            }
            ready.await;
        }
    }
}

/// The leases the native streams of one server hold, by key and token.
#[derive(Clone, Default)]
pub(crate) struct Holds {
    entries: Arc<Mutex<Entries>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// A stream's entry in [`Holds`]: claims for its lease arrive in `claims`. Dropping it
/// takes the entry out.
pub(crate) struct Listed {
    entries: Arc<Mutex<Entries>>,
    key: (Key, u64),
    id: u64,
    pub(crate) claims: Claims,
}

impl Holds {
    /// Lists the lease `(key, token)`, held with `ttl`, as held by the caller's stream.
    pub(crate) fn list(&self, key: &Key, token: u64, ttl: Duration) -> Listed {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inbox = ClaimBox::open();
        crate::sync::lock(&self.entries).insert((key.clone(), token), (id, ttl, inbox.clone()));
        Listed {
            entries: self.entries.clone(),
            key: (key.clone(), token),
            id,
            claims: Claims(inbox),
        }
    }

    /// Takes the lease `(key, token)` over from the stream of this server that lists
    /// it, if one does and hands it over; `Ok(None)` otherwise (no stream here holds it,
    /// or the one that did ended meanwhile). A lease keeps its TTL, as a resume from the
    /// store does: asked with another `ttl`, it is refused and stays where it is.
    pub(crate) async fn take(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<Option<Hold>, LeaseError> {
        let listed = crate::sync::lock(&self.entries)
            .get(&(key.clone(), token))
            .map(|(_, held, tx)| (*held, tx.clone()));
        let Some((held, holder)) = listed else {
            return Ok(None);
        };
        // To the precision stores keep TTLs to, as `manager/attempt.rs` compares them.
        if held.abs_diff(ttl) >= Duration::from_millis(1) {
            return Err(LeaseError::ResumeTtl { asked: ttl, held });
        }
        let (claim, handed) = oneshot::channel();
        if holder.put(claim).is_err() {
            return Ok(None);
        }
        Ok(handed.await.ok())
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut entries = crate::sync::lock(&self.entries);
        if entries
            .get(&self.key)
            .is_some_and(|(id, ..)| *id == self.id)
        {
            entries.remove(&self.key);
        }
        drop(entries);
        // Claims that came too late are refused: their senders find no hold handed.
        let late = crate::sync::lock(&self.claims.0.claims).take();
        drop(late);
    }
}

/// Hands `hold` to the stream that claimed it; gives it back if that stream has gone.
pub(crate) fn hand(claim: Claim, hold: Hold) -> Result<(), Hold> {
    claim.send(hold)
}

/// How a server lets go of a lease whose client did not say it has stopped.
#[derive(Clone)]
pub(crate) struct LetGo {
    /// The store outlives this server: leases are left there, never released.
    pub(crate) shared_store: bool,
    /// Cancelled when the server stops.
    pub(crate) stopping: CancellationToken,
}

impl LetGo {
    /// Completes when the server may let go of a lease early, without waiting out its
    /// promise: when it stops, if the lease lives on in a shared store. Never, otherwise.
    pub(crate) async fn early(&self) {
        if self.shared_store {
            self.stopping.cancelled().await
        } else {
            std::future::pending().await
        }
    }

    /// This rule for the leases of clients that cannot re-attach (FTL's protocol has no
    /// resume): never let go early, not even when the server stops. Leaving such a
    /// lease in the store at once would rely on the store keeping it until the client's
    /// promise has run out, which it does not: an FTL key is held in the store 1.5
    /// windows from the *start of its last renewal* (a renewal every half window, after
    /// the previous one answered), so less than a window may be left when a request
    /// just came in; a slow renewal leaves less still.
    pub(crate) fn keeping_promises(&self) -> LetGo {
        LetGo {
            shared_store: self.shared_store,
            stopping: CancellationToken::new(),
        }
    }

    /// Lets go of `lease` once nothing more is owed to its client: on a shared store it
    /// is left there (to expire, or to be re-attached through another server); on a
    /// store that dies with this server it is released.
    pub(crate) async fn let_go(&self, lease: Lease) {
        if self.shared_store {
            lease.leave();
        } else {
            let _ = lease.release().await;
        }
    }
}
