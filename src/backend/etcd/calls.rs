//! Calls to etcd: every RPC bounded by the request timeout as a whole and each try on
//! one member by a quarter of it, moving to the next member and trying again after
//! errors that name the member or leave the outcome unknown; authentication (and again
//! when etcd refuses a token); the Raft term of every answer noted; and the reads,
//! transactions and etcd-lease calls built on that.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tonic::transport::Channel;

use super::state::Inner;
use super::wire::pb;
use super::wire::pb::auth_client::AuthClient;
use super::wire::pb::kv_client::KvClient;
use super::wire::pb::lease_client::LeaseClient;
use super::wire::range_req;
use crate::error::{BackendError, BackendErrorKind};

/// The largest answer this backend takes (tonic's default is 4 MiB): a group round's
/// pages of keys (see `rounds.rs`) stay far below it.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A backend error for a failed call: unavailable, timed out, or failed.
pub(super) fn status_error(what: &str, status: tonic::Status) -> BackendError {
    let kind = match status.code() {
        tonic::Code::Unavailable => BackendErrorKind::Unavailable,
        tonic::Code::DeadlineExceeded => BackendErrorKind::Timeout,
        _ => BackendErrorKind::Failed,
    };
    let message = format!("etcd {what}: {}", status.message());
    BackendError::with_source(kind, message, status)
}

/// Errors after which another try (on another member) makes sense: the member is
/// down, cut off, without a leader, or the outcome is unknown.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::Internal
    )
}

fn is_auth_error(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unauthenticated || status.message().contains("invalid auth token")
}

fn is_lease_not_found(status: &tonic::Status) -> bool {
    status.message().contains("lease not found")
}

/// A request carrying the auth token, if any.
pub(super) fn request<T>(msg: T, token: &Option<Arc<str>>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(token) = token {
        if let Ok(v) = token.parse() {
            req.metadata_mut().insert("token", v);
        }
    }
    req
}

/// A TTL in etcd's whole seconds, rounded up, at least 1.
fn etcd_ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

impl Inner {
    /// Runs one RPC with the request timeout, moving to the next endpoint and trying
    /// again after errors that name the member or leave the outcome unknown.
    async fn call<R, F, Fut>(&self, what: &str, mut f: F) -> Result<R, BackendError>
    where
        F: FnMut(Channel, Option<Arc<str>>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        let attempts = async {
            let mut auth_retried = false;
            let mut backoff = Duration::from_millis(20);
            loop {
                let (i, channel) = self.endpoint();
                let attempt = async {
                    let token = self.token(&channel).await?;
                    f(channel.clone(), token).await
                };
                let status = match tokio::time::timeout(self.try_timeout, attempt).await {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(status)) => status,
                    Err(_) => tonic::Status::deadline_exceeded("no answer in time"),
                };
                if self.user.is_some() && is_auth_error(&status) && !auth_retried {
                    auth_retried = true;
                    *crate::sync::lock(&self.auth_token) = None;
                    continue;
                }
                if !retryable(&status) {
                    return Err(status_error(what, status));
                }
                tracing::debug!(endpoint = %self.endpoints[i], %status, "etcd {what} failed; trying the next member");
                self.move_on_from(i);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        };
        match tokio::time::timeout(self.request_timeout, attempts).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Timeout,
                format!(
                    "etcd {what}: no answer within {:?} from any member",
                    self.request_timeout
                ),
            )),
        }
    }

    /// The auth token to send, authenticating first when needed.
    pub(super) async fn token(&self, channel: &Channel) -> Result<Option<Arc<str>>, tonic::Status> {
        let Some((name, password)) = &self.user else {
            return Ok(None);
        };
        if let Some(t) = crate::sync::lock(&self.auth_token).clone() {
            return Ok(Some(t));
        }
        let resp = AuthClient::new(channel.clone())
            .authenticate(pb::AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            })
            .await?
            .into_inner();
        let token: Arc<str> = resp.token.into();
        *crate::sync::lock(&self.auth_token) = Some(token.clone());
        Ok(Some(token))
    }

    /// A read (linearizable), its Raft term noted.
    pub(super) async fn range(
        &self,
        what: &str,
        req: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, BackendError> {
        let resp: pb::RangeResponse = self
            .call(what, |ch, token| {
                let req = req.clone();
                async move {
                    Ok(KvClient::new(ch)
                        .max_decoding_message_size(MAX_ANSWER_BYTES)
                        .range(request(req, &token))
                        .await?
                        .into_inner())
                }
            })
            .await?;
        self.saw(resp.header.as_ref());
        Ok(resp)
    }

    /// A read of one key (linearizable).
    pub(super) async fn get(
        &self,
        what: &str,
        key: &[u8],
    ) -> Result<Option<pb::KeyValue>, BackendError> {
        Ok(self
            .range(what, range_req(key.to_vec()))
            .await?
            .kvs
            .into_iter()
            .next())
    }

    /// A transaction, its Raft term noted.
    pub(super) async fn txn(
        &self,
        what: &str,
        req: pb::TxnRequest,
    ) -> Result<pb::TxnResponse, BackendError> {
        self.txn_status(what, req)
            .await?
            .map_err(|status| status_error(what, status))
    }

    /// A transaction, with etcd's refusal (not a transport failure) returned as is.
    pub(super) async fn txn_status(
        &self,
        what: &str,
        req: pb::TxnRequest,
    ) -> Result<Result<pb::TxnResponse, tonic::Status>, BackendError> {
        self.call(what, |ch, token| {
            let req = req.clone();
            async move {
                match KvClient::new(ch).txn(request(req, &token)).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        self.saw(resp.header.as_ref());
                        Ok(Ok(resp))
                    }
                    Err(status) if is_lease_not_found(&status) => Ok(Err(status)),
                    Err(status) => Err(status),
                }
            }
        })
        .await
    }

    /// One keep-alive of an etcd lease: its TTL and the Raft term of the answer.
    pub(super) async fn keep_alive_once(&self, id: i64) -> Result<(i64, u64), BackendError> {
        self.call("keep-alive", |ch, token| async move {
            // Keep our half open until the answer came: closing it could end the
            // stream before the member answers.
            let outbound = futures_util::stream::iter([pb::LeaseKeepAliveRequest { id }])
                .chain(futures_util::stream::pending());
            let mut inbound = LeaseClient::new(ch)
                .lease_keep_alive(request(outbound, &token))
                .await?
                .into_inner();
            match inbound.message().await? {
                Some(resp) => {
                    self.saw(resp.header.as_ref());
                    Ok((resp.ttl, resp.header.map(|h| h.raft_term).unwrap_or(0)))
                }
                None => Err(tonic::Status::unavailable("the keep-alive stream ended")),
            }
        })
        .await
    }

    /// A linearizable read of the prefix key alone (a quorum must answer).
    pub(super) async fn check_read(&self) -> Result<(), BackendError> {
        let req = pb::RangeRequest {
            key: self.prefix.clone(),
            count_only: true,
            ..Default::default()
        };
        self.range("check", req).await.map(drop)
    }

    /// Time left on an etcd lease in whole seconds (rounded down); -1 when it is gone.
    pub(super) async fn time_to_live(&self, id: i64) -> Result<i64, BackendError> {
        self.call("lease time-to-live", |ch, token| async move {
            let resp = LeaseClient::new(ch)
                .lease_time_to_live(request(
                    pb::LeaseTimeToLiveRequest { id, keys: false },
                    &token,
                ))
                .await?
                .into_inner();
            Ok(resp.ttl)
        })
        .await
    }

    /// Grants an etcd lease of `ttl` rounded up to whole seconds: its ID and the TTL
    /// etcd granted (never less than asked).
    pub(super) async fn grant_lease(
        &self,
        what: &str,
        ttl: Duration,
    ) -> Result<(i64, Duration), BackendError> {
        let secs = etcd_ttl_secs(ttl);
        let resp = self
            .call(what, |ch, token| async move {
                Ok(LeaseClient::new(ch)
                    .lease_grant(request(pb::LeaseGrantRequest { ttl: secs, id: 0 }, &token))
                    .await?
                    .into_inner())
            })
            .await?;
        if !resp.error.is_empty() || resp.id == 0 || resp.ttl < secs {
            return Err(BackendError::new(
                BackendErrorKind::Failed,
                format!(
                    "etcd {what} of {secs} s refused: {} (granted {} s)",
                    resp.error, resp.ttl
                ),
            ));
        }
        let granted = Duration::from_secs(u64::try_from(resp.ttl).unwrap_or(0));
        Ok((resp.id, granted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(etcd_ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(etcd_ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(etcd_ttl_secs(Duration::from_millis(2001)), 3);
        assert_eq!(etcd_ttl_secs(Duration::MAX), i64::MAX);
    }
}
