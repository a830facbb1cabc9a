//! Batched renewals: many leases renewed by one statement.
//!
//! Each [`renew`](Renewals::renew) call queues its lease and waits for the answer. One
//! task, the *batcher*, gathers the queue: when the oldest queued renewal has waited its
//! share of the batch window (at most [`renew_batch_window`], and at most 1/20 of its
//! TTL), or when a full chunk is queued, it sends everything queued as statements of at
//! most [`renew_batch_size`] leases each, keys in order, each in a task of its own
//! (so a slow statement does not hold up the next batch). The statement answers with
//! the leases it renewed; each caller is told its own outcome:
//!
//! - in the answer, not revoked: [`RenewOutcome::Renewed`];
//! - in the answer, revoked: [`RenewOutcome::Revoked`] (matched, not extended);
//! - missing from the answer (expired, released, taken over): [`RenewOutcome::Lost`],
//!   at once;
//! - the statement failed or timed out: every lease in it gets the error (none is
//!   renewed, as far as its holder knows), and its renewer retries.
//!
//! The holder's local deadline counts from its renewer's start instant, taken before
//! the renewal was queued, hence before the batch was sent; the database extends each
//! lease from the statement's `now()`, which is later. Waiting in the queue therefore
//! only delays a renewal; it never stretches a deadline.
//!
//! # Cancellation
//! A caller whose future is dropped while its renewal is queued or in flight (its
//! deadline passed, the manager stopped) leaves nothing behind: the statement belongs
//! to the batcher, not to the caller, so no connection is cut mid-statement. A renewal
//! still queued is left out of the batch when it is sent; one already sent may extend a
//! lease nobody waits for, exactly like a renewal whose answer was lost (see the module
//! docs of the backend). When the backend is dropped, the batcher and its statements
//! are aborted; their connections are discarded by [`Checkout`](super::Checkout), and
//! waiting callers get an error.
//!
//! [`renew_batch_window`]: super::PostgresOptions::renew_batch_window
//! [`renew_batch_size`]: super::PostgresOptions::renew_batch_size

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{ttl_ms, Db, PostgresOptions};
use crate::backend::RenewOutcome;
use crate::error::{BackendError, BackendErrorKind};

type Answer = Result<RenewOutcome, BackendError>;

/// One queued renewal.
struct Request {
    key: String,
    token: i64,
    ttl_ms: i64,
    /// When the batch must be sent, at the latest, for this renewal's sake.
    due: Instant,
    reply: oneshot::Sender<Answer>,
}

/// One lease in a batch statement, with everyone waiting for its answer (normally one
/// renewer; several only if one lease was queued twice).
struct Lease {
    key: String,
    token: i64,
    ttl_ms: i64,
    replies: Vec<oneshot::Sender<Answer>>,
}

/// The queue of renewals and the batcher task that sends them.
pub(super) struct Renewals {
    queue: mpsc::UnboundedSender<Request>,
    task: JoinHandle<()>,
}

impl Renewals {
    /// Starts the batcher on `runtime`.
    pub(super) fn start(runtime: &tokio::runtime::Handle, db: Arc<Db>) -> Renewals {
        let (queue, requests) = mpsc::unbounded_channel();
        let task = runtime.spawn(batcher(db, requests));
        Renewals { queue, task }
    }

    /// Stops the batcher and every statement it is running.
    pub(super) fn stop(&self) {
        self.task.abort();
    }

    /// Renews `(key, token)` by `ttl` in the next batch, bounded by the time the batch
    /// may wait plus the statement timeout.
    pub(super) async fn renew(
        &self,
        key: String,
        token: i64,
        ttl: Duration,
        options: &PostgresOptions,
    ) -> Answer {
        let wait = options
            .renew_batch_window
            .min(ttl / 20)
            .min(options.statement_timeout);
        let now = Instant::now();
        let due = now
            .checked_add(wait)
            .unwrap_or(now + options.statement_timeout.min(Duration::from_secs(3600)));
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key,
            token,
            ttl_ms: ttl_ms(ttl),
            due,
            reply,
        };
        if self.queue.send(request).is_err() {
            return Err(stopped());
        }
        let bound = wait.saturating_add(options.statement_timeout);
        match tokio::time::timeout(bound, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Timeout,
                format!("renew: no answer from the database in {bound:?}"),
            )),
        }
    }
}

fn stopped() -> BackendError {
    BackendError::new(
        BackendErrorKind::Unavailable,
        "renew: the backend's renewal batcher stopped",
    )
}

/// Gathers queued renewals into batches until the backend is dropped.
async fn batcher(db: Arc<Db>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let size = db.options.renew_batch_size.max(1);
    let mut pending: Vec<Request> = Vec::new();
    let mut earliest: Option<Instant> = None;
    let mut running = JoinSet::new();
    loop {
        let send_at = earliest.unwrap_or_else(Instant::now);
        tokio::select! {
            request = requests.recv() => match request {
                Some(request) => {
                    earliest = Some(earliest.map_or(request.due, |e| e.min(request.due)));
                    pending.push(request);
                }
                // Every sender is gone: the backend was dropped.
                None => return,
            },
            () = tokio::time::sleep_until(send_at), if earliest.is_some() => {
                // Renewals already queued ride along (a bounded number, so that a flood
                // cannot hold the batch back).
                for _ in 0..size {
                    match requests.try_recv() {
                        Ok(request) => pending.push(request),
                        Err(_) => break,
                    }
                }
                earliest = None;
                send(&db, std::mem::take(&mut pending), size, &mut running);
            }
            // Reap finished statements (their answers are already sent).
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
        if pending.len() >= size {
            earliest = None;
            send(&db, std::mem::take(&mut pending), size, &mut running);
        }
    }
}

/// Sends `batch` as statements of at most `size` leases, keys in order.
fn send(db: &Arc<Db>, mut batch: Vec<Request>, size: usize, running: &mut JoinSet<()>) {
    // A renewer that stopped waiting (its future was dropped) needs no renewal.
    batch.retain(|r| !r.reply.is_closed());
    // Keys in one fixed order, so that chunks cover disjoint ranges of keys; the
    // statement locks its rows in key order too.
    batch.sort_unstable_by(|a, b| (&a.key, a.token).cmp(&(&b.key, b.token)));
    let mut leases: Vec<Lease> = Vec::with_capacity(batch.len());
    for r in batch {
        match leases.last_mut() {
            // The same lease twice: one element, renewed by the longest TTL asked for,
            // and both callers get its answer.
            Some(l) if l.key == r.key && l.token == r.token => {
                l.ttl_ms = l.ttl_ms.max(r.ttl_ms);
                l.replies.push(r.reply);
            }
            _ => leases.push(Lease {
                key: r.key,
                token: r.token,
                ttl_ms: r.ttl_ms,
                replies: vec![r.reply],
            }),
        }
    }
    while !leases.is_empty() {
        let rest = leases.split_off(leases.len().min(size));
        let chunk = std::mem::replace(&mut leases, rest);
        running.spawn(renew_chunk(db.clone(), chunk));
    }
}

/// Renews one chunk with one statement and tells every caller its lease's outcome.
async fn renew_chunk(db: Arc<Db>, leases: Vec<Lease>) {
    let mut keys = Vec::with_capacity(leases.len());
    let mut tokens = Vec::with_capacity(leases.len());
    let mut ttls = Vec::with_capacity(leases.len());
    let mut waiting = Vec::with_capacity(leases.len());
    for l in leases {
        keys.push(l.key);
        tokens.push(l.token);
        ttls.push(l.ttl_ms);
        waiting.push(l.replies);
    }
    tracing::trace!(leases = keys.len(), "renewing a batch");
    db.renew_statements
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let answer = db
        .with_client("renew", |c, sql| {
            Box::pin(async move {
                let stmt = c.prepare_cached(&sql.renew).await?;
                let rows = c.query(&stmt, &[&keys, &tokens, &ttls]).await?;
                let renewed: HashMap<(String, i64), bool> = rows
                    .iter()
                    .map(|row| ((row.get(0), row.get(1)), row.get(2)))
                    .collect();
                Ok((keys, tokens, renewed))
            })
        })
        .await;
    match answer {
        Ok((keys, tokens, mut renewed)) => {
            for ((key, token), replies) in keys.into_iter().zip(tokens).zip(waiting) {
                let outcome = match renewed.remove(&(key, token)) {
                    Some(false) => RenewOutcome::Renewed,
                    Some(true) => RenewOutcome::Revoked,
                    // Not in the answer: expired, released or taken over.
                    None => RenewOutcome::Lost,
                };
                for reply in replies {
                    let _ = reply.send(Ok(outcome));
                }
            }
        }
        Err(error) => {
            tracing::debug!(%error, leases = waiting.len(), "a renewal batch failed");
            for reply in waiting.into_iter().flatten() {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
