//! The operator process around the controller: its client (rate limited), Prometheus metrics,
//! the health and metrics server, leader election, and logging.

pub mod leader;
pub mod limit;
pub mod metrics;
pub mod server;

use std::sync::Arc;

use kube::{Client, Config, client::ClientBuilder};

pub use metrics::Metrics;

/// A client whose requests are limited to `qps` per second on average and `burst` at once, with
/// Events last (see [`limit`]). `qps` 0: no limit.
pub fn client(config: Config, qps: f64, burst: u32) -> Result<Client, kube::Error> {
    if qps <= 0.0 {
        return Client::try_from(config);
    }
    let limiter = Arc::new(limit::Limiter::new(qps, burst));
    // The buffer makes the stack below cloneable: a request waits for its token on a clone.
    let layer = tower::layer::layer_fn(move |inner| limit::Limited {
        inner: tower::buffer::Buffer::new(inner, 1024),
        limiter: limiter.clone(),
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

/// Logs to stderr: human-readable by default, one JSON object per line with `json`.
/// `RUST_LOG` overrides `level`.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{level},kube=warn,kube_lease_manager=warn").into());
    // Colours only on a terminal: `kubectl logs` shows escape codes as they are.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
