//! A thin client of the HTTP API: raw HTTP/1.1 requests over TCP (one connection per
//! request), and `HttpLeaser`, a `Leaser` that keeps its leases by the deadline rule.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leases::testing::parts::{self, ContextEnd, Releaser, Sent};
use leases::{
    AcquireOptions, CancelReason, Key, Lease, LeaseContext, LeaseError, LeaseInfo, Leaser,
    LossCause,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer: status, headers (names lower-case), body as JSON (`Null` if it is not).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Reply {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    call_with(addr, method, path, &[], bearer, body).await
}

/// [`call`] with more headers (a `Content-Type` among them replaces the JSON one).
pub async fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = bearer {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    // A server that refuses a body early may close before reading it all: its answer
    // is still there to read.
    let _ = stream.write_all(&out).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no answer within 30 s"))??;
    parse(&raw).ok_or_else(|| {
        std::io::Error::other(format!("not HTTP: {:?}", String::from_utf8_lossy(&raw)))
    })
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = data.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line]).ok()?.trim(), 16).ok()?;
        data = &data[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A client of one server's HTTP API.
#[derive(Clone, Debug)]
pub struct Http {
    pub addr: SocketAddr,
    pub bearer: Option<String>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http { addr, bearer: None }
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.try_post(path, body).await.expect("the server answers")
    }
    pub async fn try_post(&self, path: &str, body: Value) -> std::io::Result<Reply> {
        let body = body.to_string();
        call(
            self.addr,
            "POST",
            path,
            self.bearer.as_deref(),
            Some(body.as_bytes()),
        )
        .await
    }
    pub async fn get(&self, path_and_query: &str) -> Reply {
        call(
            self.addr,
            "GET",
            path_and_query,
            self.bearer.as_deref(),
            None,
        )
        .await
        .expect("the server answers")
    }
}

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
