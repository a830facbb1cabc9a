//! The watch: one etcd watch per backend on the lease keys, in a task of its own
//! (started at the first subscription). Every delete (a release, or etcd expiring a
//! dead holder's keys) is a [`Freed::Key`]; every (re)connection is a
//! [`Freed::Everything`]. It asks for a progress report every second, and reconnects
//! (to the next endpoint) when nothing arrives for three seconds or the stream ends.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::calls::request;
use super::state::Inner;
use super::wire::pb::watch_client::WatchClient;
use super::wire::{pb, prefix_end};
use crate::backend::{Freed, FreedKeys};

/// How many freed-key notifications a slow waiter may fall behind before it retries.
const FREES_CAPACITY: usize = 1024;

/// The freed-key notifications of one backend, and the task that watches for them.
pub(super) struct Watch {
    frees: broadcast::Sender<Freed>,
    task: OnceLock<JoinHandle<()>>,
}

impl Watch {
    pub(super) fn new() -> Watch {
        Watch {
            frees: broadcast::channel(FREES_CAPACITY).0,
            task: OnceLock::new(),
        }
    }

    /// A new subscriber; starts the watch (within a tokio runtime) at the first.
    pub(super) fn subscribe(&self, inner: &Arc<Inner>) -> FreedKeys {
        let rx = self.frees.subscribe();
        if tokio::runtime::Handle::try_current().is_ok() {
            self.task
                .get_or_init(|| tokio::spawn(watch(inner.clone(), self.frees.clone())));
        }
        FreedKeys::new(rx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// Follows deletes under the prefix and tells the subscribers; reconnects (to the next
/// endpoint) when the stream ends or goes silent.
async fn watch(inner: Arc<Inner>, frees: broadcast::Sender<Freed>) {
    const PROGRESS: Duration = Duration::from_secs(1);
    const SILENCE: Duration = Duration::from_secs(3);
    let start = {
        let mut k = inner.prefix.clone();
        k.push(b'/');
        k
    };
    let end = prefix_end(&start);
    let mut backoff = Duration::from_millis(25);
    loop {
        let (i, channel) = inner.endpoint();
        let ended = async {
            let token = inner.token(&channel).await.map_err(|s| s.to_string())?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: start.clone(),
                        range_end: end.clone(),
                        start_revision: 0,
                        progress_notify: true,
                    },
                )),
            };
            let _ = tx.send(create).await;
            let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            let mut req = request(outbound, &token);
            // Ask the member to end the stream when it has no leader (it would be cut off).
            req.metadata_mut().insert(
                "hasleader",
                tonic::metadata::MetadataValue::from_static("true"),
            );
            let mut inbound = tokio::time::timeout(SILENCE, WatchClient::new(channel).watch(req))
                .await
                .map_err(|_| "watch: no answer".to_string())?
                .map_err(|s| s.to_string())?
                .into_inner();
            let mut progress = tokio::time::interval(PROGRESS);
            let mut last_heard = Instant::now();
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(resp)) => {
                            last_heard = Instant::now();
                            if resp.created {
                                tracing::debug!("watching released leases");
                                let _ = frees.send(Freed::Everything);
                            }
                            if resp.canceled {
                                return Err(format!("watch canceled: {}", resp.cancel_reason));
                            }
                            for event in resp.events {
                                if event.r#type != pb::event::EventType::Delete as i32 {
                                    continue;
                                }
                                if let Some(key) = event.kv.and_then(|kv| inner.key_of(&kv.key)) {
                                    let _ = frees.send(Freed::Key(key));
                                }
                            }
                        }
                        Ok(None) => return Err("watch stream ended".to_string()),
                        Err(status) => return Err(status.to_string()),
                    },
                    _ = progress.tick() => {
                        if last_heard.elapsed() > SILENCE {
                            return Err("watch went silent".to_string());
                        }
                        let ask = pb::WatchRequest {
                            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                                pb::WatchProgressRequest {},
                            )),
                        };
                        if tx.send(ask).await.is_err() {
                            return Err("watch request stream closed".to_string());
                        }
                    }
                }
            }
        };
        let result: Result<(), String> = ended.await;
        if let Err(error) = result {
            tracing::debug!(endpoint = %inner.endpoints[i], %error, "etcd watch ended; reconnecting");
            if error.contains("invalid auth token") {
                // Authenticate again on the next connection.
                *crate::sync::lock(&inner.auth_token) = None;
            }
        }
        inner.move_on_from(i);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
