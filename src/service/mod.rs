//! The lease service: `leases serve`, leases over gRPC for any language (feature
//! `server`).
//!
//! One port serves, over HTTP/2 (cleartext h2c, or TLS when configured):
//! - FTL's `xyz.block.ftl.lease.v1.LeaseService` ([`ftl`]), wire-compatible with FTL's
//!   Go and JVM runtimes;
//! - the native `leases.v1.Leases` service ([`native`]), which
//!   [`ClientLeaser`](crate::ClientLeaser) speaks: fencing tokens, the holder's time
//!   left, metadata, waiting, revoke, info and list;
//! - the standard gRPC health service (`grpc.health.v1.Health`, status `SERVING` while
//!   the backend answers) and server reflection (`grpc.reflection.v1`);
//!
//! and, over plain HTTP/1.1 on the same port, `GET /_liveness` (always 200),
//! `GET /_readiness` (200, or 503 while the backend does not answer), and the HTTP/JSON
//! API under `/v1` (`http/`: acquire, heartbeat, release, revoke, info, list; also on a
//! port of its own with [`ServeOptions::http_bind`]); with [`ServeOptions::console`],
//! the live console at `GET /console` (`console/`), a page over that API.
//!
//! Every lease the service grants is held by one
//! [`LeaseManager`](crate::LeaseManager) on behalf of the gRPC stream that asked for
//! it: the manager renews it in the background while the stream is alive and its
//! client keeps sending requests. The client is a holder until
//! it has surely stopped, so a key goes back at once only on the client's own release
//! (the native `release` message, FTL's half-close); however else a lease or its stream
//! ends (a revoke through any server, a loss, a lapse, a reset of any code, a broken
//! connection, a shutdown), the key stays taken until the time the server last promised
//! the client has passed. One function carries that rule for both protocols (see
//! `give_back.rs`), and the manager never gives such a key back by itself
//! ([`AcquireOptions::keep_until_released`](crate::AcquireOptions::keep_until_released)).
//! Several servers on one PostgreSQL table serve the same leases, so that the service
//! survives the loss of a server.
//!
//! # Security and limits
//! The service binds to 127.0.0.1 unless told otherwise, and logs a warning when it
//! binds elsewhere without authentication. [`ServeOptions::auth_token`] turns on
//! bearer-token authentication for both lease services (`authorization: Bearer
//! TOKEN`): a wrong or missing token is `UNAUTHENTICATED`, and nothing changes. The
//! health service, reflection and the HTTP probes stay open, as probes need them.
//! [`ServeOptions::tls`] serves TLS (rustls), optionally requiring client certificates
//! signed by a given CA. Limits, each with its own status when exceeded: the size of
//! one message ([`ServeOptions::max_message_bytes`], `OUT_OF_RANGE` from tonic's decoder),
//! the keys one FTL stream may hold ([`ServeOptions::max_keys_per_stream`],
//! `RESOURCE_EXHAUSTED` "too many keys on one stream"), and the open lease streams of
//! one connection ([`ServeOptions::max_streams_per_connection`], `RESOURCE_EXHAUSTED`
//! "too many lease streams on one connection"), and the wait for a stream's first
//! request ([`ServeOptions::first_request_timeout`], `DEADLINE_EXCEEDED`), so that a
//! silent stream does not keep its slot. A TTL refusal (`INVALID_ARGUMENT`) carries its
//! numbers in the trailer `leases-ttl-refusal`, from which
//! [`ClientLeaser`](crate::ClientLeaser) rebuilds
//! [`LeaseError::TtlTooShort`](crate::LeaseError::TtlTooShort) or
//! [`LeaseError::TtlTooLong`](crate::LeaseError::TtlTooLong).
//!
//! # Layout
//! Each part in a file of its own, none using another's names in a circle:
//! - `options.rs`: [`ServeOptions`], [`TlsFiles`], their check, [`ServeError`];
//! - `server.rs`: [`LeaseServer`], binding, serving and shutting down;
//! - `routes.rs`: every service and probe of the one port, as one router (the HTTP
//!   API joins there);
//! - `http/`: the HTTP/JSON API, whose leases a task per lease keeps for clients that
//!   have no stream, by the same rules as a `Hold` stream's;
//! - `console/`: the live console's page, compiled in;
//! - `shared.rs`: the state the services of one server share (streams, limits), and
//!   `events.rs` the bounded log of recent grants and ends the console's timeline reads;
//! - `auth.rs`: the bearer-token check; `probes.rs` the HTTP probes and readiness;
//!   `health.rs` the gRPC health service;
//! - `hold.rs` serves one native lease, on its own `Hold` stream or on a lane of a
//!   `HoldMany` stream (`lanes.rs`); `many.rs` the `HoldMany` demultiplexer (many
//!   leases of one client, one heartbeat per group of one TTL);
//! - [`ftl`] and [`native`]: the two lease protocols, over `first.rs` (a stream's
//!   first request and its slot), `give_back.rs` (the remote-holder rule),
//!   `resets.rs` (a reset request stream is broken, not ended) and `status.rs` (lease
//!   errors as statuses, durations, a holder's time left).

mod auth;
mod console;
mod events;
mod first;
pub mod ftl;
mod give_back;
mod handover;
mod health;
mod hold;
mod http;
mod lanes;
mod many;
pub mod native;
mod options;
mod probes;
mod resets;
mod routes;
mod server;
mod shared;
mod status;

pub use options::{
    ServeError, ServeOptions, TlsFiles, DEFAULT_BIND, DEFAULT_FIRST_REQUEST_TIMEOUT,
    DEFAULT_FTL_TTL, DEFAULT_MAX_LEASES_PER_STREAM,
};
pub use server::LeaseServer;
