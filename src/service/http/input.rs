//! Reading the HTTP API's input: a JSON object body, or a query string, with each
//! field checked on its own so that a refusal names the field. Nothing here panics,
//! whatever the bytes.

use std::time::Duration;

use serde_json::{Map, Value};

use super::errors::ApiError;
use crate::{Key, LeaseError};

/// The fields of a request: a JSON body's object, or a query string's parameters (as
/// strings).
pub(crate) struct Fields(Map<String, Value>);

impl Fields {
    /// The JSON object in `body`, refusing any member not in `allowed` (a misspelt
    /// field would otherwise be ignored silently).
    pub(crate) fn json(body: &[u8], allowed: &[&str]) -> Result<Fields, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {e}"),
            )
        })?;
        let Value::Object(_) = value else {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body must be a JSON object",
            ));
        };
        // Read again, refusing a field given twice (a `Value` keeps the last silently).
        let Unique(map) = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid: {e}"),
            )
        })?;
        Fields::checked(map, allowed)
    }

    /// The parameters of a query string (`a=1&b=x%2Fy`; `+` is a space), refusing any
    /// not in `allowed` and any given twice.
    pub(crate) fn query(query: Option<&str>, allowed: &[&str]) -> Result<Fields, ApiError> {
        let mut map = Map::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name, "a query parameter's name")?;
            let value = decode(value, &name)?;
            if map.insert(name.clone(), Value::String(value)).is_some() {
                return Err(ApiError::field(&name, "given more than once"));
            }
        }
        Fields::checked(map, allowed)
    }

    fn checked(map: Map<String, Value>, allowed: &[&str]) -> Result<Fields, ApiError> {
        if let Some(name) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::field(
                name,
                format!("unknown field (the fields are {})", allowed.join(", ")),
            ));
        }
        Ok(Fields(map))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// A string field, if present.
    pub(crate) fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::field(
                name,
                format!("must be a string, not {}", kind(other)),
            )),
        }
    }

    /// The required `key`, in its canonical string form.
    pub(crate) fn key(&self) -> Result<Key, ApiError> {
        let text = self
            .string("key")?
            .ok_or_else(|| ApiError::field("key", "required"))?;
        Key::parse(text).map_err(|e| ApiError::of(&LeaseError::InvalidKey(e)))
    }

    /// A duration in whole milliseconds (a non-negative integer; a query parameter's
    /// digits), if present.
    pub(crate) fn millis(&self, name: &str) -> Result<Option<Duration>, ApiError> {
        let n = match self.get(name) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            Some(_) => None,
        };
        n.map(|n| Some(Duration::from_millis(n))).ok_or_else(|| {
            ApiError::field(
                name,
                "must be a whole number of milliseconds, from 0 to 18446744073709551615",
            )
        })
    }

    /// A count (a non-negative integer, or a query parameter's digits), if present.
    pub(crate) fn count(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.unsigned(
            name,
            "must be a whole number from 0 to 18446744073709551615",
        )
    }

    /// A fencing token: a decimal string (tokens exceed 2^53, past which JSON numbers
    /// lose digits in many languages), or an integer, if present.
    pub(crate) fn token(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.unsigned(
            name,
            "must be a fencing token: a decimal string such as \"42\"",
        )
    }

    fn unsigned(&self, name: &str, why: &str) -> Result<Option<u64>, ApiError> {
        let n = match self.get(name) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            Some(_) => None,
        };
        n.map(Some).ok_or_else(|| ApiError::field(name, why))
    }

    /// The lease's metadata: `metadata` (a string, stored as its UTF-8 bytes) or
    /// `metadata_base64` (any bytes), not both; empty when neither is given.
    pub(crate) fn metadata(&self) -> Result<Vec<u8>, ApiError> {
        match (self.string("metadata")?, self.string("metadata_base64")?) {
            (Some(_), Some(_)) => Err(ApiError::field(
                "metadata_base64",
                "give `metadata` or `metadata_base64`, not both",
            )),
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(b64)) => super::base64::decode(b64)
                .ok_or_else(|| ApiError::field("metadata_base64", "is not valid base64")),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// A JSON object whose members all have different names.
struct Unique(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
                let mut map = Map::new();
                while let Some((name, value)) = a.next_entry::<String, Value>()? {
                    if map.contains_key(&name) {
                        return Err(serde::de::Error::custom(format_args!(
                            "the field `{name}` is given more than once"
                        )));
                    }
                    map.insert(name, value);
                }
                Ok(Unique(map))
            }
        }
        d.deserialize_map(Members)
    }
}

/// A percent-decoded query string part (`+` is a space), which must be UTF-8.
fn decode(part: &str, what: &str) -> Result<String, ApiError> {
    let spaced = part.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::field(what, "is not UTF-8 once percent-decoded"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The parameters of a query, by name (for tests of this module).
#[cfg(test)]
fn params(q: &str) -> std::collections::HashMap<String, String> {
    let fields = Fields::query(Some(q), &["a", "b", "key"]).unwrap();
    fields
        .0
        .into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let p = params("a=1&key=%2Fsystem%2Fa%252Fb&b=x+y");
        assert_eq!(p["a"], "1");
        assert_eq!(p["key"], "/system/a%2Fb");
        assert_eq!(p["b"], "x y");
        assert!(Fields::query(Some("a=1&a=2"), &["a"]).is_err());
        assert!(Fields::query(Some("c=1"), &["a"]).is_err());
        assert!(Fields::query(Some("a=%FF"), &["a"]).is_err());
    }

    #[test]
    fn numbers_and_tokens() {
        let f = Fields::json(
            br#"{"a": 5, "b": "18446744073709551615", "key": -1}"#,
            &["a", "b", "key"],
        )
        .unwrap();
        assert_eq!(f.millis("a").unwrap(), Some(Duration::from_millis(5)));
        assert_eq!(f.token("b").unwrap(), Some(u64::MAX));
        assert!(f.millis("key").is_err());
        assert!(f.key().is_err());
        assert!(Fields::json(br#"{"a": 1, "a": 1}"#, &["a"]).is_err());
        let f = Fields::json(br#"{"a": 1e30, "b": "1e3"}"#, &["a", "b"]).unwrap();
        assert!(f.millis("a").is_err());
        assert!(f.token("b").is_err());
    }
}
