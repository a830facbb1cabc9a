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
