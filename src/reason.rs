//! Why a lease ended: every end has a reason, and a loss has a cause. A holder reads it
//! from its [`LeaseContext`](crate::LeaseContext); the metrics count ends by it.

use std::fmt;

use crate::error::LeaseError;

/// Why a [`LeaseContext`](crate::LeaseContext) ended. Every end has one: there is no
/// silent loss.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The holder released the lease (explicitly, or by dropping the [`Lease`](crate::Lease)).
    Released,
    /// An operator or another manager revoked the lease.
    Revoked,
    /// The lease was lost: renewal failed, or could not be confirmed before the local
    /// deadline. Stop acting as the holder at once.
    Lost(LossCause),
    /// The lease manager shut down (or all its handles were dropped).
    Shutdown,
    /// The holder let go of the lease here without giving the key back: it lives on in
    /// the store until it expires, or until another manager re-attaches it
    /// ([`AcquireOptions::resume`](crate::AcquireOptions::resume)). A lease server does
    /// this with the leases of clients that may re-attach elsewhere.
    HandedOver,
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
    /// The lease service reported the lease lost (for a
    /// [`ClientLeaser`](crate::ClientLeaser)); the message says why.
    Remote(String),
    /// The connection to the lease service broke, or the service ended the lease's
    /// stream (for a [`ClientLeaser`](crate::ClientLeaser)); the message says how.
    Disconnected(String),
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::Released => f.write_str("released"),
            CancelReason::Revoked => f.write_str("revoked"),
            CancelReason::Shutdown => f.write_str("lease manager shut down"),
            CancelReason::HandedOver => {
                f.write_str("handed over (left to expire or be re-attached)")
            }
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
            LossCause::Remote(why) => write!(f, "the lease service reported: {why}"),
            LossCause::Disconnected(why) => {
                write!(f, "the connection to the lease service was lost: {why}")
            }
        }
    }
}

/// The lease behind a [`LeaseContext`](crate::LeaseContext) has ended;
/// [`LeaseContext::check`](crate::LeaseContext::check) says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lease has ended: {reason}")]
pub struct LeaseEnded {
    /// Why it ended.
    pub reason: CancelReason,
}

impl From<LeaseEnded> for LeaseError {
    fn from(_: LeaseEnded) -> LeaseError {
        LeaseError::NotHeld
    }
}
