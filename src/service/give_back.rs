//! The remote-holder rule, in one place: when the lease service may give a key back.
//!
//! A lease the service holds for a client across the network ends on the server first
//! (the client's release, a revoke through any server or the command line, a repeated
//! revoke, a renewal failure, a lapse, a broken stream, a shutdown) and reaches the
//! client one hop later, if ever. The client is a holder until it has surely heard or
//! until the time it was promised has passed. So every stream, of either protocol,
//! ends its leases through [`give_back`], which releases a lease only:
//! - at once, on the client's own explicit end (the native protocol's `release`
//!   message; FTL's half-close of the request stream), or
//! - when the time the server last promised the client has passed.
//!
//! Nothing else counts as the client having stopped: an end of the request stream
//! without a release (native), an HTTP/2 `RST_STREAM` of any code, a GOAWAY, a
//! transport error or a response stream the client dropped are a *broken* stream (see
//! [`resets`](super::resets), which turns a reset that hyper reports as a clean end
//! into an error). Meanwhile the lease stays taken: the manager never gives back a
//! key held with [`keep_until_released`](crate::AcquireOptions::keep_until_released),
//! and renews it while its context lives, so the store cannot grant it to anyone else
//! before the release below.

use std::future::Future;

use tokio::time::Instant;

use super::handover::{hand, Hold, LetGo, Listed};
use crate::Lease;

/// Gives `lease` back once `clean_end` completes (the client said it has stopped: the
/// key is released) or `promised` has passed (the server lets go of it as `how` says:
/// released, or left in a shared store), whichever comes first; on a shared store, at
/// once when the server stops. Dropping this future mid-way drops the lease, which
/// releases it: only a server that is going away does that (its manager's shutdown
/// then leaves kept keys to expire instead).
pub(crate) async fn give_back(
    lease: Lease,
    promised: Instant,
    clean_end: impl Future<Output = ()>,
    how: &LetGo,
) {
    let clean = tokio::select! {
        _ = tokio::time::sleep_until(promised) => false,
        _ = how.early() => false,
        _ = clean_end => true,
    };
    if clean {
        let _ = lease.release().await;
    } else {
        how.let_go(lease).await;
    }
}

/// [`give_back`] for a native stream's lease, which stays listed (see
/// [`Holds`](super::handover::Holds)) until it is given back: a client that re-attaches
/// it meanwhile on another stream of this server takes it over, promise and all.
pub(crate) async fn give_back_listed(
    mut hold: Hold,
    mut listed: Listed,
    clean_end: impl Future<Output = ()>,
    how: &LetGo,
) {
    let mut clean_end = std::pin::pin!(clean_end);
    let clean = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(hold.promised) => break false,
            _ = how.early() => break false,
            _ = &mut clean_end => break true,
            Some(claim) = listed.claims.recv() => match hand(claim, hold) {
                Ok(()) => return,
                Err(back) => hold = back,
            },
        }
    };
    drop(listed);
    if clean {
        hold.release().await;
    } else {
        hold.let_go().await;
    }
}
