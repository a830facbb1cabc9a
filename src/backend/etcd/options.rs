//! How to reach and use an etcd cluster: endpoints, key prefix, timeouts, user and TLS;
//! and the checks and lazy connections made from them.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::LeaseError;

/// How to reach and use an etcd cluster.
#[derive(Clone)]
pub struct EtcdOptions {
    pub(super) endpoints: Vec<String>,
    pub(super) prefix: String,
    connect_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) user: Option<(String, String)>,
    ca_certificate_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    tls_domain: Option<String>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Leave the password out.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("ca_certificate", &self.ca_certificate_pem.is_some())
            .field("client_identity", &self.identity_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdOptions {
    /// Options for a cluster reached at these endpoints (`http://host:2379`, or
    /// `https://…` with [`ca_certificate_pem`](Self::ca_certificate_pem)), with the key
    /// prefix `/leases`, a 2 s connect timeout and a 5 s request timeout. Give every
    /// member: the backend moves to the next one when a member stops answering.
    pub fn new<I, S>(endpoints: I) -> EtcdOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: "/leases".into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            user: None,
            ca_certificate_pem: None,
            identity_pem: None,
            tls_domain: None,
        }
    }

    /// The prefix of every etcd key this backend writes (default `/leases`); a lease on
    /// `/system/a` is the etcd key `<prefix>/system/a`. Managers share leases exactly
    /// when they use the same cluster and prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for a connection to a member.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one lease operation may take, all tries included, before it fails with
    /// a timeout. One try on one member gets a quarter of it (at least 100 ms).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Authenticate as this etcd user (etcd's auth must be enabled on the cluster).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Verify the members' TLS certificates against this CA (PEM); needed for
    /// `https://` endpoints.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// A client certificate and its private key (PEM), for clusters that require
    /// client certificates.
    pub fn client_identity_pem(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity_pem = Some((certificate.into(), key.into()));
        self
    }

    /// The name to expect in the members' certificates, when it is not the endpoints'
    /// host.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }
}

impl EtcdOptions {
    /// Checks the options (the runtime is checked by `EtcdBackend::new`) and makes one
    /// lazy channel per endpoint, in the endpoints' order.
    pub(super) fn channels(&self) -> Result<Vec<Channel>, LeaseError> {
        if self.endpoints.is_empty() {
            return Err(config_error("etcd: no endpoints given"));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(config_error("etcd: timeouts must be positive"));
        }
        if self.prefix.is_empty() || self.prefix.ends_with('/') {
            return Err(config_error(format!(
                "etcd: the key prefix must be non-empty and not end with '/', not {:?}",
                self.prefix
            )));
        }
        let tls = match (&self.ca_certificate_pem, &self.identity_pem) {
            (None, None) => None,
            (ca, identity) => {
                let mut tls = tonic::transport::ClientTlsConfig::new();
                if let Some(ca) = ca {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = identity {
                    tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
                }
                if let Some(domain) = &self.tls_domain {
                    tls = tls.domain_name(domain.clone());
                }
                Some(tls)
            }
        };
        let mut channels = Vec::with_capacity(self.endpoints.len());
        for url in &self.endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| config_error(format!("etcd endpoint {url:?}: {e}")))?
                .connect_timeout(self.connect_timeout)
                .tcp_nodelay(true);
            if url.starts_with("https://") {
                let Some(tls) = &tls else {
                    return Err(config_error(format!(
                        "etcd endpoint {url:?} uses TLS: give the CA with ca_certificate_pem"
                    )));
                };
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| config_error(format!("etcd TLS settings: {e}")))?;
            } else if !url.starts_with("http://") {
                return Err(config_error(format!(
                    "etcd endpoint {url:?}: expected http:// or https://"
                )));
            }
            channels.push(endpoint.connect_lazy());
        }
        Ok(channels)
    }
}

/// A configuration error with this message.
pub(super) fn config_error(message: impl Into<String>) -> LeaseError {
    LeaseError::InvalidConfig(message.into())
}
