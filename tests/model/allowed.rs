//! The reasons a context may end with, given what the test did to it.

use leases::{CancelReason, LossCause};

use crate::ops::Fault;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowed {
    Released,
    Revoked,
    Lost(Fault),
    Shutdown,
}

pub(crate) fn permits(allowed: &[Allowed], reason: &CancelReason) -> bool {
    allowed.iter().any(|a| {
        matches!(
            (a, reason),
            (Allowed::Released, CancelReason::Released)
                | (Allowed::Revoked, CancelReason::Revoked)
                | (Allowed::Shutdown, CancelReason::Shutdown)
                | (
                    Allowed::Lost(Fault::Stall | Fault::Fail),
                    CancelReason::Lost(LossCause::DeadlineExceeded)
                )
                | (
                    Allowed::Lost(Fault::Refuse),
                    CancelReason::Lost(LossCause::RenewalRefused)
                )
                | (
                    Allowed::Lost(Fault::Panic),
                    CancelReason::Lost(LossCause::RenewerFailed(_))
                )
        )
    })
}
