//! The options of the stores and of the lease service at extremes, on real sockets and
//! real (short) time: fewer cases.

use std::time::Duration;

use leases::backend::{Backend, EtcdBackend, EtcdOptions, PostgresBackend, PostgresOptions};
use leases::service::{LeaseServer, ServeError, ServeOptions};
use leases::{
    AcquireOptions, ClientLeaser, ClientOptions, Key, LeaseError, LeaseManager, Leaser, MAX_TTL,
};
use proptest::prelude::*;

use crate::panics::{panics, real};
use crate::strategies::{config, count, duration, size, text, valid_ttl};

/// A backend built from options that name an unreachable store: a typed refusal of the
/// options, or a backend whose check of the store fails.
async fn refused_or_unreachable(
    built: Result<impl Backend, LeaseError>,
) -> Result<(), TestCaseError> {
    match built {
        Ok(backend) => {
            let checked = tokio::time::timeout(Duration::from_millis(300), backend.check()).await;
            prop_assert!(!matches!(checked, Ok(Ok(()))), "nothing listens there");
        }
        Err(LeaseError::InvalidConfig(_)) => {}
        Err(e) => return Err(TestCaseError::fail(format!("untyped refusal {e:?}"))),
    }
    Ok(())
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
            refused_or_unreachable(PostgresBackend::new(pg)).await?;
            let etcd = EtcdOptions::new(["http://127.0.0.1:1"])
                .prefix(prefix)
                .connect_timeout(connect)
                .request_timeout(statement);
            refused_or_unreachable(EtcdBackend::new(etcd)).await
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
