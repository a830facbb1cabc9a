//! The two values this backend writes: a lease key's value (the grant itself) and a
//! key's grant record (what an acquire must know when it finds the key gone without a
//! release; see "Keys that vanish early" in the module docs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The length of a lease key's value before its metadata.
const VALUE_HEADER: usize = 1 + 1 + 8 + 8 + 16;

/// The decoded value of a lease key.
pub(super) struct Value {
    pub(super) revoked: bool,
    pub(super) ttl: Duration,
    pub(super) acquired_at: SystemTime,
    pub(super) nonce: [u8; 16],
    pub(super) metadata: Vec<u8>,
}

/// A lease key's value: `1` (format version), a flags byte (bit 0: revoked), the TTL
/// in nanoseconds, the grant's wall-clock time in microseconds since the Unix epoch (both
/// u64, big-endian), the nonce of the acquire that wrote it, then the metadata.
pub(super) fn encode(
    revoked: bool,
    ttl: Duration,
    at: SystemTime,
    nonce: &[u8; 16],
    md: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_HEADER + md.len());
    v.push(1);
    v.push(u8::from(revoked));
    v.extend_from_slice(
        &u64::try_from(ttl.as_nanos())
            .unwrap_or(u64::MAX)
            .to_be_bytes(),
    );
    let micros = at
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    v.extend_from_slice(&micros.to_be_bytes());
    v.extend_from_slice(nonce);
    v.extend_from_slice(md);
    v
}

/// A lease key's value decoded; `None` for a value this version did not write.
pub(super) fn decode(v: &[u8]) -> Option<Value> {
    if v.len() < VALUE_HEADER || v[0] != 1 {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
    let mut nonce = [0; 16];
    nonce.copy_from_slice(&v[18..34]);
    Some(Value {
        revoked: v[1] & 1 == 1,
        ttl: Duration::from_nanos(u64_at(2)),
        acquired_at: UNIX_EPOCH + Duration::from_micros(u64_at(10)),
        nonce,
        metadata: v[VALUE_HEADER..].to_vec(),
    })
}

/// A grant record, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    /// 1: a grant; 2: a wait (see `start_wait` in `acquire.rs`).
    pub(super) kind: u8,
    /// The holder's TTL.
    pub(super) ttl: Duration,
    /// The Raft term its etcd lease was granted in (at least).
    pub(super) term: u64,
    /// That etcd lease's ID.
    pub(super) lease: i64,
    /// Its group's marker lease (see `Group::marker`); 0 in a record written before
    /// markers, and in a wait.
    pub(super) marker: i64,
}

/// The value of a grant record: `1` (a grant; `2`: a wait, see `start_wait` in `acquire.rs`),
/// the holder's TTL in nanoseconds, the Raft term its etcd lease was granted in (at
/// least), that etcd lease's ID and, if not 0, its group's marker lease (all big-endian;
/// 25 bytes, or 33 with a marker).
///
/// A version that knows no marker reads a 33-byte record as one it did not write, and
/// waits a TTL before it grants the key (the safe side).
pub(super) fn encode_record(
    kind: u8,
    ttl: Duration,
    term: u64,
    lease: i64,
    marker: i64,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(33);
    v.push(kind);
    v.extend_from_slice(
        &u64::try_from(ttl.as_nanos())
            .unwrap_or(u64::MAX)
            .to_be_bytes(),
    );
    v.extend_from_slice(&term.to_be_bytes());
    v.extend_from_slice(&lease.to_be_bytes());
    if marker != 0 {
        v.extend_from_slice(&marker.to_be_bytes());
    }
    v
}

/// A grant record; `None` for a value this version did not write.
pub(super) fn decode_record(v: &[u8]) -> Option<Record> {
    if !matches!(v.len(), 25 | 33) || !matches!(v[0], 1 | 2) {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
    let i64_at = |i: usize| i64::from_be_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
    Some(Record {
        kind: v[0],
        ttl: Duration::from_nanos(u64_at(1)),
        term: u64_at(9),
        lease: i64_at(17),
        marker: if v.len() == 33 { i64_at(25) } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::etcd::wire::prefix_end;

    #[test]
    fn values_round_trip() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let nonce = [7; 16];
        let v = encode(true, Duration::from_millis(1500), at, &nonce, b"meta\0data");
        let d = decode(&v).unwrap();
        assert!(d.revoked);
        assert_eq!(d.ttl, Duration::from_millis(1500));
        assert_eq!(d.acquired_at, at);
        assert_eq!(d.nonce, nonce);
        assert_eq!(d.metadata, b"meta\0data");
        assert!(decode(&v[..VALUE_HEADER - 1]).is_none());
        assert!(decode(b"").is_none());
        let mut other = v.clone();
        other[0] = 2;
        assert!(decode(&other).is_none());
    }

    #[test]
    fn grant_records_round_trip_and_sort_before_the_lease_keys() {
        let ttl = Duration::from_millis(2500);
        let record = |kind, lease, marker| Record {
            kind,
            ttl,
            term: 7,
            lease,
            marker,
        };
        assert_eq!(
            decode_record(&encode_record(1, ttl, 7, 42, 43)),
            Some(record(1, 42, 43))
        );
        // Without a marker: the 25 bytes an earlier version wrote, which it still reads.
        let old = encode_record(1, ttl, 7, 42, 0);
        assert_eq!(old.len(), 25);
        assert_eq!(decode_record(&old), Some(record(1, 42, 0)));
        assert_eq!(
            decode_record(&encode_record(2, ttl, 7, -3, 0)),
            Some(record(2, -3, 0))
        );
        assert_eq!(decode_record(b"not a record"), None);
        assert_eq!(decode_record(&[1; 30]), None);
        // `<prefix>\0g…` is outside `<prefix>/…`, which list and the watch cover.
        let lease_keys = b"/leases/".to_vec();
        let record = b"/leases\0g/system/x".to_vec();
        assert!(record < lease_keys || record >= prefix_end(&lease_keys));
    }
}
