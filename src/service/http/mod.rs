//! The HTTP/JSON API (`/v1/...`): leases for any program that can send an HTTP
//! request, a shell script with `curl` included (see `docs/http.md`).
//!
//! A client with no stream cannot prove it is alive by keeping one open, so the
//! server keeps each HTTP lease for its client in a task of its own (a keeper,
//! `session.rs`), fed by the client's `heartbeat` and `release` requests: the same
//! lease as a native `Hold` stream's ([`Hold`](super::handover::Hold), held with
//! `keep_until_released`, listed in [`Holds`](super::handover::Holds) so that it can be
//! re-attached by key and token), ended by the same events, and given back by the same
//! remote-holder rule (`give_back.rs`). Every answer that keeps a lease alive carries
//! `time_left_ms`, and the protocol's deadline rule applies: the client's deadline is
//! the instant it *sent* the request plus that time.
//!
//! The API shares the port of the gRPC services (HTTP/1.1, or HTTP/2 with TLS), their
//! bearer token (`Authorization: Bearer TOKEN`; the readiness route and the OpenAPI
//! document stay open, as probes need them; with
//! [`ServeOptions::console`](super::ServeOptions::console), so do the reads `info`,
//! `list` and `events` for a request that carries no token), their size limit (twice theirs, room for base64: a larger body is 413)
//! and their error meanings, as HTTP statuses with one JSON error shape
//! (`errors.rs`). It can also be served on a port of its own
//! ([`ServeOptions::http_bind`](super::ServeOptions::http_bind)).
//!
//! Files: `handlers.rs` the routes; `input.rs` reading bodies and queries field by
//! field; `errors.rs` the error answers; `session.rs` the keepers; `openapi.rs` the
//! OpenAPI document served at `/v1/openapi.json`; `base64.rs` metadata that is not
//! text. The live console (`../console.rs`) is a page over these routes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;

use super::shared::Shared;

mod base64;
mod errors;
mod handlers;
mod input;
mod openapi;
mod session;

/// The API's state: the server's shared state and the keepers of its HTTP leases.
#[derive(Clone)]
pub(crate) struct Api {
    shared: Shared,
    keepers: session::Keepers,
    token: Option<Arc<str>>,
    /// Whether every listener of the server is on loopback (see [`rebound`]).
    loopback_only: bool,
}

impl Api {
    /// The API of the server whose state is `shared` (one per server: every router
    /// built from it shares the keepers).
    pub(crate) fn new(shared: &Shared) -> Api {
        Api {
            shared: shared.clone(),
            keepers: session::Keepers::default(),
            token: shared.options.auth_token.clone().map(Arc::from),
            loopback_only: shared.options.bind.ip().is_loopback()
                && shared
                    .options
                    .http_bind
                    .is_none_or(|addr| addr.ip().is_loopback()),
        }
    }

    /// Every route of the API, under `/v1`.
    pub(crate) fn router(&self) -> Router {
        let open = Router::new()
            .route("/v1/ready", only(get(handlers::ready)))
            .route("/v1/openapi.json", only(get(handlers::openapi)));
        let leases = Router::new()
            .route("/v1/acquire", only(post(handlers::acquire)))
            .route("/v1/heartbeat", only(post(handlers::heartbeat)))
            .route("/v1/release", only(post(handlers::release)))
            .route("/v1/revoke", only(post(handlers::revoke)))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                authorized,
            ));
        let reads = Router::new()
            .route("/v1/info", only(get(handlers::info)))
            .route("/v1/list", only(get(handlers::list)))
            .route("/v1/events", only(get(handlers::events)))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                authorized_to_read,
            ));
        open.merge(leases)
            .merge(reads)
            .route("/v1", any(handlers::not_found))
            .route("/v1/", any(handlers::not_found))
            .route("/v1/{*rest}", any(handlers::not_found))
            .layer(DefaultBodyLimit::max(body_limit(&self.shared)))
            .with_state(self.clone())
    }
}

/// The largest body accepted: twice the gRPC message limit (136 KiB by default), room
/// for the largest metadata in base64 or with JSON escapes.
pub(crate) fn body_limit(shared: &Shared) -> usize {
    shared.options.max_message_bytes.saturating_mul(2)
}

/// `route` answering any other method with a JSON 405.
fn only(route: MethodRouter<Api>) -> MethodRouter<Api> {
    route.fallback(handlers::wrong_method)
}

/// The checks of the routes that change leases, before the body is read: a request a
/// browser sends on behalf of a page of another origin is refused (403, see
/// [`cross_origin`]), then the bearer token (401).
async fn authorized(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Some(why) = cross_origin(&request).or_else(|| rebound(&api, &request)) {
        return errors::ApiError::new(axum::http::StatusCode::FORBIDDEN, "cross_origin", why)
            .into_response();
    }
    check_token(&api, false, request, next).await
}

/// Why `request` may come through DNS rebinding, if it may: a server with no token that
/// listens on loopback only answers only requests whose `Host` is `localhost` or an IP
/// address. A hostile page whose own name was made to resolve to 127.0.0.1 counts as
/// the same origin as the server, so [`cross_origin`] cannot tell; its requests still
/// carry that name as their `Host`.
fn rebound(api: &Api, request: &Request) -> Option<String> {
    if api.token.is_some() || !api.loopback_only {
        return None;
    }
    let host = request
        .headers()
        .get(axum::http::header::HOST)?
        .to_str()
        .unwrap_or("");
    // The name without its port: `[::1]:8895`, `127.0.0.1:8895`, `localhost`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let allowed = name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok();
    (!allowed).then(|| {
        format!(
            "this server listens on loopback without a token and answers only requests \
             for `localhost` or an IP address, not for `{host}` (a page of another site \
             may have made that name resolve here)"
        )
    })
}

/// Why `request` is one a browser sent for a page of another origin, if it is. Such a
/// request needs no preflight when its body is `text/plain` (a `fetch` in `no-cors`
/// mode, a form), and the body is read as JSON whatever its type: without this check
/// any site an operator visits could change leases on a server without a token (bound
/// to loopback by default). Browsers say where a request comes from: `Sec-Fetch-Site`,
/// else `Origin`, whose host must be the request's own. Requests without either (curl,
/// programs) pass, and so do the console's (same origin).
fn cross_origin(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => None,
            other => Some(format!(
                "a browser's request for a page of another site (Sec-Fetch-Site: {}) may \
                 not change leases",
                String::from_utf8_lossy(other)
            )),
        };
    }
    let origin = headers.get(axum::http::header::ORIGIN)?;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let same = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .zip(host)
        .is_some_and(|((_, origin_host), host)| origin_host.eq_ignore_ascii_case(host));
    if same {
        return None;
    }
    Some(format!(
        "a browser's request for a page of another origin (Origin: {}) may not change \
         leases",
        String::from_utf8_lossy(origin.as_bytes())
    ))
}

/// The check of the read-only routes: as [`authorized`], except that with
/// [`ServeOptions::console`](super::ServeOptions::console) a request that carries no
/// token may read (one that carries a wrong token is still refused).
async fn authorized_to_read(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Some(why) = rebound(&api, &request) {
        return errors::ApiError::new(axum::http::StatusCode::FORBIDDEN, "cross_origin", why)
            .into_response();
    }
    let open = api.shared.options.console;
    check_token(&api, open, request, next).await
}

async fn check_token(api: &Api, open_without: bool, request: Request, next: Next) -> Response {
    let Some(expected) = &api.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let why = match given {
        None if open_without => return next.run(request).await,
        Some(token) if super::auth::same(token.as_bytes(), expected.as_bytes()) => {
            return next.run(request).await
        }
        Some(_) => "wrong bearer token",
        None => "this lease service requires `Authorization: Bearer <token>`",
    };
    let mut response =
        errors::ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "unauthenticated", why)
            .into_response();
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}
