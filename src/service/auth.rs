//! Bearer-token authentication of the lease services (when configured): a wrong or
//! missing token is `UNAUTHENTICATED`, compared in time that depends only on lengths.

use std::sync::Arc;

use tonic::Status;

/// Bearer-token authentication (when configured).
#[derive(Clone)]
pub(super) struct Auth(pub(super) Option<Arc<str>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(token) if same(token.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong bearer token")),
            None => Err(Status::unauthenticated(
                "this lease service requires `authorization: Bearer <token>`",
            )),
        }
    }
}

/// Compares in time that depends only on the lengths.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
