//! Running the service: bearer tokens, TLS, the probes and health service, readiness
//! while PostgreSQL is down, and the limit of streams on one connection.

use std::time::Duration;

use leases::service::{LeaseServer, ServeOptions};
use leases::{ClientLeaser, ClientOptions, Key, LeaseManager, Leaser};
use tonic::Code;

use crate::support;
use crate::support::remote::{channel_at, client_of, ftl_open, local, memory_manager, TTL};
use crate::{next, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens() {
    let options = ServeOptions {
        auth_token: Some("s3cret".into()),
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    for token in [None, Some("wrong")] {
        let mut o = ClientOptions::new(url.clone()).min_ttl(TTL);
        if let Some(t) = token {
            o = o.bearer_token(t);
        }
        let c = ClientLeaser::connect_with(o).await.unwrap();
        let e = c
            .acquire_lease(Key::system(["auth"]), TTL)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("bearer token") || e.to_string().contains("authorization"),
            "{e}"
        );
        assert!(c.revoke(&Key::system(["auth"])).await.is_err());
    }
    let c = ClientLeaser::connect_with(ClientOptions::new(url).min_ttl(TTL).bearer_token("s3cret"))
        .await
        .unwrap();
    let (lease, _) = c.acquire_lease(Key::system(["auth"]), TTL).await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = crate::support::scratch::Scratch::dir("tls", "ops");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("server.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), cert.signing_key.serialize_pem()).unwrap();
    let options = ServeOptions {
        tls: Some(leases::service::TlsFiles {
            certificate: dir.join("server.crt"),
            private_key: dir.join("server.key"),
            client_ca: None,
        }),
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let c = ClientLeaser::connect_with(
        ClientOptions::new(format!("https://localhost:{}", server.local_addr().port()))
            .ca_certificate_pem(cert.cert.pem())
            .min_ttl(TTL),
    )
    .await
    .unwrap();
    let (lease, ctx) = c.acquire_lease(Key::system(["tls"]), TTL).await.unwrap();
    tokio::time::sleep(TTL).await;
    assert!(!ctx.is_cancelled());
    lease.release().await.unwrap();
    // Cleartext to a TLS server fails with a typed error, not a hang or panic.
    let plain = ClientLeaser::connect_with(
        ClientOptions::new(format!("http://127.0.0.1:{}", server.local_addr().port()))
            .min_ttl(TTL)
            .request_timeout(Duration::from_secs(2)),
    )
    .await;
    if let Ok(plain) = plain {
        assert!(plain
            .acquire_lease(Key::system(["tls2"]), TTL)
            .await
            .is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_health_and_ping() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = LeaseServer::start(memory_manager().await, local())
        .await
        .unwrap();
    for (path, want) in [("/_readiness", "200"), ("/_liveness", "200")] {
        let mut s = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {want}")),
            "{path}: {out}"
        );
    }
    let c = client_of(&server).await;
    c.check().await.unwrap();
    let ch = channel_at(server.local_addr()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "xyz.block.ftl.lease.v1.LeaseService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_while_postgres_is_down() {
    use leases::backend::PostgresOptions;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = support::pg::PgServer::start(None);
    let manager = LeaseManager::builder()
        .min_ttl(TTL)
        .postgres(PostgresOptions::new(pg.url()).connect_timeout(Duration::from_secs(1)))
        .start()
        .await
        .unwrap();
    let server = LeaseServer::start(manager, local()).await.unwrap();
    let probe = |addr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /_readiness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(probe(server.local_addr()).await.starts_with("HTTP/1.1 200"));
    pg.stop();
    let out = probe(server.local_addr()).await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    let c = client_of(&server).await;
    assert!(c.check().await.is_err());
    pg.start_again();
    let mut ready = false;
    for _ in 0..50 {
        if probe(server.local_addr()).await.starts_with("HTTP/1.1 200") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "ready again after the database came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_streams_on_one_connection() {
    let options = ServeOptions {
        max_streams_per_connection: 3,
        ..local()
    };
    let server = LeaseServer::start(memory_manager().await, options)
        .await
        .unwrap();
    let ch = channel_at(server.local_addr()).await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut s = ftl_open(
            &ch,
            request(&["system", "streams", &i.to_string()], Some(TTL * 5)),
        )
        .await
        .unwrap();
        assert!(next(&mut s).await.unwrap());
        open.push(s);
    }
    let refused = match ftl_open(&ch, request(&["system", "streams", "3"], Some(TTL * 5))).await {
        Ok(mut s) => next(&mut s).await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("too many lease streams"),
        "{refused:?}"
    );
    // Another connection is not affected; and a closed stream frees its place.
    let other = channel_at(server.local_addr()).await;
    let mut s = ftl_open(&other, request(&["system", "streams", "4"], Some(TTL * 5)))
        .await
        .unwrap();
    assert!(next(&mut s).await.unwrap());
    drop(open.pop());
    let mut freed = false;
    for _ in 0..50 {
        if let Ok(mut s) = ftl_open(&ch, request(&["system", "streams", "5"], Some(TTL * 5))).await
        {
            if next(&mut s).await.is_ok() {
                freed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "a closed stream's place was not freed");
}
