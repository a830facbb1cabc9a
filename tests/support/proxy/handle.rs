//! [`FaultProxy`]: the handle of one fault proxy, which switches its fault, resets its
//! connections, counts its traffic and runs schedules; dropping it stops everything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fault::{Counters, Fault, Shared};
use super::relay::accept_loop;
use super::schedule::{run_schedule, FaultSchedule};

/// A fault-injecting TCP proxy on 127.0.0.1 in front of one target address.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Handle,
    listener: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds 127.0.0.1:0 and forwards every accepted connection to `target`, starting
    /// in [`Fault::Pass`]. Must be called on a tokio runtime, which runs the proxy.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the fault proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("fault proxy address");
        let shared = Arc::new(Shared {
            target,
            mode: watch::Sender::new(Fault::Pass),
            reset_gen: watch::Sender::new(0),
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        });
        let runtime = Handle::current();
        let listener = runtime.spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            runtime,
            listener,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches the fault mode for existing and new connections at once.
    pub fn set(&self, fault: Fault) {
        // send_replace: never fails, even before any connection subscribed.
        self.shared.mode.send_replace(fault);
    }

    /// The current fault mode.
    pub fn fault(&self) -> Fault {
        *self.shared.mode.borrow()
    }

    /// Aborts every current connection with a TCP RST, leaving the mode unchanged. The
    /// resets happen on the proxy's tasks, within moments of this call.
    pub fn reset_all(&self) {
        self.shared.reset_gen.send_modify(|g| *g += 1);
    }

    /// Number of live proxied connections.
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Totals of connections accepted and bytes forwarded each way.
    pub fn counters(&self) -> Counters {
        Counters {
            accepted: self.shared.accepted.load(Ordering::SeqCst),
            to_server: self.shared.to_server.load(Ordering::SeqCst),
            to_client: self.shared.to_client.load(Ordering::SeqCst),
        }
    }

    /// Applies each step of `schedule` at its time (counted from now), returns to
    /// [`Fault::Pass`] after each hold and at the end, and yields a log of what it
    /// injected. Ends early, saying so, if the proxy is dropped meanwhile.
    pub fn run_schedule(&self, schedule: FaultSchedule) -> JoinHandle<Vec<String>> {
        // Weak: a running schedule must not keep a dropped proxy's state alive.
        let shared = Arc::downgrade(&self.shared);
        self.runtime.spawn(run_schedule(shared, schedule))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The listener task owns the JoinSet of connection tasks: aborting it drops the
        // set, which aborts every connection and closes its sockets.
        self.listener.abort();
    }
}
