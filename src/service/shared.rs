//! What the services of one server share: its manager and options, the stop signal,
//! the count of streams still holding leases (which shutdown waits for), and the open
//! lease streams of each client connection (which the per-connection limit counts),
//! and the log of recent lease events (`events.rs`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::events::Events;
use super::handover::{Holds, LetGo};
use super::options::ServeOptions;
use crate::LeaseManager;

/// State shared by the services of one server (cheap to clone: one pointer, which
/// every held lease's task keeps).
#[derive(Clone)]
pub(crate) struct Shared(Arc<SharedState>);

impl Shared {
    pub(crate) fn new(state: SharedState) -> Shared {
        Shared(Arc::new(state))
    }
}

impl std::ops::Deref for Shared {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// What [`Shared`] holds.
pub(crate) struct SharedState {
    pub(crate) manager: LeaseManager,
    pub(crate) options: Arc<ServeOptions>,
    /// Cancelled when the server stops: every stream releases its leases and ends.
    pub(crate) stopping: CancellationToken,
    /// How many streams still hold (or are letting go of) leases.
    pub(crate) active: Arc<tokio::sync::watch::Sender<usize>>,
    /// Open lease streams per client connection (by its remote address).
    pub(crate) streams: PerClient<SocketAddr>,
    /// HTTP leases kept per client (by its IP address).
    pub(crate) http_leases: PerClient<IpAddr>,
    /// The leases native streams hold, for a client that re-attaches one.
    pub(crate) holds: Holds,
    /// How a lease whose client did not release it is let go of.
    pub(crate) let_go: LetGo,
    /// What happened lately to the leases this server holds (the console's timeline).
    pub(crate) events: Events,
}

/// How many of something each client has open (lease streams by connection, HTTP
/// leases by address), counted against a limit.
pub(crate) struct PerClient<K: Eq + Hash> {
    counts: Arc<std::sync::Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash> Clone for PerClient<K> {
    fn clone(&self) -> Self {
        PerClient {
            counts: self.counts.clone(),
        }
    }
}

impl<K: Eq + Hash> Default for PerClient<K> {
    fn default() -> Self {
        PerClient {
            counts: Arc::default(),
        }
    }
}

impl<K: Eq + Hash + Clone> PerClient<K> {
    /// Counts one more for `client`, or `None` when it already has `limit`.
    pub(crate) fn take(&self, client: K, limit: usize) -> Option<Slot<K>> {
        let mut counts = crate::sync::lock(&self.counts);
        let n = counts.entry(client.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.counts.clone(),
            client: Some(client),
        })
    }
}

/// One counted thing of a client (see [`PerClient`]), counted until dropped.
pub(crate) struct Slot<K: Eq + Hash> {
    counts: Arc<std::sync::Mutex<HashMap<K, usize>>>,
    /// `None` for what is not counted (a stream whose peer is unknown).
    client: Option<K>,
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some(client) = &self.client {
            let mut counts = crate::sync::lock(&self.counts);
            if let Some(n) = counts.get_mut(client) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(client);
                }
            }
        }
    }
}

/// One open lease stream, counted against its connection's limit until dropped.
pub(crate) type StreamSlot = Slot<SocketAddr>;

impl Shared {
    /// Counts a new stream of the connection `peer`, or refuses it with
    /// `RESOURCE_EXHAUSTED` when the connection has its limit of open streams.
    pub(crate) fn open_stream(&self, peer: Option<SocketAddr>) -> Result<StreamSlot, Status> {
        let Some(addr) = peer else {
            return Ok(Slot {
                counts: self.streams.counts.clone(),
                client: None,
            });
        };
        let limit = self.options.max_streams_per_connection as usize;
        self.streams.take(addr, limit).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "too many lease streams on one connection (at most {limit})"
            ))
        })
    }
}

impl Shared {
    /// Counts a stream until the returned guard is dropped (its task has ended).
    pub(crate) fn stream(&self) -> StreamGuard {
        self.active.send_modify(|n| *n += 1);
        StreamGuard(self.active.clone())
    }
}

/// Held by the task serving one stream; see [`Shared::stream`].
pub(crate) struct StreamGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
