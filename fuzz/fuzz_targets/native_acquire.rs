//! Any bytes as a native `HoldRequest`: its `acquire` turned into a key and acquire
//! options exactly as the server does (`options_of`). Never a panic; a refusal is
//! `INVALID_ARGUMENT`; what is accepted keeps the request's key, TTL, wait and
//! metadata exactly.
#![no_main]

use leases::proto::leases::v1::hold_request::Kind;
use leases::proto::leases::v1::HoldRequest;
use leases::service::native::options_of;
use leases::Key;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The std duration `d` stands for, as protobuf's normalised form.
fn same(std: std::time::Duration, mut d: prost_types::Duration) -> bool {
    d.normalize();
    prost_types::Duration::try_from(std).ok() == Some(d)
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = HoldRequest::decode(data) else {
        return;
    };
    let again = HoldRequest::decode(request.encode_to_vec().as_slice())
        .expect("a re-encoded request decodes");
    assert_eq!(again, request);
    let Some(Kind::Acquire(acquire)) = request.kind else {
        return;
    };
    match options_of(acquire.clone()) {
        Ok((key, options)) => {
            assert_eq!(key.to_string(), acquire.key, "only canonical keys are accepted");
            assert_eq!(Key::parse(&acquire.key), Ok(key));
            let ttl = acquire.ttl.expect("accepted without a TTL");
            assert!(same(options.ttl(), ttl), "{:?} from {ttl:?}", options.ttl());
            // The rest of the options are what the request said.
            let mut expected = leases::AcquireOptions::new(options.ttl()).metadata(acquire.metadata);
            if let Some(wait) = acquire.wait {
                let got = std::time::Duration::try_from(wait).expect("accepted a bad wait");
                assert!(same(got, wait));
                expected = expected.wait(got);
            }
            assert_eq!(options, expected);
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    }
});
