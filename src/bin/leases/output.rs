//! What `list`, `info` and `revoke` print: a table for people, JSON for scripts.
//!
//! The JSON form of a lease (stable field names; new fields may be added):
//! `{"key": "/system/jobs/nightly", "token": "42", "ttl_ms": 30000, "expires_in_ms": 29120,
//!   "metadata": "web-1 pid 4242", "revoked": false, "acquired_at": "2026-11-27T20:58:01.123Z"}`
//!
//! The token is a decimal *string*, as proto3's JSON mapping writes 64-bit integers:
//! tokens use all 64 bits (the memory backend's exceed 2^53 from the start), and a JSON
//! number that large is silently rounded by every consumer that reads numbers as
//! doubles (`jq` arithmetic, JavaScript, many JSON libraries). A string is copied
//! exactly by all of them; compare tokens after parsing them as 64-bit integers.

use leases::LeaseInfo;
use serde_json::{json, Value};

use crate::duration::{human_approx, rfc3339};

/// The longest holder text a table shows; longer metadata is cut (JSON has all of it).
const HOLDER_WIDTH: usize = 40;

/// One lease as JSON.
pub(crate) fn lease_json(info: &LeaseInfo) -> Value {
    json!({
        "key": info.key.to_string(),
        // A string, not a number: see the module docs.
        "token": info.token.to_string(),
        "ttl_ms": u64::try_from(info.ttl.as_millis()).unwrap_or(u64::MAX),
        "expires_in_ms": u64::try_from(info.expires_in.as_millis()).unwrap_or(u64::MAX),
        "metadata": String::from_utf8_lossy(&info.metadata),
        "revoked": info.revoked,
        "acquired_at": info.acquired_at.map(rfc3339),
    })
}

/// The metadata as one line of text for a table: invalid UTF-8 and control characters
/// replaced, cut to [`HOLDER_WIDTH`] characters.
pub(crate) fn holder(metadata: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(metadata)
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.is_empty() {
        return "-".into();
    }
    if text.chars().count() > HOLDER_WIDTH {
        let cut: String = text.chars().take(HOLDER_WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// The leases as a table with a header line: KEY, HOLDER (the metadata), TOKEN, LEFT
/// (time left until expiry unless renewed), REVOKED.
pub(crate) fn table(leases: &[LeaseInfo]) -> String {
    let header = ["KEY", "HOLDER", "TOKEN", "LEFT", "REVOKED"].map(String::from);
    let rows: Vec<[String; 5]> = leases
        .iter()
        .map(|info| {
            [
                info.key.to_string(),
                holder(&info.metadata),
                info.token.to_string(),
                human_approx(info.expires_in),
                if info.revoked { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line += cell;
            } else {
                line += cell;
                line += &" ".repeat(w - cell.chars().count() + 2);
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use leases::Key;
    use std::time::{Duration, UNIX_EPOCH};

    fn info(key: &str, metadata: &[u8]) -> LeaseInfo {
        LeaseInfo {
            key: Key::parse(key).unwrap(),
            token: 42,
            ttl: Duration::from_secs(30),
            expires_in: Duration::from_millis(29_120),
            metadata: metadata.to_vec(),
            revoked: false,
            acquired_at: Some(UNIX_EPOCH + Duration::from_millis(1_795_813_081_123)),
        }
    }

    #[test]
    fn json_fields() {
        let v = lease_json(&info("/system/jobs/nightly", b"web-1"));
        assert_eq!(
            v,
            json!({"key": "/system/jobs/nightly", "token": "42", "ttl_ms": 30000,
                   "expires_in_ms": 29120, "metadata": "web-1", "revoked": false,
                   "acquired_at": "2026-11-27T20:58:01.123Z"})
        );
    }

    #[test]
    fn table_aligns_and_cleans_holders() {
        let long = "x".repeat(100);
        let t = table(&[
            info("/system/a", b"line\nbreak"),
            info("/system/bb", long.as_bytes()),
            info("/system/c", b""),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("KEY         HOLDER"), "{t}");
        assert!(lines[1].contains("line\u{FFFD}break"), "{t}");
        assert!(lines[2].contains(&format!("{}…", "x".repeat(39))), "{t}");
        assert!(lines[3].starts_with("/system/c   -"), "{t}");
        assert!(
            lines.iter().skip(1).all(|l| l.ends_with("29.1s  no")),
            "{t}"
        );
    }
}
