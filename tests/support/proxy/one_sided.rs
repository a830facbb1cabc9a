//! [`OneSidedCut`]: a relay that cuts a connection on the server's side only.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay of one kind of partition the fault proxy cannot make: the server's side
/// of the connection is reset (the server sees the connection gone at once) while
/// the client's side stays open and silent (its packets are lost, its keepalive has
/// not fired yet). Both are ordinary on a real network (a NAT or load balancer that
/// drops its state and answers one side with RST).
pub struct OneSidedCut {
    /// The address clients connect to.
    pub addr: SocketAddr,
    /// Set to `true` to cut every connection.
    pub cut: watch::Sender<bool>,
}

impl OneSidedCut {
    /// Relays 127.0.0.1:0 to `target` until cut.
    pub async fn start(target: SocketAddr) -> OneSidedCut {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
                    loop {
                        tokio::select! {
                            _ = cut.changed() => if *cut.borrow() { break },
                            n = cr.read(&mut up) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) => if sw.write_all(&up[..n]).await.is_err() { return },
                            },
                            n = sr.read(&mut down) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) => if cw.write_all(&down[..n]).await.is_err() { return },
                            },
                        }
                    }
                    // The server's side: reset. The client's: open, silent, forever.
                    let server = sr.reunite(sw).unwrap();
                    let _ = server.set_zero_linger();
                    drop(server);
                    let _keep = (cr, cw);
                    std::future::pending::<()>().await;
                });
            }
        });
        OneSidedCut { addr, cut }
    }
}
