//! The OpenAPI document: it parses, describes exactly the routes the server answers
//! (each documented method answers, every other method is 405, an unknown path 404),
//! and every status it documents for a route is one that route returns (each is
//! triggered: 429 by a client at its limit, 503 by a store that is down).

use serde_json::{json, Value};

use std::sync::Arc;

use leases::backend::{Backend, FaultyBackend, MemoryBackend};

use crate::client::{call, call_from, Http};

/// The most HTTP leases one client may hold, in [`each_documented_code_is_returned`].
const LIMIT: usize = 3;

/// Method, path, body, bearer token, expected status.
type Case<'a> = (&'a str, String, Option<Vec<u8>>, Option<&'a str>, u16);

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_matches_the_routes() {
    let server = crate::server().await;
    let addr = server.local_addr();
    let doc = Http::new(addr).get("/v1/openapi.json").await.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        "/v1/acquire",
        "/v1/heartbeat",
        "/v1/release",
        "/v1/revoke",
        "/v1/info",
        "/v1/list",
        "/v1/events",
        "/v1/ready",
        "/v1/openapi.json",
    ];
    let mut documented: Vec<&str> = paths.keys().map(|s| s.as_str()).collect();
    documented.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(documented, want);
    for (path, ops) in paths {
        for method in METHODS {
            let op = &ops[method.to_ascii_lowercase()];
            let body = if *method == "GET" {
                None
            } else {
                Some(&b"{}"[..])
            };
            let reply = call(addr, method, path, None, body).await.unwrap();
            if op.is_null() {
                assert_eq!(reply.status, 405, "{method} {path}");
            } else {
                assert!(
                    !matches!(reply.status, 404 | 405),
                    "{method} {path}: {}",
                    reply.body
                );
                let codes = op["responses"].as_object().unwrap();
                assert!(
                    codes.contains_key(&reply.status.to_string()),
                    "{method} {path} answered {} (undocumented)",
                    reply.status
                );
            }
        }
    }
    for path in ["/v1", "/v1/", "/v1/acquire/x", "/v1/nothing"] {
        assert_eq!(
            call(addr, "GET", path, None, None).await.unwrap().status,
            404,
            "{path}"
        );
    }
}

/// Each documented code of each route, triggered: it is one the route returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_documented_code_is_returned() {
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let faults = Arc::new(FaultyBackend::new(memory));
    let manager = crate::support::remote::manager_on(faults.clone()).await;
    let options = leases::service::ServeOptions {
        auth_token: Some("t".into()),
        max_http_leases_per_client: LIMIT,
        ..crate::support::remote::local()
    };
    let server = leases::service::LeaseServer::start(manager, options)
        .await
        .unwrap();
    let addr = server.local_addr();
    let mut http = Http::new(addr);
    let doc = http.get("/v1/openapi.json").await.body;
    http.bearer = Some("t".into());
    let key = "/system/http-openapi/a";
    let big = "x".repeat(300_000);
    let held = http
        .post("/v1/acquire", json!({ "key": key, "ttl_ms": 5000 }))
        .await;
    let token = held.body["token"].clone();
    let b = |v: Value| v.to_string().into_bytes();
    // (method, path, body, bearer, expected status); 429 and 503 come after these.
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/acquire".into(),
            Some(b(
                json!({ "key": "/system/http-openapi/b", "ttl_ms": 5000 }),
            )),
            Some("t"),
            200,
        ),
        (
            "POST",
            "/v1/acquire".into(),
            Some(b(json!({ "key": key }))),
            Some("t"),
            400,
        ),
        (
            "POST",
            "/v1/acquire".into(),
            Some(b(json!({ "key": key, "ttl_ms": 5000 }))),
            None,
            401,
        ),
        (
            "POST",
            "/v1/acquire".into(),
            Some(b(json!({ "key": key, "ttl_ms": 5000 }))),
            Some("t"),
            409,
        ),
        (
            "POST",
            "/v1/acquire".into(),
            Some(b(json!({ "key": key, "ttl_ms": 5000, "resume": "1" }))),
            Some("t"),
            410,
        ),
        (
            "POST",
            "/v1/acquire".into(),
            Some(big.clone().into_bytes()),
            Some("t"),
            413,
        ),
        (
            "POST",
            "/v1/acquire".into(),
            Some(b(json!({ "key": key, "ttl_ms": 5000, "wait_ms": 100 }))),
            Some("t"),
            504,
        ),
        (
            "POST",
            "/v1/heartbeat".into(),
            Some(b(json!({ "key": key, "token": token }))),
            Some("t"),
            200,
        ),
        (
            "POST",
            "/v1/heartbeat".into(),
            Some(b(json!({ "key": key }))),
            Some("t"),
            400,
        ),
        (
            "POST",
            "/v1/heartbeat".into(),
            Some(b(json!({ "key": key, "token": token }))),
            None,
            401,
        ),
        (
            "POST",
            "/v1/heartbeat".into(),
            Some(b(json!({ "key": key, "token": "1" }))),
            Some("t"),
            410,
        ),
        (
            "POST",
            "/v1/heartbeat".into(),
            Some(big.clone().into_bytes()),
            Some("t"),
            413,
        ),
        (
            "POST",
            "/v1/release".into(),
            Some(b(json!({ "key": key }))),
            Some("t"),
            400,
        ),
        (
            "POST",
            "/v1/release".into(),
            Some(b(json!({ "key": key, "token": token }))),
            None,
            401,
        ),
        (
            "POST",
            "/v1/release".into(),
            Some(b(json!({ "key": key, "token": "1" }))),
            Some("t"),
            410,
        ),
        (
            "POST",
            "/v1/release".into(),
            Some(big.clone().into_bytes()),
            Some("t"),
            413,
        ),
        (
            "POST",
            "/v1/release".into(),
            Some(b(json!({ "key": key, "token": token }))),
            Some("t"),
            200,
        ),
        (
            "POST",
            "/v1/revoke".into(),
            Some(b(json!({ "key": key }))),
            Some("t"),
            200,
        ),
        (
            "POST",
            "/v1/revoke".into(),
            Some(b(json!({}))),
            Some("t"),
            400,
        ),
        (
            "POST",
            "/v1/revoke".into(),
            Some(b(json!({ "key": key }))),
            None,
            401,
        ),
        (
            "POST",
            "/v1/revoke".into(),
            Some(big.into_bytes()),
            Some("t"),
            413,
        ),
        (
            "GET",
            format!(
                "/v1/info?key={}",
                crate::client::q(&leases::Key::parse(key).unwrap())
            ),
            None,
            Some("t"),
            200,
        ),
        ("GET", "/v1/info".into(), None, Some("t"), 400),
        ("GET", "/v1/info?key=/system/x".into(), None, None, 401),
        (
            "GET",
            "/v1/list?prefix=/system".into(),
            None,
            Some("t"),
            200,
        ),
        ("GET", "/v1/list?limit=x".into(), None, Some("t"), 400),
        ("GET", "/v1/list".into(), None, None, 401),
        ("GET", "/v1/events?after=0".into(), None, Some("t"), 200),
        ("GET", "/v1/events?after=-1".into(), None, Some("t"), 400),
        ("GET", "/v1/events".into(), None, None, 401),
        ("GET", "/v1/ready".into(), None, None, 200),
        ("GET", "/v1/openapi.json".into(), None, None, 200),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (method, path, body, bearer, want) in cases {
        let reply = call(addr, method, &path, bearer, body.as_deref())
            .await
            .unwrap();
        assert_eq!(reply.status, want, "{method} {path}: {}", reply.body);
        let route = path.split('?').next().unwrap().to_string();
        let op = &doc["paths"][&route][method.to_ascii_lowercase()];
        assert!(
            op["responses"].get(want.to_string()).is_some(),
            "{method} {route} {want} is not documented"
        );
        seen.insert((route, want.to_string()));
    }
    // A browser's request for a page of another origin, on each route that changes
    // leases.
    for route in ["/v1/acquire", "/v1/heartbeat", "/v1/release", "/v1/revoke"] {
        let reply = crate::client::call_with(
            addr,
            "POST",
            route,
            &[("Origin", "http://elsewhere.example")],
            Some("t"),
            Some(b"{}"),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 403, "{route}: {}", reply.body);
        assert!(doc["paths"][route]["post"]["responses"]
            .get("403")
            .is_some());
        seen.insert((route.to_string(), "403".to_string()));
    }
    // A request for another name (DNS rebinding) on a server without a token that
    // listens on loopback, on each route that reads leases.
    let open = crate::server().await;
    for route in ["/v1/info?key=/system/x", "/v1/list", "/v1/events"] {
        let host = [("Host", "rebound.example")];
        let reply = crate::client::call_with(open.local_addr(), "GET", route, &host, None, None)
            .await
            .unwrap();
        assert_eq!(reply.status, 403, "{route}: {}", reply.body);
        let route = route.split('?').next().unwrap().to_string();
        seen.insert((route, "403".to_string()));
    }
    // 429: a client of another address at its limit of HTTP leases.
    let other = Some("127.0.0.9".parse().unwrap());
    let mut at_limit = Vec::new();
    for i in 0..=LIMIT {
        let body = b(json!({ "key": format!("/system/http-openapi/limit-{i}"), "ttl_ms": 5000 }));
        at_limit.push(
            call_from(other, addr, "POST", "/v1/acquire", Some("t"), Some(&body))
                .await
                .unwrap(),
        );
    }
    let over = at_limit.pop().unwrap();
    assert!(at_limit.iter().all(|r| r.status == 200), "{at_limit:?}");
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(over.body["error"]["limit"], json!(LIMIT));
    seen.insert(("/v1/acquire".to_string(), "429".to_string()));
    // 503: the store is down.
    faults.set_down(true);
    let down: Vec<(&str, String, Option<Vec<u8>>)> = vec![
        (
            "POST",
            "/v1/acquire".into(),
            Some(b(
                json!({ "key": "/system/http-openapi/c", "ttl_ms": 5000 }),
            )),
        ),
        ("POST", "/v1/revoke".into(), Some(b(json!({ "key": key })))),
        ("GET", "/v1/info?key=/system/x".into(), None),
        ("GET", "/v1/list".into(), None),
        ("GET", "/v1/ready".into(), None),
    ];
    for (method, path, body) in down {
        let reply = call(addr, method, &path, Some("t"), body.as_deref())
            .await
            .unwrap();
        assert_eq!(reply.status, 503, "{method} {path}: {}", reply.body);
        assert_eq!(reply.code(), "unavailable", "{method} {path}");
        let route = path.split('?').next().unwrap().to_string();
        seen.insert((route, "503".to_string()));
    }
    faults.set_down(false);
    // And the other way: every documented code was seen.
    for (route, ops) in doc["paths"].as_object().unwrap() {
        for op in ops.as_object().unwrap().values() {
            for code in op["responses"].as_object().unwrap().keys() {
                assert!(
                    seen.contains(&(route.clone(), code.clone())),
                    "{route} documents {code}, never returned here"
                );
            }
        }
    }
}
