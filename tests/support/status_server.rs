//! A gRPC server that answers every call at once with one status and nothing else (a
//! "trailers-only" response): how a server that cancels, refuses or breaks looks to a
//! client, made on demand and the same every time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Response;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The server; dropping it stops it.
pub struct StatusServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl StatusServer {
    /// Listens on 127.0.0.1 (a free port) and answers every call with `code` (a gRPC
    /// status code) and `message`.
    pub async fn start(code: tonic::Code, message: &'static str) -> StatusServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind status server");
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let calls = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut h2) = h2::server::handshake(conn).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = h2.accept().await {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let answer = Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .header("grpc-status", (code as i32).to_string())
                            .header("grpc-message", message)
                            .body(())
                            .unwrap();
                        let _ = respond.send_response(answer, true);
                    }
                });
            }
        });
        StatusServer { addr, calls, task }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many calls it has answered.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
