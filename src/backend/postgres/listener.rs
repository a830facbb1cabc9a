//! The listener: one connection per backend that listens on the table's release channel
//! (`LISTEN <table>_freed`) and wakes waiting acquirers with the keys released anywhere.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use crate::backend::Freed;
use crate::key::Key;

/// Keeps one connection listening on the release channel, reconnecting when it drops,
/// and forwards every released key to the subscribers.
///
/// Notifications sent while no connection listens are lost, so every time a LISTEN
/// starts (the first time too: subscribers may have been waiting before it) the
/// subscribers are told [`Freed::Everything`] and look again. A connection that went
/// silent is found by a ping every few seconds, bounded by the statement timeout.
pub(super) async fn listen(
    mut config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    channel: String,
    frees: broadcast::Sender<Freed>,
    statement_timeout: Duration,
) {
    if config.get_application_name() == Some("leases") {
        // So that operators (and tests) can tell it from the pooled connections.
        config.application_name("leases-listener");
    }
    const PING: Duration = Duration::from_secs(2);
    let mut backoff = Duration::from_millis(25);
    loop {
        match tokio::time::timeout(statement_timeout, config.connect(tls.clone())).await {
            Ok(Ok((client, mut connection))) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(message)) => {
                                if tx.send(message).is_err() {
                                    return;
                                }
                            }
                            Some(Err(_)) | None => return,
                        }
                    }
                });
                let listening = tokio::time::timeout(
                    statement_timeout,
                    client.batch_execute(&format!("LISTEN {channel}")),
                )
                .await;
                if let Ok(Ok(())) = listening {
                    tracing::debug!(%channel, "listening for released leases");
                    backoff = Duration::from_millis(25);
                    let _ = frees.send(Freed::Everything);
                    let mut ping = tokio::time::interval(PING);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            message = rx.recv() => match message {
                                Some(AsyncMessage::Notification(n)) => {
                                    if let Ok(key) = Key::parse(n.payload()) {
                                        let _ = frees.send(Freed::Key(key));
                                    }
                                }
                                Some(_) => {}
                                None => break,
                            },
                            _ = ping.tick() => {
                                let alive = tokio::time::timeout(
                                    statement_timeout,
                                    client.simple_query(""),
                                )
                                .await;
                                if !matches!(alive, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                }
                driver.abort();
                tracing::debug!(%channel, "release listener disconnected; reconnecting");
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "release listener cannot connect; retrying");
            }
            Err(_) => tracing::debug!("release listener: connect timed out; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
