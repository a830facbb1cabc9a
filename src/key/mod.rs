//! Lease keys and their string form.
//!
//! A [`Key`] is a list of segments whose first segment is `system` or `module`.
//! Its string form is `/` followed by the segments joined with `/`, each segment
//! escaped exactly as Go's `url.PathEscape` escapes a path segment: ASCII letters,
//! digits and `-_.~$&+:=@` stay as they are, every other byte of the segment's
//! UTF-8 encoding becomes `%XX` with upper-case hex digits.
//!
//! The string form is *canonical*: [`Key::parse`] accepts exactly the strings that
//! [`Key`]'s `Display` produces, so two different strings never name the same key and a
//! backend can use the string as a primary key. Keys written by FTL's Go code use the
//! same escaping and parse to the same segments.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

mod error;
mod escape;
#[cfg(feature = "postgres")]
mod sql;

pub use error::KeyError;
#[cfg(feature = "postgres")]
pub use error::SqlKeyError;
use escape::{escape, must_escape, unescape_segment};

/// The largest accepted string form of a key, in bytes.
///
/// [`Key::parse`] refuses longer strings, and the lease manager refuses to acquire a
/// key whose string form is longer, so that every backend can store every key it is
/// handed (PostgreSQL indexes, etcd request limits).
pub const MAX_KEY_LEN: usize = 1024;

/// The root segment of system keys.
const SYSTEM: &str = "system";
/// The root segment of module keys.
const MODULE: &str = "module";

/// A lease key: a list of segments whose first is `system` or `module`.
///
/// Build one with [`Key::system`] or [`Key::module`] (the Go `SystemKey` and
/// `ModuleKey`), or parse its string form with [`Key::parse`] / [`str::parse`].
///
/// ```
/// use leases::Key;
/// let k = Key::system(["a/b", "x y"]);
/// assert_eq!(k.to_string(), "/system/a%2Fb/x%20y");
/// assert_eq!(Key::parse("/system/a%2Fb/x%20y").unwrap(), k);
/// assert_eq!(Key::module("idv", ["user", "bob"]).to_string(), "/module/idv/user/bob");
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Shared, so that a clone (the manager makes several per lease) costs one atomic
    /// increment rather than an allocation per segment.
    segments: Arc<[String]>,
}

impl Key {
    /// A system key: `/system/` followed by `parts`. Infallible; any part is allowed,
    /// including empty strings and strings containing `/`.
    pub fn system<I>(parts: I) -> Key
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut segments = vec![SYSTEM.to_owned()];
        segments.extend(parts.into_iter().map(|p| p.as_ref().to_owned()));
        Key {
            segments: segments.into(),
        }
    }

    /// A module key: `/module/<module>/` followed by `parts`. Infallible.
    pub fn module<M, I>(module: M, parts: I) -> Key
    where
        M: AsRef<str>,
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut segments = vec![MODULE.to_owned(), module.as_ref().to_owned()];
        segments.extend(parts.into_iter().map(|p| p.as_ref().to_owned()));
        Key {
            segments: segments.into(),
        }
    }

    /// A key from its raw (unescaped) segments, checking the root segment.
    pub fn from_segments(segments: Vec<String>) -> Result<Key, KeyError> {
        match segments.first().map(String::as_str) {
            Some(SYSTEM) => {}
            Some(MODULE) if segments.len() >= 2 => {}
            Some(MODULE) => return Err(KeyError::MissingModuleName),
            Some(other) => {
                return Err(KeyError::UnknownRoot {
                    root: other.to_owned(),
                })
            }
            None => {
                return Err(KeyError::UnknownRoot {
                    root: String::new(),
                })
            }
        }
        Ok(Key {
            segments: segments.into(),
        })
    }

    /// Parses the string form of a key. The exact inverse of `Display`: for every key
    /// `k`, `Key::parse(&k.to_string()) == Ok(k)`, and for every string `s` that parses,
    /// `Key::parse(s)?.to_string() == s`. Never panics.
    pub fn parse(s: &str) -> Result<Key, KeyError> {
        if s.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong {
                len: s.len(),
                max: MAX_KEY_LEN,
            });
        }
        let rest = s.strip_prefix('/').ok_or(KeyError::MissingLeadingSlash)?;
        let mut segments = Vec::new();
        let mut offset = 1;
        for (index, raw) in rest.split('/').enumerate() {
            segments.push(unescape_segment(raw, offset, index)?);
            offset += raw.len() + 1;
        }
        Key::from_segments(segments)
    }

    /// The raw (unescaped) segments, root first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// `true` for a `/system/...` key.
    pub fn is_system(&self) -> bool {
        self.segments[0] == SYSTEM
    }

    /// The module name of a `/module/NAME/...` key, `None` for a system key.
    pub fn module_name(&self) -> Option<&str> {
        if self.is_system() {
            None
        } else {
            self.segments.get(1).map(String::as_str)
        }
    }

    /// Length of the string form in bytes, without building it.
    pub fn encoded_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| {
                1 + s
                    .bytes()
                    .map(|b| if must_escape(b) { 3 } else { 1 })
                    .sum::<usize>()
            })
            .sum()
    }

    /// Checks that the string form fits in [`MAX_KEY_LEN`].
    pub fn check_len(&self) -> Result<(), KeyError> {
        let len = self.encoded_len();
        if len > MAX_KEY_LEN {
            Err(KeyError::TooLong {
                len,
                max: MAX_KEY_LEN,
            })
        } else {
            Ok(())
        }
    }
}

/// Segment by segment, but clones of one key (the manager and its backend hold several
/// of each held key, and look them up in maps) are equal at a glance: `Arc`'s own
/// shortcut for equal pointers does not apply to a slice.
impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        Arc::ptr_eq(&self.segments, &other.segments) || self.segments == other.segments
    }
}

/// By the segments, as equality compares them.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.segments.hash(state);
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in self.segments.iter() {
            f.write_str("/")?;
            for piece in escape(segment) {
                f.write_str(piece)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::parse(s)
    }
}

impl TryFrom<&str> for Key {
    type Error = KeyError;

    fn try_from(s: &str) -> Result<Key, KeyError> {
        Key::parse(s)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Key::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_go_path_escape() {
        assert_eq!(
            Key::system(["a/b", "x y"]).to_string(),
            "/system/a%2Fb/x%20y"
        );
        assert_eq!(
            Key::module("idv", ["user", "bob"]).to_string(),
            "/module/idv/user/bob"
        );
        // Go: url.PathEscape("-_.~$&+:=@,;?#%é") == "-_.~$&+:=@%2C%3B%3F%23%25%C3%A9"
        assert_eq!(
            Key::system(["-_.~$&+:=@,;?#%é"]).to_string(),
            "/system/-_.~$&+:=@%2C%3B%3F%23%25%C3%A9"
        );
        assert_eq!(Key::system([""; 0]).to_string(), "/system");
        assert_eq!(Key::system([""]).to_string(), "/system/");
        assert_eq!(Key::module("", [""; 0]).to_string(), "/module/");
    }

    #[test]
    fn parses_keys_written_by_ftl() {
        // Strings as FTL's Go code writes them with leases.SystemKey / ModuleKey.
        let cases: &[(&str, Key)] = &[
            ("/system/cron/echo.Cron", Key::system(["cron", "echo.Cron"])),
            (
                "/module/echo/pubsub/sub%2Fone",
                Key::module("echo", ["pubsub", "sub/one"]),
            ),
            ("/system/controller", Key::system(["controller"])),
            (
                "/module/time/deployment/dpl-time-1a2b3c",
                Key::module("time", ["deployment", "dpl-time-1a2b3c"]),
            ),
            (
                "/system/%E6%97%A5%E6%9C%AC/a%20b",
                Key::system(["日本", "a b"]),
            ),
        ];
        for (s, key) in cases {
            assert_eq!(&Key::parse(s).unwrap(), key, "{s}");
            assert_eq!(&key.to_string(), s);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        use KeyError::*;
        assert_eq!(Key::parse(""), Err(MissingLeadingSlash));
        assert_eq!(Key::parse("system/a"), Err(MissingLeadingSlash));
        assert_eq!(
            Key::parse("/sys/a"),
            Err(UnknownRoot { root: "sys".into() })
        );
        assert_eq!(Key::parse("/"), Err(UnknownRoot { root: "".into() }));
        assert_eq!(Key::parse("/module"), Err(MissingModuleName));
        assert_eq!(Key::parse("/system/a%2"), Err(BadEscape { offset: 9 }));
        assert_eq!(Key::parse("/system/a%zz"), Err(BadEscape { offset: 9 }));
        assert_eq!(Key::parse("/system/a%2f"), Err(BadEscape { offset: 9 }));
        assert_eq!(
            Key::parse("/system/%41"),
            Err(NonCanonical {
                offset: 8,
                byte: 'A',
                must_escape: false
            })
        );
        assert_eq!(
            Key::parse("/system/a b"),
            Err(NonCanonical {
                offset: 9,
                byte: ' ',
                must_escape: true
            })
        );
        assert_eq!(
            Key::parse("/system/é"),
            Err(NonCanonical {
                offset: 8,
                byte: 'é',
                must_escape: true
            })
        );
        assert_eq!(Key::parse("/system/%FF"), Err(InvalidUtf8 { segment: 1 }));
        let long = format!("/system/{}", "a".repeat(MAX_KEY_LEN));
        assert_eq!(
            Key::parse(&long),
            Err(TooLong {
                len: long.len(),
                max: MAX_KEY_LEN
            })
        );
        // Every error renders as a readable message.
        for e in [
            MissingLeadingSlash,
            MissingModuleName,
            BadEscape { offset: 3 },
        ] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn accessors() {
        let k = Key::module("idv", ["user"]);
        assert_eq!(k.module_name(), Some("idv"));
        assert!(!k.is_system());
        assert_eq!(k.segments(), ["module", "idv", "user"]);
        let s = Key::system(["x y"]);
        assert!(s.is_system());
        assert_eq!(s.module_name(), None);
        assert_eq!(s.encoded_len(), s.to_string().len());
        assert_eq!("/system/x%20y".parse::<Key>().unwrap(), s);
        assert_eq!(format!("{s:?}"), "Key(/system/x%20y)");
        assert!(Key::system(["a".repeat(MAX_KEY_LEN)]).check_len().is_err());
        assert!(Key::from_segments(vec![]).is_err());
        assert!(Key::from_segments(vec!["module".into()]).is_err());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_string_form() {
        let k = Key::system(["a/b"]);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, "\"/system/a%2Fb\"");
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), k);
        assert!(serde_json::from_str::<Key>("\"/nope\"").is_err());
    }
}
