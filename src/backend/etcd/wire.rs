//! etcd's wire messages as this backend speaks them, and the small builders of the
//! requests it sends: compares on a key's create or mod revision, puts, deletes, reads,
//! and etcd's range end of a prefix.

/// The subset of etcd's v3 API this backend speaks (`proto/etcd/`): generated
/// messages and clients, re-exported (hidden) for the benchmarks' bare-client floor.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

/// A read of one key.
pub(super) fn range_req(key: Vec<u8>) -> pb::RangeRequest {
    pb::RangeRequest {
        key,
        ..Default::default()
    }
}

/// "The key's create revision is `revision`" (0: the key does not exist).
pub(super) fn compare_create(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
    }
}

/// One operation of a transaction.
pub(super) fn op(request: pb::request_op::Request) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request),
    }
}

/// A delete of one key.
pub(super) fn delete_op(key: &[u8]) -> pb::RequestOp {
    op(pb::request_op::Request::RequestDeleteRange(
        pb::DeleteRangeRequest {
            key: key.to_vec(),
            range_end: Vec::new(),
        },
    ))
}

/// "The key's mod revision is `revision`" (0: the key does not exist).
pub(super) fn compare_mod(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
    }
}

/// The key-value of the `i`-th answer of a transaction, if it is a range that found one.
pub(super) fn range_kv(resp: &pb::TxnResponse, i: usize) -> Option<&pb::KeyValue> {
    match &resp.responses.get(i)?.response {
        Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.first(),
        _ => None,
    }
}

/// A lease key's fencing token: its create revision.
pub(super) fn token_of(kv: &pb::KeyValue) -> u64 {
    u64::try_from(kv.create_revision).unwrap_or(0)
}

/// The first key after every key starting with `prefix` (etcd's range end).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a"), b"/b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
