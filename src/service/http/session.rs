//! An HTTP lease's keeper: the task that holds a lease for a client that has no
//! stream, fed by its heartbeat and release requests.
//!
//! The lease is held as a native stream holds its own ([`Hold`], listed in
//! [`Holds`](crate::service::handover::Holds), so that a native client — or an HTTP
//! client through `resume` — may re-attach it), and it ends the same ways: the client's
//! release (the one clean end: the key is free at once), a revoke, a loss, no request
//! within the TTL, the server stopping, or a re-attach elsewhere. However it ends
//! otherwise, the key goes back by the remote-holder rule ([`give_back_listed`]): when
//! the time last promised to the client has passed, or at once on a release the client
//! sends after it heard the end. Until then the keeper stays, and answers heartbeats
//! with why the lease ended.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::service::give_back::give_back_listed;
use crate::service::handover::{hand, Hold};
use crate::service::shared::{Shared, Slot, StreamGuard};
use crate::service::status::time_left;
use crate::{CancelReason, Key};

/// A request for a lease's keeper.
pub(crate) enum Ask {
    /// Keep the lease alive: answered with the time left, or why it ended.
    Heartbeat(oneshot::Sender<Result<Duration, Ended>>),
    /// The client has stopped: answered once the key is given back, with `None` if
    /// the lease was still live, or why it had ended.
    Release(oneshot::Sender<Option<Ended>>),
}

/// Why an HTTP lease ended (the `code` of its 410 answer).
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl Ended {
    fn new(code: &'static str, message: impl Into<String>) -> Ended {
        Ended {
            code,
            message: message.into(),
        }
    }

    /// The end of a lease whose context ended for `reason`.
    pub(crate) fn by(reason: &CancelReason) -> Ended {
        let code = match reason {
            CancelReason::Revoked => "revoked",
            CancelReason::Shutdown => "shutdown",
            CancelReason::Released => "released",
            _ => "lost",
        };
        Ended::new(code, format!("the lease ended: {reason}"))
    }
}

type Entries = HashMap<(Key, u64), (u64, mpsc::Sender<Ask>)>;

/// The keepers of one server's HTTP leases, by key and token.
#[derive(Clone, Default)]
pub(crate) struct Keepers {
    entries: Arc<Mutex<Entries>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// A keeper's entry in [`Keepers`]; dropping it takes the entry out.
struct Entry {
    entries: Arc<Mutex<Entries>>,
    key: (Key, u64),
    id: u64,
    /// The lease's place in its client's count, freed with the entry.
    _counted: Slot<IpAddr>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut entries = crate::sync::lock(&self.entries);
        if entries.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            entries.remove(&self.key);
        }
    }
}

impl Keepers {
    /// The keeper of the lease `(key, token)`, if this server has one.
    pub(crate) fn get(&self, key: &Key, token: u64) -> Option<mpsc::Sender<Ask>> {
        crate::sync::lock(&self.entries)
            .get(&(key.clone(), token))
            .map(|(_, tx)| tx.clone())
    }

    /// Starts the keeper of `hold`, whose client was last heard now. No `.await` may
    /// come between obtaining the hold and this call: a request dropped there would
    /// drop the hold.
    pub(crate) fn keep(
        &self,
        shared: &Shared,
        hold: Hold,
        key: Key,
        ttl: Duration,
        counted: Slot<IpAddr>,
    ) {
        let token = hold.token();
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Few asks wait at once (each HTTP request waits for its answer); more wait
        // for room in their requests (as many as there are requests).
        let (tx, asks) = mpsc::channel(16);
        crate::sync::lock(&self.entries).insert((key.clone(), token), (id, tx));
        let entry = Entry {
            entries: self.entries.clone(),
            key: (key, token),
            id,
            _counted: counted,
        };
        let counted = shared.stream();
        tokio::spawn(run(shared.clone(), hold, ttl, asks, entry, counted));
    }
}

/// The keeper: holds the lease until it ends, then gives it back by the rule.
async fn run(
    shared: Shared,
    mut hold: Hold,
    ttl: Duration,
    mut asks: mpsc::Receiver<Ask>,
    entry: Entry,
    counted: StreamGuard,
) {
    let mut listed = shared.holds.list(&entry.key.0, entry.key.1, ttl);
    let stopping = shared.stopping.clone();
    let mut last = Instant::now();
    let ended = loop {
        tokio::select! {
            biased;
            _ = stopping.cancelled() => {
                break if shared.let_go.shared_store {
                    Ended::new(
                        "handed_over",
                        "the lease service is shutting down: re-attach the lease through \
                         another server (acquire with `resume`)",
                    )
                } else {
                    Ended::new("shutdown", "the lease service is shutting down")
                };
            }
            reason = hold.ctx.cancelled() => {
                hold.noted_end(&reason);
                break Ended::by(&reason);
            }
            claim = listed.claims.recv() => match hand(claim, hold) {
                // Re-attached elsewhere: this server no longer keeps it for HTTP.
                Ok(()) => return drop((entry, counted)),
                Err(back) => hold = back,
            },
            _ = tokio::time::sleep_until(last + ttl) => {
                break Ended::new("lost", "no request within the TTL: the client is gone");
            }
            Some(ask) = asks.recv() => match ask {
                Ask::Heartbeat(reply) => {
                    last = Instant::now();
                    // Never confirm an ended lease.
                    if let Some(reason) = hold.ctx.reason() {
                        let ended = Ended::by(&reason);
                        let _ = reply.send(Err(ended.clone()));
                        break ended;
                    }
                    let left = time_left(&hold.ctx, ttl);
                    hold.promised = hold.promised.max(Instant::now() + left);
                    let _ = reply.send(Ok(left));
                }
                Ask::Release(reply) => {
                    drop(listed);
                    drop(entry);
                    hold.release().await;
                    let _ = reply.send(None);
                    return drop(counted);
                }
            },
        }
    };
    let mut release = None;
    let clean_end = released(&mut asks, &ended, &mut release);
    give_back_listed(hold, listed, clean_end, &shared.let_go).await;
    // Answered once the key is back, so that the client may count on it.
    if let Some(reply) = release {
        let _ = reply.send(Some(ended));
    }
    drop((entry, counted));
}

/// Answers heartbeats with why the lease ended; returns at the client's release (it
/// has stopped), leaving its answer in `release` for after the key is given back.
async fn released(
    asks: &mut mpsc::Receiver<Ask>,
    ended: &Ended,
    release: &mut Option<oneshot::Sender<Option<Ended>>>,
) {
    while let Some(ask) = asks.recv().await {
        match ask {
            Ask::Heartbeat(reply) => {
                let _ = reply.send(Err(ended.clone()));
            }
            Ask::Release(reply) => {
                *release = Some(reply);
                return;
            }
        }
    }
    std::future::pending().await
}
