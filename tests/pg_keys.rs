//! `Key` as a PostgreSQL value (feature `postgres`): written as its canonical text,
//! read back to the same key, and refused with a clear error when a column holds a
//! string that is not a canonical key.
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

mod support;

use std::error::Error as _;

use leases::key::SqlKeyError;
use leases::{Key, KeyError, MAX_KEY_LEN};
use support::pg::{connect, shared_url, table};

fn keys() -> Vec<Key> {
    vec![
        Key::system(["jobs", "nightly-report"]),
        Key::system(["a/b", "x y", "100%", ""]),
        Key::module("idv", ["user", "bob"]),
        Key::module("ünï", ["日本", "tab\there", "$&+:=@-_.~"]),
        Key::system([""; 0]),
    ]
}

#[tokio::test]
async fn keys_round_trip_through_text_and_varchar_columns() {
    let db = connect(&shared_url()).await;
    let table = table("k", "round_trip");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, t TEXT NOT NULL, v VARCHAR(1024) NOT NULL)"
    ))
    .await
    .unwrap();
    for (i, key) in keys().iter().enumerate() {
        db.execute(
            &format!("INSERT INTO {table} (id, t, v) VALUES ($1, $2, $3)"),
            &[&(i as i32), key, key],
        )
        .await
        .unwrap();
        let row = db
            .query_one(
                &format!("SELECT t, v FROM {table} WHERE id = $1"),
                &[&(i as i32)],
            )
            .await
            .unwrap();
        // Stored as the canonical string...
        let text: String = row.get(0);
        assert_eq!(text, key.to_string());
        // ... and read back as the same key, from either column type.
        assert_eq!(&row.get::<_, Key>(0), key);
        assert_eq!(&row.get::<_, Key>(1), key);
        // A key also works as a query parameter, and NULL reads as `None`.
        let found = db
            .query_one(&format!("SELECT id FROM {table} WHERE t = $1"), &[key])
            .await
            .unwrap();
        assert_eq!(found.get::<_, i32>(0), i as i32);
    }
    let null = db.query_one("SELECT NULL::text", &[]).await.unwrap();
    assert_eq!(null.get::<_, Option<Key>>(0), None);
}

#[tokio::test]
async fn non_canonical_strings_are_refused_with_a_clear_error() {
    let db = connect(&shared_url()).await;
    type Expected = fn(&KeyError) -> bool;
    let cases: &[(&str, Expected)] = &[
        // A raw space must be escaped.
        ("/system/a b", |e| {
            matches!(
                e,
                KeyError::NonCanonical {
                    must_escape: true,
                    ..
                }
            )
        }),
        // Lower-case hex is not canonical.
        ("/system/a%2fb", |e| matches!(e, KeyError::BadEscape { .. })),
        // A needless escape.
        ("/system/%41", |e| {
            matches!(
                e,
                KeyError::NonCanonical {
                    must_escape: false,
                    ..
                }
            )
        }),
        ("system/a", |e| matches!(e, KeyError::MissingLeadingSlash)),
        ("/other/a", |e| matches!(e, KeyError::UnknownRoot { .. })),
    ];
    for (text, expected) in cases {
        let row = db.query_one("SELECT $1::text", &[text]).await.unwrap();
        let err = row.try_get::<_, Key>(0).expect_err(text);
        let shown = err.to_string();
        assert!(shown.contains("error deserializing column 0"), "{shown}");
        let source = err.source().expect("the cause is kept");
        let sql = source
            .downcast_ref::<SqlKeyError>()
            .unwrap_or_else(|| panic!("a SqlKeyError for {text:?}: {source}"));
        assert_eq!(sql.value, *text);
        assert!(expected(&sql.source), "{text:?}: {:?}", sql.source);
        let message = sql.to_string();
        assert!(
            message.contains(&format!("{text:?}")) && message.contains("not a canonical lease key"),
            "{message}"
        );
        // A plain String still reads the value.
        assert_eq!(row.get::<_, String>(0), *text);
    }
    // The message, in full, for the first case (the README quotes it).
    let row = db
        .query_one("SELECT $1::text", &[&"/system/a b"])
        .await
        .unwrap();
    let err = row.try_get::<_, Key>(0).unwrap_err();
    assert_eq!(
        err.source().unwrap().to_string(),
        "database value \"/system/a b\" is not a canonical lease key: \
         non-canonical lease key at byte 9: ' ' must be escaped"
    );
    // A column that is not text is refused by type.
    let row = db.query_one("SELECT 42::int", &[]).await.unwrap();
    assert!(row.try_get::<_, Key>(0).is_err());
    // A very long value is refused, and named briefly in the error.
    let long = format!("/system/{}", "x".repeat(MAX_KEY_LEN));
    let row = db.query_one("SELECT $1::text", &[&long]).await.unwrap();
    let err = row.try_get::<_, Key>(0).unwrap_err();
    let sql = err.source().unwrap().downcast_ref::<SqlKeyError>().unwrap();
    assert!(matches!(sql.source, KeyError::TooLong { .. }));
    assert_eq!(sql.value.chars().count(), 120);
    // Writing a key too long to read back fails before reaching the database.
    let huge = Key::system(["x".repeat(MAX_KEY_LEN)]);
    let err = db.query_one("SELECT $1::text", &[&huge]).await.unwrap_err();
    assert!(
        err.to_string().contains("error serializing parameter 0"),
        "{err}"
    );
}
