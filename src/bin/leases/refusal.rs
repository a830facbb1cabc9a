//! Why an acquire was refused, for people: a held key says who holds it (metadata,
//! token, time left, as `info` shows them), and a TTL under the service's minimum says
//! it is the service's.

use leases::{Key, LeaseError};

use crate::exit::Failure;
use crate::output::holder;
use crate::source::Source;

/// The failure for an acquire of `key` that `source` refused with `e`. A held key is
/// looked up once more (best effort) to say who holds it; the exit code stays the
/// error's own.
pub(crate) async fn acquire_failure(source: &Source, key: &Key, e: LeaseError) -> Failure {
    let mut f = Failure::from_lease_error(&e);
    f.message = match e {
        // The library's bounds were checked before connecting: this is the service's
        // own minimum (its `serve --min-ttl`).
        LeaseError::TtlTooShort { ttl, min } if source.is_service() => format!(
            "{key}: the lease service refused --ttl {}: its minimum TTL (serve --min-ttl) \
             is {}",
            crate::duration::human(ttl),
            crate::duration::human(min)
        ),
        LeaseError::Conflict | LeaseError::WaitTimedOut { .. } => match source.info(key).await {
            Ok(Some(info)) => format!(
                "{key}: {}: held by {:?} (token {}, {}{} left)",
                f.message,
                holder(&info.metadata),
                info.token,
                if info.revoked { "revoked, " } else { "" },
                crate::duration::human_approx(info.expires_in),
            ),
            // Given back meanwhile, or the look-up failed: the refusal alone.
            _ => format!("{key}: {}", f.message),
        },
        _ => format!("{key}: {}", f.message),
    };
    f
}
