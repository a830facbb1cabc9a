//! Raw HTTP/1.1 over TCP, one connection per request (`Connection: close`): the thin
//! client of the lease service's HTTP API that tests/http/ and the whole-stack
//! checker's HTTP holders share. No client library: the tests see every status and
//! header as the server sent them.

// Each test binary uses its own part of it.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
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

/// Sends one request (`Connection: close`) and reads the whole answer, within 30 s.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    call_within(addr, method, path, bearer, body, Duration::from_secs(30)).await
}

/// As [`call`], but the whole exchange (connecting included) must end within `within`:
/// past it, a `TimedOut` error (a link that went silent looks like this).
pub async fn call_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
    within: Duration,
) -> std::io::Result<Reply> {
    exchange(None, &[], addr, method, path, bearer, body, within).await
}

/// [`call`] with more headers (a `Content-Type` or `Host` among them replaces the
/// default one).
pub async fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    let within = Duration::from_secs(30);
    exchange(None, headers, addr, method, path, bearer, body, within).await
}

/// As [`call`], from the address `from` (any `127.x.y.z` on loopback: a client of
/// another address).
pub async fn call_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    let within = Duration::from_secs(30);
    exchange(from, &[], addr, method, path, bearer, body, within).await
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    from: Option<IpAddr>,
    headers: &[(&str, &str)],
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
    within: Duration,
) -> std::io::Result<Reply> {
    let exchange = async {
        let mut stream = match from {
            None => tokio::net::TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
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
        // A server that refuses a body early may close before reading it all: its
        // answer is still there to read.
        let _ = stream.write_all(&out).await;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse(&raw).ok_or_else(|| {
            std::io::Error::other(format!("not HTTP: {:?}", String::from_utf8_lossy(&raw)))
        })
    };
    tokio::time::timeout(within, exchange).await.map_err(|_| {
        let ms = within.as_millis();
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {ms} ms"),
        )
    })?
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
    /// How long one request may take (30 s unless [`Http::within`] says otherwise).
    pub within: Duration,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            bearer: None,
            within: Duration::from_secs(30),
        }
    }
    /// The same client, whose requests each end within `within` (or time out).
    pub fn within(mut self, within: Duration) -> Http {
        self.within = within;
        self
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.try_post(path, body).await.expect("the server answers")
    }
    pub async fn try_post(&self, path: &str, body: Value) -> std::io::Result<Reply> {
        let body = body.to_string();
        call_within(
            self.addr,
            "POST",
            path,
            self.bearer.as_deref(),
            Some(body.as_bytes()),
            self.within,
        )
        .await
    }
    pub async fn get(&self, path_and_query: &str) -> Reply {
        call_within(
            self.addr,
            "GET",
            path_and_query,
            self.bearer.as_deref(),
            None,
            self.within,
        )
        .await
        .expect("the server answers")
    }
}
