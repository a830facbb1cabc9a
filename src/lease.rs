//! A held lease, the context that tells its holder when it ends, and lease metadata.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::LeaseError;
use crate::key::Key;

/// Why a [`LeaseContext`] ended. Every end has one: there is no silent loss.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The holder released the lease (explicitly, or by dropping the [`Lease`]).
    Released,
    /// An operator or another manager revoked the lease.
    Revoked,
    /// The lease was lost: renewal failed, or could not be confirmed before the local
    /// deadline. Stop acting as the holder at once.
    Lost(LossCause),
    /// The lease manager shut down (or all its handles were dropped).
    Shutdown,
}

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossCause {
    /// The backend refused the renewal: the lease expired there or is no longer ours.
    RenewalRefused,
    /// No renewal was confirmed before the local deadline (last confirmed renewal + TTL
    /// − safety margin). The backend may be down or slow; the key may soon be granted to
    /// someone else, so the holder is told first.
    DeadlineExceeded,
    /// The renewal actor failed (for example it panicked); the message says how.
    RenewerFailed(String),
    /// The lease manager's supervisor stopped without ending the lease normally.
    ManagerFailed,
    /// A [`FakeLeaser`](crate::FakeLeaser) was told to lose the lease.
    Injected,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::Released => f.write_str("released"),
            CancelReason::Revoked => f.write_str("revoked"),
            CancelReason::Shutdown => f.write_str("lease manager shut down"),
            CancelReason::Lost(cause) => write!(f, "lost: {cause}"),
        }
    }
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossCause::RenewalRefused => f.write_str("the backend refused the renewal"),
            LossCause::DeadlineExceeded => {
                f.write_str("no renewal was confirmed before the local deadline")
            }
            LossCause::RenewerFailed(why) => write!(f, "the renewal actor failed: {why}"),
            LossCause::ManagerFailed => f.write_str("the lease manager stopped unexpectedly"),
            LossCause::Injected => f.write_str("loss injected by a fake leaser"),
        }
    }
}

/// The sending half of a context: whoever ends the lease sets the reason, once.
#[derive(Debug, Clone)]
pub(crate) struct ContextSender(watch::Sender<Option<CancelReason>>);

impl ContextSender {
    /// Ends the context with `reason` unless it has already ended; returns `true` when
    /// this call ended it. The first reason wins.
    pub(crate) fn cancel(&self, reason: CancelReason) -> bool {
        self.0.send_if_modified(|state| {
            if state.is_some() {
                false
            } else {
                *state = Some(reason);
                true
            }
        })
    }

    /// The reason the context ended with, if it has.
    pub(crate) fn reason(&self) -> Option<CancelReason> {
        self.0.borrow().clone()
    }
}

/// A holder's view of its lease: cancelled when the lease ends, with a reason.
///
/// The Rust counterpart of the cancellable `context.Context` FTL hands its lease
/// holders. It is a `tokio::sync::watch` receiver underneath: cheap to clone, and every
/// clone sees the same end. Check [`is_cancelled`](LeaseContext::is_cancelled) before
/// each unit of work, or race the work against [`cancelled`](LeaseContext::cancelled).
///
/// The context ends *before* the backend could grant the key to anyone else
/// (see the crate docs for the margin this relies on).
#[derive(Clone)]
pub struct LeaseContext {
    rx: watch::Receiver<Option<CancelReason>>,
    token: u64,
    /// Keeps a never-ending context's sender alive.
    _keep: Option<Arc<watch::Sender<Option<CancelReason>>>>,
}

impl fmt::Debug for LeaseContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseContext")
            .field("token", &self.token)
            .field("reason", &self.reason())
            .finish()
    }
}

impl LeaseContext {
    /// A new live context and the sender that ends it.
    pub(crate) fn new(token: u64) -> (ContextSender, LeaseContext) {
        let (tx, rx) = watch::channel(None);
        (
            ContextSender(tx),
            LeaseContext {
                rx,
                token,
                _keep: None,
            },
        )
    }

    /// A context that never ends, as held by [`Lease::noop`].
    pub fn never() -> LeaseContext {
        let (tx, rx) = watch::channel(None);
        LeaseContext {
            rx,
            token: 0,
            _keep: Some(Arc::new(tx)),
        }
    }

    /// The fencing token of the lease this context belongs to.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// `true` once the lease has ended for any reason.
    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Why the lease ended, or `None` while it is held.
    pub fn reason(&self) -> Option<CancelReason> {
        let reason = self.rx.borrow().clone();
        match reason {
            Some(r) => Some(r),
            // The sender is gone without a reason: its owner died.
            None if self.rx.has_changed().is_err() => {
                Some(CancelReason::Lost(LossCause::ManagerFailed))
            }
            None => None,
        }
    }

    /// Waits until the lease ends and returns why. Cancel-safe.
    pub async fn cancelled(&self) -> CancelReason {
        let mut rx = self.rx.clone();
        let ended = rx
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone());
        match ended {
            Ok(Some(reason)) => reason,
            _ => self
                .reason()
                .unwrap_or(CancelReason::Lost(LossCause::ManagerFailed)),
        }
    }

    /// `Ok(())` while the lease is held, else the reason it ended, as
    /// [`LeaseError::NotHeld`]. Handy before a side effect: `ctx.check()?;`.
    pub fn check(&self) -> Result<(), LeaseError> {
        if self.is_cancelled() {
            Err(LeaseError::NotHeld)
        } else {
            Ok(())
        }
    }

    /// Sends `make(reason)` to `actor` when the lease ends, so that an actor learns of
    /// the loss as an ordinary message. Needs a running tokio runtime.
    pub fn forward_to<M, F>(&self, actor: ractor::ActorRef<M>, make: F)
    where
        M: ractor::Message,
        F: FnOnce(CancelReason) -> M + Send + 'static,
    {
        let ctx = self.clone();
        tokio::spawn(async move {
            let reason = ctx.cancelled().await;
            // The actor may be gone; then nobody is left to tell.
            let _ = actor.send_message(make(reason));
        });
    }
}

/// What a backend knows about a held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The key.
    pub key: Key,
    /// The holder's fencing token.
    pub token: u64,
    /// The TTL the lease was granted (and is renewed) with.
    pub ttl: Duration,
    /// Time left until the lease expires on the backend's clock, unless renewed.
    pub expires_in: Duration,
    /// The metadata attached at acquire time.
    pub metadata: Vec<u8>,
    /// `true` when the lease was revoked and waits for its holder to notice (it cannot
    /// be renewed, and the key stays taken until `expires_in` runs out or the holder
    /// releases it).
    pub revoked: bool,
}

/// Whatever can end a lease on behalf of its [`Lease`] handle: the manager, or a fake.
#[async_trait]
pub(crate) trait LeaseOwner: Send + Sync {
    /// Releases the lease `(key, token)` and waits for the outcome.
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError>;
    /// Releases the lease in the background (from `Drop`).
    fn release_on_drop(&self, key: Key, token: u64);
}

struct Held {
    key: Key,
    token: u64,
    owner: Arc<dyn LeaseOwner>,
}

/// A held lease. Release it with [`Lease::release`]; dropping it releases it too.
///
/// The lease is renewed in the background while it is held. Watch its
/// [`LeaseContext`] to learn when it ends for any other reason.
pub struct Lease {
    key: Key,
    token: u64,
    held: Option<Held>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("noop", &self.held.is_none())
            .finish()
    }
}

impl Lease {
    pub(crate) fn new(key: Key, token: u64, owner: Arc<dyn LeaseOwner>) -> Lease {
        Lease {
            key: key.clone(),
            token,
            held: Some(Held { key, token, owner }),
        }
    }

    /// A lease that holds nothing and whose release does nothing: the Go `NoopLease`.
    /// Its key is `/system` and its token 0.
    pub fn noop() -> Lease {
        Lease {
            key: Key::system([""; 0]),
            token: 0,
            held: None,
        }
    }

    /// `true` for [`Lease::noop`].
    pub fn is_noop(&self) -> bool {
        self.held.is_none() && self.token == 0
    }

    /// The leased key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The fencing token: strictly greater than every earlier token of this key. Pass
    /// it with every write to a resource that remembers the highest token it has seen.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Releases the lease and waits until the backend has freed the key. The holder's
    /// context ends with [`CancelReason::Released`] before this returns.
    ///
    /// Returns [`LeaseError::NotHeld`] if the lease had already ended (lost or revoked):
    /// never a panic, and never a change to a newer holder's lease.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        match self.held.take() {
            Some(held) => held.owner.release(&held.key, held.token).await,
            None => Ok(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.owner.release_on_drop(held.key, held.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn context_ends_once_with_the_first_reason() {
        let (tx, ctx) = LeaseContext::new(7);
        let copy = ctx.clone();
        assert!(!ctx.is_cancelled());
        assert!(ctx.check().is_ok());
        assert!(tx.cancel(CancelReason::Revoked));
        assert!(!tx.cancel(CancelReason::Released));
        assert_eq!(copy.cancelled().await, CancelReason::Revoked);
        assert_eq!(ctx.reason(), Some(CancelReason::Revoked));
        assert!(matches!(ctx.check(), Err(LeaseError::NotHeld)));
        assert_eq!(ctx.token(), 7);
    }

    #[tokio::test]
    async fn a_dropped_sender_is_reported_as_a_loss() {
        let (tx, ctx) = LeaseContext::new(1);
        drop(tx);
        assert_eq!(
            ctx.reason(),
            Some(CancelReason::Lost(LossCause::ManagerFailed))
        );
        assert_eq!(
            ctx.cancelled().await,
            CancelReason::Lost(LossCause::ManagerFailed)
        );
    }

    #[tokio::test]
    async fn noop_lease_and_never_context() {
        let lease = Lease::noop();
        assert!(lease.is_noop());
        assert_eq!(lease.token(), 0);
        lease.release().await.unwrap();
        let ctx = LeaseContext::never();
        assert!(!ctx.is_cancelled());
    }
}
