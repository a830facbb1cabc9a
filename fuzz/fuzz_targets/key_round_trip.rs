//! Any segment list: the string form parses back to the same key.
#![no_main]

use arbitrary::Arbitrary;
use leases::{Key, KeyError, MAX_KEY_LEN};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    module: Option<String>,
    parts: Vec<String>,
}

fuzz_target!(|input: Input| {
    let key = match input.module {
        Some(m) => Key::module(m, &input.parts),
        None => Key::system(&input.parts),
    };
    let s = key.to_string();
    assert_eq!(key.encoded_len(), s.len());
    if s.len() <= MAX_KEY_LEN {
        assert_eq!(Key::parse(&s), Ok(key));
    } else {
        assert_eq!(
            Key::parse(&s),
            Err(KeyError::TooLong { len: s.len(), max: MAX_KEY_LEN })
        );
    }
});
