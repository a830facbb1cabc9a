//! What the checker runs and the nemesis acts on: the `leases serve` processes, the
//! chains of proxies in front of them, and the [`World`] that holds both.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clients::Env;
use crate::h2proxy::H2Proxy;
use crate::support::pg::PgServer;
use crate::support::proxy::{Fault, FaultProxy};

/// The `leases` binary.
pub const LEASES: &str = env!("CARGO_BIN_EXE_leases");

/// A `leases serve` process that can be killed, stopped and restarted on its port.
pub struct Server {
    /// E.g. `pg-a`.
    pub name: String,
    /// Which store it serves.
    pub store: &'static str,
    port: u16,
    args: Vec<String>,
    child: Mutex<Option<std::process::Child>>,
    log: PathBuf,
    /// A fault is being applied to it.
    pub busy: AtomicBool,
}

impl Server {
    pub fn new(
        name: &str,
        store: &'static str,
        args: Vec<String>,
        dir: &std::path::Path,
    ) -> Server {
        Server {
            name: name.into(),
            store,
            port: free_port(),
            args,
            child: Mutex::new(None),
            log: dir.join(format!("{name}.log")),
            busy: AtomicBool::new(false),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Starts it (again), retrying until it listens or `within` has passed.
    pub fn start(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            if self.try_start() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn try_start(&self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(LEASES)
            .arg("serve")
            .args(&self.args)
            .arg("--bind")
            .arg(self.addr().to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn leases serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
            *self.child.lock().unwrap() = Some(child);
            true
        } else {
            let _ = child.kill();
            let _ = child.wait();
            false
        }
    }

    /// Sends `sig` to it, if it runs.
    pub fn signal(&self, sig: i32) -> bool {
        match self.child.lock().unwrap().as_ref() {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped.
            Some(c) => unsafe { libc::kill(c.id() as i32, sig) == 0 },
            None => false,
        }
    }

    /// Waits up to `within` for it to exit (then SIGKILLs it) and reaps it.
    pub fn reap(&self, within: Duration) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A way to one server: TCP fault proxy → HTTP/2 proxy → server; and, beside a general
/// chain, the way of the HTTP holders: a TCP fault proxy straight to the server.
pub struct Chain {
    /// E.g. `pg-a/ftl`.
    pub name: String,
    /// Index into the servers.
    pub server: usize,
    /// Used by FTL clients: no silent-link faults (FTL's protocol has no deadline rule).
    pub ftl: bool,
    /// The byte-level proxy clients connect to.
    pub tcp: FaultProxy,
    /// The frame-aware proxy behind it.
    pub h2: H2Proxy,
    /// On a general chain, the byte-level proxy the HTTP holders connect to, straight
    /// to the server: the frame-aware proxy speaks only HTTP/2 (its `h2` server
    /// handshake fails on an HTTP/1.1 request and the client's connection is reset, as
    /// every run prints at its start), and the HTTP holders speak HTTP/1.1. It shares the chain's link faults ([`Chain::set_link`]):
    /// one network link to the server, whatever the protocol.
    pub http: Option<FaultProxy>,
    /// A link fault is in force.
    pub busy: AtomicBool,
    /// The link when no fault is in force: a far server's delay, or Pass.
    pub base: Fault,
}

impl Chain {
    /// Puts `fault` on the chain's link: its TCP proxy and, beside it, the HTTP
    /// holders' one.
    pub fn set_link(&self, fault: Fault) {
        self.tcp.set(fault);
        if let Some(http) = &self.http {
            http.set(fault);
        }
    }
}

/// Everything the nemesis acts on.
pub struct World {
    /// Clients' shared state and the history.
    pub env: Arc<Env>,
    /// The servers.
    pub servers: Vec<Arc<Server>>,
    /// The chains.
    pub chains: Vec<Chain>,
    /// The database.
    pub pg: Arc<PgServer>,
    /// The database is being restarted.
    pub pg_busy: AtomicBool,
    /// Held while a server is taken busy, so that two faults (the nemesis and the
    /// rolling restarts) never both see a server of a store as the last one up.
    pub taking: Mutex<()>,
}

impl World {
    /// Takes server `s` busy, for a fault that does not stop it for long (SIGSTOP);
    /// false if a fault is already applied to it.
    pub fn take(&self, s: &Server) -> bool {
        let _taking = self.taking.lock().unwrap();
        !s.busy.swap(true, Ordering::SeqCst)
    }

    /// Takes server `s` busy to take it down (kill or restart it), if another server
    /// of its store stays up meanwhile (no fault applied to it); false otherwise.
    pub fn take_down(&self, s: &Server) -> bool {
        let _taking = self.taking.lock().unwrap();
        let others_up = (self.servers.iter())
            .filter(|o| o.store == s.store && o.name != s.name)
            .any(|o| !o.busy.load(Ordering::SeqCst));
        others_up && !s.busy.swap(true, Ordering::SeqCst)
    }
}
