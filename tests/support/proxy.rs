//! A TCP fault proxy: sits between lease managers and a server on 127.0.0.1 and injects
//! network faults (latency, silence, resets, half-open connections, a slow link) into
//! live connections at any moment, so tests can cut operations off mid-flight.
//!
//! The proxy's tasks live on the tokio runtime it was started on; dropping the
//! [`FaultProxy`] stops the listener and closes every proxied connection.
//!
//! Discarded bytes are gone for good: switching back to [`Fault::Pass`] after
//! [`Fault::Blackhole`] or [`Fault::HalfOpen`] does not replay them. A byte stream with
//! a hole in it (the PostgreSQL protocol on that connection) is then broken, as after a
//! real network fault that TCP could not repair; the client must notice and give up on
//! the connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

use super::rng::XorShift;

/// Largest chunk read from either side in one go.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction: bounds the proxy's memory per connection and turns a
/// slow writer into TCP back-pressure on the sender instead of an unbounded queue.
const QUEUE: usize = 16;

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
enum Dir {
    ToServer,
    ToClient,
}

impl Fault {
    /// Whether bytes flowing `dir` are discarded in this mode. Reset counts as silent:
    /// the connection is about to be aborted, nothing should slip through meanwhile.
    fn silences(self, dir: Dir) -> bool {
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
struct Shared {
    target: SocketAddr,
    mode: watch::Sender<Fault>,
    /// Bumped by `reset_all`; every connection watches it.
    reset_gen: watch::Sender<u64>,
    live: AtomicUsize,
    accepted: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
}

impl Shared {
    fn counter(&self, dir: Dir) -> &AtomicU64 {
        match dir {
            Dir::ToServer => &self.to_server,
            Dir::ToClient => &self.to_client,
        }
    }
}

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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    if *shared.mode.borrow() == Fault::Reset {
                        abort(client);
                        continue;
                    }
                    // Subscribe here, not in the task: a reset_all issued after this
                    // accept must reach this connection even if its task starts late.
                    let reset_rx = shared.reset_gen.subscribe();
                    shared.live.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(connection(client, shared.clone(), reset_rx));
                }
                // E.g. out of file descriptors: back off instead of spinning or panicking.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set stays as small as the live count.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Closes `stream` with a RST rather than a FIN.
fn abort(stream: TcpStream) {
    // set_zero_linger, not the deprecated set_linger(Some(ZERO)): same SO_LINGER 0.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Decrements the live count however the connection task ends, aborts included.
struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One proxied connection. The client socket stays owned here, outside the relay, so a
/// reset can set linger 0 on it and drop it.
async fn connection(
    mut client: TcpStream,
    shared: Arc<Shared>,
    mut reset_rx: watch::Receiver<u64>,
) {
    let _live = LiveGuard(shared.clone());
    let _ = client.set_nodelay(true);
    let mut mode_rx = shared.mode.subscribe();
    let rst = {
        let relay = relay(&mut client, &shared);
        tokio::select! {
            result = relay => result.is_err(),
            () = reset_signal(&mut reset_rx, &mut mode_rx) => true,
        }
    };
    // On a reset, and on any I/O error (including a server that reset us), the client
    // sees a RST; a clean end of both streams closes normally.
    if rst {
        abort(client);
    }
}

/// Resolves when this connection must be reset: `reset_all` or the Reset mode.
async fn reset_signal(reset_rx: &mut watch::Receiver<u64>, mode_rx: &mut watch::Receiver<Fault>) {
    loop {
        if *mode_rx.borrow_and_update() == Fault::Reset {
            return;
        }
        tokio::select! {
            changed = reset_rx.changed() => {
                if changed.is_ok() {
                    return;
                }
                // Unreachable while we hold the Arc<Shared>; never spin on it.
                std::future::pending::<()>().await;
            }
            changed = mode_rx.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// Forwards between `client` and the target until both directions have ended (Ok) or
/// either side fails (Err).
async fn relay(client: &mut TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let (mut client_r, client_w) = client.split();
    let mut mode_rx = shared.mode.subscribe();

    // While the database is silent, a new connection must not reach it at all: read and
    // discard the client's bytes until the mode lets them through, then connect.
    let mut first: Option<Chunk> = None;
    while mode_rx.borrow_and_update().silences(Dir::ToServer) {
        let mut data = vec![0u8; CHUNK];
        tokio::select! {
            n = client_r.read(&mut data) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                // As in read_side, the mode when the read completes decides: bytes that
                // arrived after a switch back to Pass are forwarded, not lost.
                if !mode_rx.borrow().silences(Dir::ToServer) {
                    data.truncate(n);
                    first = Some(Chunk { data, read_at: Instant::now() });
                }
            }
            () = mode_changed(&mut mode_rx) => {}
        }
    }

    let mut server = TcpStream::connect(shared.target).await?;
    let _ = server.set_nodelay(true);
    let (server_r, server_w) = server.split();

    let (to_server_tx, to_server_rx) = mpsc::channel(QUEUE);
    if let Some(chunk) = first {
        // The queue is new and empty, so this cannot fail.
        let _ = to_server_tx.try_send(chunk);
    }
    let (to_client_tx, to_client_rx) = mpsc::channel(QUEUE);
    // The two pumps (reader + writer per direction) run as futures of this one task so
    // they can borrow the client socket that the connection task must keep for resets.
    tokio::try_join!(
        read_side(
            client_r,
            to_server_tx,
            shared.mode.subscribe(),
            Dir::ToServer
        ),
        write_side(
            server_w,
            to_server_rx,
            shared.mode.subscribe(),
            Dir::ToServer,
            shared
        ),
        read_side(
            server_r,
            to_client_tx,
            shared.mode.subscribe(),
            Dir::ToClient
        ),
        write_side(
            client_w,
            to_client_rx,
            shared.mode.subscribe(),
            Dir::ToClient,
            shared
        ),
    )?;
    Ok(())
}

/// A chunk read from one side, stamped so Delay counts from when it was read.
struct Chunk {
    data: Vec<u8>,
    read_at: Instant,
}

/// Reads one side into the direction's bounded queue; bytes read while the direction
/// is silenced are dropped here, never queued. Closing the queue signals end of stream.
async fn read_side(
    mut reader: impl AsyncRead + Unpin,
    queue: mpsc::Sender<Chunk>,
    mode_rx: watch::Receiver<Fault>,
    dir: Dir,
) -> io::Result<()> {
    loop {
        let mut data = vec![0u8; CHUNK];
        let n = reader.read(&mut data).await?;
        if n == 0 {
            return Ok(());
        }
        if mode_rx.borrow().silences(dir) {
            continue;
        }
        data.truncate(n);
        let chunk = Chunk {
            data,
            read_at: Instant::now(),
        };
        if queue.send(chunk).await.is_err() {
            return Ok(());
        }
    }
}

/// Waits for the mode to change. The sender lives in `Shared`, which every caller keeps
/// alive, so an error cannot happen; if it did, park rather than spin.
async fn mode_changed(mode_rx: &mut watch::Receiver<Fault>) {
    if mode_rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Delivers the direction's queued chunks to the other side under the current mode,
/// consulted again before every write so a switch applies to queued bytes too.
async fn write_side(
    mut writer: impl AsyncWrite + Unpin,
    mut queue: mpsc::Receiver<Chunk>,
    mut mode_rx: watch::Receiver<Fault>,
    dir: Dir,
    shared: &Shared,
) -> io::Result<()> {
    let counter = shared.counter(dir);
    // SlowDrip: earliest time the next slice may go out.
    let mut next_slot = Instant::now();
    while let Some(chunk) = queue.recv().await {
        let mut sent = 0;
        while sent < chunk.data.len() {
            let mode = *mode_rx.borrow_and_update();
            if mode.silences(dir) {
                // Discarded, not kept for later: see the module docs.
                break;
            }
            let now = Instant::now();
            let end = match mode {
                Fault::Delay(delay) => {
                    let due = chunk.read_at + delay;
                    if now < due {
                        tokio::select! {
                            () = sleep_until(due) => {}
                            () = mode_changed(&mut mode_rx) => {}
                        }
                        continue;
                    }
                    chunk.data.len()
                }
                Fault::SlowDrip { bytes, every } => {
                    if now < next_slot {
                        tokio::select! {
                            () = sleep_until(next_slot) => {}
                            () = mode_changed(&mut mode_rx) => {}
                        }
                        continue;
                    }
                    next_slot = now + every;
                    chunk.data.len().min(sent + bytes.max(1))
                }
                _ => chunk.data.len(),
            };
            writer.write_all(&chunk.data[sent..end]).await?;
            counter.fetch_add((end - sent) as u64, Ordering::SeqCst);
            sent = end;
        }
    }
    // End of stream from the other side. Hold the FIN while this direction is silenced
    // (a silent network does not carry it either); deliver it once the mode allows.
    while mode_rx.borrow_and_update().silences(dir) {
        mode_changed(&mut mode_rx).await;
    }
    writer.shutdown().await
}

// ------------------------------------------------------------------ schedules ---

/// One step of a fault schedule: at `at` (from the schedule's start) switch to `fault`
/// for `hold`, then back to Pass unless the next step starts right then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// When the fault starts, from the start of the schedule.
    pub at: Duration,
    /// The fault injected.
    pub fault: Fault,
    /// How long it lasts.
    pub hold: Duration,
}

/// A list of timed faults for [`FaultProxy::run_schedule`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSchedule {
    /// Steps, in order of `at`, not overlapping.
    pub steps: Vec<Step>,
}

/// Shortest fault hold and Pass gap in a random schedule.
const MIN_HOLD: Duration = Duration::from_millis(50);

impl FaultSchedule {
    /// A schedule of the given steps.
    pub fn new(steps: Vec<Step>) -> Self {
        FaultSchedule { steps }
    }

    /// A random schedule of faults that slow a link without breaking it (delays of
    /// 1..30 ms, and a slow drip of a few KiB per couple of milliseconds), switched every
    /// 50..400 ms for `total`: operations stay well within their timeouts, so a test's
    /// assertions about outcomes still hold while every await point sees latency.
    pub fn latency(seed: u64, total: Duration) -> Self {
        let mut rng = XorShift::new(seed);
        let mut steps = Vec::new();
        let mut t = Duration::ZERO;
        while t < total {
            let hold = rng.millis(MIN_HOLD, Duration::from_millis(400));
            let fault = match rng.below(3) {
                0 => Fault::Pass,
                1 => Fault::Delay(rng.millis(Duration::from_millis(1), Duration::from_millis(30))),
                _ => Fault::SlowDrip {
                    bytes: 1024 + rng.below(4096) as usize,
                    every: rng.millis(Duration::from_millis(1), Duration::from_millis(3)),
                },
            };
            steps.push(Step { at: t, fault, hold });
            t += hold;
        }
        FaultSchedule { steps }
    }

    /// A random schedule fitting in `total`, the same for the same arguments: Pass gaps
    /// of 50 ms..`max_hold` (a quarter of them zero, so faults also follow each other
    /// directly), then a fault of any kind held 50 ms..`max_hold`.
    pub fn random(seed: u64, total: Duration, max_hold: Duration) -> Self {
        let mut rng = XorShift::new(seed);
        let max_hold = max_hold.max(MIN_HOLD);
        let mut steps = Vec::new();
        let mut t = Duration::ZERO;
        loop {
            if rng.below(4) != 0 || steps.is_empty() {
                t += rng.millis(MIN_HOLD, max_hold);
            }
            let fault = match rng.below(5) {
                0 => Fault::Delay(rng.millis(Duration::from_millis(10), max_hold)),
                1 => Fault::Blackhole,
                2 => Fault::Reset,
                3 => Fault::HalfOpen,
                _ => Fault::SlowDrip {
                    bytes: 1 + rng.below(512) as usize,
                    every: rng.millis(Duration::from_millis(5), Duration::from_millis(50)),
                },
            };
            let hold = rng.millis(MIN_HOLD, max_hold);
            if t + hold > total {
                break;
            }
            steps.push(Step { at: t, fault, hold });
            t += hold;
        }
        FaultSchedule { steps }
    }
}

async fn run_schedule(shared: Weak<Shared>, schedule: FaultSchedule) -> Vec<String> {
    let start = Instant::now();
    let stamp = |start: Instant| format!("t={:.2}s", start.elapsed().as_secs_f64());
    let set = |fault: Fault| match shared.upgrade() {
        Some(shared) => {
            shared.mode.send_replace(fault);
            true
        }
        None => false,
    };
    let mut log = Vec::new();
    let steps = &schedule.steps;
    for (i, step) in steps.iter().enumerate() {
        sleep_until(start + step.at).await;
        if !set(step.fault) {
            log.push(format!("{} proxy dropped, schedule ends", stamp(start)));
            return log;
        }
        log.push(format!(
            "{} {} for {:.2}s",
            stamp(start),
            step.fault,
            step.hold.as_secs_f64()
        ));
        let end = step.at + step.hold;
        sleep_until(start + end).await;
        let next_at = steps.get(i + 1).map(|next| next.at);
        if next_at.is_none_or(|at| at > end) && !set(Fault::Pass) {
            log.push(format!("{} proxy dropped, schedule ends", stamp(start)));
            return log;
        }
    }
    set(Fault::Pass);
    log.push(format!("{} pass (end)", stamp(start)));
    log
}
