//! The service's one-shot calls, beside the leases a [`ClientLeaser`] holds: revoke,
//! info, list and the readiness check.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::Status;

use super::connection::ClientLeaser;
use super::status::{error_of, try_next_server, unavailable};
use crate::proto::leases::v1::leases_client::LeasesClient;
use crate::proto::leases::v1::{KeyRequest, ListRequest};
use crate::{Key, LeaseError, LeaseInfo};

impl ClientLeaser {
    /// Revokes the current lease on `key`, whoever holds it: its holder's context ends
    /// with [`CancelReason::Revoked`](crate::CancelReason::Revoked). Returns `false` if
    /// nobody held it.
    pub async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        // Not after `CANCELLED` or `UNKNOWN`: the call may have been carried out, and a
        // revoke carried out twice ends whoever holds the key by then, too.
        let answer = self
            .on_any(not_serving, |mut c| {
                let request = self.request(KeyRequest {
                    key: key.to_string(),
                });
                async move { c.revoke(request).await }
            })
            .await
            .map_err(|s| error_of(&s, None))?;
        Ok(answer.into_inner().revoked)
    }

    /// The current lease on `key`, if any.
    pub async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        let answer = self
            .on_any(try_next_server, |mut c| {
                let request = self.request(KeyRequest {
                    key: key.to_string(),
                });
                async move { c.info(request).await }
            })
            .await
            .map_err(|s| error_of(&s, None))?;
        answer.into_inner().lease.map(from_proto).transpose()
    }

    /// The live leases whose key strings start with `prefix`, in key order, at most
    /// `limit` (0: the server's limit, 10,000).
    ///
    /// The server sends them in one message, which can be far larger than gRPC's usual
    /// 4 MiB limit (each lease carries up to 64 KiB of metadata): this call accepts an
    /// answer as large as the leases asked for can be, `limit` × about 66 KiB (at most
    /// about 670 MB for 10,000 leases). Ask for fewer leases, or a narrower prefix, to
    /// bound the memory a list takes.
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, LeaseError> {
        let most = crate::proto::listed(limit)
            .saturating_mul(crate::proto::MAX_LISTED_LEASE_BYTES)
            .saturating_add(64 * 1024);
        let answer = self
            .on_any(try_next_server, |c| {
                let request = self.request(ListRequest {
                    prefix: prefix.to_string(),
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                });
                async move { c.max_decoding_message_size(most).list(request).await }
            })
            .await
            .map_err(|s| error_of(&s, None))?;
        answer
            .into_inner()
            .leases
            .into_iter()
            .map(from_proto)
            .collect()
    }

    /// Checks that the service answers and that its backend is ready.
    pub async fn check(&self) -> Result<(), LeaseError> {
        use crate::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
        let answer = LeaseServiceClient::new(self.channel().clone())
            .ping(self.request(crate::proto::xyz::block::ftl::v1::PingRequest {}))
            .await
            .map_err(|s| error_of(&s, None))?;
        match answer.into_inner().not_ready {
            None => Ok(()),
            Some(why) => Err(unavailable(format!(
                "the lease service is not ready: {why}"
            ))),
        }
    }
}

impl ClientLeaser {
    /// Makes a call on the current server, and on each next one while `next` says the
    /// answer allows it ([`try_next_server`] for calls that may run twice, [`not_serving`]
    /// for one that must not): the first other answer, or the last server's.
    async fn on_any<T, F, Fut>(&self, next: fn(&Status) -> bool, call: F) -> Result<T, Status>
    where
        F: Fn(LeasesClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tries = self.servers();
        loop {
            let server = self.current();
            match call(self.client_at(server)).await {
                Err(s) if next(&s) && tries > 1 => {
                    tries -= 1;
                    self.move_on_from(server);
                }
                other => return other,
            }
        }
    }
}

/// Whether a call that must not be carried out twice may move on to the next server
/// after `status`: only when the server could not be reached or is not serving
/// (`UNAVAILABLE`).
fn not_serving(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// A lease's description as the service sent it.
fn from_proto(info: crate::proto::leases::v1::LeaseInfo) -> Result<LeaseInfo, LeaseError> {
    let key = Key::parse(&info.key)?;
    let d = |d: Option<prost_types::Duration>| {
        d.and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()
    };
    Ok(LeaseInfo {
        key,
        token: info.token,
        ttl: d(info.ttl),
        expires_in: d(info.expires_in),
        metadata: info.metadata,
        revoked: info.revoked,
        acquired_at: info
            .acquired_at
            .and_then(|t| std::time::SystemTime::try_from(t).ok()),
    })
}
