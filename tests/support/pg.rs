//! Throwaway PostgreSQL servers for the tests.
//!
//! `PgServer::start` runs `initdb` and `pg_ctl start` from the machine's PostgreSQL
//! binaries (`LEASES_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`) in a temp
//! dir, on 127.0.0.1 and a free port, as the `postgres` user when the tests run as root
//! (PostgreSQL refuses to run as root). Servers stop when dropped and, for the shared
//! one, when the test process exits. A missing PostgreSQL is a test failure, never a skip.
//!
//! With the `postgres` feature it also holds what the PostgreSQL tests share to reach
//! the database themselves: a plain connection, table names unique to the process,
//! `application_name`s to find their sessions by, the database's clock, a grant straight
//! from the backend, and a manager.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Servers to stop when the process exits (statics are never dropped).
static RUNNING: Mutex<Vec<(PathBuf, PathBuf, bool)>> = Mutex::new(Vec::new());

extern "C" fn stop_all_at_exit() {
    if let Ok(servers) = RUNNING.lock() {
        for (bin, dir, as_postgres) in servers.iter() {
            pg_ctl_stop(bin, dir, *as_postgres);
            let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(dir));
        }
    }
}

fn pg_ctl_stop(bin: &Path, dir: &Path, as_postgres: bool) {
    let _ = command(bin, "pg_ctl", as_postgres)
        .args([
            "-D",
            &dir.to_string_lossy(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ])
        .output();
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn find_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("LEASES_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin; set \
             LEASES_PG_BIN, or install the `postgresql` package: scripts/test.sh does so)"
        )
    })
}

fn command(bin: &Path, tool: &str, as_postgres: bool) -> Command {
    let exe = bin.join(tool);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// TLS settings for a server.
pub struct Tls {
    /// The server certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

/// A running throwaway server.
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    options: String,
}

impl PgServer {
    /// initdb + start; with `tls`, plain TCP connections are refused.
    pub fn start(tls: Option<&Tls>) -> PgServer {
        let bin = find_bin();
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "leases-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&dir);
                    c
                },
                "chown",
            );
        }
        let data = dir.join("data");
        let mut init = command(&bin, "initdb", as_postgres);
        init.args([
            "-D",
            &data.to_string_lossy(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        run(init, "initdb");
        // Durable settings (fsync and synchronous commit stay on): the fault tests
        // crash and restart the server and expect committed tokens to survive.
        let mut options = String::from("-c listen_addresses=127.0.0.1 -c max_connections=400");
        if let Some(tls) = tls {
            let cert = data.join("server.crt");
            let key = data.join("server.key");
            std::fs::write(&cert, &tls.cert_pem).unwrap();
            std::fs::write(&key, &tls.key_pem).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
            if as_postgres {
                run(
                    {
                        let mut c = Command::new("chown");
                        c.arg("postgres:postgres").arg(&cert).arg(&key);
                        c
                    },
                    "chown",
                );
            }
            run(
                {
                    let mut c = Command::new("chmod");
                    c.arg("600").arg(&key);
                    c
                },
                "chmod",
            );
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let server = PgServer {
            bin,
            dir,
            port: free_port(),
            as_postgres,
            options,
        };
        server.pg_ctl_start();
        RUNNING
            .lock()
            .unwrap()
            .push((server.bin.clone(), data, as_postgres));
        static HOOK: OnceLock<()> = OnceLock::new();
        HOOK.get_or_init(|| {
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(stop_all_at_exit) };
        });
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl_start(&self) {
        let mut start = command(&self.bin, "pg_ctl", self.as_postgres);
        start.args([
            "-D",
            &self.data().to_string_lossy(),
            "-l",
            &self.dir.join("server.log").to_string_lossy(),
            "-w",
            "-t",
            "60",
            "-o",
            &format!(
                "-p {} -k {} {}",
                self.port,
                self.dir.display(),
                self.options
            ),
            "start",
        ]);
        run(start, "pg_ctl start");
    }

    /// A connection string for the `postgres` database, without TLS settings.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (as a crash would).
    pub fn stop(&self) {
        pg_ctl_stop(&self.bin, &self.data(), self.as_postgres);
    }

    /// Starts it again after [`stop`](Self::stop), on the same port and data.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// Runs one SQL command with `psql`, returning its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let psql = if psql.exists() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(),
                "-c",
                sql,
            ])
            .env("PGSSLMODE", "prefer")
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let data = self.data();
        RUNNING.lock().unwrap().retain(|(_, d, _)| d != &data);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The connection string for the shared test database: `LEASES_POSTGRES_URL` if set,
/// else a throwaway server started once for this test process.
pub fn shared_url() -> String {
    static SHARED: OnceLock<(String, Option<PgServer>)> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("LEASES_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => (url, None),
            _ => {
                let server = PgServer::start(None);
                (server.url(), Some(server))
            }
        })
        .0
        .clone()
}

/// A name unique to this test process, for keys and tables.
pub fn run_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        format!(
            "run{}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                % 1_000_000
        )
    })
    .clone()
}

// What the PostgreSQL tests share to reach the database and the backend themselves
// (feature `postgres`).

/// A plain (no TLS) connection to `url`, driven by a task of its own.
#[cfg(feature = "postgres")]
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A table name for test `case` that no other test process uses: `prefix` (one per
/// test file), this process's [`run_id`], then `case`.
pub fn table(prefix: &str, case: &str) -> String {
    format!("{prefix}_{}_{case}", run_id())
}

/// `url` with `application_name=app`, so that a test can find the sessions it made
/// in `pg_stat_activity`.
pub fn with_app(url: &str, app: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

/// The database's clock now (`clock_timestamp()`).
#[cfg(feature = "postgres")]
pub async fn db_now(db: &tokio_postgres::Client) -> std::time::SystemTime {
    db.query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The session row `key`'s lease is attached to in table `t`, if any.
#[cfg(feature = "postgres")]
pub async fn session_of(db: &tokio_postgres::Client, t: &str, key: &leases::Key) -> Option<i64> {
    db.query_opt(
        &format!("SELECT session FROM {t} WHERE key = $1 AND expires_at = 'infinity'"),
        &[&key.to_string()],
    )
    .await
    .unwrap()
    .and_then(|r| r.get(0))
}

/// Holds session row `s` of table `t` locked (`FOR UPDATE`) on a connection of its
/// own, in a transaction open until the caller sends `COMMIT`, so that a session
/// renewal waits on it.
pub async fn hold_session(url: &str, t: &str, s: i64) -> tokio_postgres::Client {
    let holder = connect(url).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute(
            &format!("SELECT 1 FROM {t}_sessions WHERE id = $1 FOR UPDATE"),
            &[&s],
        )
        .await
        .unwrap();
    holder
}

/// Acquires `key`, which must be free, straight from `backend`: its token.
#[cfg(feature = "postgres")]
pub async fn grant(
    backend: &leases::backend::PostgresBackend,
    key: &leases::Key,
    ttl: std::time::Duration,
) -> u64 {
    use leases::backend::{AcquireOutcome, Backend};
    match backend.acquire(key, ttl, b"").await.unwrap() {
        AcquireOutcome::Granted { token } => token,
        held => panic!("{key} should be free: {held:?}"),
    }
}

/// A manager on PostgreSQL with these options, taking TTLs from one second.
#[cfg(feature = "postgres")]
pub async fn manager(options: leases::backend::PostgresOptions) -> leases::LeaseManager {
    leases::LeaseManager::builder()
        .min_ttl(std::time::Duration::from_secs(1))
        .postgres(options)
        .start()
        .await
        .unwrap()
}

/// A backend on table `t` that renews at most 10 leases per batched statement, so a
/// group round that falls back to per-lease renewal takes several statements.
#[cfg(feature = "postgres")]
pub async fn rounds_backend(
    url: &str,
    t: &str,
) -> std::sync::Arc<leases::backend::PostgresBackend> {
    let options = leases::backend::PostgresOptions::new(url)
        .table(t)
        .renew_batch_size(10);
    std::sync::Arc::new(
        leases::backend::PostgresBackend::connect(options)
            .await
            .unwrap(),
    )
}

/// One group round of `leases` with `ttl`: each outcome (errors fail the test).
#[cfg(feature = "postgres")]
pub async fn round(
    b: &leases::backend::PostgresBackend,
    leases: &[(leases::Key, u64)],
    ttl: std::time::Duration,
) -> Vec<leases::backend::RenewOutcome> {
    use leases::backend::Backend;
    b.renew_many(leases, ttl)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// `n` leases named `/system/<prefix>/<name>/<i>`, granted by `b` and renewed once by a
/// group round (so attached to its session).
#[cfg(feature = "postgres")]
pub async fn held_in_session(
    b: &leases::backend::PostgresBackend,
    prefix: &str,
    name: &str,
    n: usize,
    ttl: std::time::Duration,
) -> Vec<(leases::Key, u64)> {
    let mut leases = Vec::new();
    for i in 0..n {
        let key = leases::Key::system([prefix, name, &i.to_string()]);
        let token = grant(b, &key, ttl).await;
        leases.push((key, token));
    }
    let outcomes = round(b, &leases, ttl).await;
    assert!(outcomes
        .iter()
        .all(|o| *o == leases::backend::RenewOutcome::Renewed));
    leases
}
