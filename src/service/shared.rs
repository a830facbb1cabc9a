//! What the services of one server share: its manager and options, the stop signal,
//! the count of streams still holding leases (which shutdown waits for), and the open
//! lease streams of each client connection (which the per-connection limit counts),
//! and the log of recent lease events (`events.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::events::Events;
use super::handover::{Holds, LetGo};
use super::options::ServeOptions;
use crate::LeaseManager;

/// State shared by the services of one server.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) manager: LeaseManager,
    pub(crate) options: Arc<ServeOptions>,
    /// Cancelled when the server stops: every stream releases its leases and ends.
    pub(crate) stopping: CancellationToken,
    /// How many streams still hold (or are letting go of) leases.
    pub(crate) active: Arc<tokio::sync::watch::Sender<usize>>,
    /// Open lease streams per client connection (by its remote address).
    pub(crate) streams: Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>>,
    /// The leases native streams hold, for a client that re-attaches one.
    pub(crate) holds: Holds,
    /// How a lease whose client did not release it is let go of.
    pub(crate) let_go: LetGo,
    /// What happened lately to the leases this server holds (the console's timeline).
    pub(crate) events: Events,
}

/// One open lease stream, counted against its connection's limit until dropped.
pub(crate) struct StreamSlot {
    streams: Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>>,
    peer: Option<SocketAddr>,
}

impl Shared {
    /// Counts a new stream of the connection `peer`, or refuses it with
    /// `RESOURCE_EXHAUSTED` when the connection has its limit of open streams.
    pub(crate) fn open_stream(&self, peer: Option<SocketAddr>) -> Result<StreamSlot, Status> {
        if let Some(addr) = peer {
            let mut streams = crate::sync::lock(&self.streams);
            let n = streams.entry(addr).or_insert(0);
            if *n >= self.options.max_streams_per_connection as usize {
                return Err(Status::resource_exhausted(format!(
                    "too many lease streams on one connection (at most {})",
                    self.options.max_streams_per_connection
                )));
            }
            *n += 1;
        }
        Ok(StreamSlot {
            streams: self.streams.clone(),
            peer,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(addr) = self.peer {
            let mut streams = crate::sync::lock(&self.streams);
            if let Some(n) = streams.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    streams.remove(&addr);
                }
            }
        }
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
