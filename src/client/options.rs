//! [`ClientOptions`]: how a [`ClientLeaser`](crate::ClientLeaser) reaches its lease
//! service: URL, bearer token, TLS, timeouts, the shortest TTL it asks for.

use std::time::Duration;

use crate::leaser::MIN_TTL;

/// How to reach a lease service. Start from [`ClientOptions::new`].
#[derive(Clone)]
pub struct ClientOptions {
    /// The servers to use, in order of preference: every one serves the same store.
    pub(super) urls: Vec<String>,
    pub(super) bearer_token: Option<String>,
    pub(super) ca_certificate_pem: Option<Vec<u8>>,
    pub(super) identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub(super) domain: Option<String>,
    pub(super) connect_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) min_ttl: Duration,
    pub(super) hold_many: bool,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("urls", &self.urls)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "<set>"))
            .field("tls", &self.ca_certificate_pem.is_some())
            .finish()
    }
}

impl ClientOptions {
    /// Options for the service at `url` (`http://host:port`, or `https://` for TLS).
    pub fn new(url: impl Into<String>) -> ClientOptions {
        ClientOptions {
            urls: vec![url.into()],
            bearer_token: None,
            ca_certificate_pem: None,
            identity_pem: None,
            domain: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            min_ttl: MIN_TTL,
            hold_many: true,
        }
    }

    /// Adds another server of the same service: one that serves the same store
    /// (PostgreSQL or etcd). The leaser connects to the first server that answers and
    /// moves on to the next when one cannot be reached or fails a call with
    /// `UNAVAILABLE`; an acquire, `lease_info` and `list` move on after `CANCELLED` or
    /// `UNKNOWN` too (what a connection closing under a call looks like; an acquire the
    /// first server granted before its answer was cut off then meets its own grant as
    /// a `Conflict` until that server finds its stream gone), but not a `revoke`,
    /// which the server may have carried out: it returns the error. It
    /// re-attaches a held lease through another server (or the same one, restarted)
    /// when its stream breaks or its server shuts down, before the lease's deadline:
    /// the holder does not notice. Every server
    /// must share the store; servers on the memory backend share nothing, and a lease
    /// held through one cannot move to another (its re-attach is refused, and the
    /// holder is told the lease is lost).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Options for several servers of one service (see [`endpoint`](Self::endpoint)), in
    /// order of preference; `None` when `urls` is empty.
    pub fn endpoints<I, S>(urls: I) -> Option<ClientOptions>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut urls = urls.into_iter();
        let first = ClientOptions::new(urls.next()?);
        Some(urls.fold(first, |o, u| o.endpoint(u)))
    }

    /// The servers, in order of preference.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Trusts this CA (PEM) for the server's certificate (for `https://` URLs).
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) to a server that requires them.
    pub fn identity_pem(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity_pem = Some((certificate.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry, when it differs from the URL's host.
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// How long to wait for a connection (5 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call (or an acquire's answer, beyond its wait) may take (10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The shortest TTL this client asks for ([`MIN_TTL`] by default). The server
    /// enforces its own minimum too.
    pub fn min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = min_ttl;
        self
    }

    /// Whether to hold leases on the connection's one `HoldMany` stream, with one
    /// heartbeat per group of leases of one TTL (`true`, the default), or on one `Hold`
    /// stream per lease (`false`: what servers from before `HoldMany` serve, and what
    /// the leaser falls back to by itself on a server that answers `UNIMPLEMENTED`).
    /// One `Hold` stream per lease limits a leaser to the server's streams per
    /// connection (1024 by default) and costs a heartbeat per lease every TTL/4.
    pub fn hold_many(mut self, on: bool) -> Self {
        self.hold_many = on;
        self
    }
}
