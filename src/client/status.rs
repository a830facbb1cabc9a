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
