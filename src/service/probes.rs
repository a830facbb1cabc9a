//! The HTTP/1.1 probes (`GET /_liveness`, `GET /_readiness`) and the readiness check
//! they, the health service and FTL's `Ping` share.

use std::time::Duration;

use axum::http::StatusCode;

use crate::LeaseManager;

/// `router` with the HTTP probes added: liveness is always 200; readiness is 200 while
/// the backend of `manager` answers, 503 (with why) while it does not.
pub(super) fn with_probes(router: axum::Router, manager: LeaseManager) -> axum::Router {
    let probes = manager;
    router
        .route(
            "/_liveness",
            axum::routing::get(|| async { (StatusCode::OK, "alive\n") }),
        )
        .route(
            "/_readiness",
            axum::routing::get(move || {
                let manager = probes.clone();
                async move {
                    match readiness(&manager).await {
                        None => (StatusCode::OK, "ready\n".to_string()),
                        Some(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
}

/// `None` when the backend answers; else why not. Bounded in time, so that a probe of
/// a hung backend gets its answer.
pub(crate) async fn readiness(manager: &LeaseManager) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(3), manager.check()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("the backend did not answer within 3s".into()),
    }
}
