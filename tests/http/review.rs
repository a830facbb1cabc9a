//! Regressions from an adversarial review of the HTTP API, its keepers and re-attaching
//! (handover between HTTP keepers and native streams).

use std::time::Duration;

use serde_json::json;

use crate::client::Http;

/// Finding 1: a re-attach (`resume`) through the server that holds the lease took the
/// lease over from its keeper (or stream) without looking at the TTL asked for: another
/// `ttl_ms` was accepted (docs/protocol.md: "another `ttl` is refused"), and the new
/// keeper then waited a whole *asked* TTL for a request: a lease kept alive without
/// heartbeats for as long as a client cared to ask (`ttl_ms` up to u64::MAX, past the
/// 24 h `MAX_TTL` a fresh acquire is held to, answered with a `heartbeat_every_ms` of
/// 4.6e18).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_resume_with_another_ttl_is_refused_by_the_server_that_holds_it() {
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let key = "/system/http-review/resume-ttl";
    let a = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 5000 }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let token = a.body["token"].clone();
    for ttl in [
        json!(18_446_744_073_709_551_615_u64),
        json!(3_600_000),
        json!(1),
    ] {
        let r = http
            .post(
                "/v1/acquire",
                json!({ "key": key, "ttl_ms": ttl, "resume": token }),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "resume_ttl"),
            "{ttl}: {}",
            r.body
        );
    }
    // The lease is still kept by its first keeper.
    let h = http
        .post("/v1/heartbeat", json!({ "key": key, "token": token }))
        .await;
    assert_eq!(h.status, 200, "{}", h.body);
    // The same TTL re-attaches it.
    let r = http
        .post(
            "/v1/acquire",
            json!({ "key": key, "ttl_ms": 5000, "resume": token }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["token"], token);
    let done = http
        .post("/v1/release", json!({ "key": key, "token": token }))
        .await;
    assert_eq!(done.body["released"], json!(true), "{}", done.body);
}

/// Finding 1, through a native stream: a resume on a new stream of the server that
/// holds the lease, with another TTL, is refused (`INVALID_ARGUMENT`), and the stream
/// that holds the lease keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_resume_with_another_ttl_is_refused_by_the_server_that_holds_it() {
    use crate::support::remote::{raw_hold, raw_resume};
    let server = crate::server().await;
    let key = leases::Key::system(["http-review", "native-resume-ttl"]);
    let ttl = Duration::from_secs(5);
    let (held, _) = raw_hold(server.local_addr(), &key, ttl).await;
    let info = crate::support::remote::client_of(&server)
        .await
        .lease_info(&key)
        .await
        .unwrap()
        .expect("held");
    for asked in [
        Duration::from_secs(3600),
        Duration::from_millis(u64::MAX / 2),
    ] {
        let refused = raw_resume(server.local_addr(), &key, asked, info.token).await;
        let status = refused.err().expect("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let (again, token, _) = raw_resume(server.local_addr(), &key, ttl, info.token)
        .await
        .expect("the same TTL re-attaches it");
    assert_eq!(token, info.token);
    drop((held, again));
}

/// A client that goes away while its acquire waits (`wait_ms`) is never granted the
/// key: when the key comes free, the next client gets it at once, not after a keeper
/// has waited out a TTL for a client that never heard of its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_whose_client_went_away_gets_nothing() {
    use tokio::io::AsyncWriteExt;
    let server = crate::server().await;
    let addr = server.local_addr();
    let http = Http::new(addr);
    let key = "/system/http-review/gone-waiter";
    let a = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 30_000 }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // B waits for the key, then hangs up.
    let body = json!({ "key": key, "ttl_ms": 30_000, "wait_ms": 60_000 }).to_string();
    let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/acquire HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    b.write_all(request.as_bytes()).await.unwrap();
    // (On a machine too slow to have read B's request by now, B never waited: the test
    // then passes without proving anything, never fails.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = http
        .post(
            "/v1/release",
            json!({ "key": key, "token": a.body["token"] }),
        )
        .await;
    assert_eq!(r.body["released"], json!(true), "{}", r.body);
    let c = http
        .post(
            "/v1/acquire",
            json!({ "key": key, "ttl_ms": 30_000, "wait_ms": 10_000 }),
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
}

/// A field given twice in a JSON body is refused (400 `invalid_json`), as a query
/// parameter given twice is: it used to be read as its last value, so that
/// `{"key": "/system/a", ..., "key": "/system/b"}` acted on `/system/b` while anything
/// that read the first (a proxy's check, a log) saw `/system/a`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_given_twice_is_refused() {
    use crate::client::call;
    let server = crate::server().await;
    let addr = server.local_addr();
    let cases: &[(&str, &str)] = &[
        (
            "/v1/acquire",
            r#"{"key": "/system/http-review/a", "ttl_ms": 5000, "key": "/system/http-review/b"}"#,
        ),
        (
            "/v1/acquire",
            r#"{"key": "/system/http-review/a", "ttl_ms": 5000, "ttl_ms": 60000}"#,
        ),
        (
            "/v1/revoke",
            r#"{"key": "/system/http-review/a", "key": "/system/http-review/b"}"#,
        ),
        (
            "/v1/heartbeat",
            r#"{"key": "/system/http-review/a", "token": "1", "token": "2"}"#,
        ),
    ];
    for (path, body) in cases {
        let reply = call(addr, "POST", path, None, Some(body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_json"),
            "{path} {body}: {}",
            reply.body
        );
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("more than once"), "{message}");
    }
    // Nothing was acquired.
    let info = Http::new(addr)
        .get("/v1/info?key=%2Fsystem%2Fhttp-review%2Fb")
        .await;
    assert_eq!(info.body["lease"], serde_json::Value::Null);
    // The same key in a nested value is no duplicate (there is none in the API, but
    // only the body's own fields count).
    let ok = call(
        addr,
        "POST",
        "/v1/acquire",
        None,
        Some(br#"{"key": "/system/http-review/c", "ttl_ms": 5000, "metadata": "{\"key\": 1, \"key\": 2}"}"#),
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
}

/// A web page of another origin must not change leases through the visitor's browser:
/// a `fetch` with `mode: "no-cors"` and a `text/plain` body (or a form posted with
/// `enctype="text/plain"`) needs no preflight, and the API read any body as JSON
/// whatever its type, so on a server without a token (the default, bound to loopback)
/// any site an operator visited could acquire, release or revoke leases on it. Such a
/// request says where it comes from (`Origin`, `Sec-Fetch-Site`): 403 `cross_origin`.
/// Requests without them (curl, programs) and the console's own (same origin) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_request_from_a_browser_changes_no_lease() {
    use crate::client::call_with;
    let server = crate::server_with(leases::service::ServeOptions {
        console: true,
        ..crate::support::remote::local()
    })
    .await;
    let addr = server.local_addr();
    let http = Http::new(addr);
    let key = "/system/http-review/csrf";
    let held = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 5000 }))
        .await;
    assert_eq!(held.status, 200, "{}", held.body);
    let id = json!({ "key": key, "token": held.body["token"] }).to_string();
    let other = json!({ "key": "/system/http-review/csrf-b", "ttl_ms": 5000 }).to_string();
    let revoke = json!({ "key": key }).to_string();
    let evil: &[&[(&str, &str)]] = &[
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ],
        &[("Origin", "null"), ("Content-Type", "text/plain")],
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Content-Type", "text/plain"),
        ],
    ];
    for headers in evil {
        for (path, body) in [
            ("/v1/revoke", &revoke),
            ("/v1/release", &id),
            ("/v1/heartbeat", &id),
            ("/v1/acquire", &other),
        ] {
            let reply = call_with(addr, "POST", path, headers, None, Some(body.as_bytes()))
                .await
                .unwrap();
            assert_eq!(
                (reply.status, reply.code()),
                (403, "cross_origin"),
                "{path} {headers:?}: {}",
                reply.body
            );
        }
    }
    let info = http
        .get("/v1/info?key=%2Fsystem%2Fhttp-review%2Fcsrf")
        .await;
    assert_eq!(info.body["lease"]["revoked"], json!(false), "{}", info.body);
    assert_eq!(
        http.get("/v1/info?key=%2Fsystem%2Fhttp-review%2Fcsrf-b")
            .await
            .body["lease"],
        serde_json::Value::Null
    );
    // The console's own requests (same origin) and a user's typed ones pass.
    let origin = format!("http://{addr}");
    let own: &[&[(&str, &str)]] = &[
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        &[("Origin", &origin)],
        &[("Sec-Fetch-Site", "none")],
    ];
    for headers in own {
        let reply = call_with(
            addr,
            "POST",
            "/v1/heartbeat",
            headers,
            None,
            Some(id.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.body);
    }
    let reply = call_with(
        addr,
        "POST",
        "/v1/revoke",
        own[0],
        None,
        Some(revoke.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(reply.body["revoked"], json!(true), "{}", reply.body);
}

/// A revoked HTTP lease: the holder hears it at its next heartbeat (410 `revoked`), and
/// nobody else gets the key before the time the server last promised it has passed
/// (unless the holder releases first). (This held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_http_lease_keeps_its_key_until_the_promise() {
    use std::time::Instant;
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let key = "/system/http-review/revoked";
    let a = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 3000 }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let id = json!({ "key": key, "token": a.body["token"] });
    let sent = Instant::now();
    let h = http.post("/v1/heartbeat", id.clone()).await;
    assert_eq!(h.status, 200, "{}", h.body);
    let promised = sent + Duration::from_millis(h.body["time_left_ms"].as_u64().unwrap());
    let r = http.post("/v1/revoke", json!({ "key": key })).await;
    assert_eq!(r.body["revoked"], json!(true), "{}", r.body);
    let late = http.post("/v1/heartbeat", id.clone()).await;
    assert_eq!(
        (late.status, late.code()),
        (410, "revoked"),
        "{}",
        late.body
    );
    let mut freed = None;
    while sent.elapsed() < Duration::from_secs(20) {
        let b = http
            .post("/v1/acquire", json!({ "key": key, "ttl_ms": 3000 }))
            .await;
        if b.status == 200 {
            freed = Some(Instant::now());
            break;
        }
        assert_eq!(b.status, 409, "{}", b.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freed = freed.expect("free once the promise has passed");
    assert!(freed >= promised, "freed {:?} early", promised - freed);
}

/// An HTTP lease moves to another server of a shared store when its server drains (410
/// `handed_over`, then `acquire` with `resume` through the other), even while a contender
/// waits for the key on that other server; the contender gets the key only after the
/// holder's release. (This held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_lease_moves_past_a_waiter_when_its_server_drains() {
    use crate::support::remote::{local, manager_on};
    use crate::support::shared_store::SharedStore;
    use leases::service::LeaseServer;
    let store: std::sync::Arc<dyn leases::backend::Backend> =
        std::sync::Arc::new(SharedStore::default());
    let s1 = LeaseServer::start(manager_on(store.clone()).await, local())
        .await
        .unwrap();
    let s2 = LeaseServer::start(manager_on(store.clone()).await, local())
        .await
        .unwrap();
    let (h1, h2) = (Http::new(s1.local_addr()), Http::new(s2.local_addr()));
    let key = "/system/http-review/moves";
    let a = h1
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 3000 }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let token = a.body["token"].clone();
    let id = json!({ "key": key, "token": token });
    let contender = {
        let h2 = h2.clone();
        tokio::spawn(async move {
            h2.post(
                "/v1/acquire",
                json!({ "key": key, "ttl_ms": 3000, "wait_ms": 30_000 }),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(s1.shutdown());
    // The holder hears of the drain, or finds the server gone.
    loop {
        match h1.try_post("/v1/heartbeat", id.clone()).await {
            Ok(r) if r.status == 200 => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(r) => {
                assert_eq!((r.status, r.code()), (410, "handed_over"), "{}", r.body);
                break;
            }
            Err(_) => break,
        }
    }
    let moved = h2
        .post(
            "/v1/acquire",
            json!({ "key": key, "ttl_ms": 3000, "resume": token }),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.body["token"], token);
    stopping.await.unwrap().unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let beat = h2.post("/v1/heartbeat", id.clone()).await;
        assert_eq!(beat.status, 200, "{}", beat.body);
        assert!(!contender.is_finished(), "the contender got the key");
    }
    let released = h2.post("/v1/release", id).await;
    assert_eq!(released.body["released"], json!(true), "{}", released.body);
    let got = contender.await.unwrap();
    assert_eq!(got.status, 200, "{}", got.body);
    assert_ne!(got.body["token"], token);
}

/// A client that hangs up while its acquire waits (`curl --max-time 5` with a long
/// `wait_ms`, in a loop) must not leave anything behind on the server while the key
/// stays held: each left a queued waiter and a task asleep until its wait would have
/// run out (`wait_ms` up to u64::MAX: for ever), so a key held for long (a leader's)
/// collected them without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_hung_up_are_not_kept() {
    use tokio::io::AsyncWriteExt;
    let server = crate::server().await;
    let addr = server.local_addr();
    let http = Http::new(addr);
    let key = "/system/http-review/hung-up-waiters";
    let a = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 30_000 }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = alive();
    let body = json!({ "key": key, "ttl_ms": 30_000, "wait_ms": u64::MAX }).to_string();
    let request = format!(
        "POST /v1/acquire HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut waiters = Vec::new();
    for _ in 0..40 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        waiters.push(c);
    }
    // (A machine too slow to have read them by now passes without proving anything.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(waiters);
    // The server looks at a waiter's caller every 5 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = alive();
    assert!(
        after < before + 20,
        "{} more tasks alive than before 40 waiters came and hung up",
        after.saturating_sub(before)
    );
    // The holder is untouched, and the next waiter gets the key after its release.
    let h = http
        .post(
            "/v1/heartbeat",
            json!({ "key": key, "token": a.body["token"] }),
        )
        .await;
    assert_eq!(h.status, 200, "{}", h.body);
    let next = {
        let http = http.clone();
        tokio::spawn(async move {
            http.post(
                "/v1/acquire",
                json!({ "key": key, "ttl_ms": 30_000, "wait_ms": 30_000 }),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http
        .post(
            "/v1/release",
            json!({ "key": key, "token": a.body["token"] }),
        )
        .await;
    assert_eq!(r.body["released"], json!(true), "{}", r.body);
    assert_eq!(next.await.unwrap().status, 200);
}

/// Many heartbeats of one lease at once (a client that retries on a timeout, several
/// threads of one holder): while the lease lives none is answered `410` (which tells
/// the holder to stop at once and give the key back); a keeper too busy to queue one
/// more says `503` (try again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_heartbeats_is_never_told_the_lease_is_over() {
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let key = "/system/http-review/burst";
    let a = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 30_000 }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let id = json!({ "key": key, "token": a.body["token"] });
    for _ in 0..3 {
        let beats: Vec<_> = (0..100)
            .map(|_| {
                let (http, id) = (http.clone(), id.clone());
                tokio::spawn(async move { http.post("/v1/heartbeat", id).await })
            })
            .collect();
        for beat in beats {
            let r = beat.await.unwrap();
            assert!(
                matches!(r.status, 200 | 503),
                "{} {}: the lease lives",
                r.status,
                r.body
            );
        }
    }
    let r = http.post("/v1/release", id).await;
    assert_eq!(r.body["released"], json!(true), "{}", r.body);
}

/// DNS rebinding: a hostile page whose name was made to resolve to 127.0.0.1 is the
/// same origin as a server on loopback, so the cross-origin check passes it; its
/// requests still name its host. A server on loopback without a token answers only
/// requests for `localhost` or an IP address; with a token, the token decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_name_changes_and_reads_no_lease_on_an_open_loopback_server() {
    use crate::client::call_with;
    let server = crate::server_with(leases::service::ServeOptions {
        console: true,
        ..crate::support::remote::local()
    })
    .await;
    let addr = server.local_addr();
    let port = addr.port();
    let acquire = json!({ "key": "/system/http-review/rebound", "ttl_ms": 5000 }).to_string();
    let rebound = format!("evil.example:{port}");
    for (method, path, body) in [
        ("POST", "/v1/acquire", Some(acquire.as_bytes())),
        ("POST", "/v1/revoke", Some(&br#"{"key": "/system/x"}"#[..])),
        ("GET", "/v1/list", None),
        ("GET", "/v1/info?key=/system/x", None),
        ("GET", "/v1/events", None),
    ] {
        // Same origin, as the browser sees it.
        let origin = format!("http://{rebound}");
        let headers = [("Host", rebound.as_str()), ("Origin", origin.as_str())];
        let reply = call_with(addr, method, path, &headers, None, body)
            .await
            .unwrap();
        assert_eq!(
            (reply.status, reply.code()),
            (403, "cross_origin"),
            "{method} {path}: {}",
            reply.body
        );
    }
    // The names a local user types pass.
    let by_name = format!("localhost:{port}");
    let by_ip6 = format!("[::1]:{port}");
    let by_ip = addr.to_string();
    for host in [
        by_name.as_str(),
        by_ip6.as_str(),
        by_ip.as_str(),
        "localhost",
    ] {
        let reply = call_with(addr, "GET", "/v1/list", &[("Host", host)], None, None)
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    }
    let granted = call_with(
        addr,
        "POST",
        "/v1/acquire",
        &[("Host", by_name.as_str())],
        None,
        Some(acquire.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(granted.status, 200, "{}", granted.body);
    // With a token, a request for any name that carries it is answered.
    let guarded = crate::server_with(leases::service::ServeOptions {
        auth_token: Some("t".into()),
        ..crate::support::remote::local()
    })
    .await;
    let reply = call_with(
        guarded.local_addr(),
        "GET",
        "/v1/list",
        &[("Host", "leases.internal:8895")],
        Some("t"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
}
