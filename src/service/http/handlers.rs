//! The HTTP API's handlers: each reads its input (naming a bad field), calls the
//! server's manager or a lease's keeper, and answers JSON.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{Extensions, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::base64;
use super::errors::{json_response, ms, ApiError};
use super::input::Fields;
use super::session::{Ask, Ended};
use super::Api;
use crate::service::hold::{busy, gone, obtain_hold, NotObtained};
use crate::service::status::time_left;
use crate::{AcquireOptions, Key, LeaseError, LeaseInfo};

type Answer = Result<Response, ApiError>;

/// The body, or the error its reading met (413 for a body over the size limit).
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(status, code, rejection.body_text())
    })
}

fn ok(body: Value) -> Answer {
    Ok(json_response(StatusCode::OK, body))
}

/// A lease as the API describes it.
pub(crate) fn info_json(info: &LeaseInfo) -> Value {
    let acquired = info
        .acquired_at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok().map(ms));
    json!({
        "key": info.key.to_string(),
        "token": info.token.to_string(),
        "ttl_ms": ms(info.ttl),
        "expires_in_ms": ms(info.expires_in),
        "metadata": std::str::from_utf8(&info.metadata).ok(),
        "metadata_base64": base64::encode(&info.metadata),
        "revoked": info.revoked,
        "acquired_at_unix_ms": acquired,
    })
}

/// `POST /v1/acquire`.
pub(super) async fn acquire(
    State(api): State<Api>,
    extensions: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body_of(body)?;
    let fields = Fields::json(
        &body,
        &[
            "key",
            "ttl_ms",
            "metadata",
            "metadata_base64",
            "wait_ms",
            "resume",
        ],
    )?;
    let key = fields.key()?;
    let ttl = fields
        .millis("ttl_ms")?
        .ok_or_else(|| ApiError::field("ttl_ms", "required"))?;
    let mut options = AcquireOptions::new(ttl).metadata(fields.metadata()?);
    if let Some(wait) = fields.millis("wait_ms")? {
        options = options.wait(wait);
    }
    let resume = fields.token("resume")?;
    let shared = &api.shared;
    // Counted before the lease is asked for, so that acquires in flight count too.
    let limit = shared.options.max_http_leases_per_client;
    let client = peer_ip(&extensions);
    let Some(counted) = shared.http_leases.take(client, limit) else {
        return Err(too_many(client, limit));
    };
    let got = tokio::select! {
        _ = shared.stopping.cancelled() => {
            return Err(ApiError::unavailable("the lease service is shutting down"));
        }
        got = obtain_hold(shared, key.clone(), options, resume, "http") => got,
    };
    let mut hold = match got {
        Ok(hold) => hold,
        Err(NotObtained::Refused(LeaseError::Conflict)) => return Err(held(&api, &key).await),
        Err(NotObtained::Refused(e)) => return Err(ApiError::of(&e)),
        Err(NotObtained::Gone) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "not_held",
                gone(&key, resume),
            ))
        }
        Err(NotObtained::Busy) => return Err(ApiError::unavailable(busy(&key))),
    };
    let token = hold.token();
    // No `.await` from here until the keeper has the hold.
    let ended = hold.ctx.reason().map(|r| Ended::by(&r));
    let left = time_left(&hold.ctx, ttl);
    if ended.is_none() {
        hold.promised = hold.promised.max(tokio::time::Instant::now() + left);
    }
    api.keepers.keep(shared, hold, key.clone(), ttl, counted);
    if let Some(ended) = ended {
        // A re-attached lease that had already ended: its keeper gives it back by the
        // rule (a `release` frees it at once).
        return Err(ApiError::new(StatusCode::GONE, ended.code, ended.message));
    }
    ok(json!({
        "key": key.to_string(),
        "token": token.to_string(),
        "time_left_ms": ms(left),
        "ttl_ms": ms(ttl),
        "heartbeat_every_ms": ms(ttl / 4),
    }))
}

/// The client's IP address: from the gRPC port's connection (cleartext or TLS) or the
/// HTTP port's. Unknown (never so on a TCP listener), it is counted as `0.0.0.0`.
fn peer_ip(extensions: &Extensions) -> IpAddr {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let addr = if let Some(ConnectInfo(addr)) = extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(*addr)
    } else if let Some(info) = extensions.get::<TcpConnectInfo>() {
        info.remote_addr()
    } else {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr())
    };
    addr.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

/// The 429 for a client at its limit of HTTP leases.
fn too_many(client: IpAddr, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_leases",
        format!(
            "the client {client} already holds {limit} HTTP leases through this server, its \
             limit: release one first (the limit is `--max-http-leases-per-client`)"
        ),
    )
    .with("limit", json!(limit))
}

/// The 409 for a held key, with what is known of its holder.
async fn held(api: &Api, key: &Key) -> ApiError {
    let error = ApiError::of(&LeaseError::Conflict);
    let holder = match api.shared.manager.lease_info(key).await {
        Ok(Some(info)) => json!({
            "token": info.token.to_string(),
            "metadata": std::str::from_utf8(&info.metadata).ok(),
            "metadata_base64": base64::encode(&info.metadata),
            "expires_in_ms": ms(info.expires_in),
            "revoked": info.revoked,
        }),
        _ => Value::Null,
    };
    error.with("holder", holder)
}

/// The keeper of the lease a heartbeat or release names.
fn keeper_of(
    api: &Api,
    body: &[u8],
) -> Result<(Key, u64, tokio::sync::mpsc::Sender<Ask>), ApiError> {
    let fields = Fields::json(body, &["key", "token"])?;
    let key = fields.key()?;
    let token = fields
        .token("token")?
        .ok_or_else(|| ApiError::field("token", "required"))?;
    match api.keepers.get(&key, token) {
        Some(keeper) => Ok((key, token, keeper)),
        None => Err(gone_from_here(api, &key, token)),
    }
}

/// The 410 for a lease this server does not keep (any more): `not_held`, or, while
/// the server drains on a shared store, `handed_over`, as its keeper answered while
/// it was there. A keeper lets go at once when such a server stops (the lease lives on
/// in the store), so a heartbeat that came a moment later found nothing here, and was
/// told `not_held` instead of where to go (re-attach through another server).
fn gone_from_here(api: &Api, key: &Key, token: u64) -> ApiError {
    if api.shared.stopping.is_cancelled() && api.shared.let_go.shared_store {
        ApiError::new(
            StatusCode::GONE,
            "handed_over",
            "the lease service is shutting down: re-attach the lease through another \
             server (acquire with `resume`)",
        )
    } else {
        ApiError::not_held(key, token)
    }
}

/// `POST /v1/heartbeat`.
pub(super) async fn heartbeat(
    State(api): State<Api>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body_of(body)?;
    let (key, token, keeper) = keeper_of(&api, &body)?;
    let (tx, rx) = oneshot::channel();
    // Waits for room when many requests of this lease come at once: a full queue is no
    // end of the lease (`410` would tell the holder to stop).
    if keeper.send(Ask::Heartbeat(tx)).await.is_err() {
        return Err(gone_from_here(&api, &key, token));
    }
    match rx.await {
        Ok(Ok(left)) => ok(json!({
            "key": key.to_string(),
            "token": token.to_string(),
            "time_left_ms": ms(left),
        })),
        Ok(Err(ended)) => Err(ApiError::new(StatusCode::GONE, ended.code, ended.message)),
        Err(_) => Err(gone_from_here(&api, &key, token)),
    }
}

/// `POST /v1/release`.
pub(super) async fn release(State(api): State<Api>, body: Result<Bytes, BytesRejection>) -> Answer {
    let body = body_of(body)?;
    let (key, token, keeper) = keeper_of(&api, &body)?;
    let (tx, rx) = oneshot::channel();
    if keeper.send(Ask::Release(tx)).await.is_err() {
        return Err(gone_from_here(&api, &key, token));
    }
    match rx.await {
        Ok(None) => ok(json!({ "released": true, "ended": null })),
        Ok(Some(ended)) => ok(json!({
            "released": false,
            "ended": { "code": ended.code, "message": ended.message },
        })),
        Err(_) => Err(gone_from_here(&api, &key, token)),
    }
}

/// `POST /v1/revoke`.
pub(super) async fn revoke(State(api): State<Api>, body: Result<Bytes, BytesRejection>) -> Answer {
    let body = body_of(body)?;
    let key = Fields::json(&body, &["key"])?.key()?;
    let revoked = api
        .shared
        .manager
        .revoke(&key)
        .await
        .map_err(|e| ApiError::of(&e))?;
    ok(json!({ "revoked": revoked }))
}

/// `GET /v1/info?key=...`.
pub(super) async fn info(State(api): State<Api>, uri: Uri) -> Answer {
    let key = Fields::query(uri.query(), &["key"])?.key()?;
    let info = api
        .shared
        .manager
        .lease_info(&key)
        .await
        .map_err(|e| ApiError::of(&e))?;
    ok(json!({ "lease": info.as_ref().map(info_json) }))
}

/// `GET /v1/list?prefix=...&limit=...`.
pub(super) async fn list(State(api): State<Api>, uri: Uri) -> Answer {
    let fields = Fields::query(uri.query(), &["prefix", "limit"])?;
    let prefix = fields.string("prefix")?.unwrap_or("").to_string();
    let limit = match fields.count("limit")? {
        None | Some(0) => crate::proto::LIST_LIMIT,
        Some(n) => usize::try_from(n).map_or(crate::proto::LIST_LIMIT, |n| {
            n.min(crate::proto::LIST_LIMIT)
        }),
    };
    let leases = api
        .shared
        .manager
        .list(&prefix, limit)
        .await
        .map_err(|e| ApiError::of(&e))?;
    ok(json!({ "leases": leases.iter().map(info_json).collect::<Vec<_>>() }))
}

/// `GET /v1/events?after=N&limit=M`: what this server saw lately (`events.rs`).
pub(super) async fn events(State(api): State<Api>, uri: Uri) -> Answer {
    let fields = Fields::query(uri.query(), &["after", "limit"])?;
    let after = fields.count("after")?.unwrap_or(0);
    let limit = match fields.count("limit")? {
        None | Some(0) => EVENTS_LIMIT,
        Some(n) => usize::try_from(n).map_or(EVENTS_LIMIT, |n| n.min(EVENTS_LIMIT)),
    };
    let (events, last) = api.shared.events.after(after, limit);
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at_unix_ms": e.at_unix_ms,
                "kind": e.kind,
                "key": e.key,
                "token": e.token.to_string(),
                "via": e.via,
                "detail": e.detail,
            })
        })
        .collect();
    ok(json!({ "events": events, "last": last }))
}

/// The most events one `GET /v1/events` answers with.
const EVENTS_LIMIT: usize = 1000;

/// `GET /v1/ready`.
pub(super) async fn ready(State(api): State<Api>) -> Answer {
    if api.shared.stopping.is_cancelled() {
        return Err(ApiError::unavailable("the lease service is shutting down"));
    }
    match crate::service::probes::readiness(&api.shared.manager).await {
        None => ok(json!({ "ready": true })),
        Some(why) => Err(ApiError::unavailable(format!("not ready: {why}"))),
    }
}

/// `GET /v1/openapi.json`.
pub(super) async fn openapi() -> Response {
    json_response(StatusCode::OK, super::openapi::document())
}

/// Any other path under `/v1`.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such route: {} (see /v1/openapi.json)", uri.path()),
    )
}

/// A route asked with a method it does not answer.
pub(super) async fn wrong_method(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not answer {method} (see /v1/openapi.json)",
            uri.path()
        ),
    )
}
