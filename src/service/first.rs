//! The first request of a lease stream, awaited for a bounded time.
//!
//! A stream that is opened and then never sends anything would otherwise keep a task
//! and one of its connection's stream slots
//! ([`ServeOptions::max_streams_per_connection`](super::options::ServeOptions::max_streams_per_connection))
//! until the server shuts down. Both lease services therefore wait at most
//! [`ServeOptions::first_request_timeout`](super::options::ServeOptions::first_request_timeout)
//! for a stream's first request; past it the stream ends with `DEADLINE_EXCEEDED`
//! ("no request within … of opening the stream") and frees its slot. Later requests
//! are bounded by each protocol's own rule (the TTL).

use std::future::Future;

use tonic::{Status, Streaming};

use super::shared::Shared;

/// Why a stream ended before its first request.
#[derive(Debug)]
pub(crate) enum NoFirst {
    /// The client closed its side or went away: nothing to tell it.
    Gone,
    /// The server is stopping.
    Stopping,
    /// End the stream with this status (no request in time, or a broken request).
    End(Status),
}

/// Waits for the first request of `incoming`, at most the server's
/// `first_request_timeout`, and gives up early when `gone` completes (the client stopped
/// reading) or the server stops.
pub(crate) async fn first_request<T>(
    shared: &Shared,
    incoming: &mut Streaming<T>,
    gone: impl Future<Output = ()>,
) -> Result<T, NoFirst> {
    let within = shared.options.first_request_timeout;
    tokio::select! {
        _ = shared.stopping.cancelled() => Err(NoFirst::Stopping),
        _ = gone => Err(NoFirst::Gone),
        _ = tokio::time::sleep(within) => Err(NoFirst::End(silent(within))),
        m = incoming.message() => match m {
            Ok(Some(request)) => Ok(request),
            Ok(None) => Err(NoFirst::Gone),
            Err(status) => Err(NoFirst::End(status)),
        },
    }
}

/// The status of a stream that sent no request in time.
pub(crate) fn silent(within: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!(
        "no request within {within:?} of opening the stream"
    ))
}

/// The next request of a stream whose first one was already taken by
/// [`first_request`]: `first` until it has been handed out, then the stream's own.
pub(crate) async fn next_request<T>(
    first: &mut Option<T>,
    incoming: &mut Streaming<T>,
) -> Result<Option<T>, Status> {
    match first.take() {
        Some(request) => Ok(Some(request)),
        None => incoming.message().await,
    }
}
