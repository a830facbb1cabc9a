//! Why a lease service (or a store) could not be reached, in words: connection refused, a host name
//! that does not resolve, TLS spoken to a plain server or plain HTTP/2 to a TLS one; and
//! a `--server` URL without its scheme, refused before anything is contacted.

use leases::{ClientLeaser, ClientOptions};

use crate::exit::{Failure, USAGE};

/// Refuses a lease service URL without `http://` or `https://` (it would be taken for
/// some other scheme, or fail with a message that does not say why).
pub(crate) fn check_scheme(url: &str) -> Result<(), Failure> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(());
    }
    Err(Failure::new(
        USAGE,
        format!(
            "the lease service URL {url:?} (--server, LEASES_SERVER) has no scheme: add \
             http:// for a plain server or https:// for TLS (e.g. http://{url})"
        ),
    ))
}

/// Does the server at this `http://` URL answer a TLS handshake? Asked only after a call
/// over plain HTTP/2 failed, to say why: a TLS server's answer to plain HTTP/2 is not
/// always the same error.
pub(crate) async fn speaks_tls(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let options = ClientOptions::new(format!("https://{rest}"))
        .connect_timeout(std::time::Duration::from_secs(5));
    match ClientLeaser::connect_with(options).await {
        Ok(_) => true,
        // The handshake got as far as the server's certificate: it speaks TLS.
        Err(e) => crate::causes::with_causes(&e).contains("certificate"),
    }
}

/// The message for a call over plain HTTP/2 to a TLS server.
pub(crate) fn plain_to_tls(url: &str) -> String {
    format!(
        "the lease service at {url} speaks TLS, not plain HTTP/2 (h2c): use https://{}",
        url.trim_start_matches("http://")
    )
}
