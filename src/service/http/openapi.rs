//! The OpenAPI 3 document of the HTTP API, served at `GET /v1/openapi.json` and
//! checked by `tests/http/openapi.rs` against what the server answers: every route the
//! router in `mod.rs` answers is described, nothing else, and each response code listed
//! for a route is one it returns.

use serde_json::{json, Value};

/// Which response codes each route documents, beside `200`.
pub(crate) const CODES: &[(&str, &[u16])] = &[
    (
        "/v1/acquire",
        &[400, 401, 403, 409, 410, 413, 429, 503, 504],
    ),
    ("/v1/heartbeat", &[400, 401, 403, 410, 413]),
    ("/v1/release", &[400, 401, 403, 410, 413]),
    ("/v1/revoke", &[400, 401, 403, 413, 503]),
    ("/v1/info", &[400, 401, 403, 503]),
    ("/v1/list", &[400, 401, 403, 503]),
    ("/v1/events", &[400, 401, 403]),
    ("/v1/ready", &[503]),
    ("/v1/openapi.json", &[]),
];

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad input: malformed JSON, an unknown or missing field, a bad key, TTL, wait or metadata (`error.field` names it)",
        401 => "A missing or wrong bearer token",
        403 => "A browser's request for a page of another origin (`Origin` or `Sec-Fetch-Site` says so, code `cross_origin`): leases change only from programs and the console's own page; or, on a server without a token that listens on loopback only, a request whose `Host` is neither `localhost` nor an IP address (DNS rebinding)",
        409 => "The key is held by someone else (`error.holder` says who)",
        410 => "The lease is not held through this server (code `not_held`), or it ended (`revoked`, `lost`, `shutdown`, `handed_over`): stop acting at once",
        413 => "The body is larger than the server's message limit",
        429 => "This client (by IP address) holds the server's limit of HTTP leases (`error.limit`): release one first",
        503 => "The store cannot be reached, or the server is shutting down: retry with backoff",
        504 => "`wait_ms` ran out and the key is still held",
        _ => "Error",
    }
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn millis(description: &str) -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": 0, "description": description })
}

fn token(description: &str) -> Value {
    json!({ "type": "string", "pattern": "^[0-9]+$", "description": description })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "required": required,
        "additionalProperties": false,
        "properties": properties,
    })
}

fn key_schema() -> Value {
    json!({
        "type": "string",
        "description": "The key in its canonical form: `/system/...` or `/module/NAME/...`, each segment escaped as Go's url.PathEscape does",
        "example": "/system/jobs/nightly",
    })
}

fn lease_id() -> Value {
    object(
        &["key", "token"],
        json!({ "key": key_schema(), "token": token("The lease's fencing token, from its acquire") }),
    )
}

fn info_schema() -> Value {
    object(
        &[
            "key",
            "token",
            "ttl_ms",
            "expires_in_ms",
            "metadata_base64",
            "revoked",
        ],
        json!({
            "key": key_schema(),
            "token": token("The fencing token"),
            "ttl_ms": millis("The TTL the store holds the lease with"),
            "expires_in_ms": millis("Time left in the store unless renewed"),
            "metadata": { "type": ["string", "null"], "description": "The metadata as text; null when it is not UTF-8" },
            "metadata_base64": string(),
            "revoked": { "type": "boolean" },
            "acquired_at_unix_ms": { "type": ["integer", "null"], "format": "int64" },
        }),
    )
}

fn event_schema() -> Value {
    object(
        &["seq", "at_unix_ms", "kind", "key", "token", "via", "detail"],
        json!({
            "seq": { "type": "integer", "minimum": 1, "description": "1 for the server's first event, one more for each" },
            "at_unix_ms": { "type": "integer", "format": "int64" },
            "kind": { "enum": ["granted", "reattached", "released", "revoked", "lost", "shutdown", "handed_over"] },
            "key": key_schema(),
            "token": token("The lease's fencing token"),
            "via": { "enum": ["ftl", "native", "http"], "description": "The protocol its client asked through" },
            "detail": { "type": "string", "description": "A loss's cause; empty otherwise" },
        }),
    )
}

/// One operation: its summary, request (a JSON body, or query parameters), answer.
fn operation(path: &str, summary: &str, request: Value, ok: Value, secured: bool) -> Value {
    let codes = CODES
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(&[][..], |(_, c)| *c);
    let mut responses = serde_json::Map::new();
    responses.insert(
        "200".into(),
        json!({ "description": "OK", "content": { "application/json": { "schema": ok } } }),
    );
    for &code in codes {
        responses.insert(
            code.to_string(),
            json!({
                "description": reason(code),
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            }),
        );
    }
    let mut op = json!({ "summary": summary, "operationId": path.trim_start_matches("/v1/").replace('.', "_"), "responses": responses });
    match request {
        Value::Array(parameters) => op["parameters"] = Value::Array(parameters),
        Value::Null => {}
        body => {
            op["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": body } },
            })
        }
    }
    if !secured {
        op["security"] = json!([]);
    }
    op
}

fn query(name: &str, required: bool, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": required, "schema": schema })
}

/// The document.
pub(crate) fn document() -> Value {
    let acquire_request = object(
        &["key", "ttl_ms"],
        json!({
            "key": key_schema(),
            "ttl_ms": millis("The lease's TTL (at least the server's minimum, 5 s by default; at most 24 h)"),
            "metadata": { "type": "string", "description": "Shown to anyone who asks info or list (at most 64 KiB)" },
            "metadata_base64": { "type": "string", "description": "Metadata that is not text, in base64 (instead of `metadata`)" },
            "wait_ms": millis("Wait this long for a held key instead of failing at once"),
            "resume": token("Re-attach the live lease with this token instead of acquiring anew"),
        }),
    );
    let granted = object(
        &[
            "key",
            "token",
            "time_left_ms",
            "ttl_ms",
            "heartbeat_every_ms",
        ],
        json!({
            "key": key_schema(),
            "token": token("The fencing token (a decimal string: tokens exceed 2^53)"),
            "time_left_ms": millis("How long you may act: your deadline is the instant you SENT this request plus this"),
            "ttl_ms": millis("The lease's TTL"),
            "heartbeat_every_ms": millis("How often to send a heartbeat (TTL/4)"),
        }),
    );
    let renewed = object(
        &["key", "token", "time_left_ms"],
        json!({
            "key": key_schema(),
            "token": token("The fencing token"),
            "time_left_ms": millis("Your new deadline is the instant you SENT this heartbeat plus this"),
        }),
    );
    let ended = object(
        &["code", "message"],
        json!({ "code": string(), "message": string() }),
    );
    let released = object(
        &["released", "ended"],
        json!({
            "released": { "type": "boolean", "description": "false: the lease had already ended (`ended` says why); the key is given back now" },
            "ended": { "oneOf": [ended, { "type": "null" }] },
        }),
    );
    let error = object(
        &["error"],
        json!({ "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": string(),
                "message": string(),
                "field": { "type": "string", "description": "The request field a 400 is about" },
                "limit_ms": millis("A TTL refusal's bound"),
                "holder": { "description": "A 409's holder of the key (null if it could not be looked up)" },
            },
        }}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "leases HTTP API",
            "version": "1",
            "description": "Leases over HTTP/JSON (docs/http.md). Every answer that keeps a lease alive carries time_left_ms: the client's deadline is the instant it sent the request plus time_left_ms, and it stops acting then. Any other path under /v1 answers 404, any other method 405, both with the Error shape.",
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/v1/acquire": { "post": operation("/v1/acquire", "Acquire a lease", acquire_request, granted, true) },
            "/v1/heartbeat": { "post": operation("/v1/heartbeat", "Keep a lease alive", lease_id(), renewed, true) },
            "/v1/release": { "post": operation("/v1/release", "Release a lease (the key is free at once)", lease_id(), released, true) },
            "/v1/revoke": { "post": operation("/v1/revoke", "Revoke the lease on a key, whoever holds it",
                object(&["key"], json!({ "key": key_schema() })),
                object(&["revoked"], json!({ "revoked": { "type": "boolean" } })), true) },
            "/v1/info": { "get": operation("/v1/info", "The lease on a key",
                json!([query("key", true, key_schema())]),
                object(&["lease"], json!({ "lease": { "oneOf": [info_schema(), { "type": "null" }] } })), true) },
            "/v1/list": { "get": operation("/v1/list", "Live leases by key prefix, in key order",
                json!([query("prefix", false, string()), query("limit", false, json!({ "type": "integer", "minimum": 0, "maximum": 10000 }))]),
                object(&["leases"], json!({ "leases": { "type": "array", "items": info_schema() } })), true) },
            "/v1/events": { "get": operation("/v1/events", "Recent grants and ends of the leases this server holds, oldest first (a bounded log, empty after a restart)",
                json!([query("after", false, json!({ "type": "integer", "minimum": 0, "description": "Only events whose seq is larger (0: from the oldest kept)" })),
                       query("limit", false, json!({ "type": "integer", "minimum": 0, "maximum": 1000 }))]),
                object(&["events", "last"], json!({
                    "events": { "type": "array", "items": event_schema() },
                    "last": { "type": "integer", "minimum": 0, "description": "The seq of the newest event this server has recorded (smaller than a seq you saw: the server restarted)" },
                })), true) },
            "/v1/ready": { "get": operation("/v1/ready", "Readiness: the store answers", Value::Null,
                object(&["ready"], json!({ "ready": { "type": "boolean" } })), false) },
            "/v1/openapi.json": { "get": operation("/v1/openapi.json", "This document", Value::Null, json!({ "type": "object" }), false) },
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": error },
        },
    })
}
