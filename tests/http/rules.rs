//! The lapse and give-back rules for HTTP leases: a client that stops heartbeating
//! loses its lease after a TTL, and the key stays taken until the time it was last
//! promised has passed; a release frees the key at once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::Http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_keeps_the_key_until_its_promise_then_it_is_free() {
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let key = "/system/http-rules/silent";
    let ttl = 2000;
    let sent = Instant::now();
    let a = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": ttl }))
        .await;
    assert_eq!(a.status, 200);
    // One heartbeat, then silence.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beat_sent = Instant::now();
    let h = http
        .post(
            "/v1/heartbeat",
            json!({ "key": key, "token": a.body["token"] }),
        )
        .await;
    assert_eq!(h.status, 200, "{}", h.body);
    let promised = beat_sent + Duration::from_millis(h.body["time_left_ms"].as_u64().unwrap());
    // Until the promise has passed, nobody else gets the key.
    let mut freed_at = None;
    while sent.elapsed() < Duration::from_secs(10) {
        let b = http
            .post("/v1/acquire", json!({ "key": key, "ttl_ms": ttl }))
            .await;
        if b.status == 200 {
            freed_at = Some(Instant::now());
            break;
        }
        assert_eq!(b.status, 409, "{}", b.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freed_at = freed_at.expect("the key is free once the promise has passed");
    assert!(
        freed_at >= promised,
        "freed {:?} before the promise",
        promised - freed_at
    );
    // The lapsed holder's heartbeat is refused.
    let late = http
        .post(
            "/v1/heartbeat",
            json!({ "key": key, "token": a.body["token"] }),
        )
        .await;
    assert_eq!(late.status, 410, "{}", late.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_frees_the_key_at_once() {
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let key = "/system/http-rules/release";
    let a = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 30_000 }))
        .await;
    let id = json!({ "key": key, "token": a.body["token"] });
    let r = http.post("/v1/release", id.clone()).await;
    assert_eq!((r.status, &r.body["released"]), (200, &json!(true)));
    let b = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 30_000 }))
        .await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert!(
        b.body["token"].as_str().unwrap().parse::<u64>().unwrap()
            > a.body["token"].as_str().unwrap().parse::<u64>().unwrap()
    );
    assert_eq!(http.post("/v1/heartbeat", id).await.status, 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_client_can_reattach_an_http_lease() {
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let key = leases::Key::system(["http-rules", "reattach"]);
    let a = http
        .post(
            "/v1/acquire",
            json!({ "key": key.to_string(), "ttl_ms": 2000 }),
        )
        .await;
    let token: u64 = a.body["token"].as_str().unwrap().parse().unwrap();
    let client = crate::support::remote::client_of(&server).await;
    use leases::Leaser;
    let (lease, ctx) = client
        .acquire_lease_with(
            key.clone(),
            leases::AcquireOptions::new(Duration::from_secs(2)).resume(token),
        )
        .await
        .unwrap();
    assert_eq!(lease.token(), token);
    // The HTTP keeper handed it over.
    let h = http
        .post(
            "/v1/heartbeat",
            json!({ "key": key.to_string(), "token": token.to_string() }),
        )
        .await;
    assert_eq!(h.status, 410);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!ctx.is_cancelled(), "{:?}", ctx.reason());
    lease.release().await.unwrap();
}
