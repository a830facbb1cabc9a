//! The life of one held lease after its grant: the task that heartbeats on its `Hold`
//! stream every TTL/4, moves the context's deadline by each confirmed answer, ends the
//! context when the stream tells or breaks, and carries out the holder's release (or,
//! after a revoke, says when the holder has stopped).

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::reattach::{is_break, open, reattach, Resume, Stream};
use super::status::unavailable;
use crate::context::ContextSender;
use crate::lease::LeaseOwner;
use crate::proto::leases::v1::ended::Reason;
use crate::proto::leases::v1::hold_request::Kind as In;
use crate::proto::leases::v1::hold_response::Kind as Out;
use crate::proto::leases::v1::{Heartbeat, HoldRequest, HoldResponse, Release};
use crate::{CancelReason, Key, LeaseContext, LeaseError, LossCause};

/// What the holder's side asks of a lease's driver task.
pub(super) enum Command {
    /// Release, and answer when the server has confirmed (or not).
    Release(Option<oneshot::Sender<Result<(), LeaseError>>>),
}

/// The [`Lease`]'s way to end a lease of this client.
pub(super) struct Owner {
    pub(super) commands: mpsc::UnboundedSender<Command>,
}

#[async_trait]
impl LeaseOwner for Owner {
    async fn release(&self, _key: &Key, _token: u64) -> Result<(), LeaseError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Release(Some(tx))).is_err() {
            return Err(LeaseError::NotHeld);
        }
        rx.await.unwrap_or(Err(LeaseError::NotHeld))
    }

    fn release_on_drop(&self, _key: Key, _token: u64) {
        let _ = self.commands.send(Command::Release(None));
    }
}

/// The instant a request is sent, with the machine's suspended time then.
#[derive(Clone, Copy)]
pub(super) struct Sent {
    pub(super) at: Instant,
    pub(super) since: Duration,
}

impl Sent {
    pub(super) fn now() -> Sent {
        Sent {
            at: Instant::now(),
            since: crate::clock::suspended(),
        }
    }
}

/// The time left an answer reports, at most the lease's TTL: no server can promise
/// more, and a larger (or absurd) value from the network must neither stretch the
/// holder's context nor overflow an instant.
pub(super) fn time_left_of(d: Option<prost_types::Duration>, ttl: Duration) -> Duration {
    d.and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
        .min(ttl)
}

/// Keeps one lease: heartbeats every TTL/4, extends the context by each answer,
/// re-attaches the lease when its stream breaks, ends the context when the server says
/// so (or no server takes the lease back before its deadline), and carries out the
/// holder's release.
pub(super) async fn drive(
    keep_key: bool,
    mut stream: Stream,
    mut resume: Resume,
    sender: ContextSender,
    watch: LeaseContext,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let stop = keep(
        &mut stream,
        &mut resume,
        sender,
        watch.clone(),
        &mut commands,
    )
    .await;
    let Stream {
        requests,
        mut answers,
    } = stream;
    // The holder's own release of a lease that had ended already: answered once the
    // release below has reached the server, so that a holder that then exits (a
    // revoked `leases run`) does not leave its key taken until the TTL runs out.
    let mut reply = None;
    let mut releasing = false;
    if stop != Stop::Released {
        // The lease ended without the holder's release. The server keeps the key until
        // we say we have stopped (`release`) or the time it promised us has passed. A
        // revoked holder (or one whose server shut down) has stopped once its context
        // ended, unless it keeps its key until its `Lease` is released
        // (`keep_until_released`); a lost one keeps its safety margin, as with a local
        // manager: we never release it, and the key goes back when the server's promise
        // runs out.
        // Revoked or shut down: the server ended the lease and told us, and we have
        // stopped as soon as the context ended (unless the holder keeps the key until
        // it lets go). A loss is not ours to shorten.
        let heard = stop == Stop::Heard;
        // Whether the holder has stopped: at once for one that was told (unless it
        // keeps its key until it lets go); otherwise when it lets go of its `Lease`.
        // Never when its deadline merely passes: the server's promise then runs out
        // by itself, a little later.
        let mut stopped = heard && !keep_key;
        if !stopped {
            let deadline = watch.deadline().map(Instant::from_std);
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => {
                    if let Some(Command::Release(Some(r))) = command {
                        reply = Some(r);
                    }
                    stopped = true;
                }
                _ = until_deadline => {}
            }
        }
        // A lost lease is never released (its safety margin is kept, as a local manager
        // keeps it); a revoked or shut-down one is, once its holder has stopped.
        if heard && stopped {
            releasing = true;
            let _ = requests.send(release());
        }
    }
    // Close our side and read the server's to its end (a while at most), so that a
    // release reaches the server before the stream goes. A lane's answers end once
    // the server has confirmed the release with a second `ended` (see `many.rs`); a
    // `Hold` stream's ended with its `ended`, so on one the release is only sent, not
    // known to have arrived.
    let grouped = requests.grouped();
    drop(requests);
    let read = tokio::time::timeout(RELEASE_READ, read_out(&mut answers)).await;
    // The lane's stream broke before the server confirmed the release (it may never
    // have had it): say it again, on a new lane of the same server, where the lease
    // waits for it (the server hands it to the new lane, which answers that it ended
    // and takes the release). Else the key stays taken until the server's promise runs
    // out.
    if releasing && grouped && read == Ok(Read::Broke) {
        release_again(&resume).await;
    }
    if let Some(reply) = reply {
        let _ = reply.send(Err(LeaseError::NotHeld));
    }
}

fn release() -> HoldRequest {
    HoldRequest {
        kind: Some(In::Release(Release {})),
    }
}

/// How reading a stream's answers to their end ended.
#[derive(PartialEq, Eq)]
enum Read {
    /// An `ended RELEASED` came: the server had the release.
    Confirmed,
    /// The answers ended without one.
    Ended,
    /// The stream broke first.
    Broke,
}

/// Reads answers to their end (an error other than a break, such as a `failed`
/// lane, is read past: its confirmation may follow).
async fn read_out(answers: &mut super::lanes::Answers) -> Read {
    let mut confirmed = false;
    loop {
        match answers.next().await {
            Ok(Some((
                HoldResponse {
                    kind: Some(Out::Ended(e)),
                },
                _,
            ))) => {
                confirmed |= e.reason == Reason::Released as i32;
            }
            Ok(Some(_)) => {}
            Ok(None) if confirmed => return Read::Confirmed,
            Ok(None) => return Read::Ended,
            Err(status) if is_break(&status) && !confirmed => return Read::Broke,
            Err(_) => {}
        }
    }
}

/// Sends `release` for a lease that ended, on a new lane (or stream) of its server,
/// as a re-attach (`resume`) followed at once by `release`, and waits a while for the
/// server's confirmation.
async fn release_again(r: &Resume) {
    let acquire = r.acquire();
    let limit = r.leaser.options().request_timeout;
    let Ok(Ok((stream, _))) = tokio::time::timeout(limit, open(&r.leaser, r.server, acquire)).await
    else {
        return;
    };
    let Stream {
        requests,
        mut answers,
    } = stream;
    let _ = requests.send(release());
    drop(requests);
    let read = tokio::time::timeout(RELEASE_READ, read_out(&mut answers)).await;
    tracing::debug!(key = %r.key, token = r.token, confirmed = matches!(read, Ok(Read::Confirmed)), "a revoked lease's release said again after its stream broke");
}

/// How long a keeper reads on after its last request, for the server to show it has
/// the release.
const RELEASE_READ: Duration = Duration::from_secs(5);

/// How [`keep`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// By the holder's release (carried out there).
    Released,
    /// The server ended the lease (revoked, or the server is shutting down) and told
    /// us: we stop as soon as the context has ended, and may say so.
    Heard,
    /// Any other way: a loss, a deadline, a broken stream.
    Other,
}

/// The body of [`drive`]: returns once the context has ended, and how.
async fn keep(
    stream: &mut Stream,
    resume: &mut Resume,
    sender: ContextSender,
    watch: LeaseContext,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Stop {
    let ttl = resume.ttl;
    let every = ttl / 4;
    // A heartbeat unanswered for this long means the stream (or its server) is stuck:
    // re-attach, as for a broken stream.
    let overdue = (ttl / 3).max(Duration::from_millis(500));
    let mut pending: VecDeque<Sent> = VecDeque::new();
    let mut next = Instant::now() + every;
    stream.requests.keep(&sender);
    loop {
        // A lane sends no heartbeats: its group's keep it (see `lanes.rs`).
        let grouped = stream.requests.grouped();
        // An unanswered heartbeat is a stall once it has waited a third of the TTL, or,
        // sooner, when the deadline is near (the last answer's time left may be under
        // half the TTL): re-attaching then may still save the lease.
        let near = watch
            .deadline()
            .and_then(|d| Instant::from_std(d).checked_sub(ttl / 10));
        let stuck = pending.front().map(|s| {
            let late = s.at + overdue;
            match near {
                Some(near) => late.min(near.max(s.at + ttl / 8)),
                None => late,
            }
        });
        // A lane's group heartbeats every TTL/4, and its stream's task treats one
        // unanswered for a third of the TTL as a break of every lane. A lane does not
        // re-attach on its own when its deadline comes near: its group's time left is
        // the least of the group's, the same for every lane of it, so all of them
        // would at once (100k re-attaches on a loaded server, and lost leases). Its
        // context ends at its deadline, as any.
        let stuck = if grouped { None } else { stuck };
        let broke = tokio::select! {
            biased;
            command = commands.recv() => {
                let reply = match command {
                    Some(Command::Release(reply)) => reply,
                    // Every handle is gone without a release: end the stream (below),
                    // and the server releases.
                    None => None,
                };
                if sender.reason().is_some() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(LeaseError::NotHeld));
                    }
                    return Stop::Released;
                }
                sender.cancel(CancelReason::Released);
                let _ = stream.requests.send(HoldRequest { kind: Some(In::Release(Release {})) });
                let confirmed = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match stream.answers.message().await {
                            Ok(Some(HoldResponse { kind: Some(Out::Ended(e)) })) if e.reason == Reason::Released as i32 => return true,
                            // Handed over: the draining server left the lease in the
                            // store (for us to re-attach elsewhere), and its later
                            // `ended RELEASED` would not mean the key is free.
                            Ok(Some(HoldResponse { kind: Some(Out::Ended(e)) })) if e.reason == Reason::HandedOver as i32 => return false,
                            // Another end crossed the release: a lane's server confirms
                            // the release with a second `ended` (a `Hold` stream ends).
                            Ok(Some(_)) => continue,
                            _ => return false,
                        }
                    }
                })
                .await
                .unwrap_or(false);
                if let Some(reply) = reply {
                    let _ = reply.send(if confirmed {
                        Ok(())
                    } else {
                        Err(unavailable("the lease service did not confirm the release"))
                    });
                }
                return Stop::Released;
            }
            _ = watch.cancelled() => return Stop::Other,
            _ = tokio::time::sleep_until(next), if !grouped => {
                next += every;
                pending.push_back(Sent::now());
                if stream.requests.send(HoldRequest { kind: Some(In::Heartbeat(Heartbeat {})) }).is_err() {
                    "the request stream closed".to_string()
                } else {
                    continue;
                }
            }
            _ = sleep_until_opt(stuck) => "a heartbeat went unanswered".to_string(),
            answer = stream.answers.next() => match answer {
                Ok(Some((HoldResponse { kind: Some(Out::Renewed(r)) }, group))) => {
                    // A lane's renewal comes with its group heartbeat's send instant.
                    if let Some(sent) = group.or_else(|| pending.pop_front()) {
                        sender.extend(sent.at + time_left_of(r.time_left, ttl), sent.since);
                    }
                    continue;
                }
                Ok(Some((HoldResponse { kind: Some(Out::Ended(e)) }, _))) => {
                    let told = Reason::try_from(e.reason).unwrap_or(Reason::Lost);
                    if told == Reason::HandedOver {
                        e.message
                    } else {
                        let heard = matches!(told, Reason::Revoked | Reason::Shutdown);
                        let reason = match told {
                            Reason::Revoked => CancelReason::Revoked,
                            Reason::Released => CancelReason::Released,
                            _ => CancelReason::Lost(LossCause::Remote(e.message)),
                        };
                        sender.cancel(reason);
                        return if heard { Stop::Heard } else { Stop::Other };
                    }
                }
                Ok(Some(_)) => continue,
                Ok(None) => "the lease service ended the stream".to_string(),
                Err(status) if is_break(&status) => status.message().to_string(),
                Err(status) => {
                    sender.cancel(CancelReason::Lost(LossCause::Disconnected(status.message().to_string())));
                    return Stop::Other;
                }
            },
        };
        // The stream broke (or its server is going away): carry the lease over to a
        // new one, before the deadline, or end the context.
        match reattach(resume, &sender, &watch, &broke).await {
            Some(new) => {
                *stream = new;
                stream.requests.keep(&sender);
                pending.clear();
                next = Instant::now() + every;
            }
            None => {
                if sender.reason().is_none() {
                    sender.cancel(CancelReason::Lost(LossCause::Disconnected(broke)));
                }
                return Stop::Other;
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
