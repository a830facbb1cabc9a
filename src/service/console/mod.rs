//! The live console: one page at `GET /console` (with [`ServeOptions::console`]), its
//! HTML, CSS and JavaScript compiled into the binary from the files beside this one, so
//! that it works where no CDN can be reached and needs no build step.
//!
//! The page is a client of the HTTP API and nothing more: it polls `GET /v1/list` (the
//! live leases under a prefix, drawn a page at a time, with a countdown of each lease's
//! time left) and `GET /v1/events` (this server's recent grants and ends), diffs
//! successive lists to see what happened through other servers of the same store (a key
//! whose token changed changed hands), and revokes with `POST /v1/revoke`. It reads
//! without a token (the option opens the read routes); a bearer token typed into the
//! page is kept in the tab's `sessionStorage`, sent as `Authorization: Bearer`, and never
//! shown again. The page is served with a content security policy that allows only its
//! own scripts and styles and no framing (a revoke button must not be clickable
//! through another site's frame). See `docs/console.md`.
//!
//! [`ServeOptions::console`]: super::ServeOptions::console

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_FRAME_OPTIONS};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// Only this origin's scripts, styles and requests; no frames, no plugins, no forms
/// posted elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_FRAME_OPTIONS, "DENY"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `router` with the console's routes added (when the console is on).
pub(super) fn with_console(router: Router, on: bool) -> Router {
    if !on {
        return router;
    }
    router
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
