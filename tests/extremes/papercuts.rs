//! One regression test per papercut of issue #19 outside the streams: options that were
//! accepted and then panicked, hung or refused everything.

use std::time::Duration;

use leases::election::{Election, ElectionOptions};
use leases::service::{LeaseServer, ServeError, ServeOptions};
use leases::{
    AcquireOptions, ClientLeaser, ClientOptions, Key, LeaseError, LeaseManager, Leaser,
    MAX_METADATA_LEN, MAX_TTL,
};

use crate::panics::{count_panics, panics, paused};
use crate::servers::{local, manager};

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
