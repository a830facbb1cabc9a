//! A thin client of the HTTP API: `HttpLeaser`, a `Leaser` that keeps its leases by
//! the deadline rule, over the raw HTTP/1.1 requests of `support/http_wire.rs`
//! (re-exported here: `call`, `Http`, `Reply`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::testing::parts::{self, ContextEnd, Releaser, Sent};
use leases::{
    AcquireOptions, CancelReason, Key, Lease, LeaseContext, LeaseError, LeaseInfo, Leaser,
    LossCause,
};
use serde_json::{json, Value};

pub use crate::http_wire::{call, call_from, call_with, Http, Reply};

/// The query-string form of a key.
pub fn q(key: &Key) -> String {
    percent_encoding::utf8_percent_encode(&key.to_string(), percent_encoding::NON_ALPHANUMERIC)
        .to_string()
}

fn ms(v: &Value) -> Duration {
    Duration::from_millis(v.as_u64().expect("a number of milliseconds"))
}

fn error_of(reply: &Reply, options: &AcquireOptions) -> LeaseError {
    let limit = || ms(&reply.body["error"]["limit_ms"]);
    match (reply.status, reply.code()) {
        (409, _) => LeaseError::Conflict,
        (504, _) => LeaseError::WaitTimedOut {
            waited: options.waits().unwrap_or_default(),
        },
        (400, "ttl_too_short") => LeaseError::TtlTooShort {
            ttl: options.ttl(),
            min: limit(),
        },
        (400, "ttl_too_long") => LeaseError::TtlTooLong {
            ttl: options.ttl(),
            max: limit(),
        },
        (400, "metadata_too_large") => LeaseError::MetadataTooLarge {
            len: options.attached_metadata().len(),
            max: leases::MAX_METADATA_LEN,
        },
        (410, _) => LeaseError::NotHeld,
        _ => LeaseError::InvalidConfig(format!("HTTP {}: {}", reply.status, reply.body)),
    }
}

/// A `Leaser` over the HTTP API.
#[derive(Clone, Debug)]
pub struct HttpLeaser {
    pub http: Http,
}

/// One lease's shared state: what heartbeats and releases it.
struct Held {
    http: Http,
    key: Key,
    token: u64,
    end: ContextEnd,
    ctx: LeaseContext,
}

impl Held {
    fn id(&self) -> Value {
        json!({ "key": self.key.to_string(), "token": self.token.to_string() })
    }

    /// Heartbeats every `every` until the lease ends; tells the server it has stopped
    /// once an end it heard of has been acted on.
    async fn keep(self: Arc<Self>, every: Duration) {
        // On a fixed schedule (a slow answer does not push the next heartbeat back).
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.ctx.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let sent = Sent::now();
            let Ok(reply) = self.http.try_post("/v1/heartbeat", self.id()).await else {
                continue; // the deadline ends the lease if the server stays away
            };
            match reply.status {
                200 => {
                    self.end.extend(sent, ms(&reply.body["time_left_ms"]));
                }
                410 => {
                    let reason = match reply.code() {
                        "revoked" => CancelReason::Revoked,
                        "shutdown" => CancelReason::Shutdown,
                        code => CancelReason::Lost(LossCause::Remote(code.to_string())),
                    };
                    self.end.cancel(reason);
                    // Stopped: say so, so that the key goes back at once.
                    let _ = self.http.try_post("/v1/release", self.id()).await;
                    return;
                }
                _ => {}
            }
        }
    }
}

#[async_trait]
impl Releaser for Held {
    async fn release(&self, _key: &Key, _token: u64) -> Result<(), LeaseError> {
        // Stop acting first, then tell the server.
        let live = self.end.cancel(CancelReason::Released);
        let reply = self
            .http
            .try_post("/v1/release", self.id())
            .await
            .map_err(|e| LeaseError::InvalidConfig(e.to_string()))?;
        match (live, reply.status, &reply.body["released"]) {
            (true, 200, Value::Bool(true)) => Ok(()),
            (_, 200 | 410, _) => Err(LeaseError::NotHeld),
            _ => Err(LeaseError::InvalidConfig(format!(
                "release: {}",
                reply.body
            ))),
        }
    }

    fn release_on_drop(&self, _key: Key, _token: u64) {
        self.end.cancel(CancelReason::Released);
        let (http, id) = (self.http.clone(), self.id());
        tokio::spawn(async move { http.try_post("/v1/release", id).await });
    }
}

/// A `Releaser` that forwards to the shared lease state (a `Lease` owns one).
struct Handle(Arc<Held>);

#[async_trait]
impl Releaser for Handle {
    async fn release(&self, key: &Key, token: u64) -> Result<(), LeaseError> {
        self.0.release(key, token).await
    }
    fn release_on_drop(&self, key: Key, token: u64) {
        self.0.release_on_drop(key, token)
    }
}

#[async_trait]
impl Leaser for HttpLeaser {
    async fn acquire_lease_with(
        &self,
        key: Key,
        options: AcquireOptions,
    ) -> Result<(Lease, LeaseContext), LeaseError> {
        let mut body = json!({
            "key": key.to_string(),
            "ttl_ms": options.ttl().as_millis() as u64,
            "metadata_base64": base64(options.attached_metadata()),
        });
        if let Some(wait) = options.waits() {
            body["wait_ms"] = json!(wait.as_millis() as u64);
        }
        let sent = Sent::now();
        let reply = self
            .http
            .try_post("/v1/acquire", body)
            .await
            .map_err(|e| LeaseError::InvalidConfig(e.to_string()))?;
        if reply.status != 200 {
            return Err(error_of(&reply, &options));
        }
        let token: u64 = reply.body["token"].as_str().unwrap().parse().unwrap();
        let (end, ctx) = parts::context(token, sent, ms(&reply.body["time_left_ms"]));
        let held = Arc::new(Held {
            http: self.http.clone(),
            key: key.clone(),
            token,
            end,
            ctx: ctx.clone(),
        });
        tokio::spawn(held.clone().keep(ms(&reply.body["heartbeat_every_ms"])));
        Ok((parts::lease(key, token, Arc::new(Handle(held))), ctx))
    }

    async fn lease_info(&self, key: &Key) -> Result<Option<LeaseInfo>, LeaseError> {
        let reply = self.http.get(&format!("/v1/info?key={}", q(key))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        Ok(info_of(&reply.body["lease"]))
    }
}

/// A lease description of the API, as a `LeaseInfo`.
pub fn info_of(v: &Value) -> Option<LeaseInfo> {
    if v.is_null() {
        return None;
    }
    Some(LeaseInfo {
        key: Key::parse(v["key"].as_str()?).ok()?,
        token: v["token"].as_str()?.parse().ok()?,
        ttl: ms(&v["ttl_ms"]),
        expires_in: ms(&v["expires_in_ms"]),
        metadata: v["metadata_base64"].as_str().map(unbase64)?,
        revoked: v["revoked"].as_bool()?,
        acquired_at: None,
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                B64[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn unbase64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut n, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        n = (n << 6) | B64.iter().position(|&a| a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    out
}
