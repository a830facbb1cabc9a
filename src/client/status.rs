//! How the service's answers become [`LeaseError`]s: a gRPC status (a TTL refusal
//! rebuilt from its trailer), or a service that cannot be reached or breaks protocol.

use std::time::Duration;

use tonic::{Code, Status};

use crate::error::{BackendError, BackendErrorKind};
use crate::LeaseError;

/// A [`LeaseError::Backend`] saying that the service is unavailable, and why.
pub(super) fn unavailable(message: impl Into<String>) -> LeaseError {
    LeaseError::Backend(BackendError::new(BackendErrorKind::Unavailable, message))
}

/// Whether a call that ended with `status` should move on to the next server: the
/// server could not be reached or is not serving (`UNAVAILABLE`), the call was
/// cancelled under it (`CANCELLED`: a connection that closed before the request went
/// out, as a server that is shutting down closes its own, or a stream the server or a
/// proxy cut), or the connection failed in a way gRPC has no code for (`UNKNOWN`, as
/// tonic reports a "transport error"). The last two do not say that the server did not
/// carry the call out: this is for calls that may run twice. Reads may; an acquire may
/// too, since the store decides every grant (a grant made by a server whose answer was
/// cut off holds the key until its stream is found gone, so the next server answers
/// `Conflict` meanwhile: never two holders). A revoke may not (see `calls.rs`).
pub(super) fn try_next_server(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown
    )
}

/// The lease error for a status the service answered with.
pub(super) fn error_of(status: &Status, waited: Option<Duration>) -> LeaseError {
    let message = format!("lease service: {}", status.message());
    match status.code() {
        Code::ResourceExhausted if status.message() == "lease already held" => LeaseError::Conflict,
        Code::DeadlineExceeded if waited.is_some() => LeaseError::WaitTimedOut {
            waited: waited.unwrap_or_default(),
        },
        Code::Unavailable | Code::Cancelled | Code::Unknown => unavailable(message),
        Code::Unauthenticated | Code::PermissionDenied => LeaseError::Backend(BackendError::new(
            BackendErrorKind::Unauthenticated,
            message,
        )),
        Code::DeadlineExceeded => {
            LeaseError::Backend(BackendError::new(BackendErrorKind::Timeout, message))
        }
        Code::InvalidArgument => status
            .metadata()
            .get(crate::proto::TTL_REFUSAL)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::proto::parse_ttl_refusal)
            .unwrap_or(LeaseError::InvalidConfig(message)),
        _ => LeaseError::Backend(BackendError::new(BackendErrorKind::Failed, message)),
    }
}
