//! A small bounded log of what this server saw happen to the leases it holds for its
//! clients: each grant (and re-attach) with its token, and each end with its reason
//! (released, revoked, lost, shutdown, handed over). The console's timeline reads it
//! through `GET /v1/events?after=N`.
//!
//! It is a view of *this* server only: a lease granted through another server of the
//! same store never passes here (the console finds those in successive lists: a key
//! whose token changed changed hands). It lives in memory, forgets the oldest events
//! beyond [`CAPACITY`], and starts empty on every start; nothing depends on it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{CancelReason, Key, LeaseContext};

/// How many events the log keeps; older ones are forgotten.
pub(crate) const CAPACITY: usize = 2048;

/// One thing that happened to a lease held through this server.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// Its place in the log: 1 for the first event since the server started, then one
    /// more for each.
    pub(crate) seq: u64,
    /// When the server saw it (wall clock, milliseconds since the Unix epoch).
    pub(crate) at_unix_ms: u64,
    /// `granted`, `reattached`, `released`, `revoked`, `lost`, `shutdown` or
    /// `handed_over`.
    pub(crate) kind: &'static str,
    /// The key, in its canonical form.
    pub(crate) key: String,
    /// The lease's fencing token.
    pub(crate) token: u64,
    /// Through which protocol the lease was asked for: `ftl`, `native` or `http`.
    pub(crate) via: &'static str,
    /// More about an end (a loss's cause); empty otherwise.
    pub(crate) detail: String,
}

#[derive(Debug, Default)]
struct Log {
    next: u64,
    events: VecDeque<Event>,
}

/// The log (cheap to clone: every clone is the same log).
#[derive(Debug, Clone, Default)]
pub(crate) struct Events(Arc<Mutex<Log>>);

impl Events {
    fn push(&self, kind: &'static str, key: String, token: u64, via: &'static str, detail: String) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut log = crate::sync::lock(&self.0);
        log.next += 1;
        let seq = log.next;
        if log.events.len() == CAPACITY {
            log.events.pop_front();
        }
        log.events.push_back(Event {
            seq,
            at_unix_ms,
            kind,
            key,
            token,
            via,
            detail,
        });
    }

    /// Records a grant (`reattached`: a lease resumed from the store) of `key` with
    /// fencing token `token`.
    pub(crate) fn granted(&self, key: &Key, token: u64, via: &'static str, reattached: bool) {
        let kind = if reattached { "reattached" } else { "granted" };
        self.push(kind, key.to_string(), token, via, String::new());
    }

    /// Records the end of the lease `key` with fencing token `token`, as `reason` says.
    pub(crate) fn ended(&self, key: &Key, token: u64, via: &'static str, reason: &CancelReason) {
        let (kind, detail) = match reason {
            CancelReason::Released => ("released", String::new()),
            CancelReason::Revoked => ("revoked", String::new()),
            CancelReason::Lost(cause) => ("lost", format!("{cause:?}")),
            CancelReason::Shutdown => ("shutdown", String::new()),
            CancelReason::HandedOver => ("handed_over", String::new()),
        };
        self.push(kind, key.to_string(), token, via, detail);
    }

    /// Records the end of the lease `key` whose context is `ctx` when it ends, from a
    /// task of its own: for a lease that nobody else watches (a stream that holds a
    /// lease records its end itself while it waits for it: see `handover::EndLog`).
    /// Nothing without a runtime to wait in.
    pub(crate) fn watch_end(&self, key: &Key, ctx: &LeaseContext, via: &'static str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (events, key, ctx) = (self.clone(), key.clone(), ctx.clone());
        runtime.spawn(async move {
            // Not every second (one such task per lease): see `cancelled_lazily`.
            let reason = ctx.cancelled_lazily().await;
            events.ended(&key, ctx.token(), via, &reason);
        });
    }

    /// The events after `after` (at most `limit`, oldest first), and the sequence
    /// number of the newest event the log has seen (0 if none).
    pub(crate) fn after(&self, after: u64, limit: usize) -> (Vec<Event>, u64) {
        let log = crate::sync::lock(&self.0);
        let events = log
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect();
        (events, log.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_numbered() {
        let events = Events::default();
        for i in 0..(CAPACITY as u64 + 10) {
            events.push("granted", "/system/a".into(), i, "http", String::new());
        }
        let (all, last) = events.after(0, usize::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(last, CAPACITY as u64 + 10);
        assert_eq!(all[0].seq, 11);
        let (tail, _) = events.after(last - 2, 10);
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [last - 1, last]
        );
        assert!(events.after(last, 10).0.is_empty());
    }
}
