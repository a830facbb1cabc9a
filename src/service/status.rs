//! What both lease services answer with: the gRPC status of a lease error (a TTL
//! refusal's numbers in a trailer), durations on the wire, and a holder's time left.

use std::time::Duration;

use tonic::{Code, Status};

use crate::error::LeaseError;
use crate::proto;

/// The gRPC status for a lease error.
pub(crate) fn status_of(e: &LeaseError) -> Status {
    let code = match e {
        LeaseError::Conflict => Code::ResourceExhausted,
        LeaseError::WaitTimedOut { .. } => Code::DeadlineExceeded,
        LeaseError::TtlTooShort { .. }
        | LeaseError::TtlTooLong { .. }
        | LeaseError::InvalidKey(_)
        | LeaseError::MetadataTooLarge { .. }
        | LeaseError::ResumeTtl { .. } => Code::InvalidArgument,
        LeaseError::NotHeld => Code::FailedPrecondition,
        LeaseError::ManagerStopped | LeaseError::Backend(_) => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    // The numbers of a TTL refusal, for clients to rebuild the exact error.
    if let Some(value) = proto::ttl_refusal(e).and_then(|v| v.parse().ok()) {
        status.metadata_mut().insert(proto::TTL_REFUSAL, value);
    }
    status
}

pub(crate) use crate::proto::{duration as proto_duration, std_duration as duration_of};

/// How long the holder of `ctx` may still act, by its local deadline.
pub(crate) fn time_left(ctx: &crate::LeaseContext, ttl: Duration) -> Duration {
    match ctx.deadline() {
        Some(d) => {
            tokio::time::Instant::from_std(d).saturating_duration_since(tokio::time::Instant::now())
        }
        None => ttl,
    }
}
