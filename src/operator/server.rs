//! The HTTP server for /metrics, /healthz and /readyz.

use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use super::Metrics;

/// Binds `addr` (port 0 picks a free one) and returns the address bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until the process ends: /metrics (Prometheus text format), /healthz (the process
/// answers), /readyz (caches synced and leadership known).
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics, /healthz, /readyz");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req.uri().path(), &metrics)) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                warn!(error = %e, "serving a metrics connection");
            }
        });
    }
}

fn route(path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode()),
        "/healthz" => (200, "text/plain", "ok".to_string()),
        "/readyz" if metrics.ready() => (200, "text/plain", "ok".to_string()),
        "/readyz" => (503, "text/plain", "not ready: caches not synced or leadership unknown".to_string()),
        _ => (404, "text/plain", "not found: try /metrics, /healthz or /readyz".to_string()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_follows_readiness() {
        let m = Metrics::default();
        assert_eq!(route("/readyz", &m).status(), 503);
        m.leadership_known.store(true, std::sync::atomic::Ordering::Relaxed);
        m.caches_synced.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(route("/readyz", &m).status(), 200);
        assert_eq!(route("/healthz", &m).status(), 200);
        assert_eq!(route("/nope", &m).status(), 404);
    }
}
