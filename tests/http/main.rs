//! The HTTP/JSON API of the lease service: the leaser suite through a thin HTTP
//! client (on the memory backend and on PostgreSQL), every error mapping, bad input,
//! auth and limits, the lapse and give-back rules, and the OpenAPI document checked
//! against what the server answers.
//!
//! One binary, a module per theme: `client` (`HttpLeaser`, over support/http_wire.rs),
//! `conformance`, `errors` (statuses, auth, the body limit, malformed input), `limits`
//! (leases per client, an acquire when the server stops), `rules` (a client
//! that stops heartbeating, a release), `openapi`, `console` (the console switch and
//! the event log), `review` (an adversarial review's regressions).
#![cfg(feature = "server")]

#[path = "../support/http_wire.rs"]
mod http_wire;
#[path = "../support/mod.rs"]
mod support;

mod client;
mod conformance;
mod console;
mod errors;
mod limits;
mod openapi;
mod review;
mod rules;

use leases::service::{LeaseServer, ServeOptions};

/// A server on the memory backend (minimum TTL 1 s) with `options`.
pub(crate) async fn server_with(options: ServeOptions) -> LeaseServer {
    LeaseServer::start(support::remote::memory_manager().await, options)
        .await
        .unwrap()
}

/// A server on the memory backend on a free port.
pub(crate) async fn server() -> LeaseServer {
    server_with(support::remote::local()).await
}
