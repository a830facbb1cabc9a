//! Every public options type with extreme values (0, 1 ns, `u64::MAX` seconds,
//! `Duration::MAX`, `usize::MAX` sizes and counts, empty and huge strings): building
//! and using each one returns `Ok` or a typed error and never panics, and an election
//! never gets stuck. Plus one regression test per papercut of issue #19.
//!
//! In-process TTLs run on paused tokio time; the service's cases use real sockets and
//! real (short) time. A panic anywhere in this process, spawned tasks included, is
//! counted by a panic hook and fails the test that checks for it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use leases::backend::{Backend, EtcdBackend, EtcdOptions, PostgresBackend, PostgresOptions};
use leases::election::{Election, ElectionOptions, Leadership};
use leases::proto::leases::v1::hold_request::Kind as In;
use leases::proto::leases::v1::leases_client::LeasesClient;
use leases::proto::leases::v1::{Acquire, HoldRequest};
use leases::proto::xyz::block::ftl::lease::v1::lease_service_client::LeaseServiceClient;
use leases::proto::xyz::block::ftl::lease::v1::AcquireLeaseRequest;
use leases::service::{LeaseServer, ServeError, ServeOptions};
use leases::{
    AcquireOptions, ClientLeaser, ClientOptions, Key, LeaseError, LeaseManager, Leaser,
    MAX_METADATA_LEN, MAX_TTL,
};
use proptest::prelude::*;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

/// The command line's duration parser, as the binary compiles it.
#[path = "../src/bin/leases/duration.rs"]
#[allow(dead_code)]
mod duration;

// ------------------------------------------------------------------ panics ---

thread_local! {
    /// Panics on this thread so far. Every case runs its runtime on the test's own
    /// thread (current-thread runtimes), so a panic of any task it spawned counts here
    /// and nowhere else.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts every panic, per thread, from now on.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|n| n.set(n.get() + 1));
            default(info);
        }));
    });
}

/// Panics on this thread so far.
fn panics() -> usize {
    PANICS.with(Cell::get)
}

fn paused() -> tokio::runtime::Runtime {
    count_panics();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn real() -> tokio::runtime::Runtime {
    count_panics();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// -------------------------------------------------------------- strategies ---

/// Durations, the extremes weighted up (each is as likely as a random one).
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        2 => Just(Duration::ZERO),
        2 => Just(Duration::from_nanos(1)),
        1 => Just(Duration::from_millis(1)),
        2 => Just(Duration::from_secs(1)),
        1 => Just(Duration::from_secs(5)),
        1 => Just(Duration::from_secs(30)),
        2 => Just(MAX_TTL),
        1 => Just(MAX_TTL + Duration::from_nanos(1)),
        2 => Just(Duration::from_secs(u64::MAX)),
        2 => Just(Duration::MAX),
        1 => any::<u64>().prop_map(Duration::from_nanos),
        1 => (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(2),
        Just(1024),
        Just(usize::MAX),
        any::<usize>()
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(2), Just(u32::MAX), any::<u32>()]
}

/// Metadata and identity sizes around the limit.
fn metadata_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(MAX_METADATA_LEN),
        Just(MAX_METADATA_LEN + 1),
        0..2 * MAX_METADATA_LEN
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("leases".to_string()),
        "[a-z_]{1,60}",
        Just("x".repeat(MAX_METADATA_LEN + 1)),
        any::<String>(),
    ]
}

/// In-process cases are cheap (paused time): many of them.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn valid_ttl(ttl: Duration, min: Duration) -> bool {
    ttl >= min && ttl <= MAX_TTL
}

// ------------------------------------------------------------- properties ---

proptest! {
    #![proptest_config(config())]

    /// The manager's builder and acquire options: a typed refusal or a working manager.
    #[test]
    fn managers_and_acquires_at_extremes(
        min_ttl in duration(),
        margin in proptest::option::of(duration()),
        shutdown in duration(),
        ttl in duration(),
        meta in metadata_len(),
        wait in duration(),
    ) {
        let before = panics();
        paused().block_on(async {
            let mut builder = LeaseManager::builder().min_ttl(min_ttl).shutdown_timeout(shutdown);
            if let Some(margin) = margin {
                builder = builder.safety_margin(margin);
            }
            let manager = match builder.start().await {
                Ok(m) => m,
                Err(LeaseError::InvalidConfig(_)) => {
                    let min_ok = min_ttl >= Duration::from_millis(1) && min_ttl <= MAX_TTL;
                    let margin_ok = margin.is_none_or(|m| !m.is_zero() && m < min_ttl / 2);
                    prop_assert!(!(min_ok && margin_ok), "valid options refused");
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("untyped refusal {e:?}"))),
            };
            let key = Key::system(["extremes", "manager"]);
            let options = AcquireOptions::new(ttl).metadata(vec![7u8; meta]);
            let first = manager.acquire_lease_with(key.clone(), options.clone()).await;
            let valid = valid_ttl(ttl, min_ttl) && meta <= MAX_METADATA_LEN;
            match &first {
                Ok(_) => prop_assert!(valid),
                Err(LeaseError::TtlTooShort { .. }
                    | LeaseError::TtlTooLong { .. }
                    | LeaseError::MetadataTooLarge { .. }) => prop_assert!(!valid),
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
            }
            // A second holder waits as long as it was told (or until we stop looking).
            let second = tokio::time::timeout(
                Duration::from_secs(600),
                manager.acquire_lease_with(key.clone(), options.wait(wait)),
            )
            .await;
            drop(second);
            drop(first);
            manager.shutdown().await;
            Ok(())
        })?;
        prop_assert_eq!(panics(), before, "something panicked (see above)");
    }

    /// Elections: a typed refusal, or a candidate that leads once the key is free (or
    /// stops with the leaser's refusal); never a candidate stuck as a follower.
    #[test]
    fn elections_at_extremes(
        identity_len in metadata_len(),
        ttl in duration(),
        retry in proptest::option::of(duration()),
        backoff in proptest::option::of((duration(), duration())),
        rival in any::<bool>(),
    ) {
        let before = panics();
        paused().block_on(async {
            let min = Duration::from_secs(1);
            let manager = LeaseManager::builder().min_ttl(min).start().await.unwrap();
            let key = Key::system(["extremes", "election"]);
            let held = if rival {
                Some(manager.hold(key.clone(), Duration::from_secs(10)).await.unwrap())
            } else {
                None
            };
            let mut options = ElectionOptions::new("i".repeat(identity_len), ttl).jitter_seed(7);
            if let Some(retry) = retry {
                options = options.retry(retry);
            }
            if let Some((lo, hi)) = backoff {
                options = options.backoff(lo, hi);
            }
            let election = match Election::campaign(manager.clone(), key.clone(), options) {
                Ok(e) => e,
                Err(LeaseError::MetadataTooLarge { .. }) => {
                    prop_assert!(identity_len > MAX_METADATA_LEN);
                    manager.shutdown().await;
                    return Ok(());
                }
                Err(LeaseError::TtlTooLong { .. }) => {
                    prop_assert!(ttl > MAX_TTL);
                    manager.shutdown().await;
                    return Ok(());
                }
                Err(LeaseError::InvalidConfig(_)) => {
                    manager.shutdown().await;
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("untyped refusal {e:?}"))),
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(held) = held {
                let state = election.leadership();
                prop_assert!(
                    matches!(state, Leadership::Follower { .. } | Leadership::Stopped { .. }),
                    "{state:?} while another holds the key"
                );
                held.release().await.unwrap();
            }
            // The key is free: within a minute the candidate leads, or it has stopped
            // because the leaser refused its TTL.
            let mut state = election.leadership();
            for _ in 0..600 {
                if state.is_leader() || state.is_stopped() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                state = election.leadership();
            }
            if valid_ttl(ttl, min) {
                prop_assert!(state.is_leader(), "stuck as {state:?}");
            } else {
                prop_assert!(
                    matches!(state, Leadership::Stopped { error: Some(LeaseError::TtlTooShort { .. }) }),
                    "stuck as {state:?}"
                );
            }
            election.resign().await.unwrap();
            manager.shutdown().await;
            Ok(())
        })?;
        prop_assert_eq!(panics(), before, "something panicked (see above)");
    }

    /// The command line's durations: any text parses or is refused, and what parses
    /// is shown and used as a TTL without a panic.
    #[test]
    fn cli_durations_at_extremes(
        input in prop_oneof![
            any::<String>(),
            "[0-9.]{0,25}(ms|s|m|h|d| |x){0,2}",
            any::<u64>().prop_map(|n| format!("{n}d")),
            any::<u64>().prop_map(|n| format!("{n}s{n}ms")),
        ],
    ) {
        let before = panics();
        if let Ok(d) = duration::parse(&input) {
            let _ = duration::human(d);
            let _ = duration::rfc3339(std::time::UNIX_EPOCH + d.min(Duration::from_secs(1 << 40)));
            let key = Key::system(["extremes", "cli"]);
            let held = paused().block_on(async {
                let manager = LeaseManager::start().await.unwrap();
                let held = manager.acquire_lease_with(key, AcquireOptions::new(d).wait(d)).await;
                manager.shutdown().await;
                held.map(|_| ())
            });
            match held {
                Ok(()) => prop_assert!(valid_ttl(d, leases::MIN_TTL)),
                Err(LeaseError::TtlTooShort { .. } | LeaseError::TtlTooLong { .. }) => {}
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
            }
        }
        prop_assert_eq!(panics(), before, "something panicked (see above)");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..config() })]

    /// PostgreSQL and etcd options: a typed refusal, or a backend that reports its
    /// unreachable store as a typed error (nothing listens on port 1).
    #[test]
    fn backend_options_at_extremes(
        pool in size(),
        table in text(),
        prefix in text(),
        connect in duration(),
        statement in duration(),
        window in duration(),
        batch in size(),
    ) {
        let before = panics();
        real().block_on(async {
            let pg = PostgresOptions::new("postgres://leases@127.0.0.1:1/leases")
                .pool_size(pool)
                .table(table)
                .connect_timeout(connect)
                .statement_timeout(statement)
                .renew_batch_window(window)
                .renew_batch_size(batch);
            match PostgresBackend::new(pg) {
                Ok(backend) => {
                    let checked = tokio::time::timeout(Duration::from_millis(300), backend.check()).await;
                    prop_assert!(!matches!(checked, Ok(Ok(()))), "nothing listens there");
                }
                Err(LeaseError::InvalidConfig(_)) => {}
                Err(e) => return Err(TestCaseError::fail(format!("untyped refusal {e:?}"))),
            }
            let etcd = EtcdOptions::new(["http://127.0.0.1:1"])
                .prefix(prefix)
                .connect_timeout(connect)
                .request_timeout(statement);
            match EtcdBackend::new(etcd) {
                Ok(backend) => {
                    let checked = tokio::time::timeout(Duration::from_millis(300), backend.check()).await;
                    prop_assert!(!matches!(checked, Ok(Ok(()))), "nothing listens there");
                }
                Err(LeaseError::InvalidConfig(_)) => {}
                Err(e) => return Err(TestCaseError::fail(format!("untyped refusal {e:?}"))),
            }
            Ok(())
        })?;
        prop_assert_eq!(panics(), before, "something panicked (see above)");
    }

    /// A lease service and a client of it: a typed refusal, or a server that serves a
    /// client (with its own extreme options) and shuts down cleanly.
    #[test]
    fn servers_and_clients_at_extremes(
        default_ttl in prop_oneof![duration(), (1u64..=86_400).prop_map(Duration::from_secs), Just(MAX_TTL)],
        max_message in prop_oneof![Just(0usize), Just(1), Just(usize::MAX), Just(64 * 1024 + 4096)],
        max_keys in size(),
        max_streams in count(),
        health in duration(),
        first_request in duration(),
        connect in duration(),
        request in duration(),
        client_min in duration(),
        ttl in duration(),
        limit in size(),
    ) {
        let before = panics();
        real().block_on(async {
            let min = Duration::from_secs(1);
            let manager = LeaseManager::builder().min_ttl(min).start().await.unwrap();
            let options = ServeOptions {
                bind: "127.0.0.1:0".parse().unwrap(),
                default_ttl,
                max_message_bytes: max_message,
                max_keys_per_stream: max_keys,
                max_streams_per_connection: max_streams,
                health_interval: health,
                first_request_timeout: first_request,
                ..ServeOptions::default()
            };
            let valid = valid_ttl(default_ttl, min)
                && max_message > 0
                && max_keys > 0
                && max_streams > 0
                && !health.is_zero()
                && !first_request.is_zero();
            let server = match LeaseServer::start(manager.clone(), options).await {
                Ok(server) => {
                    prop_assert!(valid, "invalid options accepted");
                    server
                }
                Err(ServeError::InvalidOptions(_)) => {
                    prop_assert!(!valid, "valid options refused");
                    manager.shutdown().await;
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
            };
            let client = ClientOptions::new(format!("http://{}", server.local_addr()))
                .connect_timeout(connect)
                .request_timeout(request)
                .min_ttl(client_min);
            match ClientLeaser::connect_with(client).await {
                Ok(client) => {
                    let key = Key::system(["extremes", "service"]);
                    let _ = client.lease_info(&key).await;
                    let _ = client.list("", limit).await;
                    let acquired = client
                        .acquire_lease_with(key.clone(), AcquireOptions::new(ttl).wait(ttl))
                        .await;
                    if let Ok((lease, _ctx)) = acquired {
                        prop_assert!(valid_ttl(ttl, min.max(client_min)));
                        let _ = lease.release().await;
                    }
                }
                Err(LeaseError::InvalidConfig(_)) => {
                    prop_assert!(connect.is_zero() || request.is_zero());
                }
                Err(LeaseError::Backend(_)) => {}
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
            }
            let stopped = tokio::time::timeout(Duration::from_secs(60), server.shutdown()).await;
            prop_assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
            manager.shutdown().await;
            Ok(())
        })?;
        prop_assert_eq!(panics(), before, "something panicked (see above)");
    }
}

// ------------------------------------------------------ regression tests ---

/// `retry(Duration::MAX)` passed validation, then the campaign task panicked
/// (`Instant + Duration` overflow) and the candidate stayed a follower forever.
#[test]
fn an_election_with_the_longest_retry_leads() {
    let before = panics();
    paused().block_on(async {
        let manager = LeaseManager::start().await.unwrap();
        let options = ElectionOptions::new("a", Duration::from_secs(10)).retry(Duration::MAX);
        let election = Election::campaign(manager.clone(), Key::system(["e"]), options).unwrap();
        let elected = tokio::time::timeout(Duration::from_secs(60), election.elected()).await;
        assert!(
            matches!(elected, Ok(Some(_))),
            "not elected: {:?}",
            election.leadership()
        );
        election.resign().await.unwrap();
        manager.shutdown().await;
    });
    assert_eq!(panics(), before, "something panicked (see above)");
}

fn local() -> ServeOptions {
    ServeOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        default_ttl: Duration::from_secs(2),
        ..ServeOptions::default()
    }
}

async fn manager() -> LeaseManager {
    LeaseManager::builder()
        .min_ttl(Duration::from_secs(1))
        .start()
        .await
        .unwrap()
}

async fn refused(options: ServeOptions) -> String {
    let manager = manager().await;
    let result = LeaseServer::start(manager.clone(), options).await;
    let why = match result {
        Err(ServeError::InvalidOptions(why)) => why,
        Ok(server) => {
            server.shutdown().await.unwrap();
            panic!("accepted");
        }
        Err(e) => panic!("refused with {e:?}"),
    };
    manager.shutdown().await;
    why
}

/// A default TTL above `MAX_TTL` was accepted, and then every FTL request without a
/// TTL was refused.
#[tokio::test]
async fn serve_refuses_a_default_ttl_above_the_maximum() {
    let why = refused(ServeOptions {
        default_ttl: MAX_TTL + Duration::from_secs(1),
        ..local()
    })
    .await;
    assert!(why.contains("maximum TTL"), "{why}");
}

/// A zero health interval re-checked the backend in a busy loop: refused.
#[tokio::test]
async fn serve_refuses_zero_intervals_and_sizes() {
    let why = refused(ServeOptions {
        health_interval: Duration::ZERO,
        ..local()
    })
    .await;
    assert!(why.contains("health_interval"), "{why}");
    let why = refused(ServeOptions {
        first_request_timeout: Duration::ZERO,
        ..local()
    })
    .await;
    assert!(why.contains("first_request_timeout"), "{why}");
    let why = refused(ServeOptions {
        max_message_bytes: 0,
        ..local()
    })
    .await;
    assert!(why.contains("max_message_bytes"), "{why}");
}

/// A TTL the server refuses comes back as the same typed error, not `InvalidConfig`.
#[tokio::test]
async fn a_ttl_below_the_servers_minimum_is_ttl_too_short() {
    let manager = LeaseManager::builder()
        .min_ttl(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let client = ClientLeaser::connect_with(
        ClientOptions::new(format!("http://{}", server.local_addr()))
            .min_ttl(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    let ttl = Duration::from_millis(1500);
    let got = client
        .acquire_lease(Key::system(["short"]), ttl)
        .await
        .map(|_| ());
    assert!(
        matches!(got, Err(LeaseError::TtlTooShort { ttl: t, min }) if t == ttl && min == Duration::from_secs(2)),
        "{got:?}"
    );
    server.shutdown().await.unwrap();
    manager.shutdown().await;
}

/// tonic panics on a request timeout too long for gRPC's header: the client saturates.
#[tokio::test]
async fn a_client_with_the_longest_request_timeout_works() {
    count_panics();
    let before = panics();
    let manager = manager().await;
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let client = ClientLeaser::connect_with(
        ClientOptions::new(format!("http://{}", server.local_addr()))
            .request_timeout(Duration::MAX)
            .connect_timeout(Duration::MAX),
    )
    .await
    .unwrap();
    let info = tokio::spawn(async move { client.lease_info(&Key::system(["k"])).await }).await;
    assert!(matches!(info, Ok(Ok(None))), "{info:?}");
    server.shutdown().await.unwrap();
    manager.shutdown().await;
    assert_eq!(panics(), before, "something panicked (see above)");
}

/// A `List` answer larger than gRPC's default 4 MiB limit decodes: 100 leases of
/// 64 KiB metadata each (about 6.5 MB).
#[tokio::test]
async fn a_list_answer_over_4_mib_decodes() {
    let manager = manager().await;
    let mut held = Vec::new();
    for i in 0..100 {
        let key = Key::system(["big", &format!("{i:03}")]);
        let options =
            AcquireOptions::new(Duration::from_secs(60)).metadata(vec![b'm'; MAX_METADATA_LEN]);
        held.push(manager.hold_with(key, options).await.unwrap());
    }
    let server = LeaseServer::start(manager.clone(), local()).await.unwrap();
    let client = ClientLeaser::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    for limit in [0, 100, 1000] {
        let listed = client.list("/system/big/", limit).await;
        let listed = match listed {
            Ok(l) => l,
            Err(e) => panic!("limit {limit}: {e}"),
        };
        assert_eq!(listed.len(), 100);
        assert!(listed.iter().all(|l| l.metadata.len() == MAX_METADATA_LEN));
    }
    assert_eq!(client.list("/system/big/", 3).await.unwrap().len(), 3);
    server.shutdown().await.unwrap();
    drop(held);
    manager.shutdown().await;
}

/// A server that allows one stream per connection, and a channel to it.
async fn one_stream_server() -> (LeaseManager, LeaseServer, Channel, SocketAddr) {
    let manager = manager().await;
    let options = ServeOptions {
        max_streams_per_connection: 1,
        first_request_timeout: Duration::from_millis(300),
        ..local()
    };
    let server = LeaseServer::start(manager.clone(), options).await.unwrap();
    let addr = server.local_addr();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (manager, server, channel, addr)
}

/// A request stream that sends `first` (if any) and then nothing until dropped.
fn requests<T: Send + 'static>(
    first: Option<T>,
) -> (
    mpsc::UnboundedSender<T>,
    impl futures_util::Stream<Item = T> + Send + 'static,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some(first) = first {
        tx.send(first).unwrap();
    }
    (
        tx,
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
    )
}

fn acquire(key: &str) -> HoldRequest {
    HoldRequest {
        kind: Some(In::Acquire(Acquire {
            key: key.into(),
            ttl: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            metadata: Vec::new(),
            wait: None,
        })),
    }
}

/// A native stream that never sends a request kept a task and its connection's only
/// slot until shutdown; now it ends with `DEADLINE_EXCEEDED` and frees the slot.
#[tokio::test]
async fn a_silent_native_stream_ends_and_frees_its_slot() {
    let (manager, server, channel, _) = one_stream_server().await;
    let (_silent, outgoing) = requests::<HoldRequest>(None);
    let mut answers = LeasesClient::new(channel.clone())
        .hold(outgoing)
        .await
        .unwrap()
        .into_inner();
    let end = tokio::time::timeout(Duration::from_secs(5), answers.message()).await;
    match end {
        Ok(Err(status)) => assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}"),
        other => panic!("the silent stream did not end: {other:?}"),
    }
    // Its slot is free again: the connection's one stream can hold a lease.
    let (_keep, outgoing) = requests(Some(acquire("/system/after-silence")));
    let mut answers = LeasesClient::new(channel)
        .hold(outgoing)
        .await
        .unwrap()
        .into_inner();
    let granted = answers.message().await;
    assert!(matches!(granted, Ok(Some(_))), "{granted:?}");
    drop(answers);
    server.shutdown().await.unwrap();
    manager.shutdown().await;
}

/// The same for an FTL stream.
#[tokio::test]
async fn a_silent_ftl_stream_ends_and_frees_its_slot() {
    let (manager, server, channel, _) = one_stream_server().await;
    let (_silent, outgoing) = requests::<AcquireLeaseRequest>(None);
    let mut answers = LeaseServiceClient::new(channel.clone())
        .acquire_lease(outgoing)
        .await
        .unwrap()
        .into_inner();
    let end = tokio::time::timeout(Duration::from_secs(5), answers.message()).await;
    match end {
        Ok(Err(status)) => assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}"),
        other => panic!("the silent stream did not end: {other:?}"),
    }
    let request = AcquireLeaseRequest {
        key: vec!["system".into(), "after-silence".into()],
        ttl: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
    };
    let (_keep, outgoing) = requests(Some(request));
    let mut answers = LeaseServiceClient::new(channel)
        .acquire_lease(outgoing)
        .await
        .unwrap()
        .into_inner();
    let answered = answers.message().await;
    assert!(matches!(answered, Ok(Some(_))), "{answered:?}");
    drop(answers);
    server.shutdown().await.unwrap();
    manager.shutdown().await;
}
