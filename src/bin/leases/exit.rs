//! Exit codes, and the one error type commands return: a message and its code.

use leases::{BackendErrorKind, LeaseError};

use crate::causes::{explain, with_causes};
use crate::duration::human;

/// The usage error code (clap's own): bad arguments, a bad key or duration, a TTL out of
/// bounds, a bad connection string.
pub(crate) const USAGE: u8 = 2;
/// `info`/`revoke`: the key is not held.
pub(crate) const NOT_HELD: u8 = 1;
/// The backend could not be reached, or failed (sysexits `EX_UNAVAILABLE`).
pub(crate) const BACKEND: u8 = 69;
/// The lease service refused the bearer token (missing or wrong): retrying cannot help
/// until the token is fixed (sysexits `EX_NOPERM`).
pub(crate) const AUTH: u8 = 77;
/// `leases` itself failed in a way none of the other codes names (sysexits
/// `EX_SOFTWARE`).
pub(crate) const INTERNAL: u8 = 70;
/// `run`: the key is held by someone else, after waiting if `--wait` was given
/// (sysexits `EX_TEMPFAIL`: try again later).
pub(crate) const HELD: u8 = 75;
/// `run`: the lease was lost or revoked while the command ran; the command was
/// stopped. Just past the sysexits range, so that it means nothing else.
pub(crate) const LOST: u8 = 79;
/// `run`: the command was found but could not be started (as in shells).
pub(crate) const CANNOT_EXECUTE: u8 = 126;
/// `run`: the command was not found (as in shells).
pub(crate) const NOT_FOUND: u8 = 127;

/// The exit codes, for `--help` (the README has the same table).
pub(crate) const TABLE: &str = "\
Exit codes:
  0-255  run, elect: the command's own exit code (128+N if a signal N killed
         it, as in shells; 130 if leases was interrupted while waiting);
         elect: 128+N also for signal N between terms, or during a term
         that was then lost; elect --observe: 0 when interrupted
  1      info, revoke: the key is not held
  2      usage: bad arguments, key, duration, TTL, URL or token file
  69     the backend could not be reached, or failed
  70     internal error of leases
  75     run: the key is held by someone else (after --wait, if given)
  77     the lease service refused the token (--token-file, LEASES_TOKEN_FILE)
  79     run: the lease was lost or revoked (or its renewal fell behind)
         while the command ran; all its processes were stopped (SIGTERM,
         then SIGKILL after --grace or before the key could be taken)
  126    run, elect: the command could not be executed
  127    run, elect: the command was not found";

/// A command's failure: what to tell the user, and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// The failure for a library error: bad input is a usage error, an unreachable or
    /// failing store is `BACKEND`, a refused token `AUTH`, a held key is `HELD`.
    /// Durations are written as users write them (`5s`, `1h30m`).
    pub(crate) fn from_lease_error(e: &LeaseError) -> Failure {
        let code = match e {
            LeaseError::Conflict | LeaseError::WaitTimedOut { .. } => HELD,
            LeaseError::TtlTooShort { .. }
            | LeaseError::TtlTooLong { .. }
            | LeaseError::InvalidKey(_)
            | LeaseError::MetadataTooLarge { .. }
            | LeaseError::InvalidConfig(_) => USAGE,
            LeaseError::Backend(b) if b.kind() == BackendErrorKind::Unsupported => INTERNAL,
            LeaseError::Backend(b) if b.kind() == BackendErrorKind::Unauthenticated => AUTH,
            LeaseError::Backend(_) => BACKEND,
            _ => INTERNAL,
        };
        let message = match e {
            LeaseError::WaitTimedOut { waited } => {
                format!("lease still held after waiting {}", human(*waited))
            }
            LeaseError::TtlTooShort { ttl, min } => format!(
                "lease TTL {} is shorter than the minimum {}",
                human(*ttl),
                human(*min)
            ),
            LeaseError::TtlTooLong { ttl, max } => format!(
                "lease TTL {} is longer than the maximum {}",
                human(*ttl),
                human(*max)
            ),
            LeaseError::Backend(b) if b.kind() == BackendErrorKind::Unauthenticated => format!(
                "{}; check the bearer token in --token-file (LEASES_TOKEN_FILE): it must be \
                 the one the service reads (serve --token-file)",
                with_causes(e)
            ),
            LeaseError::Backend(_) => match explain(e) {
                Some(why) => format!("{why}\n  ({})", with_causes(e)),
                None => with_causes(e),
            },
            _ => with_causes(e),
        };
        Failure::new(code, message)
    }
}
