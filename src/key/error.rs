//! Why a string (or a database value) is not a lease key.

/// Why a string is not a valid key.
///
/// Returned by [`Key::parse`](crate::Key::parse) and
/// [`Key::from_segments`](crate::Key::from_segments); positions are byte offsets
/// into the string that was parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The string does not start with `/`.
    #[error("lease key must start with '/' (expected /system/... or /module/...)")]
    MissingLeadingSlash,
    /// The first segment is neither `system` nor `module`.
    #[error("lease key root must be 'system' or 'module', not {root:?}")]
    UnknownRoot {
        /// The first segment, unescaped where possible.
        root: String,
    },
    /// A `module` key has no module name segment.
    #[error("module lease key has no module name (expected /module/NAME/...)")]
    MissingModuleName,
    /// A `%` is not followed by two upper-case hex digits.
    #[error("bad percent escape at byte {offset}: expected '%' and two upper-case hex digits")]
    BadEscape {
        /// Byte offset of the `%`.
        offset: usize,
    },
    /// The string is not in canonical form: a byte is escaped that must not be, or a
    /// byte appears raw that must be escaped.
    #[error("non-canonical lease key at byte {offset}: {byte:?} must {}be escaped", if *.must_escape { "" } else { "not " })]
    NonCanonical {
        /// Byte offset of the offending byte or escape.
        offset: usize,
        /// The byte, after unescaping.
        byte: char,
        /// `true` when the byte appeared raw but must be escaped.
        must_escape: bool,
    },
    /// A segment is not valid UTF-8 once unescaped.
    #[error("segment {segment} of the lease key is not valid UTF-8 once unescaped")]
    InvalidUtf8 {
        /// Index of the segment (0 is the root).
        segment: usize,
    },
    /// The string form is longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    #[error("lease key is {len} bytes long, more than the maximum {max}")]
    TooLong {
        /// Length of the string form in bytes.
        len: usize,
        /// The maximum, [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
        max: usize,
    },
}

/// A database value that is not the canonical string of a lease key: the error
/// [`Key`](crate::Key)'s `FromSql` (feature `postgres`) returns, inside tokio-postgres' error.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("database value {value:?} is not a canonical lease key: {source}")]
pub struct SqlKeyError {
    /// The value read (its first 120 characters, for long ones).
    pub value: String,
    /// Why it is not a key in canonical form.
    #[source]
    pub source: KeyError,
}
