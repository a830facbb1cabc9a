//! The whole-stack checker's history and its checker.
//!
//! Every holder records *acts*: instants at which it acted for a key, having just
//! checked that it still held it. Times are CLOCK_BOOTTIME in nanoseconds, one clock
//! for every process on the machine. An *interval* is the first to last act of one
//! grant. Faults and operations go into an event log on the same clock, so that a
//! violation can be shown with the schedule around it.
//!
//! The checker knows only the guarantees:
//! - exclusion: per key, no two grants' intervals overlap;
//! - fencing: per key, an interval's token is greater than the token of every interval
//!   that started before it (grants whose client cannot see a token, FTL's, are
//!   checked for exclusion only);
//! - liveness: how long a key stayed free while someone waited for it (reported; fails
//!   only beyond a generous bound).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Now, on the shared clock (CLOCK_BOOTTIME, nanoseconds).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One grant's identity: who got it, as the checker prints it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    /// The key.
    pub key: String,
    /// The fencing token, if the client sees one.
    pub token: Option<u64>,
    /// Which holder (unique per grant when there is no token).
    pub holder: String,
}

/// What one grant did: first and last act.
#[derive(Clone, Debug)]
pub struct Interval {
    /// The grant.
    pub grant: Grant,
    /// First act.
    pub start: u64,
    /// Last act.
    pub end: u64,
    /// Acts recorded.
    pub acts: u64,
}

impl Interval {
    /// No interval: what a liveness violation, which is about no one grant, shows.
    fn none() -> Interval {
        Interval {
            grant: Grant {
                key: String::new(),
                token: None,
                holder: String::new(),
            },
            start: 0,
            end: 0,
            acts: 0,
        }
    }
}

#[derive(Default)]
struct Inner {
    intervals: HashMap<Grant, Interval>,
    events: Vec<(u64, String)>,
    /// (key, when someone started waiting for it).
    wants: Vec<(String, u64)>,
    counts: BTreeMap<String, u64>,
    /// (server, when it was signalled to stop) for every restart of a server.
    restarts: Vec<(String, u64)>,
    /// How each holder's grant ended, by holder.
    ends: HashMap<String, End>,
}

/// How a grant ended, as its holder saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The holder let go of it, and a server confirmed the release (for `leases run`:
    /// its command exited 0 and it released the lease).
    Released,
    /// It was lost: the holder was told to stop.
    Lost,
    /// Any other way: revoked, the holder killed, a release not confirmed.
    Other,
}

/// The shared history of one run.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<Inner>>);

impl History {
    /// Records an act of `grant` at `t`.
    pub fn act(&self, grant: &Grant, t: u64) {
        let mut inner = self.0.lock().unwrap();
        let e = inner
            .intervals
            .entry(grant.clone())
            .or_insert_with(|| Interval {
                grant: grant.clone(),
                start: t,
                end: t,
                acts: 0,
            });
        e.start = e.start.min(t);
        e.end = e.end.max(t);
        e.acts += 1;
    }

    /// Logs an operation or fault.
    pub fn event(&self, what: impl Into<String>) {
        self.event_at(now_ns(), what);
    }

    /// Logs something that happened at `t`.
    pub fn event_at(&self, t: u64, what: impl Into<String>) {
        let what = what.into().replace('\n', " | ");
        self.0.lock().unwrap().events.push((t, what));
    }

    /// Someone starts waiting for `key`.
    pub fn want(&self, key: &str) {
        let t = now_ns();
        self.0.lock().unwrap().wants.push((key.to_string(), t));
    }

    /// Server `name` is being stopped (to be started again): now.
    pub fn restart(&self, name: &str) {
        let t = now_ns();
        self.0.lock().unwrap().restarts.push((name.to_string(), t));
    }

    /// Every restart: the server, and when it was signalled to stop.
    pub fn restarts(&self) -> Vec<(String, u64)> {
        self.0.lock().unwrap().restarts.clone()
    }

    /// The grant of `holder` (as in its [`Grant`]) ended thus.
    pub fn end(&self, holder: &str, end: End) {
        self.0.lock().unwrap().ends.insert(holder.to_string(), end);
    }

    /// How each holder's grant ended, by holder.
    pub fn ends(&self) -> HashMap<String, End> {
        self.0.lock().unwrap().ends.clone()
    }

    /// Every grant's interval of acts.
    pub fn intervals(&self) -> Vec<Interval> {
        self.0.lock().unwrap().intervals.values().cloned().collect()
    }

    /// Adds one to the counter `name` (grants per client kind, faults per kind...).
    pub fn count(&self, name: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap()
            .counts
            .entry(name.into())
            .or_default() += 1;
    }

    /// The counters.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().counts.clone()
    }

    /// Reads the acts `leases run` commands appended to `path`: lines of
    /// `<ns> <key> <token> <pid> [<run>]`; a torn last line is skipped.
    pub fn load_act_file(&self, path: &std::path::Path) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut grants = std::collections::HashSet::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 4 && f.len() != 5 {
                continue;
            }
            let (Ok(t), Ok(token)) = (f[0].parse::<u64>(), f[2].parse::<u64>()) else {
                continue;
            };
            let grant = Grant {
                key: f[1].to_string(),
                token: Some(token),
                holder: format!("leases-run:{}", f.get(4).unwrap_or(&"")),
            };
            self.act(&grant, t);
            grants.insert((grant.key, token));
        }
        for _ in 0..grants.len() {
            self.count("grants: leases run");
        }
    }

    /// Checks the history; `origin` is the run's start (for readable times).
    pub fn check(&self, origin: u64, ttl_ns: u64, liveness_bound_ns: u64) -> Report {
        let inner = self.0.lock().unwrap();
        let mut by_key: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
        for i in inner.intervals.values() {
            by_key.entry(&i.grant.key).or_default().push(i);
        }
        let mut violations = Vec::new();
        let mut acts = 0;
        let mut longest_free = (0u64, String::new());
        for (key, list) in by_key.iter_mut() {
            list.sort_by_key(|i| (i.start, i.end));
            acts += list.iter().map(|i| i.acts).sum::<u64>();
            for (n, b) in list.iter().enumerate() {
                for a in &list[..n] {
                    if a.end >= b.start {
                        violations.push(Violation {
                            what: "exclusion: two holders acted at once".into(),
                            a: (*a).clone(),
                            b: (*b).clone(),
                        });
                    }
                    if let (Some(ta), Some(tb)) = (a.grant.token, b.grant.token) {
                        if a.start < b.start && ta >= tb {
                            violations.push(Violation {
                                what: "fencing: a later grant has a token not above an \
                                       earlier one's"
                                    .into(),
                                a: (*a).clone(),
                                b: (*b).clone(),
                            });
                        }
                    }
                }
            }
            // Liveness: from a want while nobody acted to the next first act.
            for (k, w) in inner.wants.iter().filter(|(k, _)| k == key) {
                let acting = list.iter().any(|i| i.start <= *w && *w <= i.end);
                if acting {
                    continue;
                }
                let Some(next) = list.iter().map(|i| i.start).filter(|s| s > w).min() else {
                    continue;
                };
                if next - w > longest_free.0 {
                    longest_free = (next - w, format!("{k} from t={}", secs(*w, origin)));
                }
            }
        }
        let _ = ttl_ns;
        if longest_free.0 > liveness_bound_ns {
            violations.push(Violation {
                what: format!(
                    "liveness: {} stayed free {:.1}s while wanted (bound {:.1}s)",
                    longest_free.1,
                    longest_free.0 as f64 / 1e9,
                    liveness_bound_ns as f64 / 1e9
                ),
                a: Interval::none(),
                b: Interval::none(),
            });
        }
        Report {
            violations,
            intervals: inner.intervals.len() as u64,
            acts,
            longest_free_ns: longest_free.0,
            longest_free_at: longest_free.1,
        }
    }

    /// Writes the whole history (events and intervals, by time) to `path`.
    pub fn dump(&self, path: &std::path::Path, origin: u64) {
        let inner = self.0.lock().unwrap();
        let mut lines: Vec<(u64, String)> = inner.events.clone();
        for i in inner.intervals.values() {
            lines.push((
                i.start,
                format!(
                    "interval {} token {} holder {} acted .. {} ({} acts)",
                    i.grant.key,
                    token(i.grant.token),
                    i.grant.holder,
                    secs(i.end, origin),
                    i.acts
                ),
            ));
        }
        lines.sort_by_key(|(t, _)| *t);
        let _ = std::fs::write(path, timeline(&lines, "", origin));
    }

    /// The events between `from` and `to`, one per line, times from `origin`.
    pub fn events_between(&self, from: u64, to: u64, origin: u64) -> String {
        let inner = self.0.lock().unwrap();
        let events = inner.events.iter().filter(|(t, _)| *t >= from && *t <= to);
        timeline(events, "    ", origin)
    }
}

/// `events`, one per line after `indent`, times from `origin`.
fn timeline<'a>(
    events: impl IntoIterator<Item = &'a (u64, String)>,
    indent: &str,
    origin: u64,
) -> String {
    let mut out = String::new();
    for (t, what) in events {
        let _ = writeln!(out, "{indent}t={} {what}", secs(*t, origin));
    }
    out
}

/// A fencing token as the checker prints it, `-` for none.
fn token(token: Option<u64>) -> String {
    token.map_or("-".to_string(), |t| t.to_string())
}

/// `t` as seconds since `origin`, to the millisecond.
pub fn secs(t: u64, origin: u64) -> String {
    format!("{:.3}s", (t as f64 - origin as f64) / 1e9)
}

/// Two intervals that break a guarantee.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which guarantee, in words.
    pub what: String,
    /// The earlier interval.
    pub a: Interval,
    /// The later one.
    pub b: Interval,
}

impl Violation {
    /// When the violation happened (the later interval's start; 0 for liveness).
    pub fn at(&self) -> u64 {
        self.b.start
    }

    /// The violation on one line.
    pub fn line(&self, origin: u64) -> String {
        if self.a.acts == 0 {
            return self.what.clone();
        }
        let who = |i: &Interval| format!("{}(token {})", i.grant.holder, token(i.grant.token));
        format!(
            "t={} {} {}: {} acted {}..{}, {} from {}",
            secs(self.b.start, origin),
            self.what.split(':').next().unwrap_or(""),
            self.a.grant.key,
            who(&self.a),
            secs(self.a.start, origin),
            secs(self.a.end, origin),
            who(&self.b),
            secs(self.b.start, origin)
        )
    }

    /// The violation for a reader, times from `origin`.
    pub fn describe(&self, origin: u64) -> String {
        let show = |i: &Interval| {
            format!(
                "{} token {} holder {}: acted {} .. {} ({} acts)",
                i.grant.key,
                token(i.grant.token),
                i.grant.holder,
                secs(i.start, origin),
                secs(i.end, origin),
                i.acts
            )
        };
        if self.a.acts == 0 {
            return self.what.clone();
        }
        format!(
            "{}\n  earlier: {}\n  later:   {}",
            self.what,
            show(&self.a),
            show(&self.b)
        )
    }
}

/// What the checker found.
pub struct Report {
    /// Every violation.
    pub violations: Vec<Violation>,
    /// Grants that acted at least once.
    pub intervals: u64,
    /// Acts recorded.
    pub acts: u64,
    /// The longest a key stayed free while wanted.
    pub longest_free_ns: u64,
    /// Where that was.
    pub longest_free_at: String,
}
