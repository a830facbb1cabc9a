//! The HTTP API's errors: one JSON shape, `{"error": {"code": "...", "message": "..."}}`
//! (with `field`, `limit_ms` or `holder` where they help), and the HTTP status each
//! lease error means.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::LeaseError;

/// An error answer of the HTTP API.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// More members of the error object (`field`, `limit_ms`, `holder`).
    pub(crate) extra: Map<String, Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// A 400 for one field of the request: its name is in the message and in `field`.
    pub(crate) fn field(field: &str, why: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("`{field}`: {why}"),
        )
        .with("field", json!(field))
    }

    pub(crate) fn with(mut self, name: &str, value: Value) -> Self {
        self.extra.insert(name.to_string(), value);
        self
    }

    /// A 410: no lease `key`/`token` is held through this server.
    pub(crate) fn not_held(key: &crate::Key, token: u64) -> Self {
        ApiError::new(
            StatusCode::GONE,
            "not_held",
            format!(
                "no lease {key} with token {token} is held through this server: it was \
                 released, it ended and was given back, or it was never granted here"
            ),
        )
    }

    /// The HTTP error for a lease error; `field` names the request field a refusal
    /// of the input is about.
    pub(crate) fn of(e: &LeaseError) -> Self {
        let (status, code) = match e {
            LeaseError::Conflict => (StatusCode::CONFLICT, "held"),
            LeaseError::WaitTimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, "wait_timed_out"),
            LeaseError::TtlTooShort { .. } => (StatusCode::BAD_REQUEST, "ttl_too_short"),
            LeaseError::TtlTooLong { .. } => (StatusCode::BAD_REQUEST, "ttl_too_long"),
            LeaseError::InvalidKey(_) => (StatusCode::BAD_REQUEST, "invalid_key"),
            LeaseError::MetadataTooLarge { .. } => (StatusCode::BAD_REQUEST, "metadata_too_large"),
            LeaseError::ResumeTtl { .. } => (StatusCode::BAD_REQUEST, "resume_ttl"),
            LeaseError::NotHeld => (StatusCode::GONE, "not_held"),
            LeaseError::ManagerStopped | LeaseError::Backend(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let error = ApiError::new(status, code, e.to_string());
        match e {
            LeaseError::TtlTooShort { min, .. } => error
                .with("field", json!("ttl_ms"))
                .with("limit_ms", ms(*min)),
            LeaseError::TtlTooLong { max, .. } => error
                .with("field", json!("ttl_ms"))
                .with("limit_ms", ms(*max)),
            LeaseError::ResumeTtl { held, .. } => error
                .with("field", json!("ttl_ms"))
                .with("limit_ms", ms(*held)),
            LeaseError::InvalidKey(_) => error.with("field", json!("key")),
            LeaseError::MetadataTooLarge { .. } => error.with("field", json!("metadata")),
            _ => error,
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

/// A duration in whole milliseconds, as every `*_ms` member of the API (rounded
/// down: a time left is never overstated).
pub(crate) fn ms(d: Duration) -> Value {
    json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        error.extend(self.extra);
        json_response(self.status, json!({ "error": error }))
    }
}

/// A JSON answer with `status`.
pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}
