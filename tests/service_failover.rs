//! Two `leases serve` processes on one PostgreSQL table, a `ClientLeaser` on each,
//! contending for one key. The server that serves the holder is killed with SIGKILL:
//! its client must be told `Lost` before the other server grants the key to the other
//! client. Judged on the database's clock: a trigger records the time of every grant,
//! and the holder's loss is timed on the same machine's wall clock.
#![cfg(feature = "server")]

mod support;

use std::time::{Duration, SystemTime};

use leases::backend::{PostgresBackend, PostgresOptions};
use leases::{CancelReason, Key, LeaseError, Leaser};
use support::pg::PgServer;
use support::remote::{client_to, ServeProcess};

const TTL: Duration = Duration::from_secs(2);

fn serve(pg: &str) -> ServeProcess {
    ServeProcess::start(&["--postgres", pg])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_holders_server_tells_its_client_before_the_other_is_granted() {
    let pg = PgServer::start(None);
    let url = pg.url();
    // The table, and a trigger that records when the database makes each grant.
    PostgresBackend::connect(PostgresOptions::new(url.clone()))
        .await
        .unwrap();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute(
        "CREATE TABLE grants (token BIGINT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
         CREATE FUNCTION record_grant() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF TG_OP = 'INSERT' OR NEW.token IS DISTINCT FROM OLD.token THEN
                 INSERT INTO grants (token) VALUES (NEW.token);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER record_grant AFTER INSERT OR UPDATE ON leases
             FOR EACH ROW EXECUTE FUNCTION record_grant();",
    )
    .await
    .unwrap();

    let one = serve(&url);
    let two = serve(&url);
    let (a, b) = (client_to(&one.url).await, client_to(&two.url).await);
    let key = Key::system(["failover"]);
    let (lease, ctx) = a.acquire_lease(key.clone(), TTL).await.unwrap();
    let held_token = lease.token();
    // The other client keeps trying through the other server.
    let contender = {
        let key = key.clone();
        tokio::spawn(async move {
            loop {
                match b.acquire_lease(key.clone(), TTL).await {
                    Ok(got) => return got,
                    Err(LeaseError::Conflict) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("the other client: {e}"),
                }
            }
        })
    };
    let lost_at = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let reason = ctx.cancelled().await;
            (reason, SystemTime::now())
        })
    };
    tokio::time::sleep(TTL).await;
    assert!(
        !ctx.is_cancelled(),
        "held through its server: {:?}",
        ctx.reason()
    );
    let mut one = one;
    one.child.kill().unwrap();
    let (reason, lost_at) = tokio::time::timeout(TTL, lost_at)
        .await
        .expect("the holder is told within a TTL")
        .unwrap();
    assert!(matches!(reason, CancelReason::Lost(_)), "{reason:?}");
    let (next, next_ctx) = tokio::time::timeout(TTL * 5, contender)
        .await
        .expect("the other client gets the key once the lease expires")
        .unwrap();
    assert!(next.token() > held_token);
    let granted_at: SystemTime = db
        .query_one(
            "SELECT at FROM grants WHERE token = $1",
            &[&(next.token() as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        lost_at < granted_at,
        "the holder was told at {lost_at:?}, after the other grant at {granted_at:?}"
    );
    // The killed server's lease ran out on the database; it was not released early
    // by anyone, so the grant came at least (most of) a TTL after the kill.
    assert!(!next_ctx.is_cancelled());
    next.release().await.unwrap();
    drop(lease);
    drop(two);
}

/// SIGTERM stops the service gracefully: its streams end (the client is told at once),
/// its leases are released, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_service_gracefully() {
    let mut server = ServeProcess::start(&[]);
    let c = client_to(&server.url).await;
    let (_lease, ctx) = c
        .acquire_lease(Key::system(["term"]), TTL * 5)
        .await
        .unwrap();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let reason = tokio::time::timeout(TTL, ctx.cancelled())
        .await
        .expect("the client is told at once");
    assert!(matches!(reason, CancelReason::Lost(_)), "{reason:?}");
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = server.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("the service exits within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// `leases serve --metrics-bind` serves the manager's metrics in Prometheus text format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_the_services_leases() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let server = ServeProcess::start(&["--metrics-bind", &metrics]);
    let c = client_to(&server.url).await;
    for i in 0..3 {
        let (lease, _) = c
            .acquire_lease(Key::system(["metrics", &i.to_string()]), TTL)
            .await
            .unwrap();
        lease.release().await.unwrap();
    }
    let (held, _) = c
        .acquire_lease(Key::system(["metrics", "held"]), TTL)
        .await
        .unwrap();
    assert!(matches!(
        c.acquire_lease(Key::system(["metrics", "held"]), TTL).await,
        Err(LeaseError::Conflict)
    ));
    let mut s = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {text}"))
    };
    assert_eq!(value("leases_acquires_total{outcome=\"granted\"}"), 4.0);
    assert_eq!(value("leases_acquires_total{outcome=\"conflict\"}"), 1.0);
    assert_eq!(value("leases_held "), 1.0);
    held.release().await.unwrap();
}
