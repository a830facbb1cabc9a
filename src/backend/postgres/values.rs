//! Values between Rust and the database: TTLs in whole milliseconds (and the longest one
//! the database can store), fencing tokens as `BIGINT`, key prefixes as LIKE patterns.

use std::time::Duration;

use crate::error::{BackendError, BackendErrorKind};

/// A LIKE pattern matching every string that starts with `prefix`: `%`, `_` and the
/// escape character `!` are escaped, so that no character of the prefix is special.
pub(super) fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The longest TTL the database can add to `now()` (a thousand years; PostgreSQL's
/// timestamps end in the year 294276). A longer one is refused before it reaches the
/// database, so that it cannot fail a whole batch of renewals.
const MAX_DB_TTL: Duration = Duration::from_secs(1000 * 366 * 24 * 3600);

/// Refuses a TTL longer than the database can store ([`MAX_DB_TTL`]).
pub(super) fn check_ttl(what: &str, ttl: Duration) -> Result<(), BackendError> {
    if ttl > MAX_DB_TTL {
        return Err(BackendError::new(
            BackendErrorKind::Failed,
            format!(
                "{what}: a TTL of {ttl:?} is longer than the database can store ({MAX_DB_TTL:?})"
            ),
        ));
    }
    Ok(())
}

/// A TTL in whole milliseconds, rounded up.
pub(super) fn ttl_ms(ttl: Duration) -> i64 {
    // Round up: the database must never expire a lease before the holder's deadline.
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

/// A fencing token as a `BIGINT`; `None` for one that no grant can have handed out.
pub(super) fn token_to_db(token: u64) -> Option<i64> {
    i64::try_from(token).ok()
}

/// A `BIGINT` from the token sequence as a fencing token.
pub(super) fn token_from_db(token: i64) -> Result<u64, BackendError> {
    u64::try_from(token).map_err(|_| {
        BackendError::new(
            BackendErrorKind::Failed,
            format!("the token sequence returned {token}, which is not a valid fencing token"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefix_escapes_metacharacters() {
        assert_eq!(like_prefix(""), "%");
        assert_eq!(like_prefix("/system/a_b%2F!"), "/system/a!_b!%2F!!%");
    }

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::from_secs(5)), 5000);
        assert_eq!(ttl_ms(Duration::MAX), i64::MAX);
    }
}
