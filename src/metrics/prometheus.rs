//! The Prometheus exporter (feature `prometheus`): a recorder from
//! `metrics-exporter-prometheus` and a small HTTP listener of our own that serves its
//! text format, so that no HTTP stack (and no protoc) is needed.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::names::{describe, RENEWAL_BUCKETS, RENEWAL_SECONDS};

/// The largest request head the listener reads; longer requests are refused.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often histograms are folded in when nobody scrapes, so that memory stays bounded.
const UPKEEP: Duration = Duration::from_secs(5);

/// Why the Prometheus exporter could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// A `metrics` recorder is already installed in this process (only one can be).
    #[error("a metrics recorder is already installed in this process")]
    RecorderInstalled,
    /// The exporter could not be configured.
    #[error("could not build the Prometheus recorder: {0}")]
    Build(String),
    /// The listening address could not be bound.
    #[error("could not listen for metrics scrapes on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Installs a Prometheus recorder as this process's `metrics` recorder and returns its
/// handle, whose [`render`](PrometheusHandle::render) gives the text format: for
/// applications that serve it from their own HTTP server. Renewal durations are real
/// Prometheus histograms (buckets [`RENEWAL_BUCKETS`]). Call
/// [`PrometheusHandle::run_upkeep`] now and then if nothing scrapes it.
pub fn prometheus_recorder() -> Result<PrometheusHandle, MetricsError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(RENEWAL_SECONDS.into()), RENEWAL_BUCKETS)
        .map_err(|e| MetricsError::Build(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::RecorderInstalled)?;
    describe();
    Ok(handle)
}

/// Installs a Prometheus recorder (see [`prometheus_recorder`]) and serves its text
/// format on `addr` at `GET /metrics` (HTTP/1.1, one request per connection), until the
/// returned exporter is dropped. Port 0 picks a free port: see
/// [`PrometheusExporter::local_addr`]. Needs a tokio runtime.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let exporter = leases::metrics::install_prometheus("127.0.0.1:9464".parse()?).await?;
/// println!("scrape http://{}/metrics", exporter.local_addr());
/// # Ok(())
/// # }
/// ```
pub async fn install_prometheus(addr: SocketAddr) -> Result<PrometheusExporter, MetricsError> {
    // Bind first: a taken port leaves no recorder installed, so the caller can retry.
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let handle = prometheus_recorder()?;
    let task = tokio::spawn(serve(listener, handle.clone()));
    tracing::info!(%local_addr, "serving metrics at /metrics");
    Ok(PrometheusExporter {
        handle,
        local_addr,
        task,
    })
}

/// A running Prometheus endpoint, from [`install_prometheus`]. Dropping it stops the
/// listener (the recorder stays installed: a process has one for good).
#[derive(Debug)]
#[must_use = "dropping the exporter stops serving metrics"]
pub struct PrometheusExporter {
    handle: PrometheusHandle,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl PrometheusExporter {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The recorder's handle.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }

    /// The current metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Drop for PrometheusExporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let mut upkeep = tokio::time::interval(UPKEEP);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        if let Err(error) = answer(stream, &handle).await {
                            tracing::debug!(%error, "metrics scrape failed");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "metrics listener could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = upkeep.tick() => handle.run_upkeep(),
        }
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() <= MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let (status, body) = match read {
        Err(_) => ("408 Request Timeout", String::new()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) if head.len() > MAX_REQUEST => {
            ("431 Request Header Fields Too Large", String::new())
        }
        Ok(Ok(())) => {
            let line = head
                .split(|&b| b == b'\r' || b == b'\n')
                .next()
                .unwrap_or(&[]);
            let mut parts = line.split(|&b| b == b' ');
            match (parts.next(), parts.next()) {
                (Some(b"GET"), Some(path))
                    if path == b"/metrics" || path.starts_with(b"/metrics?") =>
                {
                    ("200 OK", handle.render())
                }
                (Some(b"GET"), Some(_)) => ("404 Not Found", "try /metrics\n".to_owned()),
                _ => ("405 Method Not Allowed", String::new()),
            }
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
