//! The gRPC protocol of the lease service, generated from the files in `proto/` at
//! build time (feature `client`).
//!
//! - [`xyz::block::ftl::lease::v1`]: FTL's `LeaseService`, wire-compatible with FTL's Go
//!   and JVM runtimes (and its `Ping` messages in [`xyz::block::ftl::v1`]);
//! - [`leases::v1`]: the native service, with fencing tokens, the holder's time left,
//!   metadata, waiting, revoke, info and list. [`ClientLeaser`](crate::ClientLeaser)
//!   speaks it.
//!
//! Clients in other languages generate their stubs from the same `.proto` files.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// FTL's packages.
pub mod xyz {
    /// FTL's packages.
    pub mod block {
        /// FTL's packages.
        pub mod ftl {
            /// FTL's `xyz.block.ftl.v1`: the `Ping` messages.
            pub mod v1 {
                tonic::include_proto!("xyz.block.ftl.v1");
            }
            /// FTL's lease packages.
            pub mod lease {
                /// FTL's `xyz.block.ftl.lease.v1`: the `LeaseService`.
                pub mod v1 {
                    tonic::include_proto!("xyz.block.ftl.lease.v1");
                }
            }
        }
    }
}

/// The native protocol.
pub mod leases {
    /// `leases.v1`: the native `Leases` service.
    pub mod v1 {
        tonic::include_proto!("leases.v1");
    }
}

/// The encoded descriptors of every file in `proto/`, for gRPC server reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// A std duration as a protobuf one (saturating).
pub(crate) fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// A protobuf duration as a std one: `None` when negative or malformed.
pub(crate) fn std_duration(d: &prost_types::Duration) -> Option<std::time::Duration> {
    std::time::Duration::try_from(*d).ok()
}

/// The trailer that carries a TTL refusal's numbers with its `INVALID_ARGUMENT`
/// status, so that a client can rebuild the exact [`LeaseError`](crate::LeaseError):
/// `too-short <ttl> <min>` or `too-long <ttl> <max>`, each duration written as
/// `<seconds>.<nanoseconds, 9 digits>`.
pub(crate) const TTL_REFUSAL: &str = "leases-ttl-refusal";

/// The [`TTL_REFUSAL`] value for a TTL error; `None` for any other error.
pub(crate) fn ttl_refusal(e: &crate::LeaseError) -> Option<String> {
    let exact = |d: &std::time::Duration| format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
    match e {
        crate::LeaseError::TtlTooShort { ttl, min } => {
            Some(format!("too-short {} {}", exact(ttl), exact(min)))
        }
        crate::LeaseError::TtlTooLong { ttl, max } => {
            Some(format!("too-long {} {}", exact(ttl), exact(max)))
        }
        _ => None,
    }
}

/// The TTL error a [`TTL_REFUSAL`] value describes; `None` if it does not parse.
pub(crate) fn parse_ttl_refusal(value: &str) -> Option<crate::LeaseError> {
    let exact = |s: &str| {
        let (secs, nanos) = s.split_once('.')?;
        if nanos.len() != 9 {
            return None;
        }
        let nanos: u32 = nanos.parse().ok()?;
        let secs: u64 = secs.parse().ok()?;
        (nanos < 1_000_000_000).then(|| std::time::Duration::new(secs, nanos))
    };
    let mut words = value.split(' ');
    let (kind, ttl, bound) = (words.next()?, exact(words.next()?)?, exact(words.next()?)?);
    if words.next().is_some() {
        return None;
    }
    match kind {
        "too-short" => Some(crate::LeaseError::TtlTooShort { ttl, min: bound }),
        "too-long" => Some(crate::LeaseError::TtlTooLong { ttl, max: bound }),
        _ => None,
    }
}

/// The most leases one native `List` answer holds.
pub(crate) const LIST_LIMIT: usize = 10_000;

/// The largest one lease can be in a `List` answer: its key and metadata at their
/// limits, and a generous allowance for the other fields and the encoding.
pub(crate) const MAX_LISTED_LEASE_BYTES: usize = crate::MAX_KEY_LEN + crate::MAX_METADATA_LEN + 256;

/// The leases a `List` request for `limit` leases may be answered with (0: the
/// server's limit).
pub(crate) fn listed(limit: usize) -> usize {
    match limit {
        0 => LIST_LIMIT,
        n => n.min(LIST_LIMIT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LeaseError;
    use std::time::Duration;

    #[test]
    fn ttl_refusals_round_trip_exactly() {
        let cases = [
            LeaseError::TtlTooShort {
                ttl: Duration::new(1, 5),
                min: Duration::from_secs(5),
            },
            LeaseError::TtlTooLong {
                ttl: Duration::MAX,
                max: crate::MAX_TTL,
            },
        ];
        for e in cases {
            let back = parse_ttl_refusal(&ttl_refusal(&e).unwrap()).unwrap();
            assert_eq!(back.to_string(), e.to_string());
        }
        assert!(ttl_refusal(&LeaseError::Conflict).is_none());
        for bad in [
            "",
            "too-short",
            "too-short 1.0 2.0",
            "too-long 1.000000000 x",
            "x 1.000000000 2.000000000",
            "too-short 1.000000000 2.000000000 3",
        ] {
            assert!(parse_ttl_refusal(bad).is_none(), "{bad:?}");
        }
    }
}
