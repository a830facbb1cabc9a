//! The console switch (`ServeOptions::console`) and the event log behind the console's
//! timeline: without the switch there is no page and every lease route needs the
//! token; with it the page is served (with its content security policy) and the read
//! routes answer a request without a token, while changes and wrong tokens are still
//! refused; `GET /v1/events` tells grants and ends with their tokens, in order.

use serde_json::{json, Value};

use crate::client::{call, Http};

fn with_token(console: bool) -> leases::service::ServeOptions {
    leases::service::ServeOptions {
        auth_token: Some("t".into()),
        console,
        ..crate::support::remote::local()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_switch_there_is_no_console_and_reads_need_the_token() {
    let server = crate::server_with(with_token(false)).await;
    let addr = server.local_addr();
    // (An unknown path gets the gRPC router's answer: `UNIMPLEMENTED`, not a page.)
    let page = call(addr, "GET", "/console", None, None).await.unwrap();
    let kind = page.header("content-type").unwrap_or_default();
    assert!(!kind.starts_with("text/html"), "{kind}");
    assert!(page.header("content-security-policy").is_none());
    for path in ["/v1/list", "/v1/events", "/v1/info?key=/system/x"] {
        let reply = call(addr, "GET", path, None, None).await.unwrap();
        assert_eq!(reply.status, 401, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_serves_the_page_and_opens_reads_only() {
    let server = crate::server_with(with_token(true)).await;
    let addr = server.local_addr();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let reply = call(addr, "GET", path, None, None).await.unwrap();
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        let policy = reply.header("content-security-policy").unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }
    for path in ["/v1/list", "/v1/events", "/v1/info?key=/system/x"] {
        let open = call(addr, "GET", path, None, None).await.unwrap();
        assert_eq!(open.status, 200, "{path}: {}", open.body);
        let wrong = call(addr, "GET", path, Some("wrong"), None).await.unwrap();
        assert_eq!(wrong.status, 401, "{path}");
    }
    let body = json!({ "key": "/system/console/a", "ttl_ms": 5000 }).to_string();
    for path in ["/v1/acquire", "/v1/revoke", "/v1/heartbeat", "/v1/release"] {
        let reply = call(addr, "POST", path, None, Some(body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "{path}");
    }
}

/// The kinds and tokens of the events after `after` on `key`.
async fn events_of(http: &Http, key: &str, after: u64) -> Vec<(String, String)> {
    let reply = http.get(&format!("/v1/events?after={after}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == key)
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["token"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_grants_ends_and_takeovers_in_order() {
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let key = "/system/console/events";
    let lease = |body: &Value| body["token"].as_str().unwrap().to_string();
    let first = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 2000 }))
        .await;
    let a = lease(&first.body);
    let revoked = http.post("/v1/revoke", json!({ "key": key })).await;
    assert_eq!(revoked.body["revoked"], true);
    // The client hears the end, then says it has stopped: the key is free at once.
    let beat = http
        .post("/v1/heartbeat", json!({ "key": key, "token": a }))
        .await;
    assert_eq!(beat.status, 410);
    http.post("/v1/release", json!({ "key": key, "token": a }))
        .await;
    let second = http
        .post(
            "/v1/acquire",
            json!({ "key": key, "ttl_ms": 2000, "wait_ms": 3000 }),
        )
        .await;
    assert_eq!(second.status, 200, "{}", second.body);
    let b = lease(&second.body);
    assert!(b.parse::<u64>().unwrap() > a.parse::<u64>().unwrap());
    http.post("/v1/release", json!({ "key": key, "token": b }))
        .await;
    let want = [
        ("granted".to_string(), a.clone()),
        ("revoked".to_string(), a),
        ("granted".to_string(), b.clone()),
        ("released".to_string(), b),
    ];
    // Ends are recorded by a task that watches the lease: allow it a moment.
    let mut got = Vec::new();
    for _ in 0..50 {
        got = events_of(&http, key, 0).await;
        if got.len() >= want.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(got, want);
    // `after` skips what was read, `last` is the newest seq.
    let all = http.get("/v1/events").await.body;
    let last = all["last"].as_u64().unwrap();
    assert_eq!(
        all["events"].as_array().unwrap().last().unwrap()["seq"],
        last
    );
    assert!(events_of(&http, key, last).await.is_empty());
}

/// The same log for leases held over a native `HoldMany` stream, whose ends the stream
/// records itself while it holds them (no task per lease): a revoke the stream sees,
/// and a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_the_ends_of_leases_held_on_a_native_stream() {
    use leases::{ClientLeaser, ClientOptions, Key, Leaser};
    use std::time::Duration;
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let options = ClientOptions::endpoints([format!("http://{}", server.local_addr())])
        .unwrap()
        .min_ttl(crate::support::remote::TTL)
        .request_timeout(Duration::from_secs(5));
    let c = ClientLeaser::connect_with(options).await.unwrap();
    let ttl = Duration::from_secs(5);
    let (revoked, released) = (
        "/system/console/native/revoked",
        "/system/console/native/released",
    );
    let (a, a_ctx) = c
        .acquire_lease(Key::parse(revoked).unwrap(), ttl)
        .await
        .unwrap();
    let (b, _) = c
        .acquire_lease(Key::parse(released).unwrap(), ttl)
        .await
        .unwrap();
    let answer = http.post("/v1/revoke", json!({ "key": revoked })).await;
    assert_eq!(answer.body["revoked"], true);
    a_ctx.cancelled().await;
    let (ta, tb) = (a.token(), b.token());
    let _ = a.release().await;
    b.release().await.unwrap();
    let wants = [
        (revoked, [("granted", ta), ("revoked", ta)]),
        (released, [("granted", tb), ("released", tb)]),
    ];
    for (key, want) in wants {
        let want: Vec<_> = want
            .iter()
            .map(|(kind, token)| (kind.to_string(), token.to_string()))
            .collect();
        let mut got = Vec::new();
        for _ in 0..50 {
            got = events_of(&http, key, 0).await;
            if got.len() >= want.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(got, want, "{key}");
    }
    server.shutdown().await.unwrap();
}
