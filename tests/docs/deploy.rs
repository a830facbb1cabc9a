//! The files in `deploy/` are true: the systemd unit's command line is one `leases`
//! accepts, and the alerting rules parse and name only metrics the crate records.

use std::process::{Command, Stdio};

use crate::{report, root};

/// The values of a unit file's `KEY=` lines.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// Runs the built `leases` with `args` and `--help` appended, with no `LEASES_*`
/// variables: clap parses (and checks the values of) every argument before the
/// `--help`, so exit 0 means the command line parses.
fn parses(args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leases"));
    c.args(args).arg("--help").stdin(Stdio::null());
    for (var, _) in std::env::vars() {
        if var.starts_with("LEASES_") {
            c.env_remove(var);
        }
    }
    c.output().expect("the leases binary runs")
}

#[test]
fn the_systemd_unit_runs_a_command_line_that_parses() {
    let unit = std::fs::read_to_string(root().join("deploy/leases.service")).unwrap();
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart: {exec:?}");
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    assert!(words[0].ends_with("/leases"), "{words:?}");
    assert_eq!(words[1], "serve", "{words:?}");
    let out = parses(&words[1..]);
    assert!(
        out.status.success(),
        "deploy/leases.service: `{}` does not parse: {}",
        exec[0],
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a flag serve does not take is refused before `--help`.
    let bogus = parses(&["serve", "--no-such-flag"]);
    assert_eq!(bogus.status.code(), Some(2), "{bogus:?}");
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(
            unit.contains(section),
            "deploy/leases.service has no {section}"
        );
    }
}

/// The metric names the crate records (the `_bucket`, `_sum` and `_count` series of the
/// histogram included).
fn recorded_metrics() -> Vec<String> {
    let mut names: Vec<String> = [
        leases::metrics::LEASES_HELD,
        leases::metrics::ACQUIRES,
        leases::metrics::LOSSES,
        leases::metrics::ENDED,
        leases::metrics::BACKEND_ERRORS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for suffix in ["_bucket", "_sum", "_count"] {
        names.push(format!("{}{suffix}", leases::metrics::RENEWAL_SECONDS));
    }
    names
}

#[test]
fn the_alerting_rules_parse_and_name_recorded_metrics() {
    let text = std::fs::read_to_string(root().join("deploy/alerts.yml")).unwrap();
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("deploy/alerts.yml: {e}"));
    let known = recorded_metrics();
    let mut failures = Vec::new();
    let groups = rules["groups"].as_sequence().expect("a list of groups");
    assert!(!groups.is_empty(), "deploy/alerts.yml has no group");
    for group in groups {
        for rule in group["rules"].as_sequence().expect("a list of rules") {
            let name = rule["alert"].as_str().unwrap_or("(no alert name)");
            let Some(expr) = rule["expr"].as_str() else {
                failures.push(format!("{name}: no expr"));
                continue;
            };
            for label in ["severity"] {
                if rule["labels"][label].as_str().is_none() {
                    failures.push(format!("{name}: no {label} label"));
                }
            }
            // Every `leases_*` name in the expression is one the crate records.
            let mut rest = expr;
            while let Some(at) = rest.find("leases_") {
                let word: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !known.contains(&word) {
                    failures.push(format!("{name}: `{word}` is not a metric of the crate"));
                }
                rest = &rest[at + word.len()..];
            }
        }
    }
    report("deploy/alerts.yml", failures);
}
