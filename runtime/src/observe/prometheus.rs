//! The Prometheus endpoint (`RuntimeBuilder::metrics_listen`, cargo feature
//! `prometheus`).
//!
//! The recorder is `metrics-exporter-prometheus` without its default
//! features: only the recorder and its text rendering. Its own HTTP listener
//! would bring hyper and its server stack into every build that turns the
//! feature on, for one `GET`; instead this file answers that `GET` over a
//! plain tokio TCP socket (one request per connection, `Connection: close`),
//! which is all a Prometheus scraper needs. It reads at most
//! [`MAX_REQUEST`] bytes of a request, for at most [`REQUEST_TIMEOUT`], and
//! serves at most [`MAX_CONNECTIONS`] connections at once; nothing a client
//! sends can panic the node.
//!
//! The `metrics` facade has one recorder per process: the first runtime
//! that listens installs it, later ones (in the same process) share it, so
//! their metrics add up. If another recorder is installed already, `build`
//! fails and says so.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};
use crate::sync::lock;

/// The longest request read (a scraper's is a few hundred bytes).
const MAX_REQUEST: usize = 8 * 1024;

/// How long a client may take to send its request, and to read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;

/// How often histogram samples are folded into their buckets (also done
/// by every scrape): between scrapes, samples wait in memory.
const UPKEEP: Duration = Duration::from_secs(5);

/// Bucket bounds of every `*_seconds` histogram: 1 µs to 10 s (a local
/// call takes under a microsecond, a durable commit tens of microseconds to
/// milliseconds, a remote call tens of microseconds and up).
const SECONDS_BUCKETS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed by the first runtime that
/// listens.
static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// The handle of the process's Prometheus recorder, installing it as the
/// global `metrics` recorder the first time.
pub(crate) fn recorder() -> Result<PrometheusHandle> {
    let mut installed = lock(&RECORDER);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(|err| Error::Config(format!("could not configure the Prometheus recorder: {err}")))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| {
        Error::Config(
            "`metrics_listen` installs a Prometheus recorder, but this process already has a `metrics` \
             recorder; remove `metrics_listen` and export through that recorder instead (the runtime \
             records to it with `RuntimeBuilder::record_metrics`)"
                .into(),
        )
    })?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Binds the endpoint's socket.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        Error::Config(format!(
            "could not listen for metrics scrapes on {addr}: {err}; choose another address for \
             `metrics_listen` (port 0 picks a free one)"
        ))
    })
}

/// Serves scrapes on `listener` until `closed` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    closed: impl std::future::Future<Output = ()>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut upkeep = tokio::time::interval(UPKEEP);
    let mut closed = std::pin::pin!(closed);
    loop {
        tokio::select! {
            () = &mut closed => return,
            _ = upkeep.tick() => handle.run_upkeep(),
            accepted = listener.accept() => {
                // A failed accept (out of file descriptors, a reset) loses
                // that connection only.
                let Ok((stream, _)) = accepted else { continue };
                if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (handle, open) = (handle.clone(), open.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &handle)).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
}

/// Reads one request and answers it: the metrics for `GET /metrics` (or
/// `/`), an error status otherwise.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics" | b"/") => ("200 OK", handle.render()),
        (b"GET", _) => ("404 Not Found", "stead serves its metrics at /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET /metrics is served\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
