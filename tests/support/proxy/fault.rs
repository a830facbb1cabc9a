//! The faults a `FaultProxy` injects, and the state its handle, listener,
//! connections and schedules share.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use tokio::sync::watch;

/// What the proxy does to the bytes of every connection, existing and new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward normally.
    Pass,
    /// Deliver every chunk this much later than it was read, in each direction.
    Delay(Duration),
    /// Keep connections open but discard every byte both ways; new connections are
    /// accepted but never reach the server. "The database went silent."
    Blackhole,
    /// Abort every connection with a TCP RST, and reset new ones at once.
    Reset,
    /// Forward client→server bytes, discard server→client bytes: the client's writes
    /// succeed and nothing ever answers.
    HalfOpen,
    /// Forward at most `bytes` bytes per `every`, in each direction.
    SlowDrip {
        /// Bytes per slot (at least one is sent).
        bytes: usize,
        /// Length of a slot.
        every: Duration,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::Pass => f.write_str("pass"),
            Fault::Delay(d) => write!(f, "delay {}ms", d.as_millis()),
            Fault::Blackhole => f.write_str("blackhole"),
            Fault::Reset => f.write_str("reset"),
            Fault::HalfOpen => f.write_str("half-open"),
            Fault::SlowDrip { bytes, every } => {
                write!(f, "slow-drip {bytes}B/{}ms", every.as_millis())
            }
        }
    }
}

/// Which way bytes flow through a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dir {
    ToServer,
    ToClient,
}

impl Fault {
    /// Whether bytes flowing `dir` are discarded in this mode. Reset counts as silent:
    /// the connection is about to be aborted, nothing should slip through meanwhile.
    pub(super) fn silences(self, dir: Dir) -> bool {
        match self {
            Fault::Blackhole | Fault::Reset => true,
            Fault::HalfOpen => dir == Dir::ToClient,
            _ => false,
        }
    }
}

/// Totals since the proxy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted from clients (including ones reset at once).
    pub accepted: u64,
    /// Bytes delivered to the server.
    pub to_server: u64,
    /// Bytes delivered to clients.
    pub to_client: u64,
}

/// State shared by the proxy handle, its listener, its connections and schedules.
pub(super) struct Shared {
    pub(super) target: SocketAddr,
    pub(super) mode: watch::Sender<Fault>,
    /// Bumped by `reset_all`; every connection watches it.
    pub(super) reset_gen: watch::Sender<u64>,
    pub(super) live: AtomicUsize,
    pub(super) accepted: AtomicU64,
    pub(super) to_server: AtomicU64,
    pub(super) to_client: AtomicU64,
}

impl Shared {
    pub(super) fn counter(&self, dir: Dir) -> &AtomicU64 {
        match dir {
            Dir::ToServer => &self.to_server,
            Dir::ToClient => &self.to_client,
        }
    }
}
