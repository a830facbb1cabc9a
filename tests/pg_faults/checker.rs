//! The checker: judges the history of a run (what the processes logged, the grants the
//! database recorded, the sampler's looks) against the guarantees, and knows nothing of
//! how the faults were made.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use crate::sampler::Sample;
use crate::scenario::{key, STATEMENT_TIMEOUT, TTL};

#[derive(Debug, Clone)]
pub struct Event {
    pub at: std::time::SystemTime,
    pub proc: String,
    pub key: String,
    pub token: u64,
    pub kind: String,
    pub accepted: Option<bool>,
}

pub struct Checks {
    pub passed: usize,
    pub failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if ok {
            self.passed += 1;
        } else {
            let what = what.into();
            eprintln!("FAILED: {what}");
            self.failed.push(what);
        }
    }
}

/// What a run left to judge.
pub struct Run {
    /// What the processes logged, in order.
    pub events: Vec<Event>,
    /// `(key, token)` of every grant, in the order the database made them.
    pub db_grants: Vec<(String, u64)>,
    pub samples: Vec<Sample>,
    /// Each process's name, whether it was killed, and how it exited.
    pub exits: Vec<(String, bool, Option<ExitStatus>)>,
    /// The processes that were frozen.
    pub frozen_procs: Vec<String>,
    /// The token of the holder of job-0 that was killed, and when.
    pub killed_token: u64,
    pub killed_at: SystemTime,
    /// The holder of job-1 that was frozen, its token, and when it was resumed.
    pub frozen: String,
    pub frozen_token: u64,
    pub resumed_at: SystemTime,
    /// The holder of job-0 that was cut off from the database, and its token.
    pub cut: String,
    pub cut_token: u64,
    /// When the connections had been killed; when the server was back.
    pub after_terminate: SystemTime,
    pub restarted_at: SystemTime,
    /// When the chaos phase began and ended.
    pub chaos_from: SystemTime,
    pub chaos_to: SystemTime,
    /// The faults made, and the chaos schedules' steps.
    pub faults: Vec<String>,
    pub chaos_log: Vec<String>,
    /// How many processes ran.
    pub procs: usize,
}

/// Judges the run, and prints what it saw.
pub fn check(run: Run) -> Checks {
    let Run {
        events,
        db_grants,
        samples,
        exits,
        frozen_procs,
        killed_token,
        killed_at,
        frozen,
        frozen_token,
        resumed_at,
        cut,
        cut_token,
        after_terminate,
        restarted_at,
        chaos_from,
        chaos_to,
        faults,
        chaos_log,
        procs,
    } = run;
    let mut c = Checks {
        passed: 0,
        failed: Vec::new(),
    };
    for (name, killed, status) in &exits {
        if !killed {
            c.check(
                status.is_some_and(|s| s.success()),
                format!("{name} exited cleanly ({status:?})"),
            );
        }
    }

    // Per key: tokens grow in grant order; no overlap.
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in &events {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    let mut grants_total = 0;
    let mut refused_stale = 0;
    for (k, evs) in &by_key {
        let grants: Vec<&&Event> = evs.iter().filter(|e| e.kind == "got").collect();
        grants_total += grants.len();
        // Token order is judged on the database's record of grants (see the trigger).
        let in_db: Vec<u64> = db_grants
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, t)| *t)
            .collect();
        let backwards: Vec<&[u64]> = in_db.windows(2).filter(|w| w[0] >= w[1]).collect();
        c.check(
            backwards.is_empty(),
            format!("{k}: tokens grow in the order the database granted them {backwards:?}"),
        );
        // Every token a process was handed is one the database granted for that key.
        let unknown: Vec<u64> = grants
            .iter()
            .map(|g| g.token)
            .filter(|t| !in_db.contains(t))
            .collect();
        c.check(
            unknown.is_empty(),
            format!("{k}: every token handed out was granted by the database {unknown:?}"),
        );
        // When did each token's holder start, and what did it do after the next grant?
        let first_at: HashMap<u64, std::time::SystemTime> =
            grants.iter().map(|g| (g.token, g.at)).collect();
        let mut tokens: Vec<u64> = first_at.keys().copied().collect();
        tokens.sort_unstable();
        for pair in tokens.windows(2) {
            let (old, next) = (pair[0], pair[1]);
            let next_at = first_at[&next];
            for e in evs
                .iter()
                .filter(|e| e.token == old && e.kind == "work" && e.at > next_at)
            {
                if frozen_procs.contains(&e.proc) && e.accepted == Some(false) {
                    // The pause-between-check-and-write case: fencing caught it.
                    refused_stale += 1;
                } else {
                    c.check(
                        false,
                        format!(
                            "{k}: {} acted with token {old} after token {next} was granted: {e:?}",
                            e.proc
                        ),
                    );
                }
            }
        }
        c.check(true, format!("{k}: holders do not overlap"));
    }

    // The killed holder's key was taken over, after its lease ran out.
    let job0 = key(0).to_string();
    let takeover = events
        .iter()
        .find(|e| e.key == job0 && e.kind == "got" && e.token > killed_token && e.at > killed_at);
    c.check(takeover.is_some(), "job-0 was taken over after the SIGKILL");
    if let Some(t) = takeover {
        let after = t.at.duration_since(killed_at).unwrap_or_default();
        c.check(
            after <= TTL + Duration::from_secs(2),
            format!("job-0 taken over {after:?} after the kill (TTL {TTL:?})"),
        );
    }

    // The frozen holder was told it lost the lease and never acted as holder again.
    let job1 = key(1).to_string();
    c.check(
        events
            .iter()
            .any(|e| e.proc == frozen && e.token == frozen_token && e.kind == "lost"),
        format!("{frozen} reported Lost for token {frozen_token} after SIGCONT"),
    );
    c.check(
        !events.iter().any(|e| {
            e.proc == frozen
                && e.token == frozen_token
                && e.kind == "work"
                && e.at > resumed_at
                && e.accepted == Some(true)
        }),
        format!("{frozen} did no accepted work with token {frozen_token} after resuming"),
    );
    c.check(
        events
            .iter()
            .any(|e| e.key == job1 && e.kind == "got" && e.token > frozen_token),
        "job-1 was taken over while its holder was frozen",
    );

    if std::env::var_os("PG_FAULTS_DEBUG").is_some() {
        for e in events.iter().filter(|e| e.key == job0 && e.kind != "work") {
            eprintln!("{:?} {} {} {}", e.at, e.proc, e.token, e.kind);
        }
        eprintln!(
            "last work of the cut holder: {:?}",
            events
                .iter()
                .filter(|e| e.proc == cut && e.token == cut_token && e.kind == "work")
                .map(|e| e.at)
                .max()
        );
    }
    // The cut-off holder stopped on its own, before job-0 changed hands.
    let next = events
        .iter()
        .find(|e| e.key == job0 && e.kind == "got" && e.token > cut_token);
    let last_work = events
        .iter()
        .filter(|e| e.proc == cut && e.token == cut_token && e.kind == "work")
        .map(|e| e.at)
        .max();
    // Either its context ended with Lost, or its planned hold ended first and its
    // release failed (the database refused it): both mean it stopped acting.
    let ends: Vec<&str> = events
        .iter()
        .filter(|e| {
            e.proc == cut
                && e.token == cut_token
                && !["work", "late", "got"].contains(&e.kind.as_str())
        })
        .map(|e| e.kind.as_str())
        .collect();
    c.check(
        ends == ["lost"] || ends == ["release-failed"],
        format!("{cut} reported Lost (or a failed release) for token {cut_token} while cut off: {ends:?}"),
    );
    c.check(
        matches!((next, last_work), (Some(n), Some(w)) if w < n.at),
        format!(
            "{cut}'s last write came before job-0's next grant ({last_work:?} vs {:?})",
            next.map(|n| n.at)
        ),
    );

    // Everyone kept working across the connection kills and the restart.
    let got_after = |t: std::time::SystemTime| {
        events
            .iter()
            .filter(|e| e.kind == "got" && e.at > t)
            .map(|e| e.proc.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let after_kill = got_after(after_terminate);
    c.check(
        after_kill.len() >= 3,
        format!("processes granted leases after pg_terminate_backend: {after_kill:?}"),
    );
    let after_restart = got_after(restarted_at);
    c.check(
        after_restart.len() >= 3,
        format!("processes granted leases after the restart: {after_restart:?}"),
    );

    // No session was left idle in a transaction.
    let idle: Vec<&String> = samples.iter().flat_map(|s| &s.idle_in_tx).collect();
    c.check(
        idle.is_empty(),
        format!(
            "no session idle in transaction ({} samples): {idle:?}",
            samples.len()
        ),
    );
    c.check(
        samples.len() > 100,
        format!("the sampler saw the run ({} samples)", samples.len()),
    );

    // No key stayed taken by nobody for longer than TTL + statement timeout: every
    // (key, token) seen live must have a holder that has not ended, or have ended (or,
    // for a grant nobody received, first appeared) at most that long before.
    let bound = TTL + STATEMENT_TIMEOUT + Duration::from_millis(400);
    let mut first_live: HashMap<(String, u64), std::time::SystemTime> = HashMap::new();
    let mut last_live: HashMap<(String, u64), std::time::SystemTime> = HashMap::new();
    for s in &samples {
        for kt in &s.live {
            first_live.entry(kt.clone()).or_insert(s.at);
            last_live.insert(kt.clone(), s.at);
        }
    }
    let mut stuck = Vec::new();
    let mut longest: Option<(Duration, String)> = None;
    for (kt, last) in &last_live {
        let of_token = |kind: &str| {
            events
                .iter()
                .find(|e| e.key == kt.0 && e.token == kt.1 && e.kind == kind)
                .map(|e| e.at)
        };
        let holder = events
            .iter()
            .find(|e| e.key == kt.0 && e.token == kt.1 && e.kind == "got")
            .map(|e| e.proc.clone());
        // Frozen and killed processes cannot say they ended; they are the scripted
        // faults, checked above.
        if holder
            .as_ref()
            .is_some_and(|h| frozen_procs.contains(h) || exits.iter().any(|(n, k, _)| n == h && *k))
        {
            continue;
        }
        let ended = ["lost", "released", "release-failed", "ended", "revoked"]
            .iter()
            .filter_map(|k| of_token(k))
            .min();
        let since = match (&holder, ended) {
            (Some(_), Some(end)) => end,
            (Some(_), None) => continue, // held to the end of the run
            (None, _) => first_live[kt], // granted, but nobody received it
        };
        let taken_by_nobody = last.duration_since(since).unwrap_or_default();
        // What the key's holders did around it, to read a fault from CI's output: for
        // every stuck key, and for the longest wait of the run.
        let history = |label: &str| {
            let since_epoch = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            };
            let mut out = format!(
                "pg_faults: {label} {} token {}: ended at {:.3}, live from {:.3} to {:.3}; the key's events:",
                kt.0,
                kt.1,
                since_epoch(since),
                since_epoch(first_live[kt]),
                since_epoch(*last)
            );
            for e in events.iter().filter(|e| {
                e.key == kt.0 && e.kind != "work" && e.token + 3 >= kt.1 && e.token <= kt.1 + 3
            }) {
                out.push_str(&format!(
                    "\n  {:.3} {} token {} {}",
                    since_epoch(e.at),
                    e.proc,
                    e.token,
                    e.kind
                ));
            }
            out
        };
        if longest.as_ref().is_none_or(|(d, _)| taken_by_nobody > *d) {
            longest = Some((taken_by_nobody, history("longest:")));
        }
        if taken_by_nobody > bound {
            stuck.push(format!("{} token {}: {taken_by_nobody:?}", kt.0, kt.1));
            eprintln!("{}", history("stuck"));
        }
    }
    c.check(
        stuck.is_empty(),
        format!("no key taken by nobody for more than {bound:?}: {stuck:?}"),
    );
    let chaos_grants = events
        .iter()
        .filter(|e| e.kind == "got" && e.at > chaos_from && e.at < chaos_to)
        .count();
    c.check(
        chaos_grants > 0,
        format!("leases were granted during the chaos phase ({chaos_grants})"),
    );

    // Each lost holder's late write (with its old token): the fence refused it only if
    // a newer token had written for the key, and accepted it only if none had, give or
    // take the moment two statements cross (100 ms). A failure here is a stale write
    // the fence let through, or a refusal without cause; a pass adds no check, so that
    // the count of checks stays the same whatever the faults did.
    let (mut late_refused, mut late_accepted) = (0, 0);
    for e in events.iter().filter(|e| e.kind == "late") {
        let newer_wrote = |before: std::time::SystemTime| {
            events.iter().any(|n| {
                n.key == e.key && n.token > e.token && n.accepted == Some(true) && n.at < before
            })
        };
        match e.accepted {
            Some(false) => {
                late_refused += 1;
                if !newer_wrote(e.at) {
                    c.check(
                        false,
                        format!("late write refused, but no newer token wrote: {e:?}"),
                    );
                }
            }
            Some(true) => {
                late_accepted += 1;
                if newer_wrote(e.at - Duration::from_millis(100)) {
                    c.check(
                        false,
                        format!("stale late write accepted by the fence: {e:?}"),
                    );
                }
            }
            None => {}
        }
    }
    let work = events.iter().filter(|e| e.kind == "work").count();
    let lost = events.iter().filter(|e| e.kind == "lost").count();
    println!("pg_faults: {procs} processes, {grants_total} grants, {work} fenced writes, {lost} losses, {refused_stale} stale writes refused by the fence");
    println!("pg_faults: late writes of lost holders: {late_refused} refused by the fence, {late_accepted} accepted (no newer token had written)");
    for f in &faults {
        println!("pg_faults: fault: {f}");
    }
    println!("pg_faults: chaos: {chaos_grants} grants during the chaos phase");
    if let Some((d, which)) = &longest {
        println!("pg_faults: longest a key stayed taken by nobody: {d:?} (bound {bound:?})");
        println!("{which}");
    }
    if std::env::var_os("PG_FAULTS_VERBOSE").is_some() {
        for l in &chaos_log {
            println!("pg_faults: chaos: {l}");
        }
    }
    c
}
