//! The layout in `docs/development.md` is true: every path it names exists, and it names
//! every folder of `src/` (or a folder inside it) and every test target and folder of
//! `tests/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::{report, root};

/// The folders a path in the layout may start from.
const TOP: [&str; 10] = [
    "src/",
    "clients/",
    "tests/",
    "benches/",
    "fuzz/",
    "examples/",
    "scripts/",
    "proto/",
    "docs/",
    "build.rs",
];

/// The lines of the ```text block under `## Layout`, with their line numbers.
fn layout_lines() -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(root().join("docs/development.md")).unwrap();
    let mut lines = text
        .lines()
        .enumerate()
        .skip_while(|(_, l)| *l != "## Layout");
    let mut out = Vec::new();
    let mut inside = false;
    for (n, line) in lines.by_ref() {
        if line.starts_with("```") {
            if inside {
                break;
            }
            inside = true;
        } else if inside {
            out.push((n + 1, line.to_string()));
        }
    }
    assert!(!out.is_empty(), "docs/development.md has a layout block");
    out
}

/// Whether a word of the layout names a path: a top-level folder, a folder (`name/`) or
/// a file with an extension the crate has.
fn is_path(word: &str) -> bool {
    TOP.iter().any(|top| word.starts_with(top))
        || [".rs", ".sh", ".md"].iter().any(|ext| word.ends_with(ext))
        || (word.ends_with('/') && word.len() > 1 && !word.starts_with('/'))
}

/// Every path the layout names, resolved (a bare name is relative to the folder of the
/// entry it describes, else to the crate root), with the line naming it.
fn named_paths() -> Vec<(usize, String, PathBuf)> {
    let mut here = PathBuf::new();
    let mut named = Vec::new();
    for (line, text) in layout_lines() {
        if !text.starts_with(' ') {
            let entry = text.split_whitespace().next().unwrap_or_default();
            let entry = root().join(entry);
            here = if entry.is_dir() {
                entry
            } else {
                entry.parent().unwrap().to_path_buf()
            };
        }
        for word in text.split_whitespace() {
            let word = word.trim_matches(|c: char| "(),;:`".contains(c));
            if !is_path(word) {
                continue;
            }
            let relative = here.join(word);
            let path = if relative.exists() {
                relative
            } else {
                root().join(word)
            };
            named.push((line, word.to_string(), path));
        }
    }
    named
}

#[test]
fn every_path_in_the_layout_exists() {
    let failures = named_paths()
        .into_iter()
        .filter(|(_, _, path)| !path.exists())
        .map(|(line, word, _)| format!("docs/development.md:{line}: `{word}` does not exist"))
        .collect();
    report("paths in the layout", failures);
}

fn folders_under(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            into.push(path.clone());
            folders_under(&path, into);
        }
    }
}

#[test]
fn the_layout_names_every_source_folder_and_test() {
    let named: BTreeSet<PathBuf> = named_paths()
        .into_iter()
        .filter_map(|(_, _, path)| path.canonicalize().ok())
        .collect();
    let mut wanted = Vec::new();
    folders_under(&root().join("src"), &mut wanted);
    for entry in std::fs::read_dir(root().join("tests")).unwrap() {
        wanted.push(entry.unwrap().path());
    }
    let failures = wanted
        .into_iter()
        .filter(|path| {
            // A folder that only holds folders (src/bin) is named through them.
            let path = path.canonicalize().unwrap();
            !named.iter().any(|n| n.starts_with(&path))
        })
        .map(|path| {
            let path = path.strip_prefix(root()).unwrap().display().to_string();
            format!("docs/development.md: the layout does not name `{path}`")
        })
        .collect();
    report("the layout's coverage", failures);
}
