//! What one backend shares between its parts: the connections, its groups (one etcd
//! lease per TTL), the keys it acquired and until when their holders can be live, and
//! the highest Raft term it has seen. The logic that uses each lives beside it: calls
//! in `calls.rs`, groups and renewals in `groups.rs`, acquires in `acquire.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tonic::transport::Channel;

use super::options::EtcdOptions;
use super::wire::pb;
use crate::error::{BackendError, BackendErrorKind};
use crate::key::Key;

/// The state of one backend, shared with its watch task.
pub(super) struct Inner {
    pub(super) endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// The endpoint in use; moved on when it fails.
    current: AtomicUsize,
    pub(super) prefix: Vec<u8>,
    pub(super) request_timeout: Duration,
    pub(super) try_timeout: Duration,
    pub(super) user: Option<(String, String)>,
    pub(super) auth_token: Mutex<Option<Arc<str>>>,
    /// One group per TTL (in nanoseconds).
    pub(super) groups: Mutex<HashMap<u128, Arc<GroupSlot>>>,
    /// The keys this backend acquired, by etcd key: until when their holders can be live.
    pub(super) held: Mutex<HashMap<Vec<u8>, Vec<Held>>>,
    instance: u64,
    acquires: AtomicU64,
    /// The highest Raft term any answer carried.
    pub(super) max_term: AtomicU64,
}

/// A group: one etcd lease carrying every key acquired here with one TTL. The async
/// lock makes keep-alives of one group one at a time, so that renewals queued behind
/// one share the next.
pub(super) struct GroupSlot {
    pub(super) state: tokio::sync::Mutex<Option<Group>>,
}

/// A group's etcd lease, as last confirmed.
#[derive(Clone, Copy)]
pub(super) struct Group {
    pub(super) id: i64,
    /// The group's *marker*: a second etcd lease of the same TTL that carries no key,
    /// kept alive just before `id` in every keep-alive. It outlives every holder's
    /// deadline as `id` does, but an operator who revokes `id` by hand does not end it:
    /// an acquire that finds a key gone with `id` looks at it (see "Keys deleted by
    /// hand" in the module docs).
    pub(super) marker: i64,
    pub(super) etcd_ttl: Duration,
    /// When the last confirmed grant or keep-alive of the etcd lease was *sent*.
    pub(super) confirmed: Instant,
    /// The highest Raft term seen before the grant was sent: the etcd lease was granted
    /// in this term or a later one.
    pub(super) term: u64,
}

/// A key this backend acquired (or renewed for another instance), for the cleanup of
/// keys nobody holds.
#[derive(Clone)]
pub(super) struct Held {
    pub(super) nonce: [u8; 16],
    pub(super) token: Option<u64>,
    pub(super) lease: i64,
    /// The holder's context has surely ended after this instant.
    pub(super) live_until: Instant,
    /// The mod revision of the key's value as last seen ours (this token, this nonce,
    /// not revoked); 0 when not known. A group round that finds the key with this mod
    /// revision knows its value unchanged without reading it (see `rounds.rs`).
    pub(super) checked: i64,
}

/// `start + ttl`, or an error for a TTL beyond the clock.
pub(super) fn until(start: Instant, ttl: Duration) -> Result<Instant, BackendError> {
    start.checked_add(ttl).ok_or_else(|| {
        BackendError::new(
            BackendErrorKind::Failed,
            format!("TTL {ttl:?} overflows the clock"),
        )
    })
}

impl Inner {
    /// The shared state of a backend with these (checked) options and their channels.
    pub(super) fn new(options: EtcdOptions, channels: Vec<Channel>) -> Inner {
        let instance = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 40);
        let try_timeout = (options.request_timeout / 4).max(Duration::from_millis(100));
        Inner {
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
        }
    }

    /// The endpoint in use: its index and channel.
    pub(super) fn endpoint(&self) -> (usize, Channel) {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        (i, self.channels[i].clone())
    }

    /// Moves on from endpoint `i` to the next (unless someone already has).
    pub(super) fn move_on_from(&self, i: usize) {
        let _ = self.current.compare_exchange(
            i,
            (i + 1) % self.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The etcd key of a lease key: `<prefix><key>`.
    pub(super) fn etcd_key(&self, key: &Key) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key.to_string().as_bytes());
        k
    }

    /// The grant record of a lease key: `<prefix>\0g<key>`, outside the range of lease
    /// keys (`<prefix>/…`) that `list` and the watch cover.
    pub(super) fn record_key(&self, etcd_key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(b"\0g");
        k.extend_from_slice(etcd_key.get(self.prefix.len()..).unwrap_or_default());
        k
    }

    /// Notes the Raft term of an answer; the highest term seen so far.
    pub(super) fn saw(&self, header: Option<&pb::ResponseHeader>) -> u64 {
        let term = header.map(|h| h.raft_term).unwrap_or(0);
        self.max_term.fetch_max(term, Ordering::Relaxed).max(term)
    }

    /// The lease key of an etcd key under the prefix, if it is one.
    pub(super) fn key_of(&self, etcd_key: &[u8]) -> Option<Key> {
        let rest = etcd_key.strip_prefix(self.prefix.as_slice())?;
        Key::parse(std::str::from_utf8(rest).ok()?).ok()
    }

    /// A nonce naming one acquire: this backend's instance and a counter.
    pub(super) fn nonce(&self) -> [u8; 16] {
        let n = self.acquires.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0; 16];
        nonce[..8].copy_from_slice(&self.instance.to_be_bytes());
        nonce[8..].copy_from_slice(&n.to_be_bytes());
        nonce
    }

    /// Remembers an acquire of `key`.
    pub(super) fn remember(&self, key: &[u8], held: Held) {
        crate::sync::lock(&self.held)
            .entry(key.to_vec())
            .or_default()
            .push(held);
    }

    /// Updates the acquire of `key` named by `nonce`, if it is remembered.
    pub(super) fn update_held(&self, key: &[u8], nonce: &[u8; 16], f: impl FnOnce(&mut Held)) {
        if let Some(list) = crate::sync::lock(&self.held).get_mut(key) {
            if let Some(h) = list.iter_mut().find(|h| &h.nonce == nonce) {
                f(h);
            }
        }
    }

    /// Forgets the acquires of `key` matching `pred`.
    pub(super) fn forget(&self, key: &[u8], pred: impl Fn(&Held) -> bool) {
        let mut held = crate::sync::lock(&self.held);
        if let Some(list) = held.get_mut(key) {
            list.retain(|h| !pred(h));
            if list.is_empty() {
                held.remove(key);
            }
        }
    }

    /// Forgets every key on an etcd lease that is gone (the keys went with it).
    pub(super) fn forget_lease(&self, id: i64) {
        crate::sync::lock(&self.held).retain(|_, list| {
            list.retain(|h| h.lease != id);
            !list.is_empty()
        });
    }
}
