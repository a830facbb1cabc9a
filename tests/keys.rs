//! Properties of the key encoding.

use leases::{Key, KeyError, MAX_KEY_LEN};
use proptest::prelude::*;

/// Segments rich in the characters that matter: separators, escapes, empties, Unicode.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9/%._~ -]{0,12}",
        Just(String::new()),
        Just("/".to_string()),
        Just("%".to_string()),
        Just("%2F".to_string()),
        "\\PC{0,8}",
        "[a-z]{200,400}",
    ]
}

fn key() -> impl Strategy<Value = Key> {
    let parts = || prop::collection::vec(segment(), 0..6);
    prop_oneof![
        parts().prop_map(Key::system),
        (segment(), parts()).prop_map(|(m, p)| Key::module(m, p)),
    ]
}

/// Strings close to valid keys, so that the parser's accepting paths get exercised.
fn near_key_string() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("/".to_string()),
        Just("system".to_string()),
        Just("module".to_string()),
        Just("%".to_string()),
        "[0-9A-Fa-f]{1,2}",
        "%[0-9A-F]{2}",
        "[a-z]{1,3}",
        "[ /%?#é日]",
    ];
    prop::collection::vec(token, 0..16).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_key_round_trips(k in key()) {
        let s = k.to_string();
        prop_assert_eq!(k.encoded_len(), s.len());
        if s.len() <= MAX_KEY_LEN {
            prop_assert_eq!(Key::parse(&s), Ok(k.clone()));
            prop_assert!(k.check_len().is_ok());
        } else {
            prop_assert_eq!(Key::parse(&s), Err(KeyError::TooLong { len: s.len(), max: MAX_KEY_LEN }));
            prop_assert!(k.check_len().is_err());
        }
    }

    #[test]
    fn parse_never_panics_and_what_it_accepts_round_trips(s in any::<String>()) {
        if let Ok(k) = Key::parse(&s) {
            prop_assert_eq!(k.to_string(), s);
        }
    }

    #[test]
    fn near_keys_parse_canonically(s in near_key_string()) {
        match Key::parse(&s) {
            Ok(k) => prop_assert_eq!(k.to_string(), s),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn distinct_keys_give_distinct_strings(a in key(), b in key()) {
        prop_assert_eq!(a == b, a.to_string() == b.to_string());
    }

    #[test]
    fn only_unreserved_bytes_appear_raw(k in key()) {
        let s = k.to_string();
        for (i, c) in s.char_indices() {
            prop_assert!(
                c.is_ascii_alphanumeric() || "-_.~$&+:=@/%".contains(c),
                "{:?} at {} in {}", c, i, s
            );
        }
    }
}

#[test]
fn segment_with_slash_is_one_segment() {
    let k = Key::system(["a/b", "c"]);
    assert_eq!(Key::parse(&k.to_string()).unwrap().segments().len(), 3);
}
