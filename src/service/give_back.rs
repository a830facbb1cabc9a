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
        // The client's release first (see `give_back_listed`).
        biased;
        _ = clean_end => true,
        _ = tokio::time::sleep_until(promised) => false,
        _ = how.early() => false,
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
    // Nobody waits for the lease's end here: its own task records it when it comes.
    hold.watch_end();
    let mut clean_end = std::pin::pin!(clean_end);
    let clean = loop {
        tokio::select! {
            // The client's release first: one that is already there frees the key at
            // once, however late or early it is otherwise.
            biased;
            _ = &mut clean_end => break true,
            _ = tokio::time::sleep_until(hold.promised) => break false,
            _ = how.early() => break false,
            claim = listed.claims.recv() => match hand(claim, hold) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::service::handover::Holds;
    use crate::{AcquireOptions, Key, LeaseManager};

    /// A client's release that is already there when a draining server on a shared store
    /// gives its lease back frees the key at once (it used to be a coin toss between the
    /// release and leaving the lease in the store until it expired, while the client was
    /// told the key was given back).
    #[tokio::test(start_paused = true)]
    async fn a_release_already_there_wins_over_a_drain() {
        let manager = LeaseManager::builder().start().await.unwrap();
        let stopping = CancellationToken::new();
        stopping.cancel();
        let how = LetGo {
            shared_store: true,
            stopping,
        };
        let holds = Holds::default();
        for i in 0..20 {
            let key = Key::system(["give-back", &i.to_string()]);
            let ttl = Duration::from_secs(10);
            let options = AcquireOptions::new(ttl).keep_until_released();
            let (lease, ctx) = manager
                .acquire_lease_with(key.clone(), options)
                .await
                .unwrap();
            let mut hold = Hold::new(lease, ctx, &how, None);
            hold.promised = Instant::now() + ttl;
            let listed = holds.list(&key, hold.token(), ttl);
            give_back_listed(hold, listed, std::future::ready(()), &how).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(
                manager.lease_info(&key).await.unwrap().map(|i| i.token),
                None,
                "try {i}: the key was left in the store, not released"
            );
        }
    }
}
