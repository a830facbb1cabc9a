//! The limits of the HTTP API beyond its body size: how many HTTP leases one client
//! (by IP address) may hold, and what an acquire meets when the server stops.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use leases::service::ServeOptions;
use serde_json::{json, Value};

use crate::client::{call_from, Http, Reply};

/// `POST path body` from the address `from`.
async fn post_from(from: &str, http: &Http, path: &str, body: Value) -> Reply {
    let from: IpAddr = from.parse().unwrap();
    let body = body.to_string();
    call_from(
        Some(from),
        http.addr,
        "POST",
        path,
        None,
        Some(body.as_bytes()),
    )
    .await
    .expect("the server answers")
}

/// A client's count of HTTP leases: each place is taken by a lease however it was
/// granted, refused at the limit with 429, and freed however the lease ends (a release
/// at once, a revoke once the key is given back); a refused acquire takes none, and
/// another address has a count of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_holds_at_most_its_limit_of_http_leases() {
    let server = crate::server_with(ServeOptions {
        max_http_leases_per_client: 2,
        ..crate::support::remote::local()
    })
    .await;
    let http = Http::new(server.local_addr());
    let key = |name: &str| format!("/system/http-limits/{name}");
    let acquire = |name: &str| json!({ "key": key(name), "ttl_ms": 1000 });
    let (me, other) = ("127.0.0.2", "127.0.0.3");
    // Another client holds `x`: my refused acquire of it takes no place.
    assert_eq!(
        post_from(other, &http, "/v1/acquire", acquire("x"))
            .await
            .status,
        200
    );
    let a = post_from(me, &http, "/v1/acquire", acquire("a")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let held = post_from(me, &http, "/v1/acquire", acquire("x")).await;
    assert_eq!(held.status, 409, "{}", held.body);
    let b = post_from(me, &http, "/v1/acquire", acquire("b")).await;
    assert_eq!(b.status, 200, "{}", b.body);
    // At the limit.
    let c = post_from(me, &http, "/v1/acquire", acquire("c")).await;
    assert_eq!(c.status, 429, "{}", c.body);
    assert_eq!(c.code(), "too_many_leases");
    assert_eq!(c.body["error"]["limit"], json!(2));
    // The other address is not counted with mine.
    assert_eq!(
        post_from(other, &http, "/v1/acquire", acquire("y"))
            .await
            .status,
        200
    );
    // A release frees a place at once.
    let released = post_from(
        me,
        &http,
        "/v1/release",
        json!({ "key": key("a"), "token": a.body["token"] }),
    )
    .await;
    assert_eq!(released.status, 200, "{}", released.body);
    let c = post_from(me, &http, "/v1/acquire", acquire("c")).await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        post_from(me, &http, "/v1/acquire", acquire("d"))
            .await
            .status,
        429
    );
    // A revoked lease frees its place once its key is given back (after its promise:
    // the client was told it could act until then).
    let revoked = http.post("/v1/revoke", json!({ "key": key("b") })).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let start = Instant::now();
    loop {
        let d = post_from(me, &http, "/v1/acquire", acquire("d")).await;
        if d.status == 200 {
            break;
        }
        assert_eq!(d.status, 429, "{}", d.body);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the revoked lease's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An acquire waiting for a held key when the server begins to stop is answered 503
/// (`unavailable`, retry elsewhere), never left hanging nor granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_waiting_when_the_server_stops_is_503() {
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let key = "/system/http-limits/stopping";
    let held = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 1000 }))
        .await;
    assert_eq!(held.status, 200, "{}", held.body);
    // Kept alive, so that the waiter cannot get the key before the stop.
    let beats = {
        let http = http.clone();
        let token = held.body["token"].clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                http.post("/v1/heartbeat", json!({ "key": key, "token": token }))
                    .await;
            }
        })
    };
    let waiter = {
        let http = http.clone();
        tokio::spawn(async move {
            http.post(
                "/v1/acquire",
                json!({ "key": key, "ttl_ms": 1000, "wait_ms": 60_000 }),
            )
            .await
        })
    };
    // The waiter is waiting (its acquire has reached the server) before the stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());
    let stopped = tokio::spawn(server.shutdown());
    let answer = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiting acquire is answered")
        .unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.code(), "unavailable");
    beats.abort();
    stopped.await.unwrap().unwrap();
}
