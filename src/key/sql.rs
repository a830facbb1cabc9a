//! With feature `postgres`, a `Key` is a text value (`TEXT`, `VARCHAR`, ...) holding its
//! canonical string form, as the lease table stores it. Writing a key longer than
//! `MAX_KEY_LEN` fails (it could not be read back); reading accepts only canonical
//! strings (exactly what `Display` prints, checked by `Key::parse` and a round trip)
//! and refuses anything else with a `SqlKeyError` that names the value and the reason.

use super::error::{KeyError, SqlKeyError};
use super::Key;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Key {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        self.check_len()?;
        self.to_string().as_str().to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Key {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Key, BoxError> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        let refuse = |source: KeyError| SqlKeyError {
            value: text.chars().take(120).collect(),
            source,
        };
        let key = Key::parse(text).map_err(refuse)?;
        // `parse` accepts only canonical strings; the round trip says so again,
        // at the cost of one allocation per value read.
        let printed = key.to_string();
        if printed != text {
            let offset = text
                .char_indices()
                .zip(printed.chars())
                .find(|((_, a), b)| a != b)
                .map_or(printed.len().min(text.len()), |((i, _), _)| i);
            let byte = text
                .get(offset..)
                .and_then(|rest| rest.chars().next())
                .unwrap_or('\0');
            return Err(refuse(KeyError::NonCanonical {
                offset,
                byte,
                must_escape: false,
            })
            .into());
        }
        Ok(key)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}
