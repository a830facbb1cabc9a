//! Every code block in `README.md` and `docs/*.md` compiles, runs or parses.
//!
//! A block's kind is the first word of its fence (```` ```sh,run ```` is `sh` marked
//! `run`). Each kind has one rule, and a kind with no rule is a failure, so that no
//! block goes unchecked:
//!
//! - `rust`: a doctest. The file is included as a doc string on a `#[cfg(doctest)]`
//!   item in `src/lib.rs`, so `cargo test --doc` compiles and runs its blocks. `no_run`
//!   is allowed (the block still compiles); `ignore` is not.
//! - `sh`: `bash -n` parses it. A block marked `run` is also run, with `bash -eo
//!   pipefail`, in a scratch directory, with the built `leases` on the `PATH` and
//!   `LEASES_SERVER` naming a `leases serve` (memory backend) started for that block.
//! - `sql`: run in a transaction, then rolled back, on a throwaway PostgreSQL
//!   (`support/pg.rs`) where the backend has created its `leases` table.
//! - `proto`: appears verbatim in a file under `proto/`.
//! - `json`, `toml`: parse.
//! - `python`: compiles with `python3` (`compile()`, so syntax only: nothing is
//!   imported or run; the Python client's own tests run its code).
//! - `text`: output or a diagram; not checked.
//!
//! Every failure names the file and the line of the block's opening fence.
#![cfg(feature = "server")]

#[path = "../support/mod.rs"]
mod support;

mod deploy;
mod layout;
mod links;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The README's length limit: the rest belongs in `docs/`.
const README_MAX_LINES: usize = 250;

/// The longest a `sh,run` block may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// One fenced code block.
#[derive(Debug)]
struct Block {
    /// The file, relative to the crate root.
    file: String,
    /// The line of its opening fence (1-based).
    line: usize,
    /// The fence's kind (`rust`, `sh`, ...): the first word of its info string.
    kind: String,
    /// The rest of the info string, split at commas (`run`, `no_run`, ...).
    marks: Vec<String>,
    body: String,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    fn marked(&self, mark: &str) -> bool {
        self.marks.iter().any(|m| m == mark)
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every `docs/*.md`, relative to the crate root, in name order.
fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The fenced blocks of one markdown file. A fence may be indented (inside a list
/// item); its body loses that indentation.
fn blocks_of(file: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String)> = None; // (line, indent, info)
    let mut body = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((i + 1, indent, info.trim().to_string()));
                    body.clear();
                }
            }
            Some((start, fence_indent, info)) => {
                if trimmed == "```" {
                    let mut words = info.split(',').map(|w| w.trim().to_string());
                    blocks.push(Block {
                        file: file.to_string(),
                        line: *start,
                        kind: words.next().unwrap_or_default(),
                        marks: words.collect(),
                        body: std::mem::take(&mut body),
                    });
                    open = None;
                } else {
                    let cut = indent.min(*fence_indent);
                    body.push_str(&line[cut..]);
                    body.push('\n');
                }
            }
        }
    }
    if let Some((start, _, _)) = open {
        panic!("{file}:{start}: a code block that is never closed");
    }
    blocks
}

fn all_blocks() -> Vec<Block> {
    markdown_files().iter().flat_map(|f| blocks_of(f)).collect()
}

fn blocks(kind: &str) -> Vec<Block> {
    all_blocks()
        .into_iter()
        .filter(|b| b.kind == kind)
        .collect()
}

/// Panics with every failure, one per line, if there are any.
fn report(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}:\n{}",
        failures
            .iter()
            .map(|f| format!("  {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_block_has_a_known_kind() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut failures = Vec::new();
    for b in all_blocks() {
        match b.kind.as_str() {
            "rust" => {
                if b.marked("ignore") {
                    failures.push(format!(
                        "{}: `ignore` is not allowed (use `no_run` if it needs a server)",
                        b.at()
                    ));
                }
                let include = format!("#[doc = include_str!(\"../{}\")]", b.file);
                let included = lib
                    .lines()
                    .any(|line| line.trim_start().starts_with(&include));
                if !included {
                    failures.push(format!(
                        "{}: a rust block, but src/lib.rs has no `{include}` on a \
                         #[cfg(doctest)] item",
                        b.at()
                    ));
                }
            }
            "sh" => {
                if let Some(m) = b.marks.iter().find(|m| m.as_str() != "run") {
                    failures.push(format!("{}: unknown mark `{m}` on a sh block", b.at()));
                }
            }
            "sql" | "proto" | "json" | "toml" | "python" | "text" => {
                if !b.marks.is_empty() {
                    failures.push(format!("{}: marks on a {} block", b.at(), b.kind));
                }
            }
            "" => failures.push(format!(
                "{}: a block without a kind (rustdoc would run it as Rust)",
                b.at()
            )),
            other => failures.push(format!(
                "{}: unknown kind `{other}` (known: rust, sh, sql, proto, json, toml, python, text)",
                b.at()
            )),
        }
    }
    report("code blocks of an unknown kind", failures);
}

#[test]
fn readme_is_short() {
    let lines = std::fs::read_to_string(root().join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines < README_MAX_LINES,
        "README.md: {lines} lines, the limit is under {README_MAX_LINES}: move detail to docs/"
    );
}

#[test]
fn sh_blocks_parse() {
    let mut failures = Vec::new();
    for b in blocks("sh") {
        let mut bash = Command::new("bash")
            .arg("-n")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash runs");
        bash.stdin
            .take()
            .unwrap()
            .write_all(b.body.as_bytes())
            .unwrap();
        let out = bash.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}: bash -n: {}",
                b.at(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    report("sh blocks that do not parse", failures);
}

/// A `leases serve` on the memory backend, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_leases"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .current_dir(dir)
            .env_remove("LEASES_POSTGRES_URL")
            .env_remove("LEASES_ETCD_ENDPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("leases serve starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .trim()
            .strip_prefix("leases serve: listening on ")
            .unwrap_or_else(|| panic!("leases serve said {first:?}"))
            .to_string();
        Server {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of its own for one block, removed afterwards.
fn scratch(b: &Block) -> PathBuf {
    let name = b.file.replace('/', "_");
    let dir = std::env::temp_dir().join(format!(
        "leases-docs-{}-{name}-{}",
        std::process::id(),
        b.line
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one `sh,run` block; what went wrong, if anything.
fn run_sh(b: &Block) -> Option<String> {
    let dir = scratch(b);
    let server = Server::start(&dir);
    let bin = Path::new(env!("CARGO_BIN_EXE_leases")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .args(["-eo", "pipefail", "-c", &b.body])
        .current_dir(&dir)
        .env("PATH", path)
        .env("LEASES_SERVER", &server.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "LEASES_POSTGRES_URL",
        "LEASES_ETCD_ENDPOINTS",
        "LEASES_TABLE",
        "LEASES_ETCD_PREFIX",
        "LEASES_TOKEN_FILE",
        "LEASES_CA_FILE",
        "LEASES_SERVE_TOKEN_FILE",
    ] {
        command.env_remove(var);
    }
    let mut child = command.spawn().expect("bash runs");
    let started = Instant::now();
    let failure = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            break (!status.success()).then(|| {
                format!(
                    "{}: exited with {status}\n--- stdout\n{}--- stderr\n{}",
                    b.at(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break Some(format!("{}: still running after {RUN_LIMIT:?}", b.at()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    failure
}

#[test]
fn sh_run_blocks_run() {
    let runs: Vec<Block> = blocks("sh")
        .into_iter()
        .filter(|b| b.marked("run"))
        .collect();
    assert!(
        !runs.is_empty(),
        "no sh,run block anywhere: the CLI quick start is one"
    );
    let failures = runs.iter().filter_map(run_sh).collect();
    report("sh,run blocks that failed", failures);
}

#[tokio::test]
async fn sql_blocks_run_on_postgres() {
    use leases::backend::{PostgresBackend, PostgresOptions};
    let url = support::pg::shared_url();
    // The backend creates its table (and sequence) as it does for users.
    let backend = PostgresBackend::connect(PostgresOptions::new(url.clone()))
        .await
        .expect("the backend connects and creates its table");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut failures = Vec::new();
    for b in blocks("sql") {
        client.batch_execute("BEGIN").await.unwrap();
        if let Err(e) = client.batch_execute(&b.body).await {
            let detail = e.as_db_error().map(|d| d.message().to_string());
            failures.push(format!("{}: {e} {}", b.at(), detail.unwrap_or_default()));
        }
        client.batch_execute("ROLLBACK").await.unwrap();
    }
    drop(backend);
    report("sql blocks that PostgreSQL refused", failures);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn proto_blocks_are_in_proto() {
    let protos: Vec<String> = files_under(&root().join("proto"))
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    let failures = blocks("proto")
        .into_iter()
        .filter(|b| !protos.iter().any(|p| p.contains(&b.body)))
        .map(|b| format!("{}: not found verbatim in any file under proto/", b.at()))
        .collect();
    report("proto blocks that differ from proto/", failures);
}

/// Every `kind` block that `parse` refuses, with why.
fn unparsed(kind: &str, parse: impl Fn(&str) -> Result<(), String>) -> Vec<String> {
    blocks(kind)
        .into_iter()
        .filter_map(|b| parse(&b.body).err().map(|e| format!("{}: {e}", b.at())))
        .collect()
}

#[test]
fn json_blocks_parse() {
    let failures = unparsed("json", |body| {
        serde_json::from_str::<serde_json::Value>(body)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    report("json blocks that do not parse", failures);
}

#[test]
fn toml_blocks_parse() {
    let failures = unparsed("toml", |body| {
        toml::from_str::<toml::Table>(body)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    report("toml blocks that do not parse", failures);
}

#[test]
fn python_blocks_compile() {
    let failures = unparsed("python", |body| {
        // compile() checks the syntax (and what only the compiler sees, such as a
        // `return` outside a function) without importing or running anything.
        let mut python = Command::new("python3")
            .args([
                "-c",
                "import sys; compile(sys.stdin.read(), '<block>', 'exec')",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 does not run: {e}"))?;
        python
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = python.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(stderr.trim().lines().last().unwrap_or_default().to_string())
        }
    });
    report("python blocks that do not compile", failures);
}
