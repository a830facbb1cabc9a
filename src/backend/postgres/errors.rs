//! The driver's and the pool's errors as [`BackendError`]s: a connection that is gone
//! (or never came) is `Unavailable`, an error the server reported is `Failed`.

use crate::error::{BackendError, BackendErrorKind};

pub(super) fn pg_error(what: &str, e: tokio_postgres::Error) -> BackendError {
    let kind = if e.is_closed() || e.as_db_error().is_none() {
        BackendErrorKind::Unavailable
    } else {
        BackendErrorKind::Failed
    };
    BackendError::with_source(kind, format!("{what}: {e}"), e)
}

pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> BackendError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(_) => BackendError::new(
            BackendErrorKind::Unavailable,
            format!("no database connection in time: {e}"),
        ),
        PoolError::Backend(e) => pg_error("could not connect to the database", e),
        other => BackendError::new(
            BackendErrorKind::Unavailable,
            format!("database connection pool: {other}"),
        ),
    }
}
