//! The escaping of a key's segments, exactly as Go's `url.PathEscape` escapes a path
//! segment, and its exact inverse, which accepts only the canonical form.

use percent_encoding::{utf8_percent_encode, AsciiSet, PercentEncode, NON_ALPHANUMERIC};

use super::error::KeyError;

/// Bytes that `url.PathEscape` leaves alone, besides ASCII letters and digits.
const UNESCAPED_PUNCTUATION: &[u8] = b"-_.~$&+:=@";

/// The set of bytes that are escaped in a segment: everything but letters, digits and
/// [`UNESCAPED_PUNCTUATION`].
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b':')
    .remove(b'=')
    .remove(b'@');

/// The escaped form of `segment`, in pieces.
pub(super) fn escape(segment: &str) -> PercentEncode<'_> {
    utf8_percent_encode(segment, SEGMENT)
}

/// `true` when `url.PathEscape` escapes this byte.
pub(super) fn must_escape(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || UNESCAPED_PUNCTUATION.contains(&b))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Unescapes one segment, insisting on the canonical form. `offset` is the byte
/// offset of the segment in the whole string, for error messages.
pub(super) fn unescape_segment(raw: &str, offset: usize, index: usize) -> Result<String, KeyError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(KeyError::BadEscape { offset: offset + i });
            };
            let decoded = hi * 16 + lo;
            if !must_escape(decoded) {
                return Err(KeyError::NonCanonical {
                    offset: offset + i,
                    byte: char::from(decoded),
                    must_escape: false,
                });
            }
            out.push(decoded);
            i += 3;
        } else {
            if must_escape(b) {
                // Report the whole character when the raw byte starts a multi-byte one.
                let byte = raw[i..]
                    .chars()
                    .next()
                    .unwrap_or(char::REPLACEMENT_CHARACTER);
                return Err(KeyError::NonCanonical {
                    offset: offset + i,
                    byte,
                    must_escape: true,
                });
            }
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| KeyError::InvalidUtf8 { segment: index })
}
