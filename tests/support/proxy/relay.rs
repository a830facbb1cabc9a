//! Accepting and relaying connections under the current fault: each direction read
//! into a bounded queue and written out as the fault allows, resets with a TCP RST.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::fault::{Dir, Fault, Shared};

/// Largest chunk read from either side in one go.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction: bounds the proxy's memory per connection and turns a
/// slow writer into TCP back-pressure on the sender instead of an unbounded queue.
const QUEUE: usize = 16;

/// Accepts connections until aborted, each relayed in a task of the set it owns.
pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
