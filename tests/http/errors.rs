//! Every error mapping, auth, limits, and malformed input: a JSON error with a code,
//! never a panic (the server still answers afterwards).

use serde_json::{json, Value};

use crate::client::{call, Http};
use crate::support::remote::local;
use leases::service::ServeOptions;

const ALPHABET: &[u8] = b"{}\":,[]0123456789-.eE ak\\tnul";

const KEY: &str = "/system/http-errors/a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_of_lease_errors() {
    let server = crate::server().await;
    let http = Http::new(server.local_addr());
    let a = http
        .post(
            "/v1/acquire",
            json!({ "key": KEY, "ttl_ms": 2000, "metadata": "A" }),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let token = a.body["token"].as_str().unwrap().to_string();
    // 409 with its holder.
    let b = http
        .post("/v1/acquire", json!({ "key": KEY, "ttl_ms": 2000 }))
        .await;
    assert_eq!((b.status, b.code()), (409, "held"));
    assert_eq!(b.body["error"]["holder"]["token"], json!(token));
    assert_eq!(b.body["error"]["holder"]["metadata"], json!("A"));
    // 504 when a wait runs out.
    let w = http
        .post(
            "/v1/acquire",
            json!({ "key": KEY, "ttl_ms": 2000, "wait_ms": 300 }),
        )
        .await;
    assert_eq!((w.status, w.code()), (504, "wait_timed_out"));
    // 410 for a lease not held here.
    let h = http
        .post("/v1/heartbeat", json!({ "key": KEY, "token": "1" }))
        .await;
    assert_eq!((h.status, h.code()), (410, "not_held"));
    let r = http
        .post("/v1/release", json!({ "key": KEY, "token": "1" }))
        .await;
    assert_eq!((r.status, r.code()), (410, "not_held"));
    // 400 for TTL refusals, with the bound.
    let s = http
        .post("/v1/acquire", json!({ "key": KEY, "ttl_ms": 10 }))
        .await;
    assert_eq!((s.status, s.code()), (400, "ttl_too_short"));
    assert_eq!(s.body["error"]["limit_ms"], json!(1000));
    let l = http
        .post(
            "/v1/acquire",
            json!({ "key": KEY, "ttl_ms": 90_000_000u64 }),
        )
        .await;
    assert_eq!((l.status, l.code()), (400, "ttl_too_long"));
    // A revoke ends the lease: the next heartbeat is 410 `revoked`, a release after it
    // frees the key at once (`released: false`, the lease had ended).
    let v = http.post("/v1/revoke", json!({ "key": KEY })).await;
    assert_eq!(v.body["revoked"], json!(true));
    let h = http
        .post("/v1/heartbeat", json!({ "key": KEY, "token": token }))
        .await;
    assert_eq!((h.status, h.code()), (410, "revoked"));
    let r = http
        .post("/v1/release", json!({ "key": KEY, "token": token }))
        .await;
    assert_eq!(
        (r.status, &r.body["released"]),
        (200, &json!(false)),
        "{}",
        r.body
    );
    let again = http
        .post("/v1/acquire", json!({ "key": KEY, "ttl_ms": 2000 }))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let revoked_nothing = http
        .post("/v1/revoke", json!({ "key": "/system/http-errors/none" }))
        .await;
    assert_eq!(revoked_nothing.body["revoked"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_with_a_token() {
    let server = crate::server_with(ServeOptions {
        auth_token: Some("s3cret".into()),
        ..local()
    })
    .await;
    let mut http = Http::new(server.local_addr());
    let body = json!({ "key": KEY, "ttl_ms": 2000 });
    let none = http.post("/v1/acquire", body.clone()).await;
    assert_eq!((none.status, none.code()), (401, "unauthenticated"));
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    http.bearer = Some("wrong".into());
    let wrong = http.post("/v1/acquire", body.clone()).await;
    assert_eq!((wrong.status, wrong.code()), (401, "unauthenticated"));
    assert_eq!(http.get("/v1/list").await.status, 401);
    // Nothing was taken; probes and the schema stay open.
    http.bearer = Some("s3cret".into());
    assert_eq!(http.post("/v1/acquire", body).await.status, 200);
    let open = Http::new(server.local_addr());
    assert_eq!(open.get("/v1/ready").await.status, 200);
    assert_eq!(open.get("/v1/openapi.json").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let server = crate::server().await;
    let big = format!(
        r#"{{"key": "{KEY}", "ttl_ms": 2000, "metadata": "{}"}}"#,
        "x".repeat(200_000)
    );
    let reply = call(
        server.local_addr(),
        "POST",
        "/v1/acquire",
        None,
        Some(big.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!((reply.status, reply.code()), (413, "too_large"));
    // Metadata within the body limit but over 64 KiB is the lease's own refusal.
    let http = Http::new(server.local_addr());
    let m = http
        .post(
            "/v1/acquire",
            json!({ "key": KEY, "ttl_ms": 2000, "metadata": "x".repeat(65 * 1024) }),
        )
        .await;
    assert_eq!((m.status, m.code()), (400, "metadata_too_large"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_a_json_error_never_a_panic() {
    let server = crate::server().await;
    let addr = server.local_addr();
    let bodies: &[(&str, &str, &str)] = &[
        ("", "invalid_json", ""),
        ("nope", "invalid_json", ""),
        ("[1,2]", "invalid_json", ""),
        ("null", "invalid_json", ""),
        (r#"{"ttl_ms": 5000}"#, "invalid_field", "key"),
        (r#"{"key": 5, "ttl_ms": 5000}"#, "invalid_field", "key"),
        (r#"{"key": "/system/x"}"#, "invalid_field", "ttl_ms"),
        (
            r#"{"key": "/system/x", "ttl_ms": -5}"#,
            "invalid_field",
            "ttl_ms",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 1.5}"#,
            "invalid_field",
            "ttl_ms",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": "30s"}"#,
            "invalid_field",
            "ttl_ms",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 1e400}"#,
            "invalid_json",
            "",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 99999999999999999999999}"#,
            "invalid_field",
            "ttl_ms",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 18446744073709551615}"#,
            "ttl_too_long",
            "ttl_ms",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 5000, "wait_ms": true}"#,
            "invalid_field",
            "wait_ms",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 5000, "ttl": 5}"#,
            "invalid_field",
            "ttl",
        ),
        (r#"{"key": "x", "ttl_ms": 5000}"#, "invalid_key", "key"),
        (
            r#"{"key": "/system/%zz", "ttl_ms": 5000}"#,
            "invalid_key",
            "key",
        ),
        (
            r#"{"key": "/other/x", "ttl_ms": 5000}"#,
            "invalid_key",
            "key",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 5000, "metadata_base64": "@@@"}"#,
            "invalid_field",
            "metadata_base64",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 5000, "metadata": "a", "metadata_base64": "YQ=="}"#,
            "invalid_field",
            "metadata_base64",
        ),
        (
            r#"{"key": "/system/x", "ttl_ms": 5000, "resume": "-1"}"#,
            "invalid_field",
            "resume",
        ),
    ];
    for (body, code, field) in bodies {
        let reply = call(addr, "POST", "/v1/acquire", None, Some(body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(
            (reply.status, reply.code()),
            (400, *code),
            "{body}: {}",
            reply.body
        );
        if !field.is_empty() {
            assert_eq!(reply.body["error"]["field"], json!(field), "{body}");
        }
        assert!(reply.body["error"]["message"].is_string());
    }
    for body in [
        r#"{"key": "/system/x"}"#,
        r#"{"key": "/system/x", "token": 1.5}"#,
        r#"{"key": "/system/x", "token": "0x10"}"#,
    ] {
        for path in ["/v1/heartbeat", "/v1/release"] {
            let reply = call(addr, "POST", path, None, Some(body.as_bytes()))
                .await
                .unwrap();
            assert_eq!(
                (reply.status, reply.code()),
                (400, "invalid_field"),
                "{path} {body}"
            );
        }
    }
    for query in [
        "/v1/info",
        "/v1/info?key=x",
        "/v1/info?key=%FF",
        "/v1/info?nope=1",
        "/v1/list?limit=-1",
        "/v1/list?limit=x",
    ] {
        let reply = call(addr, "GET", query, None, None).await.unwrap();
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
    }
    let wrong = call(addr, "DELETE", "/v1/acquire", None, None)
        .await
        .unwrap();
    assert_eq!((wrong.status, wrong.code()), (405, "method_not_allowed"));
    let unknown = call(addr, "GET", "/v1/nothing/here", None, None)
        .await
        .unwrap();
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
    // Small random bodies: always a JSON answer.
    let mut rng = crate::support::rng::XorShift::new(7);
    for _ in 0..200 {
        let len = rng.below(40) as usize;
        let body: Vec<u8> = (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
            .collect();
        let reply = call(addr, "POST", "/v1/acquire", None, Some(&body))
            .await
            .unwrap();
        assert!(
            matches!(reply.status, 400 | 200 | 409),
            "{:?}",
            String::from_utf8_lossy(&body)
        );
        assert!(reply.body != Value::Null);
    }
    assert_eq!(Http::new(addr).get("/v1/ready").await.status, 200);
}
