//! An error and its causes, in words: the whole chain as one message, and what a
//! transport failure means (connection refused, a host name that does not resolve, TLS
//! spoken to a plain server, an untrusted certificate).

use std::error::Error;

/// What went wrong on the way to the service, if the error's causes say so.
pub(crate) fn explain(e: &(dyn Error + 'static)) -> Option<&'static str> {
    let mut texts = Vec::new();
    let mut cause: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Some(
                    "connection refused: nothing listens at that address and port (is the \
                     server running, and is the port right?)",
                );
            }
        }
        texts.push(c.to_string());
        cause = c.source();
    }
    let all = texts.join(": ");
    let says = |what: &str| all.contains(what);
    if says("dns error") || says("failed to lookup address") {
        Some("the host name does not resolve (DNS failure): check the host in the URL")
    } else if says("InvalidContentType") {
        Some("TLS to a server that does not speak TLS: for a plain server, use http://")
    } else if says("invalid peer certificate") || says("UnknownIssuer") {
        Some(
            "the server's TLS certificate is not trusted: give the CA that signed it with \
             --ca-file (LEASES_CA_FILE)",
        )
    } else {
        None
    }
}

/// An error's message followed by those of its causes that add something
/// (`could not connect to the database: error connecting to server: Connection refused`).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    message
}
