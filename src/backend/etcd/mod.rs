//! The etcd backend (feature `etcd`): leases in an etcd cluster, which keeps serving
//! while a quorum of its members is up.
//!
//! Every lease is one etcd key, `<prefix><key>` (prefix `/leases` by default, so
//! `/leases/system/jobs/7`), attached to an *etcd lease* that this backend keeps alive:
//!
//! - **Acquire** is one transaction: *if the key's create revision is 0 (it does not
//!   exist) and its grant record is as last seen (see below), put both, the key with
//!   our etcd lease; else read them*. The key's **create revision is
//!   the fencing token**: etcd's revision counter is cluster-wide, persisted, and only
//!   grows (across restarts and leader changes too), and a key created later has a
//!   larger create revision, so every grant of a key has a larger token than the last.
//! - **Keys ride on shared etcd leases.** One etcd lease per (backend, TTL) — a *group*
//!   — carries every key this backend acquires with that TTL, so keeping the group alive
//!   is one keep-alive, not one per key. A dead process stops its keep-alives and etcd
//!   deletes its keys when the etcd lease runs out: no reaper.
//! - **Renew** reads the key (linearizable): gone or another token is
//!   [`Lost`](RenewOutcome::Lost), marked revoked is [`Revoked`](RenewOutcome::Revoked);
//!   then it makes sure the group's etcd lease was kept alive by a keep-alive *sent
//!   after this renewal started* (renewals queued behind a keep-alive in flight share the
//!   next one), see "TTLs" below. A keep-alive answering TTL 0 means the etcd lease is
//!   gone, and with it the key: `Lost`. A keep-alive counts only when a linearizable
//!   read made after its answer sees the same Raft term: etcd 3.4 lets a leader that
//!   was cut off or frozen, and has not yet noticed, answer keep-alives from a lease
//!   table that no longer counts (see `keep_alive` in the source).
//! - **Release** is a transaction *if create revision = token, delete the key and its
//!   grant record*; if the key is gone, its grant record is deleted all the same when
//!   the same acquire wrote it (its mod revision is the token).
//! - **Revoke** rewrites the value with the revoked flag set (*if mod revision is still
//!   the one read*, keeping the key's etcd lease); the holder is told `Revoked` at its
//!   next renewal and gives the key back, and until then the key stays taken.
//! - **Waiters** are woken by one etcd watch per backend on the prefix: every delete
//!   (a release, or etcd expiring a dead holder's keys) is a [`Freed::Key`]; after every
//!   (re)connection of the watch, [`Freed::Everything`].
//!
//! The value of a key is `1` (format version), a flags byte (bit 0: revoked), the TTL
//! in nanoseconds (u64, big-endian), the grant's wall-clock time in microseconds since the
//! Unix epoch (u64, big-endian), a 16-byte nonce naming the acquire that wrote it, and
//! then the metadata.
//!
//! # TTLs
//! etcd leases have whole-second TTLs and a server minimum (1.5 × the election timeout,
//! rounded up: 2 s with etcd's defaults). A group's etcd lease is granted with the TTL
//! rounded **up** to whole seconds; when the server raises it to its minimum, the
//! granted TTL is used. The holder's local deadline is still computed by the manager
//! from the *requested* TTL and the start of its last confirmed renewal; a renewal is
//! confirmed only when the group's etcd lease was kept alive by a keep-alive sent no
//! earlier than `renewal start + TTL − etcd TTL`. etcd measures the etcd lease from the
//! moment its leader handles that keep-alive, which is after we sent it, so the key
//! lives at least a TTL after the renewal started: the holder's deadline (TTL − safety
//! margin after that start) comes first. A TTL that is not a whole number of seconds
//! (9.5 s → an etcd lease of 10 s) lets renewals of a group share keep-alives sent in the
//! last half second; with whole seconds, only keep-alives sent after the renewal
//! started count. Dead holders' keys linger up to the etcd TTL (the rounded-up TTL) plus
//! etcd's expiry sweep (every 500 ms).
//!
//! etcd removes expired leases in a sweep every 500 ms, so a key can outlive its etcd
//! lease by up to half a second. An acquire that finds the key taken by an etcd lease
//! with less than a second left (etcd answers time left in whole seconds, rounded
//! down) looks again every 100 ms for up to 1.6 s instead of answering "held" at once.
//!
//! A leader change never shortens an etcd lease (the new leader extends every lease to
//! its TTL plus the election timeout from its election), so losing the leader only makes
//! keys last longer. A keep-alive answered by a leader that was cut off and has not yet
//! stepped down is not counted (the Raft term check above).
//!
//! # Keys that vanish early: grant records
//! In etcd releases without the fix for etcd issue #15247 (PR #16822; Debian bookworm
//! ships 3.4.23, without it), a leader that was frozen or cut off past the election
//! timeout, and deposed meanwhile, proposes when it resumes to revoke the leases its
//! stale table believes expired, and the new leader applies that: keys vanish while
//! their holders are live, who learn it at their next renewal. So that nobody is
//! granted such a key before its holder knows, every acquire also writes the key's
//! *grant record*, `<prefix>\0g<key>`, on no etcd lease (no revoke can take it): the
//! holder's TTL and the Raft term its etcd lease was granted in (at least: the highest
//! term this backend had seen before the grant). A release, and the cleanup of keys
//! nobody holds, delete it with the key.
//!
//! An acquire that finds the key gone but its grant record there knows its last holder
//! never let go. If the cluster's term is now higher than the record's (the leader
//! changed since that etcd lease was granted: the only way a stale leader can revoke
//! it), the key is granted only a TTL of the last holder's after it was first seen gone;
//! until then acquires answer *held*, with that wait as the time left. The wait is kept
//! in etcd, so that every backend (every process, however late it first looks) sees the
//! same one: the acquire that first sees the key gone grants, *after* seeing it, an etcd
//! lease of the holder's TTL that nobody keeps alive, and rewrites the grant record as a
//! *wait* on it (if the record is still the one it saw). When etcd expires that etcd
//! lease, the record goes and the key is free. A stale leader cannot end it early: its
//! table has that etcd lease's true expiry (nobody renewed it elsewhere), and a leader
//! change only extends etcd leases. The holder's deadline comes first: its last
//! confirmed renewal read the key before it vanished. Otherwise (no leader change) the
//! key is granted at once: it vanished because etcd expired its etcd lease, after the
//! holder's deadline.
//!
//! What it costs: after a leader change, a key freed by etcd *expiring* a dead holder's
//! etcd lease is granted up to a TTL later than otherwise (Kubernetes' leader election
//! always waits so: a lease duration after it last saw the record change). A released
//! key never waits. The grant record of a key whose last holder died stays in etcd (25
//! bytes) until the key is next acquired and released.
//!
//! # Keys nobody holds
//! A key must not ride on a group's etcd lease after its holder's context ended: the
//! group is kept alive for the other keys. So the backend remembers, for every key it
//! acquired, until when its holder can be live (the start of its last confirmed renewal
//! plus the TTL). Before every keep-alive of a group it deletes (by nonce, compare-and-set on
//! the create revision) the keys of that group whose holders can no longer be live —
//! acquires whose answer was lost, holders whose renewals failed and whose release did
//! not get through — and skips the keep-alive if it cannot. Such a key therefore lives at
//! most about two TTLs.
//!
//! # Timeouts, cancellation and what they leave behind
//! Every operation is bounded by the request timeout as a whole; each try on one
//! member by a quarter of it, after which the next endpoint is tried (a member that is
//! stopped or cut off answers nothing). Tries are repeated on another member after
//! errors that leave the outcome unknown or that name the member (unavailable, no
//! leader, timed out); every write is idempotent or compare-and-set, and an acquire
//! recognises its own earlier try by the nonce in the value.
//!
//! The await points, and what dropping the future at each leaves behind:
//! 1. *Authenticating* (with a user): nothing; the next call authenticates again.
//! 2. *Granting a group's etcd lease*: possibly an etcd lease nobody uses; etcd
//!    deletes it after its TTL.
//! 3. *A group keep-alive* (and the deletes of stale keys before it): possibly a
//!    longer-lived etcd lease (its keys are all live holders or are deleted at the next
//!    keep-alive), possibly some stale keys deleted. The next renewal sends another.
//! 4. *The acquire transaction*: possibly a *phantom grant* nobody holds. The backend
//!    remembered the acquire (with its nonce) before sending it, so the key (and its
//!    grant record) is deleted before the group's next keep-alive after one TTL, or
//!    vanishes with the etcd lease (the grant record then stays, see above).
//! 5. *Reading the key* (renew, info, revoke, list, free keys) and *the etcd lease's
//!    time left*: nothing.
//! 6. *The release transaction*: possibly released; if not, the key is deleted by the
//!    next keep-alive of its group after its TTL, or vanishes with the etcd lease.
//! 7. *The revoke transaction*: possibly revoked; the holder learns at its next renewal.
//!
//! The watch runs in a task of its own (started at the first subscription), asks for
//! a progress report every second, and reconnects (to the next endpoint) when nothing
//! arrives for three seconds or the stream ends.
//!
//! # Clocks
//! Expiry is judged by the etcd leader's monotonic clock, holders' deadlines by their
//! own: no wall clock is involved, and a clock step on either side changes nothing.
//! `acquired_at` is the acquiring process's wall clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::{AcquireOutcome, Backend, Freed, FreedKeys, RenewOutcome};
use crate::backend::LeaseInfo;
use crate::error::{BackendError, BackendErrorKind, LeaseError};
use crate::key::Key;

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

use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;

/// How many freed-key notifications a slow waiter may fall behind before it retries.
const FREES_CAPACITY: usize = 1024;
/// etcd's default limit of operations in one transaction.
const MAX_TXN_OPS: usize = 128;
/// How long an acquire keeps looking at a key whose etcd lease has under a second left.
const IMMINENT_EXPIRY_POLL: Duration = Duration::from_millis(1600);
const VALUE_HEADER: usize = 1 + 1 + 8 + 8 + 16;

/// How to reach and use an etcd cluster.
#[derive(Clone)]
pub struct EtcdOptions {
    endpoints: Vec<String>,
    prefix: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    user: Option<(String, String)>,
    ca_certificate_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    tls_domain: Option<String>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Leave the password out.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("ca_certificate", &self.ca_certificate_pem.is_some())
            .field("client_identity", &self.identity_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdOptions {
    /// Options for a cluster reached at these endpoints (`http://host:2379`, or
    /// `https://…` with [`ca_certificate_pem`](Self::ca_certificate_pem)), with the key
    /// prefix `/leases`, a 2 s connect timeout and a 5 s request timeout. Give every
    /// member: the backend moves to the next one when a member stops answering.
    pub fn new<I, S>(endpoints: I) -> EtcdOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: "/leases".into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            user: None,
            ca_certificate_pem: None,
            identity_pem: None,
            tls_domain: None,
        }
    }

    /// The prefix of every etcd key this backend writes (default `/leases`); a lease on
    /// `/system/a` is the etcd key `<prefix>/system/a`. Managers share leases exactly
    /// when they use the same cluster and prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for a connection to a member.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one lease operation may take, all tries included, before it fails with
    /// a timeout. One try on one member gets a quarter of it (at least 100 ms).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Authenticate as this etcd user (etcd's auth must be enabled on the cluster).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Verify the members' TLS certificates against this CA (PEM); needed for
    /// `https://` endpoints.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// A client certificate and its private key (PEM), for clusters that require
    /// client certificates.
    pub fn client_identity_pem(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity_pem = Some((certificate.into(), key.into()));
        self
    }

    /// The name to expect in the members' certificates, when it is not the endpoints'
    /// host.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }
}

/// Leases in an etcd cluster (feature `etcd`). See the module docs of
/// `leases::backend` and the crate README for how leases map onto etcd.
///
/// Connections are made lazily; [`EtcdBackend::connect`] checks the cluster up front.
pub struct EtcdBackend {
    inner: Arc<Inner>,
    frees: broadcast::Sender<Freed>,
    watcher: OnceLock<JoinHandle<()>>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.inner.prefix))
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        if let Some(task) = self.watcher.get() {
            task.abort();
        }
    }
}

struct Inner {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// The endpoint in use; moved on when it fails.
    current: AtomicUsize,
    prefix: Vec<u8>,
    request_timeout: Duration,
    try_timeout: Duration,
    user: Option<(String, String)>,
    auth_token: Mutex<Option<Arc<str>>>,
    /// One group per TTL (in nanoseconds).
    groups: Mutex<HashMap<u128, Arc<GroupSlot>>>,
    /// The keys this backend acquired, by etcd key: until when their holders can be live.
    held: Mutex<HashMap<Vec<u8>, Vec<Held>>>,
    instance: u64,
    acquires: AtomicU64,
    /// The highest Raft term any answer carried.
    max_term: AtomicU64,
}

/// A group: one etcd lease carrying every key acquired here with one TTL. The async
/// lock makes keep-alives of one group one at a time, so that renewals queued behind
/// one share the next.
struct GroupSlot {
    state: tokio::sync::Mutex<Option<Group>>,
}

#[derive(Clone, Copy)]
struct Group {
    id: i64,
    etcd_ttl: Duration,
    /// When the last confirmed grant or keep-alive of the etcd lease was *sent*.
    confirmed: Instant,
    /// The highest Raft term seen before the grant was sent: the etcd lease was granted
    /// in this term or a later one.
    term: u64,
}

impl Group {
    /// Does the etcd lease surely live until `start + ttl`?
    fn covers(&self, start: Instant, ttl: Duration) -> bool {
        self.confirmed + self.etcd_ttl >= start + ttl
    }
}

#[derive(Clone)]
struct Held {
    nonce: [u8; 16],
    token: Option<u64>,
    lease: i64,
    /// The holder's context has surely ended after this instant.
    live_until: Instant,
}

/// The decoded value of a lease key.
struct Value {
    revoked: bool,
    ttl: Duration,
    acquired_at: SystemTime,
    nonce: [u8; 16],
    metadata: Vec<u8>,
}

fn encode(revoked: bool, ttl: Duration, at: SystemTime, nonce: &[u8; 16], md: &[u8]) -> Vec<u8> {
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

fn decode(v: &[u8]) -> Option<Value> {
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

/// The value of a grant record: `1` (a grant; `2`: a wait, see `Inner::start_wait`),
/// the holder's TTL in nanoseconds, the Raft term its etcd lease was granted in (at
/// least), and that etcd lease's ID (all big-endian).
fn encode_record(kind: u8, ttl: Duration, term: u64, lease: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(25);
    v.push(kind);
    v.extend_from_slice(
        &u64::try_from(ttl.as_nanos())
            .unwrap_or(u64::MAX)
            .to_be_bytes(),
    );
    v.extend_from_slice(&term.to_be_bytes());
    v.extend_from_slice(&lease.to_be_bytes());
    v
}

/// A grant record's kind (1: grant, 2: wait), holder TTL, term and etcd lease ID; `None`
/// for a value this version did not write.
fn decode_record(v: &[u8]) -> Option<(u8, Duration, u64, i64)> {
    if v.len() != 25 || !matches!(v[0], 1 | 2) {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
    let lease = i64::from_be_bytes(v[17..25].try_into().unwrap_or([0; 8]));
    Some((v[0], Duration::from_nanos(u64_at(1)), u64_at(9), lease))
}

/// What a grant record found with its key gone says.
enum RecordState {
    /// The key may be granted now.
    Free,
    /// Its last holder may still be live: start the wait (that holder's TTL).
    Stale(Duration),
    /// A wait is running: until this etcd lease (of the holder's TTL) ends.
    Waiting(i64),
}

/// The first key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A TTL in etcd's whole seconds, rounded up, at least 1.
fn etcd_ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// `start + ttl`, or an error for a TTL beyond the clock.
fn until(start: Instant, ttl: Duration) -> Result<Instant, BackendError> {
    start.checked_add(ttl).ok_or_else(|| {
        BackendError::new(
            BackendErrorKind::Failed,
            format!("TTL {ttl:?} overflows the clock"),
        )
    })
}

fn status_error(what: &str, status: tonic::Status) -> BackendError {
    let kind = match status.code() {
        tonic::Code::Unavailable => BackendErrorKind::Unavailable,
        tonic::Code::DeadlineExceeded => BackendErrorKind::Timeout,
        _ => BackendErrorKind::Failed,
    };
    let message = format!("etcd {what}: {}", status.message());
    BackendError::with_source(kind, message, status)
}

/// Errors after which another try (on another member) makes sense: the member is
/// down, cut off, without a leader, or the outcome is unknown.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::Internal
    )
}

fn is_auth_error(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unauthenticated || status.message().contains("invalid auth token")
}

fn is_lease_not_found(status: &tonic::Status) -> bool {
    status.message().contains("lease not found")
}

fn request<T>(msg: T, token: &Option<Arc<str>>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(token) = token {
        if let Ok(v) = token.parse() {
            req.metadata_mut().insert("token", v);
        }
    }
    req
}

fn range_req(key: Vec<u8>) -> pb::RangeRequest {
    pb::RangeRequest {
        key,
        ..Default::default()
    }
}

fn compare_create(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
    }
}

fn op(request: pb::request_op::Request) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request),
    }
}

fn delete_op(key: &[u8]) -> pb::RequestOp {
    op(pb::request_op::Request::RequestDeleteRange(
        pb::DeleteRangeRequest {
            key: key.to_vec(),
            range_end: Vec::new(),
        },
    ))
}

fn compare_mod(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
    }
}

/// The key-value of the `i`-th answer of a transaction, if it is a range that found one.
fn range_kv(resp: &pb::TxnResponse, i: usize) -> Option<&pb::KeyValue> {
    match &resp.responses.get(i)?.response {
        Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.first(),
        _ => None,
    }
}

fn token_of(kv: &pb::KeyValue) -> u64 {
    u64::try_from(kv.create_revision).unwrap_or(0)
}

impl Inner {
    fn slot(&self, ttl: Duration) -> Arc<GroupSlot> {
        crate::sync::lock(&self.groups)
            .entry(ttl.as_nanos())
            .or_insert_with(|| {
                Arc::new(GroupSlot {
                    state: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    fn etcd_key(&self, key: &Key) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key.to_string().as_bytes());
        k
    }

    /// The grant record of a lease key: `<prefix>\0g<key>`, outside the range of lease
    /// keys (`<prefix>/…`) that `list` and the watch cover.
    fn record_key(&self, etcd_key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(b"\0g");
        k.extend_from_slice(etcd_key.get(self.prefix.len()..).unwrap_or_default());
        k
    }

    /// Notes the Raft term of an answer; the highest term seen so far.
    fn saw(&self, header: Option<&pb::ResponseHeader>) -> u64 {
        let term = header.map(|h| h.raft_term).unwrap_or(0);
        self.max_term.fetch_max(term, Ordering::Relaxed).max(term)
    }

    /// For a key found gone while its grant record `f` is still there (its last holder
    /// never released it): may it be granted now, must a wait start, or is one running?
    ///
    /// A key vanishes without a release when its etcd lease ends: normally etcd expiring
    /// it, after its holder's deadline. But an etcd without the fix for etcd issue
    /// #15247 lets a leader that was frozen or cut off, and deposed meanwhile, revoke
    /// leases early when it resumes, and the key's holder may still be live: until at
    /// most its TTL after the key vanished (its last confirmed renewal started before
    /// that). Such a leader can only revoke etcd leases granted before the leader change,
    /// so when the cluster's term is now higher than the term the holder's etcd lease
    /// was granted in, the key is granted only a holder's TTL after it was first seen
    /// gone, not before (as Kubernetes' leader election waits a lease duration after it
    /// last saw the record change).
    fn record_state(f: &pb::KeyValue, ttl: Duration, term_now: u64) -> RecordState {
        match decode_record(&f.value) {
            Some((2, _, _, wait)) => RecordState::Waiting(wait),
            Some((_, _, granted_term, _)) if granted_term != 0 && granted_term >= term_now => {
                RecordState::Free
            }
            Some((_, held_ttl, _, _)) => RecordState::Stale(held_ttl),
            None => RecordState::Stale(ttl),
        }
    }

    /// Starts the wait for a key found gone with its stale grant record `f` (see
    /// [`record_state`](Self::record_state)), in etcd so that every backend (every
    /// process, however late it looks) sees the same wait: the record is rewritten as a
    /// *wait* on an etcd lease of the holder's TTL granted now, after the key was seen
    /// gone, and never kept alive. When etcd expires it the record is gone and the key
    /// free. Such an etcd lease cannot be revoked early (a stale leader revokes only
    /// etcd leases kept alive through another leader, whose table it has not seen): its
    /// leader's expiry is its grant plus its TTL, and a leader change only extends it.
    async fn start_wait(
        &self,
        ek: &[u8],
        record: &[u8],
        f: &pb::KeyValue,
        held_ttl: Duration,
        term_now: u64,
    ) -> Result<(), BackendError> {
        let (wait, _) = self.grant_lease("wait grant", held_ttl).await?;
        let req = pb::TxnRequest {
            compare: vec![compare_create(ek, 0), compare_mod(record, f.mod_revision)],
            success: vec![op(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: record.to_vec(),
                value: encode_record(2, held_ttl, term_now, wait),
                lease: wait,
                ignore_lease: false,
            }))],
            failure: vec![],
        };
        // If it failed, someone else changed the record first: the caller looks again.
        self.txn("wait start", req).await?;
        tracing::debug!(
            key = %String::from_utf8_lossy(ek),
            wait = ?held_ttl,
            "key gone without a release after a leader change: waiting out its last holder's TTL"
        );
        Ok(())
    }

    fn key_of(&self, etcd_key: &[u8]) -> Option<Key> {
        let rest = etcd_key.strip_prefix(self.prefix.as_slice())?;
        Key::parse(std::str::from_utf8(rest).ok()?).ok()
    }

    fn nonce(&self) -> [u8; 16] {
        let n = self.acquires.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0; 16];
        nonce[..8].copy_from_slice(&self.instance.to_be_bytes());
        nonce[8..].copy_from_slice(&n.to_be_bytes());
        nonce
    }

    fn remember(&self, key: &[u8], held: Held) {
        crate::sync::lock(&self.held)
            .entry(key.to_vec())
            .or_default()
            .push(held);
    }

    fn update_held(&self, key: &[u8], nonce: &[u8; 16], f: impl FnOnce(&mut Held)) {
        if let Some(list) = crate::sync::lock(&self.held).get_mut(key) {
            if let Some(h) = list.iter_mut().find(|h| &h.nonce == nonce) {
                f(h);
            }
        }
    }

    /// Forgets the acquires of `key` matching `pred`.
    fn forget(&self, key: &[u8], pred: impl Fn(&Held) -> bool) {
        let mut held = crate::sync::lock(&self.held);
        if let Some(list) = held.get_mut(key) {
            list.retain(|h| !pred(h));
            if list.is_empty() {
                held.remove(key);
            }
        }
    }

    /// Runs one RPC with the request timeout, moving to the next endpoint and trying
    /// again after errors that name the member or leave the outcome unknown.
    async fn call<R, F, Fut>(&self, what: &str, mut f: F) -> Result<R, BackendError>
    where
        F: FnMut(Channel, Option<Arc<str>>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        let attempts = async {
            let mut auth_retried = false;
            let mut backoff = Duration::from_millis(20);
            loop {
                let i = self.current.load(Ordering::Relaxed) % self.channels.len();
                let channel = self.channels[i].clone();
                let attempt = async {
                    let token = self.token(&channel).await?;
                    f(channel.clone(), token).await
                };
                let status = match tokio::time::timeout(self.try_timeout, attempt).await {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(status)) => status,
                    Err(_) => tonic::Status::deadline_exceeded("no answer in time"),
                };
                if self.user.is_some() && is_auth_error(&status) && !auth_retried {
                    auth_retried = true;
                    *crate::sync::lock(&self.auth_token) = None;
                    continue;
                }
                if !retryable(&status) {
                    return Err(status_error(what, status));
                }
                tracing::debug!(endpoint = %self.endpoints[i], %status, "etcd {what} failed; trying the next member");
                let _ = self.current.compare_exchange(
                    i,
                    (i + 1) % self.channels.len(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        };
        match tokio::time::timeout(self.request_timeout, attempts).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Timeout,
                format!(
                    "etcd {what}: no answer within {:?} from any member",
                    self.request_timeout
                ),
            )),
        }
    }

    /// The auth token to send, authenticating first when needed.
    async fn token(&self, channel: &Channel) -> Result<Option<Arc<str>>, tonic::Status> {
        let Some((name, password)) = &self.user else {
            return Ok(None);
        };
        if let Some(t) = crate::sync::lock(&self.auth_token).clone() {
            return Ok(Some(t));
        }
        let resp = AuthClient::new(channel.clone())
            .authenticate(pb::AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            })
            .await?
            .into_inner();
        let token: Arc<str> = resp.token.into();
        *crate::sync::lock(&self.auth_token) = Some(token.clone());
        Ok(Some(token))
    }

    async fn range(
        &self,
        what: &str,
        req: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, BackendError> {
        let resp: pb::RangeResponse = self
            .call(what, |ch, token| {
                let req = req.clone();
                async move {
                    Ok(KvClient::new(ch)
                        .range(request(req, &token))
                        .await?
                        .into_inner())
                }
            })
            .await?;
        self.saw(resp.header.as_ref());
        Ok(resp)
    }

    async fn get(&self, what: &str, key: &[u8]) -> Result<Option<pb::KeyValue>, BackendError> {
        Ok(self
            .range(what, range_req(key.to_vec()))
            .await?
            .kvs
            .into_iter()
            .next())
    }

    async fn txn(&self, what: &str, req: pb::TxnRequest) -> Result<pb::TxnResponse, BackendError> {
        self.txn_status(what, req)
            .await?
            .map_err(|status| status_error(what, status))
    }

    /// A transaction, with etcd's refusal (not a transport failure) returned as is.
    async fn txn_status(
        &self,
        what: &str,
        req: pb::TxnRequest,
    ) -> Result<Result<pb::TxnResponse, tonic::Status>, BackendError> {
        self.call(what, |ch, token| {
            let req = req.clone();
            async move {
                match KvClient::new(ch).txn(request(req, &token)).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        self.saw(resp.header.as_ref());
                        Ok(Ok(resp))
                    }
                    Err(status) if is_lease_not_found(&status) => Ok(Err(status)),
                    Err(status) => Err(status),
                }
            }
        })
        .await
    }

    /// One keep-alive of an etcd lease, confirmed: its TTL in seconds, 0 (or less) when
    /// it is gone.
    ///
    /// etcd 3.4 lets a leader that was cut off (or frozen) and has not yet stepped down
    /// answer keep-alives from its own, no longer authoritative, lease table, while the
    /// real leader lets the lease run out. So a keep-alive counts only if a linearizable
    /// read made *after* its answer (which only the current leader can serve) sees the
    /// same Raft term as the answer: one leader per term, and that leader was still
    /// leading after it renewed the lease.
    async fn keep_alive(&self, id: i64) -> Result<i64, BackendError> {
        let (ttl, term) = self.keep_alive_once(id).await?;
        if ttl <= 0 {
            return Ok(ttl);
        }
        let req = pb::RangeRequest {
            key: self.prefix.clone(),
            count_only: true,
            ..Default::default()
        };
        let now = self.range("leader check", req).await?;
        let current = now.header.map(|h| h.raft_term).unwrap_or(0);
        if current != term || term == 0 {
            return Err(BackendError::new(
                BackendErrorKind::Unavailable,
                format!(
                    "etcd keep-alive answered in Raft term {term}, but the cluster is in term \
                     {current}: not counted"
                ),
            ));
        }
        Ok(ttl)
    }

    /// One keep-alive of an etcd lease: its TTL and the Raft term of the answer.
    async fn keep_alive_once(&self, id: i64) -> Result<(i64, u64), BackendError> {
        self.call("keep-alive", |ch, token| async move {
            // Keep our half open until the answer came: closing it could end the
            // stream before the member answers.
            let outbound = futures_util::stream::iter([pb::LeaseKeepAliveRequest { id }])
                .chain(futures_util::stream::pending());
            let mut inbound = LeaseClient::new(ch)
                .lease_keep_alive(request(outbound, &token))
                .await?
                .into_inner();
            match inbound.message().await? {
                Some(resp) => {
                    self.saw(resp.header.as_ref());
                    Ok((resp.ttl, resp.header.map(|h| h.raft_term).unwrap_or(0)))
                }
                None => Err(tonic::Status::unavailable("the keep-alive stream ended")),
            }
        })
        .await
    }

    /// A linearizable read of the prefix key alone (a quorum must answer).
    async fn check_read(&self) -> Result<(), BackendError> {
        let req = pb::RangeRequest {
            key: self.prefix.clone(),
            count_only: true,
            ..Default::default()
        };
        self.range("check", req).await.map(drop)
    }

    /// Time left on an etcd lease in whole seconds (rounded down); -1 when it is gone.
    async fn time_to_live(&self, id: i64) -> Result<i64, BackendError> {
        self.call("lease time-to-live", |ch, token| async move {
            let resp = LeaseClient::new(ch)
                .lease_time_to_live(request(
                    pb::LeaseTimeToLiveRequest { id, keys: false },
                    &token,
                ))
                .await?
                .into_inner();
            Ok(resp.ttl)
        })
        .await
    }

    /// Grants an etcd lease of `ttl` rounded up to whole seconds: its ID and the TTL
    /// etcd granted (never less than asked).
    async fn grant_lease(
        &self,
        what: &str,
        ttl: Duration,
    ) -> Result<(i64, Duration), BackendError> {
        let secs = etcd_ttl_secs(ttl);
        let resp = self
            .call(what, |ch, token| async move {
                Ok(LeaseClient::new(ch)
                    .lease_grant(request(pb::LeaseGrantRequest { ttl: secs, id: 0 }, &token))
                    .await?
                    .into_inner())
            })
            .await?;
        if !resp.error.is_empty() || resp.id == 0 || resp.ttl < secs {
            return Err(BackendError::new(
                BackendErrorKind::Failed,
                format!(
                    "etcd {what} of {secs} s refused: {} (granted {} s)",
                    resp.error, resp.ttl
                ),
            ));
        }
        let granted = Duration::from_secs(u64::try_from(resp.ttl).unwrap_or(0));
        Ok((resp.id, granted))
    }

    /// Grants a group's etcd lease.
    async fn grant(&self, ttl: Duration) -> Result<Group, BackendError> {
        if self.max_term.load(Ordering::Relaxed) == 0 {
            // Learn the cluster's term first: a group granted in an unknown term would
            // make every key on it look older than any leader change.
            self.check_read().await?;
        }
        let term = self.max_term.load(Ordering::Relaxed);
        let sent = Instant::now();
        let (id, granted) = self.grant_lease("lease grant", ttl).await?;
        Ok(Group {
            id,
            etcd_ttl: granted,
            confirmed: sent,
            term,
        })
    }

    /// Keeps a group's etcd lease alive, after deleting the keys on it whose holders
    /// can no longer be live. `Ok(false)`: the etcd lease is gone.
    async fn keep_group_alive(&self, group: &mut Group) -> Result<bool, BackendError> {
        let now = Instant::now();
        let stale: Vec<(Vec<u8>, [u8; 16])> = crate::sync::lock(&self.held)
            .iter()
            .flat_map(|(k, list)| {
                list.iter()
                    .filter(|h| h.lease == group.id && h.live_until <= now)
                    .map(|h| (k.clone(), h.nonce))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (key, nonce) in stale {
            self.delete_if_ours(&key, &nonce).await?;
            self.forget(&key, |h| h.nonce == nonce);
        }
        let sent = Instant::now();
        let ttl = self.keep_alive(group.id).await?;
        if ttl <= 0 {
            return Ok(false);
        }
        group.confirmed = sent;
        group.etcd_ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        Ok(true)
    }

    /// Deletes `key` if the acquire named by `nonce` wrote it.
    async fn delete_if_ours(&self, key: &[u8], nonce: &[u8; 16]) -> Result<(), BackendError> {
        let Some(kv) = self.get("cleanup read", key).await? else {
            return Ok(());
        };
        if decode(&kv.value).is_some_and(|v| &v.nonce == nonce) {
            // Nobody holds it: its grant record goes with it.
            let req = pb::TxnRequest {
                compare: vec![compare_create(key, kv.create_revision)],
                success: vec![delete_op(key), delete_op(&self.record_key(key))],
                failure: vec![],
            };
            self.txn("cleanup delete", req).await?;
            tracing::debug!(key = %String::from_utf8_lossy(key), "deleted a lease key nobody holds any more");
        }
        Ok(())
    }

    /// The group's etcd lease for an acquire started at `start`, granted or kept alive
    /// so that it lives until `start + ttl`.
    async fn group_for(&self, ttl: Duration, start: Instant) -> Result<Group, BackendError> {
        let slot = self.slot(ttl);
        let mut state = slot.state.lock().await;
        if let Some(group) = state.as_mut() {
            if group.covers(start, ttl) {
                return Ok(*group);
            }
            let mut g = *group;
            if self.keep_group_alive(&mut g).await? && g.covers(start, ttl) {
                *group = g;
                return Ok(g);
            }
            let dead = group.id;
            *state = None;
            self.forget_lease(dead);
        }
        let group = self.grant(ttl).await?;
        *state = Some(group);
        Ok(group)
    }

    /// Drops the group whose etcd lease is `id` (it is gone).
    async fn drop_group(&self, ttl: Duration, id: i64) {
        let slot = self.slot(ttl);
        let mut state = slot.state.lock().await;
        if state.as_ref().is_some_and(|g| g.id == id) {
            *state = None;
        }
        self.forget_lease(id);
    }

    /// Forgets every key on an etcd lease that is gone (the keys went with it).
    fn forget_lease(&self, id: i64) {
        crate::sync::lock(&self.held).retain(|_, list| {
            list.retain(|h| h.lease != id);
            !list.is_empty()
        });
    }

    /// Makes sure the etcd lease `id` of a key renewed with `ttl` lives until `start +
    /// ttl`. `Ok(false)`: it is gone.
    async fn confirm_alive(
        &self,
        id: i64,
        ttl: Duration,
        start: Instant,
    ) -> Result<bool, BackendError> {
        let slot = self.slot(ttl);
        let mut state = slot.state.lock().await;
        match state.as_mut() {
            Some(group) if group.id == id => {
                if group.covers(start, ttl) {
                    return Ok(true);
                }
                let mut g = *group;
                if self.keep_group_alive(&mut g).await? {
                    *group = g;
                    Ok(g.covers(start, ttl))
                } else {
                    *state = None;
                    drop(state);
                    self.forget_lease(id);
                    Ok(false)
                }
            }
            _ => {
                // Not this TTL's current group (the key was acquired with another TTL,
                // or its group was replaced): keep its etcd lease alive directly.
                drop(state);
                let sent = Instant::now();
                let secs = self.keep_alive(id).await?;
                let covers = secs > 0
                    && sent + Duration::from_secs(u64::try_from(secs).unwrap_or(0)) >= start + ttl;
                Ok(covers)
            }
        }
    }

    /// Time left on a held key's lease, for `LeaseInfo` and `Held`: at most its TTL,
    /// never zero (etcd answers whole seconds, rounded down).
    async fn expires_in(&self, kv: &pb::KeyValue, ttl: Duration) -> Result<Duration, BackendError> {
        let secs = self.time_to_live(kv.lease).await?;
        let left = Duration::from_secs(u64::try_from(secs.max(0)).unwrap_or(0) + 1);
        Ok(left.min(ttl).max(Duration::from_millis(1)))
    }

    async fn info_of(
        &self,
        key: Key,
        kv: &pb::KeyValue,
    ) -> Result<Option<LeaseInfo>, BackendError> {
        let Some(v) = decode(&kv.value) else {
            return Ok(None);
        };
        Ok(Some(LeaseInfo {
            key,
            token: token_of(kv),
            ttl: v.ttl,
            expires_in: self.expires_in(kv, v.ttl).await?,
            metadata: v.metadata,
            revoked: v.revoked,
            acquired_at: Some(v.acquired_at),
        }))
    }
}

/// Follows deletes under the prefix and tells the subscribers; reconnects (to the next
/// endpoint) when the stream ends or goes silent.
async fn watch(inner: Arc<Inner>, frees: broadcast::Sender<Freed>) {
    const PROGRESS: Duration = Duration::from_secs(1);
    const SILENCE: Duration = Duration::from_secs(3);
    let start = {
        let mut k = inner.prefix.clone();
        k.push(b'/');
        k
    };
    let end = prefix_end(&start);
    let mut backoff = Duration::from_millis(25);
    loop {
        let i = inner.current.load(Ordering::Relaxed) % inner.channels.len();
        let channel = inner.channels[i].clone();
        let ended = async {
            let token = inner.token(&channel).await.map_err(|s| s.to_string())?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: start.clone(),
                        range_end: end.clone(),
                        start_revision: 0,
                        progress_notify: true,
                    },
                )),
            };
            let _ = tx.send(create).await;
            let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            let mut req = request(outbound, &token);
            // Ask the member to end the stream when it has no leader (it would be cut off).
            req.metadata_mut().insert(
                "hasleader",
                tonic::metadata::MetadataValue::from_static("true"),
            );
            let mut inbound = tokio::time::timeout(SILENCE, WatchClient::new(channel).watch(req))
                .await
                .map_err(|_| "watch: no answer".to_string())?
                .map_err(|s| s.to_string())?
                .into_inner();
            let mut progress = tokio::time::interval(PROGRESS);
            let mut last_heard = Instant::now();
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(resp)) => {
                            last_heard = Instant::now();
                            if resp.created {
                                tracing::debug!("watching released leases");
                                let _ = frees.send(Freed::Everything);
                            }
                            if resp.canceled {
                                return Err(format!("watch canceled: {}", resp.cancel_reason));
                            }
                            for event in resp.events {
                                if event.r#type != pb::event::EventType::Delete as i32 {
                                    continue;
                                }
                                if let Some(key) = event.kv.and_then(|kv| inner.key_of(&kv.key)) {
                                    let _ = frees.send(Freed::Key(key));
                                }
                            }
                        }
                        Ok(None) => return Err("watch stream ended".to_string()),
                        Err(status) => return Err(status.to_string()),
                    },
                    _ = progress.tick() => {
                        if last_heard.elapsed() > SILENCE {
                            return Err("watch went silent".to_string());
                        }
                        let ask = pb::WatchRequest {
                            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                                pb::WatchProgressRequest {},
                            )),
                        };
                        if tx.send(ask).await.is_err() {
                            return Err("watch request stream closed".to_string());
                        }
                    }
                }
            }
        };
        let result: Result<(), String> = ended.await;
        if let Err(error) = result {
            tracing::debug!(endpoint = %inner.endpoints[i], %error, "etcd watch ended; reconnecting");
            if error.contains("invalid auth token") {
                // Authenticate again on the next connection.
                *crate::sync::lock(&inner.auth_token) = None;
            }
        }
        let _ = inner.current.compare_exchange(
            i,
            (i + 1) % inner.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

fn config_error(message: impl Into<String>) -> LeaseError {
    LeaseError::InvalidConfig(message.into())
}

impl EtcdBackend {
    /// A backend for this cluster. Connections are made lazily (at the first
    /// operation); must be called within a tokio runtime. Fails with
    /// [`LeaseError::InvalidConfig`] for bad options.
    pub fn new(options: EtcdOptions) -> Result<EtcdBackend, LeaseError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(config_error(
                "EtcdBackend::new must be called within a tokio runtime",
            ));
        }
        if options.endpoints.is_empty() {
            return Err(config_error("etcd: no endpoints given"));
        }
        if options.request_timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(config_error("etcd: timeouts must be positive"));
        }
        if options.prefix.is_empty() || options.prefix.ends_with('/') {
            return Err(config_error(format!(
                "etcd: the key prefix must be non-empty and not end with '/', not {:?}",
                options.prefix
            )));
        }
        let tls = match (&options.ca_certificate_pem, &options.identity_pem) {
            (None, None) => None,
            (ca, identity) => {
                let mut tls = tonic::transport::ClientTlsConfig::new();
                if let Some(ca) = ca {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = identity {
                    tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
                }
                if let Some(domain) = &options.tls_domain {
                    tls = tls.domain_name(domain.clone());
                }
                Some(tls)
            }
        };
        let mut channels = Vec::with_capacity(options.endpoints.len());
        for url in &options.endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| config_error(format!("etcd endpoint {url:?}: {e}")))?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true);
            if url.starts_with("https://") {
                let Some(tls) = &tls else {
                    return Err(config_error(format!(
                        "etcd endpoint {url:?} uses TLS: give the CA with ca_certificate_pem"
                    )));
                };
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| config_error(format!("etcd TLS settings: {e}")))?;
            } else if !url.starts_with("http://") {
                return Err(config_error(format!(
                    "etcd endpoint {url:?}: expected http:// or https://"
                )));
            }
            channels.push(endpoint.connect_lazy());
        }
        let instance = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 40);
        let try_timeout = (options.request_timeout / 4).max(Duration::from_millis(100));
        Ok(EtcdBackend {
            inner: Arc::new(Inner {
                endpoints: options.endpoints,
                channels,
                current: AtomicUsize::new(0),
                prefix: options.prefix.into_bytes(),
                request_timeout: options.request_timeout,
                try_timeout,
                user: options.user,
                auth_token: Mutex::new(None),
                groups: Mutex::new(HashMap::new()),
                held: Mutex::new(HashMap::new()),
                instance,
                acquires: AtomicU64::new(0),
                max_term: AtomicU64::new(0),
            }),
            frees: broadcast::channel(FREES_CAPACITY).0,
            watcher: OnceLock::new(),
        })
    }

    /// [`new`](Self::new), then a check that the cluster answers (a linearizable read,
    /// so a quorum must be up), within the request timeout.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdBackend, LeaseError> {
        let backend = EtcdBackend::new(options)?;
        backend.check().await?;
        Ok(backend)
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        metadata: &[u8],
    ) -> Result<AcquireOutcome, BackendError> {
        let inner = &self.inner;
        let start = Instant::now();
        until(start, ttl)?;
        let ek = inner.etcd_key(key);
        let nonce = inner.nonce();
        let value = encode(false, ttl, SystemTime::now(), &nonce, metadata);
        let record = inner.record_key(&ek);
        // The grant record's mod revision the transaction expects (0: none).
        let mut record_seen = 0;
        let mut lease_retries = 0;
        let mut started_wait = false;
        loop {
            let group = inner.group_for(ttl, start).await?;
            let lease = group.id;
            // Remembered before the transaction is sent: if its answer is lost (or this
            // future dropped), the key is deleted before the group's next keep-alive
            // after one TTL.
            inner.remember(
                &ek,
                Held {
                    nonce,
                    token: None,
                    lease,
                    live_until: start + ttl,
                },
            );
            let put = op(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: ek.clone(),
                value: value.clone(),
                lease,
                ignore_lease: false,
            }));
            let put_record = op(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: record.clone(),
                value: encode_record(1, ttl, group.term, lease),
                lease: 0,
                ignore_lease: false,
            }));
            let req = pb::TxnRequest {
                compare: vec![compare_create(&ek, 0), compare_mod(&record, record_seen)],
                success: vec![put, put_record],
                failure: vec![
                    op(pb::request_op::Request::RequestRange(range_req(ek.clone()))),
                    op(pb::request_op::Request::RequestRange(range_req(
                        record.clone(),
                    ))),
                ],
            };
            let resp = match inner.txn_status("acquire", req).await? {
                Ok(resp) => resp,
                Err(status) => {
                    // The group's etcd lease is gone: grant another and try again.
                    inner.forget(&ek, |h| h.nonce == nonce);
                    inner.drop_group(ttl, lease).await;
                    lease_retries += 1;
                    if lease_retries > 2 {
                        return Err(status_error("acquire", status));
                    }
                    continue;
                }
            };
            if resp.succeeded {
                let token = resp
                    .header
                    .as_ref()
                    .and_then(|h| u64::try_from(h.revision).ok())
                    .filter(|t| *t > 0)
                    .ok_or_else(|| {
                        BackendError::new(
                            BackendErrorKind::Failed,
                            "etcd acquire: no revision in the answer",
                        )
                    })?;
                inner.update_held(&ek, &nonce, |h| h.token = Some(token));
                return Ok(AcquireOutcome::Granted { token });
            }
            let term_now = inner.saw(resp.header.as_ref());
            let Some(kv) = range_kv(&resp, 0).cloned() else {
                inner.forget(&ek, |h| h.nonce == nonce);
                // The key is gone; its grant record is not what we expected.
                let Some(f) = range_kv(&resp, 1).cloned() else {
                    // Deleted between the compare and the read: try again.
                    record_seen = 0;
                    continue;
                };
                match Inner::record_state(&f, ttl, term_now) {
                    RecordState::Free => {
                        record_seen = f.mod_revision;
                        continue;
                    }
                    RecordState::Stale(held_ttl) => {
                        if started_wait {
                            // Our wait lost a race and the record changed again.
                            return Ok(AcquireOutcome::Held {
                                expires_in: held_ttl,
                            });
                        }
                        started_wait = true;
                        inner
                            .start_wait(&ek, &record, &f, held_ttl, term_now)
                            .await?;
                        continue;
                    }
                    RecordState::Waiting(wait) => {
                        let secs = inner.time_to_live(wait).await?;
                        let left = Duration::from_secs(u64::try_from(secs.max(0)).unwrap_or(0) + 1);
                        return Ok(AcquireOutcome::Held { expires_in: left });
                    }
                }
            };
            let current = decode(&kv.value);
            if current.as_ref().is_some_and(|v| v.nonce == nonce) {
                // Our own earlier try (whose answer was lost) created it.
                let token = token_of(&kv);
                inner.update_held(&ek, &nonce, |h| {
                    h.token = Some(token);
                    h.lease = kv.lease;
                });
                return Ok(AcquireOutcome::Granted { token });
            }
            inner.forget(&ek, |h| h.nonce == nonce);
            let held_ttl = current.map(|v| v.ttl).unwrap_or(ttl);
            let secs = inner.time_to_live(kv.lease).await?;
            if secs <= 0 && start.elapsed() < IMMINENT_EXPIRY_POLL {
                // Under a second left (or expired and waiting for etcd's sweep): look
                // again shortly rather than answer "held" for a key about to be free.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let left = Duration::from_secs(u64::try_from(secs.max(0)).unwrap_or(0) + 1);
            return Ok(AcquireOutcome::Held {
                expires_in: left.min(held_ttl),
            });
        }
    }

    async fn renew(
        &self,
        key: &Key,
        token: u64,
        ttl: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let inner = &self.inner;
        let start = Instant::now();
        until(start, ttl)?;
        let ek = inner.etcd_key(key);
        let kv = inner.get("renew read", &ek).await?;
        let Some(kv) = kv.filter(|kv| token_of(kv) == token) else {
            inner.forget(&ek, |h| h.token == Some(token));
            return Ok(RenewOutcome::Lost);
        };
        if decode(&kv.value).is_some_and(|v| v.revoked) {
            return Ok(RenewOutcome::Revoked);
        }
        if !inner.confirm_alive(kv.lease, ttl, start).await? {
            inner.forget(&ek, |h| h.token == Some(token));
            return Ok(RenewOutcome::Lost);
        }
        // The cleanup before a keep-alive may have deleted it (its holder's time ran
        // out before this renewal): then it is lost, whatever the read said.
        let mut known = false;
        let mut stale = false;
        inner.update_held(
            &ek,
            &decode(&kv.value).map(|v| v.nonce).unwrap_or_default(),
            |h| {
                known = true;
                stale = h.live_until <= start;
                if !stale {
                    h.live_until = start + ttl;
                }
            },
        );
        if stale {
            return Ok(RenewOutcome::Lost);
        }
        if !known {
            // Acquired through another backend instance sharing the cluster: remember
            // it so that a later failure is cleaned up here too.
            if let Some(v) = decode(&kv.value) {
                inner.remember(
                    &ek,
                    Held {
                        nonce: v.nonce,
                        token: Some(token),
                        lease: kv.lease,
                        live_until: start + ttl,
                    },
                );
            }
        }
        Ok(RenewOutcome::Renewed)
    }

    async fn release(&self, key: &Key, token: u64) -> Result<bool, BackendError> {
        let inner = &self.inner;
        let ek = inner.etcd_key(key);
        let Ok(revision) = i64::try_from(token) else {
            return Ok(false);
        };
        // A release ends the holder knowingly: the grant record goes with the key.
        let record = inner.record_key(&ek);
        let req = pb::TxnRequest {
            compare: vec![compare_create(&ek, revision)],
            success: vec![delete_op(&ek), delete_op(&record)],
            failure: vec![],
        };
        let resp = inner.txn("release", req).await?;
        if !resp.succeeded {
            // The key vanished (its etcd lease ended early, say) and nobody took it
            // since: its grant record, written by the same transaction as the key (so
            // with the token as its mod revision), goes too, so that nobody waits for
            // this holder, who has let go.
            let req = pb::TxnRequest {
                compare: vec![compare_create(&ek, 0), compare_mod(&record, revision)],
                success: vec![delete_op(&record)],
                failure: vec![],
            };
            inner.txn("release record", req).await?;
        }
        inner.forget(&ek, |h| h.token == Some(token));
        Ok(resp.succeeded)
    }

    async fn revoke(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        let inner = &self.inner;
        let ek = inner.etcd_key(key);
        for _ in 0..5 {
            let Some(kv) = inner.get("revoke read", &ek).await? else {
                return Ok(None);
            };
            let Some(v) = decode(&kv.value) else {
                return Ok(None);
            };
            if v.revoked {
                return Ok(Some(token_of(&kv)));
            }
            let value = encode(true, v.ttl, v.acquired_at, &v.nonce, &v.metadata);
            let req = pb::TxnRequest {
                compare: vec![compare_mod(&ek, kv.mod_revision)],
                success: vec![op(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: ek.clone(),
                    value,
                    lease: 0,
                    ignore_lease: true,
                }))],
                failure: vec![],
            };
            if inner.txn("revoke", req).await?.succeeded {
                return Ok(Some(token_of(&kv)));
            }
            // Changed since we read it: look again.
        }
        Err(BackendError::new(
            BackendErrorKind::Failed,
            "etcd revoke: the key kept changing",
        ))
    }

    async fn info(&self, key: &Key) -> Result<Option<LeaseInfo>, BackendError> {
        let inner = &self.inner;
        let Some(kv) = inner.get("lease info", &inner.etcd_key(key)).await? else {
            return Ok(None);
        };
        inner.info_of(key.clone(), &kv).await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>, BackendError> {
        let inner = &self.inner;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut start = inner.prefix.clone();
        start.extend_from_slice(prefix.as_bytes());
        let end = if prefix.is_empty() {
            let mut p = inner.prefix.clone();
            p.push(b'/');
            start = p.clone();
            prefix_end(&p)
        } else {
            prefix_end(&start)
        };
        let req = pb::RangeRequest {
            key: start,
            range_end: end,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let kvs = inner.range("list", req).await?.kvs;
        let mut leases = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let Some(key) = inner.key_of(&kv.key) else {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "list: skipped an etcd key that is not a lease key");
                continue;
            };
            if let Some(info) = inner.info_of(key, &kv).await? {
                leases.push(info);
            }
        }
        Ok(leases)
    }

    async fn free_among(&self, keys: &[Key]) -> Result<Vec<bool>, BackendError> {
        let inner = &self.inner;
        let mut free = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|k| {
                    op(pb::request_op::Request::RequestRange(pb::RangeRequest {
                        key: inner.etcd_key(k),
                        count_only: true,
                        ..Default::default()
                    }))
                })
                .collect();
            let req = pb::TxnRequest {
                compare: vec![],
                success: ops,
                failure: vec![],
            };
            let resp = inner.txn("free keys", req).await?;
            for r in &resp.responses {
                let held = match &r.response {
                    Some(pb::response_op::Response::ResponseRange(range)) => range.count > 0,
                    _ => true,
                };
                free.push(!held);
            }
        }
        if free.len() != keys.len() {
            return Err(BackendError::new(
                BackendErrorKind::Failed,
                "etcd free keys: answers do not match the keys",
            ));
        }
        Ok(free)
    }

    /// A linearizable read of the prefix (a quorum must answer), within the request
    /// timeout.
    async fn check(&self) -> Result<(), BackendError> {
        self.inner.check_read().await
    }

    fn subscribe_freed(&self) -> FreedKeys {
        let rx = self.frees.subscribe();
        if tokio::runtime::Handle::try_current().is_ok() {
            self.watcher
                .get_or_init(|| tokio::spawn(watch(self.inner.clone(), self.frees.clone())));
        }
        FreedKeys::new(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(etcd_ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(etcd_ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(etcd_ttl_secs(Duration::from_millis(2001)), 3);
        assert_eq!(etcd_ttl_secs(Duration::MAX), i64::MAX);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a"), b"/b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn grant_records_round_trip_and_sort_before_the_lease_keys() {
        let ttl = Duration::from_millis(2500);
        assert_eq!(
            decode_record(&encode_record(1, ttl, 7, 42)),
            Some((1, ttl, 7, 42))
        );
        assert_eq!(
            decode_record(&encode_record(2, ttl, 7, -3)),
            Some((2, ttl, 7, -3))
        );
        assert_eq!(decode_record(b"not a record"), None);
        // `<prefix>\0g…` is outside `<prefix>/…`, which list and the watch cover.
        let lease_keys = b"/leases/".to_vec();
        let record = b"/leases\0g/system/x".to_vec();
        assert!(record < lease_keys || record >= prefix_end(&lease_keys));
    }

    #[test]
    fn groups_cover_only_what_was_confirmed() {
        let now = Instant::now();
        let g = Group {
            id: 1,
            etcd_ttl: Duration::from_secs(2),
            confirmed: now,
            term: 1,
        };
        assert!(g.covers(now, Duration::from_secs(2)));
        assert!(!g.covers(now + Duration::from_millis(1), Duration::from_secs(2)));
        assert!(g.covers(
            now + Duration::from_millis(500),
            Duration::from_millis(1500)
        ));
    }

    #[tokio::test]
    async fn an_absurd_ttl_is_an_error_before_any_io() {
        // Nothing listens on port 1: an error other than the TTL's would be Unavailable.
        let b = EtcdBackend::new(EtcdOptions::new(["http://127.0.0.1:1"])).unwrap();
        let k = Key::system(["x"]);
        let e = b.acquire(&k, Duration::MAX, b"").await.unwrap_err();
        assert_eq!(e.kind(), BackendErrorKind::Failed, "{e}");
        let e = b.renew(&k, 1, Duration::MAX).await.unwrap_err();
        assert_eq!(e.kind(), BackendErrorKind::Failed, "{e}");
    }

    #[tokio::test]
    async fn bad_options_are_config_errors() {
        for opts in [
            EtcdOptions::new(Vec::<String>::new()),
            EtcdOptions::new(["127.0.0.1:2379"]),
            EtcdOptions::new(["https://127.0.0.1:2379"]),
            EtcdOptions::new(["http://127.0.0.1:2379"]).prefix(""),
            EtcdOptions::new(["http://127.0.0.1:2379"]).prefix("/x/"),
            EtcdOptions::new(["http://127.0.0.1:2379"]).request_timeout(Duration::ZERO),
        ] {
            assert!(matches!(
                EtcdBackend::new(opts),
                Err(LeaseError::InvalidConfig(_))
            ));
        }
    }
}
