//! The [`Leaser`] impl of [`ClientLeaser`]: an acquire opens a `Hold` stream, waits for
//! its grant (confirming a waited grant's time left with one more round trip, or
//! re-attaching the grant if its stream breaks or its server drains meanwhile), and
//! hands the stream to its keeper task.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::connection::ClientLeaser;
use super::keep::{drive, time_left_of, Owner, Sent};
use super::reattach::{is_break, open, reattach_grant, Resume};
use super::status::{error_of, try_next_server, unavailable};
use crate::proto::leases::v1::ended::Reason;
use crate::proto::leases::v1::hold_request::Kind as In;
use crate::proto::leases::v1::hold_response::Kind as Out;
use crate::proto::leases::v1::{Acquire, Heartbeat, HoldRequest, HoldResponse};
use crate::{AcquireOptions, Key, Lease, LeaseContext, LeaseError, LeaseInfo, Leaser};

#[async_trait]
impl Leaser for ClientLeaser {
    async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        options.validate(&key, self.options().min_ttl)?;
        let ttl = options.ttl();
        let wait = options.wait;
        let acquire = Acquire {
            key: key.to_string(),
            ttl: Some(crate::proto::duration(ttl)),
            metadata: options.metadata.clone(),
            wait: wait.map(crate::proto::duration),
            resume: options.resume,
        };
        // The client bounds its own waits; the answer may take as long as the wait,
        // plus the usual.
        let limit = self
            .options()
            .request_timeout
            .saturating_add(wait.unwrap_or_default());
        // The first server that answers (a server that cannot be reached, that is
        // shutting down or that cancels the call passes the acquire on to the next).
        let mut tries = self.servers();
        let (server, mut stream, sent, first) = loop {
            let server = self.current();
            let got = tokio::time::timeout(limit, async {
                let (mut stream, sent) = open(self, server, acquire.clone()).await?;
                let first = stream.answers.message().await;
                Ok::<_, tonic::Status>((stream, sent, first))
            })
            .await;
            let unreachable = match &got {
                Err(_) => Some(unavailable("the lease service did not answer in time")),
                Ok(Err(s)) | Ok(Ok((_, _, Err(s)))) if try_next_server(s) => {
                    Some(error_of(s, wait))
                }
                _ => None,
            };
            tries -= 1;
            if let Some(error) = unreachable {
                if tries == 0 {
                    return Err(error);
                }
                self.move_on_from(server);
                continue;
            }
            let (stream, sent, first) = got
                .map_err(|_| unavailable("the lease service did not answer in time"))?
                .map_err(|s| error_of(&s, wait))?;
            break (server, stream, sent, first);
        };
        let (token, mut time_left) = match first {
            Ok(Some(HoldResponse {
                kind: Some(Out::Granted(g)),
            })) => (g.token, time_left_of(g.time_left, ttl)),
            Ok(Some(other)) => {
                return Err(unavailable(format!("unexpected first answer {other:?}")));
            }
            Ok(None) => return Err(unavailable("the lease service closed the stream")),
            Err(s) => return Err(error_of(&s, wait)),
        };
        let mut resume = Resume {
            leaser: self.clone(),
            key: key.clone(),
            ttl,
            metadata: options.metadata,
            token,
            server,
        };
        let mut confirmed = sent;
        if wait.is_some() {
            // The grant may have come long after the request: confirm the time left
            // with a heartbeat's round trip.
            let hb = Sent::now();
            let _ = stream.requests.send(HoldRequest {
                kind: Some(In::Heartbeat(Heartbeat {})),
            });
            let limit = self.options().request_timeout;
            let next = tokio::time::timeout(limit, stream.answers.next()).await;
            // A stream that broke (or a server that drains) before confirming the grant
            // does not end the lease, which lives on in the store: re-attach it, as a
            // holder would, before handing it to the caller.
            let next = next.map(|n| n.map(|n| n.map(|(m, group)| (m, group.unwrap_or(hb)))));
            let broke = match next {
                Ok(Ok(Some((
                    HoldResponse {
                        kind: Some(Out::Renewed(r)),
                    },
                    sent,
                )))) => {
                    time_left = time_left_of(r.time_left, ttl);
                    confirmed = sent;
                    None
                }
                Ok(Ok(Some((
                    HoldResponse {
                        kind: Some(Out::Ended(e)),
                    },
                    _,
                )))) if e.reason == Reason::HandedOver as i32 => Some(e.message),
                Ok(Ok(Some((
                    HoldResponse {
                        kind: Some(Out::Ended(e)),
                    },
                    _,
                )))) => {
                    return Err(unavailable(format!(
                        "the lease ended at once: {}",
                        e.message
                    )));
                }
                Ok(Ok(None)) => Some("the lease service closed the stream".to_string()),
                Ok(Ok(Some((other, _)))) => {
                    return Err(unavailable(format!("unexpected answer {other:?}")));
                }
                Ok(Err(s)) if is_break(&s) => Some(s.message().to_string()),
                Ok(Err(s)) => return Err(error_of(&s, None)),
                Err(_) => Some("the lease service did not confirm the grant in time".into()),
            };
            if let Some(why) = broke {
                let until = tokio::time::Instant::now() + limit;
                let (new, sent, left) = reattach_grant(&mut resume, until, &why).await?;
                stream = new;
                confirmed = sent;
                time_left = left;
            }
        }
        let (sender, ctx) =
            LeaseContext::new_since(token, Some(confirmed.at + time_left), confirmed.since);
        let (commands, command_rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(
            options.keep,
            stream,
            resume,
            sender,
            ctx.clone(),
            command_rx,
        ));
        let lease = Lease::new(key, token, Arc::new(Owner { commands }));
        Ok((lease, ctx))
    }

    async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        ClientLeaser::lease_info(self, key).await
    }
}
