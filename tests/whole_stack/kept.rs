//! Leases kept across restarts: the proof that re-attachment works, not only that it
//! does no harm. The checker proves that no two holders acted at once whatever
//! happened; a client that lost every lease whose server went away would pass it too.
//! So this counts the grants that lived through a restart of the server that held them.
//!
//! Which server held a lease when comes from the HTTP/2 proxies: every `Hold` stream
//! (the leaders' `ClientLeaser`s hold theirs on `Hold` streams; a `HoldMany` stream
//! carries many leases, and its label names only the first) is labelled with its key, its holder (the first word of the metadata) and, for a
//! re-attach, `resume <token>` (see `clients::stream_label`), with when it began and
//! ended. An HTTP lease has no stream (and HTTP/1.1 bypasses those proxies): its holder
//! says through which server it held it from when to when, labelled alike (`HTTP
//! <key> by ...`, see http_holders.rs). A grant was *held through server S at a restart* of S at T when one of its
//! streams on a chain of S was open at T and it acted before and after T (until its
//! loss, if it lost it). It was *kept across* that restart when, after T, it
//! re-attached (a `resume` stream with its token), acted after that, and ended by its
//! holder's own release, confirmed by a server (see `history::End`); *lost across* it
//! when its holder was told it was lost and it did not act a TTL past the restart
//! (whatever the cause: the database may have been down too, or no server took it
//! back); *ended otherwise* when it was revoked, its release was not confirmed, its
//! holder was killed, or it outlived the restart and was lost later.

use std::collections::{BTreeMap, HashMap};

use crate::clients::TTL;
use crate::h2proxy::Seen;
use crate::history::{End, History, Interval};

/// One lease stream, as the proxies saw it, on a chain of `server`.
pub struct Stream {
    /// The server behind the chain.
    pub server: String,
    /// What the proxy saw.
    pub seen: Seen,
}

/// The counts.
#[derive(Default)]
pub struct Kept {
    /// Grants held through a server when it was restarted.
    pub held: u64,
    /// ... kept across it (re-attached, acted on, released by their holder).
    pub kept: u64,
    /// ... by kind of holder (`client`, `leader`, `leases-run`, `taker`, `http`).
    pub kept_by: BTreeMap<String, u64>,
    /// ... lost across it (lost within a TTL of the restart).
    pub lost: u64,
    /// ... neither: revoked, a release not confirmed, its holder killed, or lost later.
    pub other: u64,
    /// Grants re-attached at least once (any cause), acted on after and released by
    /// their holder.
    pub reattached: u64,
    /// Re-attaches a server refused at once (within 50 ms) while another holder's
    /// acquire of the key was waiting on that server: the known defect of
    /// `tests/service/reattach.rs`'s ignored test (a waiter blocks a resume).
    pub blocked: u64,
    /// Restarts of servers.
    pub restarts: u64,
    /// A few of the kept grants, and every other one held at a restart, for the reader.
    pub lines: Vec<String>,
}

/// One `Hold` stream of a holder: through which server, when, and whether it was a
/// re-attach (the token it resumed).
struct Way<'a> {
    server: &'a str,
    opened: u64,
    closed: u64,
    resume: Option<u64>,
}

/// A `Hold` stream's label, or an HTTP holder's way (`HTTP <key> by ...`, see
/// http_holders.rs), read back: (key, holder, resumed token).
fn parse(label: &str) -> Option<(&str, &str, Option<u64>)> {
    let rest = (label.strip_prefix("Hold ")).or_else(|| label.strip_prefix("HTTP "))?;
    let (key, rest) = rest.split_once(" by ")?;
    let holder = rest.split(' ').next()?;
    let resume = rest
        .rsplit_once(" resume ")
        .and_then(|(_, t)| t.parse().ok());
    Some((key, holder, resume))
}

/// Counts the grants kept and lost across restarts, times from `origin`.
pub fn count(history: &History, streams: &[Stream], origin: u64) -> Kept {
    let restarts = history.restarts();
    let ends = history.ends();
    // (key, holder) -> that holder's streams.
    let mut by_holder: HashMap<(&str, &str), Vec<Way>> = HashMap::new();
    for s in streams {
        if let Some((key, holder, resume)) = parse(&s.seen.label) {
            (by_holder.entry((key, holder)).or_default()).push(Way {
                server: &s.server,
                opened: s.seen.opened,
                closed: s.seen.closed.unwrap_or(u64::MAX),
                resume,
            });
        }
    }
    let mut out = Kept {
        restarts: restarts.len() as u64,
        blocked: blocked(&by_holder),
        ..Kept::default()
    };
    let mut intervals = history.intervals();
    intervals.sort_by_key(|i| i.start);
    for i in &intervals {
        let Some(token) = i.grant.token else { continue };
        // A `leases run` grant's holder is `leases-run:<who>`; its metadata says <who>.
        let holder = i.grant.holder.trim_start_matches("leases-run:");
        let Some(mine) = by_holder.get(&(i.grant.key.as_str(), holder)) else {
            continue;
        };
        let end = ends.get(&i.grant.holder).copied();
        // The first re-attach of this grant after `t` that it acted after.
        let reattached_after = |t: u64| {
            (mine.iter())
                .filter(|w| w.resume == Some(token) && w.opened > t && w.opened < i.end)
                .map(|w| w.opened)
                .min()
        };
        let released = end == Some(End::Released);
        if released && reattached_after(0).is_some() {
            out.reattached += 1;
        }
        // The restarts of the server that held it, while it acted.
        let hits: Vec<&(String, u64)> = (restarts.iter())
            .filter(|(server, t)| {
                i.start <= *t
                    && *t <= i.end
                    && (mine.iter()).any(|w| w.server == server && w.opened <= *t && *t <= w.closed)
            })
            .collect();
        let (Some((server, first)), Some((_, last))) = (hits.first(), hits.last()) else {
            continue;
        };
        out.held += 1;
        let what = describe(i, server, *first, hits.len(), origin);
        match reattached_after(*first) {
            Some(r) if released => {
                out.kept += 1;
                let kind = holder.split(|c: char| c.is_ascii_digit()).next();
                let kind = match i.grant.holder.starts_with("leases-run:") {
                    true => "leases-run",
                    false => kind.unwrap_or_default(),
                };
                *out.kept_by.entry(kind.to_string()).or_default() += 1;
                if out.kept <= 5 {
                    let r = crate::history::secs(r, origin);
                    out.lines
                        .push(format!("kept: {what}; re-attached at t={r}"));
                }
            }
            // Its last act within a TTL of the (last) restart: the restart's doing, or
            // at least the lease did not outlive it. Later, it had outlived it.
            _ if end == Some(End::Lost) && i.end <= last + TTL.as_nanos() as u64 => {
                out.lost += 1;
                out.lines.push(format!("lost across it: {what}"));
            }
            _ => {
                out.other += 1;
                out.lines.push(format!("ended otherwise ({end:?}): {what}"));
            }
        }
    }
    out
}

/// How many re-attaches were refused at once on a server where another holder waited
/// for the key (see [`Kept::blocked`]).
fn blocked(by_holder: &HashMap<(&str, &str), Vec<Way>>) -> u64 {
    let mut n = 0;
    for ((key, holder), ways) in by_holder {
        for w in ways.iter().filter(|w| w.resume.is_some()) {
            let refused = w.closed.saturating_sub(w.opened) < 50_000_000;
            let waited = (by_holder.iter())
                .filter(|((k, h), _)| k == key && h != holder)
                .flat_map(|(_, others)| others)
                .any(|o| {
                    o.resume.is_none()
                        && o.server == w.server
                        && o.opened <= w.opened
                        && w.opened <= o.closed
                });
            n += (refused && waited) as u64;
        }
    }
    n
}

/// Puts every lease stream the proxies saw into the history's event log (for the
/// dump), at the time it began.
pub fn log_streams(history: &History, streams: &[Stream], origin: u64) {
    for s in streams {
        let closed = s.seen.closed.map_or("the end".into(), |t| {
            format!("t={}", crate::history::secs(t, origin))
        });
        let what = format!("stream on {}: {} (until {closed})", s.server, s.seen.label);
        history.event_at(s.seen.opened, what);
    }
}

fn describe(i: &Interval, server: &str, t: u64, restarts: usize, origin: u64) -> String {
    use crate::history::secs;
    format!(
        "{} token {} holder {} acted {}..{}, through {server} when it restarted at t={}{}",
        i.grant.key,
        i.grant.token.unwrap_or_default(),
        i.grant.holder,
        secs(i.start, origin),
        secs(i.end, origin),
        secs(t, origin),
        match restarts {
            1 => String::new(),
            n => format!(" (and {} more restarts)", n - 1),
        }
    )
}
