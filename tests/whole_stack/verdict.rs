//! The checker's verdict on a run: the counts, each against the least a run of its
//! length must reach, and every violation with the faults and operations around it.

use std::path::PathBuf;

use crate::clients::TTL;
use crate::history::{self, History};
use crate::kept::Kept;
use crate::nemesis;

/// Checks the history of a run of `seconds` with `seed`, writes it whole to a file, and
/// prints the counts and the violations, times from `origin`; whether the run passed (no
/// violation, and enough of everything, leases kept across restarts among them).
pub fn judge(history: &History, kept: &Kept, seed: u64, seconds: u64, origin: u64) -> bool {
    let ttl_ns = TTL.as_nanos() as u64;
    let bound = 2 * ttl_ns + 20_000_000_000;
    let report = history.check(origin, ttl_ns, bound);
    let counts = history.counts();
    let dump = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("whole_stack-{seed}.log"));
    history.dump(&dump, origin);
    println!("whole_stack: the whole history is in {}", dump.display());
    println!("whole_stack: counts (seed {seed}):");
    for (name, n) in &counts {
        println!("  {name}: {n}");
    }
    println!(
        "  grants that acted: {}, acts: {}, violations: {}",
        report.intervals,
        report.acts,
        report.violations.len()
    );
    // By kind of holder, so that every kind is seen to have acted.
    let mut by_kind: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for i in history.intervals() {
        let e = by_kind.entry(kind_of(&i.grant.holder)).or_default();
        e.0 += 1;
        e.1 += i.acts;
    }
    for (kind, (grants, acts)) in &by_kind {
        println!("  {kind}: {grants} grants that acted, {acts} acts");
    }
    println!(
        "  liveness: longest a key stayed free while wanted: {:.1}s ({}; fails beyond {:.0}s)",
        report.longest_free_ns as f64 / 1e9,
        report.longest_free_at,
        bound as f64 / 1e9
    );
    println!(
        "  leases kept across restarts: {} (by kind of holder: {:?}), of {} held through a \
         server when it restarted ({} restarts); lost across one: {}; ended otherwise: {}; \
         re-attached (any cause) and kept: {}",
        kept.kept, kept.kept_by, kept.held, kept.restarts, kept.lost, kept.other, kept.reattached
    );
    println!(
        "  re-attaches refused at once where another holder waited for the key: {} (a known \
         defect, see tests/service/reattach.rs)",
        kept.blocked
    );
    for line in &kept.lines {
        println!("    {line}");
    }
    let mut ok = true;
    // A re-attachment that silently never works must not pass: a run long enough to
    // restart every server a few times keeps some lease across a restart.
    if seconds >= 60 && kept.kept == 0 {
        println!("whole_stack: no lease was kept across a restart (re-attachment never worked)");
        ok = false;
    }
    let minimums = nemesis::minimums(seconds);
    for (name, min) in &minimums {
        let n = counts.get(*name).copied().unwrap_or(0);
        if n < *min {
            println!("whole_stack: too few {name}: {n} < {min} (the run would pass vacuously)");
            ok = false;
        }
    }
    let min_acts = 100 * seconds;
    if report.acts < min_acts {
        println!("whole_stack: too few acts: {} < {min_acts}", report.acts);
        ok = false;
    }
    if !report.violations.is_empty() {
        ok = false;
        let mut violations = report.violations.clone();
        violations.sort_by_key(|v| v.at());
        println!(
            "whole_stack: {} VIOLATIONS (seed {seed}); the first at t={}",
            violations.len(),
            history::secs(violations[0].at(), origin)
        );
        // The first violation of each kind of earlier holder, then the next ones.
        let kind = |v: &history::Violation| kind_of(&v.a.grant.holder);
        let mut by_kind = std::collections::BTreeMap::new();
        for v in &violations {
            *by_kind.entry(kind(v)).or_insert(0) += 1;
        }
        println!("  by the earlier holder's kind: {by_kind:?}");
        for v in &violations {
            println!("  {}", v.line(origin));
        }
        let mut shown: Vec<&history::Violation> = Vec::new();
        for v in &violations {
            if !shown.iter().any(|s| kind(s) == kind(v)) {
                shown.push(v);
            }
        }
        for v in &violations {
            if shown.len() < 8 && !shown.iter().any(|s| std::ptr::eq(*s, v)) {
                shown.push(v);
            }
        }
        for v in shown {
            println!("\n{}", v.describe(origin));
            if v.a.acts > 0 {
                let key = &v.a.grant.key;
                println!("  faults and operations around it:");
                let around = history.events_between(
                    v.a.start.min(v.b.start).saturating_sub(8_000_000_000),
                    v.b.start + 1_000_000_000,
                    origin,
                );
                for line in around.lines() {
                    if line.contains(key.as_str()) || !line.contains("/system/") {
                        println!("{line}");
                    }
                }
            }
        }
    }
    ok
}

/// The kind of a holder: `client`, `leader`, `taker`, `ftl`, `http`, `leases-run`.
fn kind_of(holder: &str) -> String {
    (holder.split(':').next().unwrap_or_default())
        .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
        .to_string()
}
