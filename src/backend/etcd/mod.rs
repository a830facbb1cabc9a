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
//! - **Renewal goes by group rounds** ([`renew_many`]: the manager renews all its
//!   leases of one TTL in one call every TTL/3), with no read per key: one keys-only
//!   *scan* of every lease key under the prefix, the first page a linearizable read
//!   made after the round started (its answer names the cluster's revision `R`), the
//!   next pages read at `R` (so the scan is one snapshot); a lease's key gone or with
//!   another create revision is [`Lost`]. A value is read (at `R` too) only when its mod
//!   revision is not the one this backend last saw carry the lease's value, unchanged
//!   (acquire, adopt, an earlier round): each write has its own mod revision. A changed
//!   value marked revoked is [`Revoked`]; one with another instance's nonce (re-attached
//!   there, see "Keys nobody holds") is `Lost`. Then the keep-alive, as below. A round
//!   costs the keep-alive, its term check and one request per 10,000 lease keys under
//!   the prefix (held by anyone), plus one per 128 leases whose value changed: per held
//!   lease, next to nothing. A round of at most 128 leases reads their keys in one
//!   read-only transaction instead of scanning. See `rounds.rs`.
//! - **Renew** of a single lease ([`renew`], for callers that renew one by one; leases
//!   re-attached here go this way once, to be adopted) reads the key (linearizable):
//!   gone or another token is `Lost`, marked revoked is `Revoked`;
//!   then it makes sure the group's etcd lease was kept alive by a keep-alive *sent
//!   after this renewal started* (renewals queued behind a keep-alive in flight share the
//!   next one), see "TTLs" below. A keep-alive answering TTL 0 means the etcd lease is
//!   gone, and with it the key: `Lost`. A keep-alive counts only when a linearizable
//!   read made after its answer sees the same Raft term: etcd 3.4 lets a leader that
//!   was cut off or frozen, and has not yet noticed, answer keep-alives from a lease
//!   table that no longer counts (see `keep_alive` in `groups.rs`). A group round
//!   confirms its keep-alive the same way, after its scan.
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
//! A group round reads every key at one revision `R` after the round started and
//! keeps its etcd lease alive after that: what a renewal started at `start` confirms
//! (its key as it was at `R`, its etcd lease until `start + TTL`) is what a single
//! renewal confirms. A key changed after `R` is found by the next round (within
//! TTL/3): a revoke is told then, as before; a key deleted meanwhile cannot be granted
//! to anyone before its holder's deadline (see "Keys deleted by hand").
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
//! # Keys deleted by hand
//! Nothing in this backend deletes a held key without its grant record: a release and
//! the cleanup of keys nobody holds delete both, etcd deletes the key with its etcd
//! lease. A key found gone *while the etcd lease its grant record names still lives*
//! was deleted by something else (an operator's `etcdctl del`, another program): its
//! holder may be live, and learns at its next round. Such a key is treated as after an
//! early revoke: the acquire that finds it starts the wait of its holder's TTL (one
//! look at that etcd lease's time left, only for a key gone with its record left
//! behind). The holder's last confirmed round read the key before the delete, so its
//! deadline comes before the wait ends. Deleting a key *and* its grant record (a
//! delete of the whole prefix) frees it at once: its holder learns at its next round,
//! within TTL/3, and until then two holders are possible. Don't.
//!
//! An etcd lease *revoked* by hand (`etcdctl lease revoke`) takes its keys with it,
//! and a key gone with its etcd lease looks like one whose holder died. So each group
//! has a second etcd lease of its TTL, its *marker*, which carries no key and is kept
//! alive just before the group's etcd lease in every keep-alive (a marker gone ends
//! the group, as its etcd lease gone does). Grant records name it. etcd expires the
//! marker no later than the etcd lease, so an acquire that finds the key and its etcd
//! lease gone but the marker alive knows the etcd lease was revoked, not expired, and
//! waits out the holder's TTL as above. A dead holder's key is not delayed: its marker
//! expired first. Revoking the marker too (or every etcd lease) frees the keys at once,
//! as deleting the grant records does; and a key renewed outside its current group
//! (its group was replaced after a failed keep-alive) keeps only its etcd lease alive,
//! so its marker may expire first. Records written before markers (25 bytes) are read
//! as before; an older version reads a record with a marker as one it did not write,
//! and waits a TTL before it grants the key.
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
//! A lease re-attached through another backend instance
//! ([`AcquireOptions::resume`](crate::AcquireOptions::resume): a lease server's client
//! moving to another server) is adopted by the first renewal there: its value gets a
//! nonce of the new instance (compare-and-set on the revision just read; the token, the
//! key's create revision, stays), so the old instance's cleanup no longer matches it,
//! and the old instance's own renewals find it moved and count it lost there.
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
//! 5. *Reading the key* (renew, info, revoke, list, free keys), *a round's scan and
//!    values* and *the etcd lease's time left*: nothing.
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
//!
//! # Layout
//! - `options.rs`: [`EtcdOptions`], checked into lazy connections;
//! - `wire.rs`: etcd's wire messages (`pb`) and the requests built from them;
//! - `encoding.rs`: a lease key's value and its grant record;
//! - `state.rs`: what a backend's parts share (connections, groups, the keys it
//!   acquired, the highest Raft term seen);
//! - `calls.rs`: calls with timeouts, retries on the next member, and authentication;
//! - `groups.rs`: groups, their keep-alives (with the Raft term check), the cleanup of
//!   keys nobody holds, and single renewals (with the adopt of re-attached leases);
//! - `rounds.rs`: group rounds ([`renew_many`]): the scan, the values of changed keys,
//!   the keep-alive;
//! - `acquire.rs`: the acquire transaction and the wait of grant records;
//! - `watch.rs`: the watch that tells waiters about freed keys;
//! - `backend.rs`: [`EtcdBackend`] and the rest of its `Backend` operations.
//!
//! [`renew_many`]: crate::backend::Backend::renew_many
//! [`renew`]: crate::backend::Backend::renew
//! [`Lost`]: crate::backend::RenewOutcome::Lost
//! [`Revoked`]: crate::backend::RenewOutcome::Revoked
//! [`Freed::Key`]: crate::backend::Freed::Key
//! [`Freed::Everything`]: crate::backend::Freed::Everything

mod acquire;
mod backend;
mod calls;
mod encoding;
mod groups;
mod options;
mod rounds;
mod state;
mod watch;
mod wire;

pub use backend::EtcdBackend;
pub use options::EtcdOptions;
pub use wire::pb;
