//! A frame-aware HTTP/2 proxy for the whole-stack checker: it terminates each client's
//! h2 connection, opens one upstream h2 connection per client connection, and forwards
//! every stream's headers, data and trailers both ways, as an L7 proxy (Envoy, FTL's
//! runner proxy) does. On command it injects the faults such proxies produce:
//!
//! - `RST_STREAM(code)` upstream on one stream while the client hears nothing for a
//!   while (then its stream is reset too): what a proxy sends when its downstream dies;
//! - GOAWAY to the client (graceful, or abrupt with an error code).
//!
//! When the client's connection or a client stream breaks, the proxy does what L7
//! proxies do: it resets the matching upstream streams (`CANCEL`, or the client's code).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// A fault for one stream.
#[derive(Clone, Copy, Debug)]
pub struct StreamReset {
    /// The code of the `RST_STREAM` sent upstream.
    pub reason: Reason,
    /// How long the client's side stays open but silent before it is reset too.
    pub client_after: Duration,
}

/// A fault for one client connection.
#[derive(Clone, Copy, Debug)]
pub enum ConnFault {
    /// GOAWAY(NO_ERROR): no new streams; the open ones run to their end.
    GracefulGoaway,
    /// GOAWAY(code) and the connection is closed.
    AbruptGoaway(Reason),
}

struct StreamEntry {
    path: String,
    /// What the labeller made of the stream's first request message.
    label: String,
    fault: mpsc::UnboundedSender<StreamReset>,
}

/// A labelled stream, as the proxy saw it: when it began (its first request message)
/// and ended, on the history's clock.
#[derive(Clone, Debug)]
pub struct Seen {
    /// What the labeller made of its first request message.
    pub label: String,
    /// When that message came (nanoseconds, CLOCK_BOOTTIME).
    pub opened: u64,
    /// When the stream ended, if it has.
    pub closed: Option<u64>,
}

/// Names a stream from its path and the first bytes the client sent (for the log).
pub type Labeller = fn(&str, &[u8]) -> String;

struct Ctl {
    upstream: SocketAddr,
    labeller: Labeller,
    next: AtomicU64,
    streams: Mutex<HashMap<u64, StreamEntry>>,
    /// Every stream that got a (non-empty) label, by id.
    seen: Mutex<HashMap<u64, Seen>>,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<ConnFault>>>,
}

/// The proxy; dropping it stops the listener and every connection.
pub struct H2Proxy {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
    task: JoinHandle<()>,
}

impl H2Proxy {
    /// Listens on 127.0.0.1 (a free port) and proxies to `upstream`.
    pub async fn start(upstream: SocketAddr, labeller: Labeller) -> H2Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind h2 proxy");
        let addr = listener.local_addr().unwrap();
        let ctl = Arc::new(Ctl {
            upstream,
            labeller,
            next: AtomicU64::new(1),
            streams: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(accept_loop(listener, ctl.clone()));
        H2Proxy { addr, ctl, task }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live streams: id, request path and label.
    pub fn streams(&self) -> Vec<(u64, String, String)> {
        let mut v: Vec<_> = (self.ctl.streams.lock().unwrap().iter())
            .map(|(id, e)| (*id, e.path.clone(), e.label.clone()))
            .collect();
        v.sort();
        v
    }

    /// Every stream that got a label so far, the live ones too, by when it began: the
    /// checker tells from them which server held a lease when.
    pub fn seen(&self) -> Vec<Seen> {
        let mut v: Vec<Seen> = self.ctl.seen.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|s| s.opened);
        v
    }

    /// Injects `fault` into stream `id`; false if it has ended.
    pub fn reset_stream(&self, id: u64, fault: StreamReset) -> bool {
        match self.ctl.streams.lock().unwrap().get(&id) {
            Some(e) => e.fault.send(fault).is_ok(),
            None => false,
        }
    }

    /// The live client connections.
    pub fn conns(&self) -> Vec<u64> {
        let mut v: Vec<_> = self.ctl.conns.lock().unwrap().keys().copied().collect();
        v.sort();
        v
    }

    /// Injects `fault` into connection `id`; false if it has ended.
    pub fn conn_fault(&self, id: u64, fault: ConnFault) -> bool {
        match self.ctl.conns.lock().unwrap().get(&id) {
            Some(tx) => tx.send(fault).is_ok(),
            None => false,
        }
    }
}

impl Drop for H2Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, ctl: Arc<Ctl>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((down, _)) => {
                    let _ = down.set_nodelay(true);
                    conns.spawn(connection(down, ctl.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Removes a registry entry however its task ends.
struct Unregister<'a> {
    ctl: &'a Ctl,
    id: u64,
    stream: bool,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if self.stream {
            self.ctl.streams.lock().unwrap().remove(&self.id);
            if let Some(s) = self.ctl.seen.lock().unwrap().get_mut(&self.id) {
                s.closed = Some(crate::history::now_ns());
            }
        } else {
            self.ctl.conns.lock().unwrap().remove(&self.id);
        }
    }
}

async fn connection(down: TcpStream, ctl: Arc<Ctl>) {
    let Ok(up) = TcpStream::connect(ctl.upstream).await else {
        let _ = down.set_zero_linger();
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((send_req, up_conn)) = h2::client::handshake(up).await else {
        let _ = down.set_zero_linger();
        return;
    };
    let mut up_task = tokio::spawn(async move {
        let _ = up_conn.await;
    });
    let Ok(mut conn) = h2::server::handshake(down).await else {
        up_task.abort();
        return;
    };
    let id = ctl.next.fetch_add(1, Ordering::Relaxed);
    let (ftx, mut frx) = mpsc::unbounded_channel();
    ctl.conns.lock().unwrap().insert(id, ftx);
    let _unregister = Unregister {
        ctl: &ctl,
        id,
        stream: false,
    };
    let mut streams = JoinSet::new();
    let mut up_done = false;
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    streams.spawn(stream(req, respond, send_req.clone(), ctl.clone()));
                }
                _ => break,
            },
            Some(fault) = frx.recv() => match fault {
                ConnFault::GracefulGoaway => conn.graceful_shutdown(),
                ConnFault::AbruptGoaway(reason) => conn.abrupt_shutdown(reason),
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = &mut up_task => {
                up_done = true;
                break;
            }
        }
    }
    // The client's connection is gone: dropping the stream tasks resets their upstream
    // streams (CANCEL), as an L7 proxy does when its downstream dies. Give the upstream
    // connection a moment to send the resets, then close it.
    streams.abort_all();
    while streams.join_next().await.is_some() {}
    drop(send_req);
    if !up_done {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut up_task).await;
        up_task.abort();
    }
}

/// How a stream's forwarding ended.
enum End {
    /// The response (and its trailers) reached the client.
    Done,
    /// The client's side broke (reset or connection lost): reset upstream.
    ClientBroke(Reason),
    /// The upstream side broke: reset the client's stream.
    UpstreamBroke(Reason),
    /// A fault was injected.
    Fault(StreamReset),
}

async fn stream(
    req: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    up: h2::client::SendRequest<Bytes>,
    ctl: Arc<Ctl>,
) {
    let (parts, mut down_body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let Ok(mut up) = up.ready().await else {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    };
    let req_end = down_body.is_end_stream();
    let Ok((resp_fut, mut up_send)) = up.send_request(Request::from_parts(parts, ()), req_end)
    else {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    };
    let id = ctl.next.fetch_add(1, Ordering::Relaxed);
    let (ftx, mut frx) = mpsc::unbounded_channel();
    ctl.streams.lock().unwrap().insert(
        id,
        StreamEntry {
            path,
            label: String::new(),
            fault: ftx,
        },
    );
    let _unregister = Unregister {
        ctl: &ctl,
        id,
        stream: true,
    };
    let mut down_send: Option<SendStream<Bytes>> = None;
    let end = {
        let reqs = pump_request(&mut down_body, &mut up_send, &ctl, id);
        let resps = pump_response(resp_fut, &mut respond, &mut down_send);
        tokio::pin!(reqs, resps);
        let (mut req_done, mut resp_done) = (req_end, false);
        loop {
            tokio::select! {
                r = &mut reqs, if !req_done => match r {
                    Ok(()) if resp_done => break End::Done,
                    Ok(()) => req_done = true,
                    // After the response ended, a failed forward is the server having
                    // closed its side: nothing more to do.
                    Err(_) if resp_done => break End::Done,
                    Err(e) => break End::ClientBroke(e.reason().unwrap_or(Reason::CANCEL)),
                },
                // A complete response with the request still open: keep forwarding the
                // client's side until it ends, as a direct connection would (no reset).
                r = &mut resps, if !resp_done => match r {
                    Ok(()) if req_done => break End::Done,
                    Ok(()) => resp_done = true,
                    Err(e) => break End::UpstreamBroke(e.reason().unwrap_or(Reason::CANCEL)),
                },
                Some(fault) = frx.recv() => break End::Fault(fault),
            }
        }
    };
    let reset_client = |respond: &mut h2::server::SendResponse<Bytes>,
                        down_send: &mut Option<SendStream<Bytes>>,
                        reason: Reason| match down_send {
        Some(s) => s.send_reset(reason),
        None => respond.send_reset(reason),
    };
    match end {
        End::Done => {}
        End::ClientBroke(reason) => up_send.send_reset(reason),
        End::UpstreamBroke(reason) => reset_client(&mut respond, &mut down_send, reason),
        End::Fault(fault) => {
            up_send.send_reset(fault.reason);
            // The client hears nothing meanwhile; what it sends is swallowed.
            let _ = tokio::time::timeout(fault.client_after, async {
                while let Some(Ok(chunk)) = down_body.data().await {
                    let _ = down_body.flow_control().release_capacity(chunk.len());
                }
                std::future::pending::<()>().await
            })
            .await;
            reset_client(&mut respond, &mut down_send, Reason::CANCEL);
        }
    }
}

async fn pump_request(
    body: &mut RecvStream,
    up: &mut SendStream<Bytes>,
    ctl: &Ctl,
    id: u64,
) -> Result<(), h2::Error> {
    let mut first = true;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        if std::mem::take(&mut first) {
            if let Some(e) = ctl.streams.lock().unwrap().get_mut(&id) {
                e.label = (ctl.labeller)(&e.path, &chunk);
                if !e.label.is_empty() {
                    let seen = Seen {
                        label: e.label.clone(),
                        opened: crate::history::now_ns(),
                        closed: None,
                    };
                    ctl.seen.lock().unwrap().insert(id, seen);
                }
            }
        }
        let n = chunk.len();
        up.send_data(chunk, false)?;
        let _ = body.flow_control().release_capacity(n);
    }
    match body.trailers().await? {
        Some(t) => up.send_trailers(t)?,
        None => up.send_data(Bytes::new(), true)?,
    }
    Ok(())
}

async fn pump_response(
    fut: h2::client::ResponseFuture,
    respond: &mut h2::server::SendResponse<Bytes>,
    down: &mut Option<SendStream<Bytes>>,
) -> Result<(), h2::Error> {
    let resp = fut.await?;
    let (parts, mut body) = resp.into_parts();
    let end = body.is_end_stream();
    let send = down.insert(respond.send_response(Response::from_parts(parts, ()), end)?);
    if end {
        return Ok(());
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let n = chunk.len();
        send.send_data(chunk, false)?;
        let _ = body.flow_control().release_capacity(n);
    }
    match body.trailers().await? {
        Some(t) => send.send_trailers(t)?,
        None => send.send_data(Bytes::new(), true)?,
    }
    Ok(())
}
