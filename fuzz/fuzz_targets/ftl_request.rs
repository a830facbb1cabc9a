//! Any bytes as FTL's `AcquireLeaseRequest`, turned into a key and TTL exactly as the
//! server does: never a panic; a refusal is `INVALID_ARGUMENT`; what is accepted is a
//! key that prints and parses back to itself with the request's segments, and a TTL
//! within the bounds (the server's default when the request has none).
#![no_main]

use std::time::Duration;

use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseRequest;
use leases::service::ftl::key_and_ttl;
use leases::{Key, MAX_TTL};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the server's settings; the rest is the message.
    let (settings, message) = data.split_at(data.len().min(2));
    let default_ttl = Duration::from_secs(u64::from(settings.first().copied().unwrap_or(30)));
    let min_ttl = Duration::from_millis(u64::from(settings.get(1).copied().unwrap_or(5)) * 40);
    let Ok(request) = AcquireLeaseRequest::decode(message) else {
        return;
    };
    // What decodes encodes to a message that decodes to the same request.
    let again = AcquireLeaseRequest::decode(request.encode_to_vec().as_slice())
        .expect("a re-encoded request decodes");
    assert_eq!(again, request);
    match key_and_ttl(request.clone(), default_ttl, min_ttl) {
        Ok((key, ttl)) => {
            assert_eq!(key.segments(), request.key.as_slice());
            assert_eq!(Key::parse(&key.to_string()), Ok(key.clone()));
            assert!(ttl >= min_ttl && ttl <= MAX_TTL, "{ttl:?}");
            match request.ttl {
                None => assert_eq!(ttl, default_ttl),
                Some(mut d) => {
                    // The TTL is the request's, exactly (after protobuf's normalising).
                    d.normalize();
                    assert_eq!(prost_types::Duration::try_from(ttl).ok(), Some(d));
                }
            }
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(!status.message().is_empty());
        }
    }
});
