//! Every relative link of `README.md` and `docs/*.md` names a file that exists, and
//! a heading of it when the link has an anchor.

use crate::{markdown_files, report, root};

/// A heading's anchor as GitHub makes it: lower case, spaces to `-`, punctuation other
/// than `-` and `_` dropped.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown file's headings (outside code blocks).
fn anchors_in(text: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut anchors = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with('#') {
            anchors.push(anchor_of(line.trim_start_matches('#')));
        }
    }
    anchors
}

/// The targets of the inline links `[text](target)` of a markdown file, with their
/// lines, outside code blocks.
fn links_in(text: &str) -> Vec<(usize, String)> {
    let mut in_fence = false;
    let mut links = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            links.push((n + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    links
}

#[test]
fn relative_links_resolve() {
    let mut failures = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let dir = root().join(&file).parent().unwrap().to_path_buf();
        for (line, target) in links_in(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if path.is_empty() {
                root().join(&file)
            } else {
                dir.join(path)
            };
            if !linked.exists() {
                failures.push(format!("{file}:{line}: `{target}`: no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
            if !anchors_in(&linked_text).iter().any(|a| a == anchor) {
                failures.push(format!("{file}:{line}: `{target}`: no such heading"));
            }
        }
    }
    report("links that resolve", failures);
}
