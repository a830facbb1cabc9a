//! `list` and `info` only look: on PostgreSQL they never create the table (nor change
//! anything), so that a role with only `SELECT` on the table (and its sessions table) can
//! use them, and a table that does not exist is a clear error. PostgreSQL only.

use crate::harness::{code, Cli};
use crate::support::pg::{run_id, shared_url, table};

/// `leases` on the shared database's table `table`, connecting as `user` (with its
/// password) when given, else as the shared URL's own (super)user.
fn on_table(table: &str, user: Option<(&str, &str)>) -> Cli {
    let mut url = shared_url();
    if let Some((name, password)) = user {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (_, host) = rest.split_once('@').expect("a user in the URL");
        url = format!("{scheme}://{name}:{password}@{host}");
    }
    Cli {
        source: vec!["--postgres".into(), url, "--table".into(), table.into()],
        label: "pg-readonly",
    }
}

/// Runs SQL on the shared database as its own user.
fn sql(statements: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = crate::support::pg::connect(&shared_url()).await;
        db.batch_execute(statements).await.unwrap();
    });
}

/// A role with only `SELECT` on the tables (and `USAGE` on their schema) lists and looks
/// up leases; it cannot take one.
#[test]
fn select_only_role_lists_and_looks() {
    let t = table("cli_ro", "select");
    let owner = on_table(&t, None);
    let key = owner.key("readonly", "k");
    // The owner's `run` creates the table and holds a lease in it.
    let (holder, token) = owner.hold(&key, &["--metadata", "held by the owner"]);
    let role = format!("reader_{}", run_id());
    sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT USAGE ON SCHEMA public TO {role}; \
         GRANT SELECT ON {t}, {t}_sessions TO {role};"
    ));
    let reader = on_table(&t, Some((&role, "pw")));

    let listed = reader.call(&["list", "--json"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert_eq!(listed.json()[0]["key"], key.as_str(), "{listed:?}");
    assert_eq!(listed.json()[0]["token"], token.to_string(), "{listed:?}");
    let info = reader.call(&["info", &key]);
    assert_eq!(info.code, 0, "{info:?}");
    assert!(info.stdout.contains("held by the owner"), "{info:?}");
    let free = reader.call(&["info", &owner.key("readonly", "free")]);
    assert_eq!(free.code, code::NOT_HELD, "{free:?}");
    // Taking a lease is a write: refused by the database (69), the command never runs.
    let run = reader.call_sh(&owner.key("readonly", "other"), &[], "echo ran");
    assert_eq!(run.code, code::BACKEND, "{run:?}");
    assert_eq!(run.stdout, "", "{run:?}");
    assert!(run.stderr.contains("permission denied"), "{run:?}");

    holder.signal(libc::SIGTERM);
    assert_eq!(holder.finish().code, 128 + 15);
    sql(&format!("DROP OWNED BY {role}; DROP ROLE {role};"));
}

/// Without the table, `list` and `info` say it is missing and what to do (69), and
/// leave it missing, even for a role that could create it.
#[test]
fn missing_table_is_not_created() {
    let t = table("cli_ro", "missing");
    let cli = on_table(&t, None);
    for args in [vec!["list"], vec!["info", "/system/jobs/x"]] {
        let done = cli.call(&args);
        assert_eq!(done.code, code::BACKEND, "{args:?}: {done:?}");
        assert!(
            done.stderr
                .contains(&format!("the lease table {t:?} does not exist"))
                && done.stderr.contains("leases run"),
            "{args:?}: {done:?}"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exists: bool = rt.block_on(async {
        let db = crate::support::pg::connect(&shared_url()).await;
        db.query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
            .await
            .unwrap()
            .get(0)
    });
    assert!(!exists, "list and info created the table {t}");
}
