//! Any bytes: parsing never panics, and whatever parses prints back to the same string.
#![no_main]

use leases::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Key::parse(s) {
        Ok(key) => {
            assert_eq!(key.to_string(), s, "accepted a non-canonical string");
            assert_eq!(key.encoded_len(), s.len());
        }
        Err(e) => {
            // Every error renders.
            let _ = e.to_string();
        }
    }
});
