//! Backend I/O that ends leases, started by the supervisor in tasks of their own so
//! that a slow backend never blocks its mailbox: releases, revokes, and the releases
//! of a shutdown.
//!
//! A revoke's task reports back to the supervisor however it ends ([`RevokeDone`]), so
//! that a panic cannot leave the key's slot busy.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::messages::{ManagerMessage, Msg};
use super::tasks::{catch_panic, unpanic, InFlight};
use crate::backend::Backend;
use crate::error::{BackendError, LeaseError};
use crate::key::Key;

/// Releases `(key, token)` (inline if the backend can, else in a task) and sends the
/// outcome to `reply`, if any.
pub(crate) fn release(
    backend: &Arc<dyn Backend>,
    inflight: &InFlight,
    key: Key,
    token: u64,
    reply: Option<RpcReplyPort<Result<(), LeaseError>>>,
) {
    fn answer(
        key: &Key,
        token: u64,
        released: Result<bool, BackendError>,
        reply: Option<RpcReplyPort<Result<(), LeaseError>>>,
    ) {
        let result = match released {
            Ok(true) => Ok(()),
            Ok(false) => Err(LeaseError::NotHeld),
            Err(e) => {
                crate::metrics::backend_error(crate::metrics::Op::Release);
                tracing::warn!(%key, token, error = %e, "lease release failed");
                Err(LeaseError::Backend(e))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
    let inline = catch_panic(|| backend.inline().and_then(|b| b.release_now(&key, token)));
    if let Some(released) = inline {
        return answer(&key, token, released, reply);
    }
    let backend = backend.clone();
    let span = tracing::info_span!("lease.release", %key, token);
    inflight.spawn(
        async move {
            let k = key.clone();
            let released = unpanic(async move { backend.release(&k, token).await }).await;
            answer(&key, token, released, reply);
        }
        .instrument(span),
    );
}

/// Revokes `key` on the backend in a task and answers `reply`. `local` is the token of
/// our own holder, already told `Revoked`: its lease is given back whatever the revoke
/// said (compare-and-set on its token, so a newer holder is never touched); were it
/// left to the revoke, a failed revoke would leave the key taken by nobody until it
/// expired. While `local` is set the key's slot stays busy, and the task frees it (with
/// [`Msg::RevokeDone`]) before it answers, so that the caller's next acquire finds it
/// free, and nobody here is granted the key before the revoke reached the backend
/// (where it could mark the new lease revoked); so too while `kept`. `kept`: our holder keeps its key until it
/// releases it (see `AcquireOptions::keep_until_released`), and was told; it may give
/// the key back before the revoke reaches the backend (which then finds nothing to
/// mark), and the answer is `true` either way.
pub(crate) fn revoke(
    me: &ActorRef<ManagerMessage>,
    backend: Arc<dyn Backend>,
    inflight: &InFlight,
    key: Key,
    local: Option<u64>,
    kept: bool,
    reply: RpcReplyPort<Result<bool, LeaseError>>,
) {
    let done = RevokeDone {
        me: me.clone(),
        key: (local.is_some() || kept).then(|| key.clone()),
    };
    inflight.spawn(async move {
        let revoked = {
            let (backend, key) = (backend.clone(), key.clone());
            unpanic(async move { backend.revoke(&key).await }).await
        };
        let released = match local {
            Some(token) => {
                let (backend, key) = (backend.clone(), key.clone());
                Some(unpanic(async move { backend.release(&key, token).await }).await)
            }
            None => None,
        };
        let result = match (revoked, released) {
            (Ok(Some(token)), _) => {
                tracing::info!(%key, token, "lease revoked");
                Ok(true)
            }
            (Ok(None), Some(Ok(true))) => Ok(true),
            // Our keeping holder was told (and may already have given the key back).
            (Ok(None), _) if kept => Ok(true),
            (Ok(None), _) => Ok(false),
            (Err(e), Some(Ok(true))) => {
                crate::metrics::backend_error(crate::metrics::Op::Revoke);
                tracing::warn!(%key, error = %e, "revoke failed; our own holder gave the key back");
                Ok(true)
            }
            (Err(e), _) => {
                crate::metrics::backend_error(crate::metrics::Op::Revoke);
                Err(LeaseError::Backend(e))
            }
        };
        drop(done);
        let _ = reply.send(result);
    });
}

/// Tells the supervisor that a revoke task is over, however it ends (a drop guard, so
/// that a panic cannot leave the key's slot busy).
struct RevokeDone {
    me: ActorRef<ManagerMessage>,
    /// The key whose slot the revoke keeps busy, if any.
    key: Option<Key>,
}

impl Drop for RevokeDone {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = self
                .me
                .send_message(ManagerMessage(Msg::RevokeDone { key }));
        }
    }
}

/// Tells the backend that `(key, token)` is no longer held here although it was not
/// released ([`Backend::leave`]), in a task; a failure is only logged (a backend that
/// renews leases together also notices by itself that nobody renews it any more).
pub(crate) fn leave(backend: &Arc<dyn Backend>, inflight: &InFlight, key: Key, token: u64) {
    let backend = backend.clone();
    let span = tracing::info_span!("lease.leave", %key, token);
    inflight.spawn(
        async move {
            let k = key.clone();
            if let Err(e) = unpanic(async move { backend.leave(&k, token).await }).await {
                tracing::debug!(%key, token, error = %e, "lease leave failed");
            }
        }
        .instrument(span),
    );
}

/// Releases every `(key, token)` at once, waiting at most `timeout` (the backend may be
/// down); returns `false` if some did not finish in time.
pub(crate) async fn release_all(
    backend: &Arc<dyn Backend>,
    held: Vec<(Key, u64)>,
    timeout: Duration,
) -> bool {
    let mut releases = JoinSet::new();
    for (key, token) in held {
        let backend = backend.clone();
        releases.spawn(async move {
            let released = backend.release(&key, token).await;
            if released.is_err() {
                crate::metrics::backend_error(crate::metrics::Op::Release);
            }
            released
        });
    }
    let finished = tokio::time::timeout(timeout, async {
        while releases.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    // Releases still running when we stop waiting go on by themselves: each frees its
    // key as soon as the backend answers, rather than leaving it to expire.
    releases.detach_all();
    finished
}
