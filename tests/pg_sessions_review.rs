//! Adversarial review of PostgreSQL sessions: interleavings of session renewals with
//! takeovers, forced with explicit transactions on raw connections.
//!
//! Uses `LEASES_POSTGRES_URL` when set, else a throwaway server; never skipped.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireOutcome, Backend, PostgresBackend, PostgresOptions, RenewOutcome};
use leases::Key;
use support::pg::{connect, grant, session_of, shared_url, table};
use support::proxy::{Fault, FaultProxy};
use tokio_postgres::Client;

const TTL: Duration = Duration::from_millis(1500);

async fn backend(url: &str, t: &str) -> Arc<PostgresBackend> {
    Arc::new(
        PostgresBackend::connect(PostgresOptions::new(url).table(t))
            .await
            .unwrap(),
    )
}

/// Held (no finding; kept as a regression test): a session renewal that waited for a
/// lease row lock (a lease it attaches, held by another transaction) must not revive
/// the session if it expired while it waited and a takeover took one of its members:
/// the member must not be reported renewed while another holder has the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_blocked_on_an_attach_does_not_revive_an_expired_session() {
    let url = shared_url();
    let t = table("sessrev", "blocked_attach");
    let (a, b) = (backend(&url, &t).await, backend(&url, &t).await);
    let member = Key::system(["rev", "a_member"]);
    let newcomer = Key::system(["rev", "b_new"]);
    let m_token = grant(&a, &member, TTL).await;
    assert_eq!(
        a.renew(&member, m_token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let db = connect(&url).await;
    let s = session_of(&db, &t, &member).await.expect("attached");
    let n_token = grant(&a, &newcomer, TTL).await;
    // Another transaction holds the newcomer's row lock.
    let blocker = connect(&url).await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .query(
            &format!("SELECT 1 FROM {t} WHERE key = $1 FOR UPDATE"),
            &[&newcomer.to_string()],
        )
        .await
        .unwrap();
    // One statement renews the session: the member and the newcomer to attach.
    let renewal = {
        let (a, member, newcomer) = (a.clone(), member.clone(), newcomer.clone());
        tokio::spawn(async move {
            a.renew_many(&[(member, m_token), (newcomer, n_token)], TTL)
                .await
        })
    };
    // The session expires while the renewal waits for the newcomer's row.
    tokio::time::sleep(TTL + Duration::from_millis(400)).await;
    assert!(!renewal.is_finished(), "the renewal waits for the row lock");
    let taken = match b.acquire(&member, TTL, b"").await.unwrap() {
        AcquireOutcome::Granted { token } => Some(token),
        AcquireOutcome::Held { .. } => None,
    };
    blocker.batch_execute("COMMIT").await.unwrap();
    let outcomes = renewal.await.unwrap();
    let member_outcome = outcomes[0].as_ref().unwrap();
    let live: bool = db
        .query_one(
            &format!("SELECT expires_at > clock_timestamp() FROM {t}_sessions WHERE id = $1"),
            &[&s],
        )
        .await
        .unwrap()
        .get(0);
    if let Some(token) = taken {
        assert!(token > m_token);
        assert_ne!(
            *member_outcome,
            RenewOutcome::Renewed,
            "the member was taken over (token {token}) yet reported renewed; session revived: {live}"
        );
        assert!(!live, "an expired session was revived");
    }
}

/// Whether anyone other than the holder of `(key, token)` could take `key` now: the
/// row's expiry (its session's when attached) has passed on the database's clock.
async fn free(db: &Client, t: &str, key: &Key) -> bool {
    db.query_one(
        &format!(
            "SELECT CASE WHEN l.session IS NOT NULL AND l.expires_at = 'infinity'
                THEN COALESCE(s.expires_at, 'infinity') ELSE l.expires_at END <= clock_timestamp()
               FROM {t} l LEFT JOIN {t}_sessions s ON s.id = l.session WHERE l.key = $1"
        ),
        &[&key.to_string()],
    )
    .await
    .unwrap()
    .get(0)
}

/// Keeps `a`'s session of `TTL` renewed through `keeper` for `how_long`.
async fn keep_session(a: &PostgresBackend, keeper: &Key, token: u64, how_long: Duration) {
    let end = tokio::time::Instant::now() + how_long;
    while tokio::time::Instant::now() < end {
        assert_eq!(
            a.renew(keeper, token, TTL).await.unwrap(),
            RenewOutcome::Renewed
        );
        tokio::time::sleep(TTL / 4).await;
    }
}

/// Finding 2: `Backend::leave` forgets the lease before its statement runs; when the
/// statement fails (here: a statement timeout, the row locked by another transaction)
/// the lease stays attached to the session, and nothing here remembers it any more
/// (the stale sweep looks only at remembered members): the session keeps a lease
/// nobody holds alive for as long as the backend renews it, and the key is never free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leave_does_not_keep_the_lease_in_the_session_for_ever() {
    let url = shared_url();
    let t = table("sessrev", "failed_leave");
    let a = Arc::new(
        PostgresBackend::connect(
            PostgresOptions::new(&url)
                .table(t.clone())
                .statement_timeout(Duration::from_millis(400)),
        )
        .await
        .unwrap(),
    );
    let keeper = Key::system(["rev", "keeper"]);
    let left = Key::system(["rev", "left"]);
    let k_token = grant(&a, &keeper, TTL).await;
    let l_token = grant(&a, &left, TTL).await;
    let outcomes = a
        .renew_many(&[(keeper.clone(), k_token), (left.clone(), l_token)], TTL)
        .await;
    assert!(outcomes
        .iter()
        .all(|o| *o.as_ref().unwrap() == RenewOutcome::Renewed));
    let db = connect(&url).await;
    assert!(session_of(&db, &t, &left).await.is_some());
    // The leave statement cannot get the row in time: it fails.
    let blocker = connect(&url).await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .query(
            &format!("SELECT 1 FROM {t} WHERE key = $1 FOR UPDATE"),
            &[&left.to_string()],
        )
        .await
        .unwrap();
    assert!(a.leave(&left, l_token).await.is_err());
    blocker.batch_execute("COMMIT").await.unwrap();
    // The backend keeps renewing its session for its other lease, long past the
    // left lease's promised expiry.
    keep_session(&a, &keeper, k_token, TTL * 3).await;
    assert!(
        free(&db, &t, &left).await,
        "a lease left (and no longer renewed) is still kept alive by the session: {:?}",
        session_of(&db, &t, &left).await
    );
}

/// Finding 3: a renewal that attaches a new lease to the session commits, but its
/// answer never arrives (the connection goes half-open after the statement was sent):
/// the backend still believes the lease is in no session. When the lease is then
/// left (its holder lost it locally), nothing takes it out of the session, and the
/// session keeps it alive for as long as the backend renews it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_whose_answer_was_lost_does_not_keep_the_lease_for_ever() {
    let url = shared_url();
    let t = table("sessrev", "lost_attach");
    let proxy = FaultProxy::start(target(&url)).await;
    let a = Arc::new(
        PostgresBackend::connect(
            PostgresOptions::new(via(&url, proxy.port()))
                .table(t.clone())
                .statement_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap(),
    );
    let keeper = Key::system(["rev", "keeper"]);
    let lost = Key::system(["rev", "lost"]);
    let k_token = grant(&a, &keeper, TTL).await;
    assert_eq!(
        a.renew(&keeper, k_token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let l_token = grant(&a, &lost, TTL).await;
    let db = connect(&url).await;
    proxy.set(Fault::HalfOpen);
    assert!(a.renew(&lost, l_token, TTL).await.is_err());
    proxy.set(Fault::Pass);
    assert!(
        session_of(&db, &t, &lost).await.is_some(),
        "the attach took effect"
    );
    // Its holder gives it up without a release (lost locally, or handed over).
    a.leave(&lost, l_token).await.unwrap();
    keep_session(&a, &keeper, k_token, TTL * 3).await;
    assert!(
        free(&db, &t, &lost).await,
        "a lease left (and no longer renewed) is still kept alive by the session: {:?}",
        session_of(&db, &t, &lost).await
    );
}

/// Finding 4: `release` forgets the lease before its statement runs; when the statement
/// fails (a statement timeout here; a cut connection or a dropped future alike), the
/// lease stays attached and forgotten, and the session keeps it alive for ever: the
/// key is never free again while this backend runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_does_not_keep_the_lease_in_the_session_for_ever() {
    let url = shared_url();
    let t = table("sessrev", "failed_release");
    let a = Arc::new(
        PostgresBackend::connect(
            PostgresOptions::new(&url)
                .table(t.clone())
                .statement_timeout(Duration::from_millis(400)),
        )
        .await
        .unwrap(),
    );
    let keeper = Key::system(["rev", "keeper"]);
    let gone = Key::system(["rev", "released"]);
    let k_token = grant(&a, &keeper, TTL).await;
    let g_token = grant(&a, &gone, TTL).await;
    let outcomes = a
        .renew_many(&[(keeper.clone(), k_token), (gone.clone(), g_token)], TTL)
        .await;
    assert!(outcomes
        .iter()
        .all(|o| *o.as_ref().unwrap() == RenewOutcome::Renewed));
    let db = connect(&url).await;
    assert!(session_of(&db, &t, &gone).await.is_some());
    let blocker = connect(&url).await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .query(
            &format!("SELECT 1 FROM {t} WHERE key = $1 FOR UPDATE"),
            &[&gone.to_string()],
        )
        .await
        .unwrap();
    assert!(a.release(&gone, g_token).await.is_err());
    blocker.batch_execute("COMMIT").await.unwrap();
    keep_session(&a, &keeper, k_token, TTL * 3).await;
    assert!(
        free(&db, &t, &gone).await,
        "a lease whose release failed is kept alive by the session: {:?}",
        session_of(&db, &t, &gone).await
    );
}

/// Finding 5: a lease left (handed over) while a renewal of it is in flight is
/// remembered again as a member when that renewal's answer (judged on its snapshot,
/// from before the leave) comes back: a re-attach of the lease through the same
/// backend (its client came back to the same server) is then renewed as a member,
/// found out of the session, and lost, although the lease is live and the client
/// holds its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_during_its_renewal_can_be_re_attached_here() {
    let url = shared_url();
    let t = table("sessrev", "left_in_flight");
    let a = backend(&url, &t).await;
    let left = Key::system(["rev", "a_left"]);
    let newcomer = Key::system(["rev", "b_new"]);
    let l_token = grant(&a, &left, TTL).await;
    assert_eq!(
        a.renew(&left, l_token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let n_token = grant(&a, &newcomer, TTL).await;
    // A renewal of both (the newcomer to attach) waits for the newcomer's row; its
    // snapshot was taken before the leave below.
    let blocker = connect(&url).await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .query(
            &format!("SELECT 1 FROM {t} WHERE key = $1 FOR UPDATE"),
            &[&newcomer.to_string()],
        )
        .await
        .unwrap();
    let renewal = {
        let (a, left, newcomer) = (a.clone(), left.clone(), newcomer.clone());
        tokio::spawn(async move {
            a.renew_many(&[(left, l_token), (newcomer, n_token)], TTL)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!renewal.is_finished());
    a.leave(&left, l_token).await.unwrap();
    blocker.batch_execute("COMMIT").await.unwrap();
    let _ = renewal.await.unwrap();
    // The client comes back to this backend with its token, before its deadline.
    assert_eq!(
        a.renew(&left, l_token, TTL).await.unwrap(),
        RenewOutcome::Renewed,
        "a live lease, re-attached by its token, is lost"
    );
}

/// Finding 6: every backend's first operation runs the schema statements, and
/// `ALTER TABLE … ADD COLUMN IF NOT EXISTS` takes an ACCESS EXCLUSIVE lock on the
/// lease table even when the column is there. Behind a long reader (a backup, an
/// operator's open transaction) that lock request waits, and every other server's
/// renewals queue behind it: a server starting stops everyone's renewals until its
/// statement times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_backend_does_not_block_the_others_renewals() {
    let url = shared_url();
    let t = table("sessrev", "start_lock");
    let a = backend(&url, &t).await;
    let key = Key::system(["rev", "held"]);
    let token = grant(&a, &key, TTL).await;
    assert_eq!(
        a.renew(&key, token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    // A long reader of the lease table.
    let reader = connect(&url).await;
    reader.batch_execute("BEGIN").await.unwrap();
    reader
        .query(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap();
    // Another server starts (it makes sure of the schema as it connects).
    let starting = {
        let (url, t) = (url.clone(), t.clone());
        tokio::spawn(async move {
            PostgresBackend::connect(
                PostgresOptions::new(&url)
                    .table(t)
                    .statement_timeout(Duration::from_secs(4)),
            )
            .await
            .map(drop)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let renewed = tokio::time::timeout(Duration::from_secs(1), a.renew(&key, token, TTL)).await;
    reader.batch_execute("COMMIT").await.unwrap();
    let _ = starting.await.unwrap();
    assert!(
        matches!(renewed, Ok(Ok(RenewOutcome::Renewed))),
        "a renewal waited behind a starting server's schema lock: {renewed:?}"
    );
}

/// Finding 7: during a rolling upgrade, old-version servers share the table. The
/// previous version's acquire (its whole statement, as `git show
/// 47c7f7d:src/backend/postgres/sql.rs` has it) on a key held through a session must
/// answer "held", as the docs promise; its time-left sub-select computes
/// `expires_at - now()` on 'infinity', which PostgreSQL before 17 refuses ("interval
/// out of range"): the old server's acquire, info and list of such keys fail instead.
///
/// Not fixed here: the fix changes what is stored. An attached row should carry a
/// finite far-future marker (say '9999-12-31'), which old servers read as held with a
/// (huge) finite time left; the new statements would take any `expires_at` at or past
/// the marker (so 'infinity' too) as attached, and use the marker, not 'infinity', as
/// the expiry of a session row that is not there (the new `us_left` fails the same way
/// on an operator-deleted session row). That touches every statement, the docs' SQL
/// and the tests that look for 'infinity'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "finding 7: the previous version's acquire/info/list fail on 'infinity' rows (cannot subtract infinite timestamps); needs a finite attached marker"]
async fn the_previous_versions_statements_read_a_session_lease_as_held() {
    let url = shared_url();
    let t = table("sessrev", "old_sql");
    let a = backend(&url, &t).await;
    let key = Key::system(["rev", "held"]);
    let token = grant(&a, &key, TTL).await;
    assert_eq!(
        a.renew(&key, token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let db = connect(&url).await;
    assert!(session_of(&db, &t, &key).await.is_some());
    let ttl = "($2::bigint * interval '1 millisecond')";
    let us_left = "GREATEST(0, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000000)::bigint)";
    let live = "expires_at > now()";
    let old_acquire = format!(
        "WITH ins AS (
            INSERT INTO {t} AS l (key, token, ttl_ms, expires_at, metadata, revoked, acquired_at)
            VALUES ($1, nextval('{t}_token_seq'), $2, now() + {ttl}, $3, false, now())
            ON CONFLICT (key) DO UPDATE SET
                token = nextval('{t}_token_seq'), ttl_ms = EXCLUDED.ttl_ms,
                expires_at = EXCLUDED.expires_at, metadata = EXCLUDED.metadata,
                revoked = false, acquired_at = EXCLUDED.acquired_at
            WHERE l.expires_at <= now()
            RETURNING token)
        SELECT (SELECT token FROM ins),
               (SELECT {us_left} FROM {t} WHERE key = $1 AND {live})"
    );
    let row = db
        .query_one(
            &old_acquire,
            &[&key.to_string(), &1500i64, &Vec::<u8>::new()],
        )
        .await;
    let row = row.expect("the old acquire answers");
    let taken: Option<i64> = row.get(0);
    let left: Option<i64> = row.get(1);
    assert_eq!(taken, None, "an old server took a session lease");
    assert!(left.is_some_and(|us| us > 0), "held, with time left");
    let old_info = format!(
        "SELECT token, ttl_ms, {us_left}, metadata, revoked, acquired_at FROM {t} WHERE key = $1 AND {live}"
    );
    db.query_one(&old_info, &[&key.to_string()])
        .await
        .expect("the old info answers");
}

/// Finding 4b (found in the fix of finding 4): a leave still owed from a failed release
/// must not take the lease out of its session once it was re-attached here by its
/// token: the sweep would detach a lease its holder keeps renewing, with an expiry from
/// before (past), and another holder could take it while the first is still renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_re_attached_after_a_failed_release_stays_in_its_session() {
    let url = shared_url();
    let t = table("sessrev", "back_after_release");
    let a = Arc::new(
        PostgresBackend::connect(
            PostgresOptions::new(&url)
                .table(t.clone())
                .statement_timeout(Duration::from_millis(400)),
        )
        .await
        .unwrap(),
    );
    let key = Key::system(["rev", "back"]);
    let token = grant(&a, &key, TTL).await;
    assert_eq!(
        a.renew(&key, token, TTL).await.unwrap(),
        RenewOutcome::Renewed
    );
    let db = connect(&url).await;
    let blocker = connect(&url).await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .query(
            &format!("SELECT 1 FROM {t} WHERE key = $1 FOR UPDATE"),
            &[&key.to_string()],
        )
        .await
        .unwrap();
    assert!(a.release(&key, token).await.is_err());
    blocker.batch_execute("COMMIT").await.unwrap();
    // Its holder comes back with its token and keeps renewing it.
    for _ in 0..8 {
        assert_eq!(
            a.renew(&key, token, TTL).await.unwrap(),
            RenewOutcome::Renewed,
            "a renewed lease was taken out of its session: {:?}",
            session_of(&db, &t, &key).await
        );
        tokio::time::sleep(TTL / 4).await;
    }
}

fn via(url: &str, port: u16) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let mut s = format!("host=127.0.0.1 port={port}");
    if let Some(user) = config.get_user() {
        s += &format!(" user={user}");
    }
    if let Some(db) = config.get_dbname() {
        s += &format!(" dbname={db}");
    }
    s
}

fn target(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        other => panic!("this test needs a TCP database address, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port)
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
}
