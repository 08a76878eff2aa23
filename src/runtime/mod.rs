//! The operator's runtime around the controller: its client (rate limited), Prometheus metrics,
//! the health and metrics server, leader election, and logging.

pub mod leader;
pub mod metrics;
pub mod server;

use std::time::Duration;

use kube::{Client, Config, client::ClientBuilder};

pub use metrics::Metrics;

/// A client whose requests are limited to `qps` per second on average, `burst` at once
/// (tower's rate limit: `burst` requests per `burst / qps` seconds). `qps` 0: no limit.
pub fn client(config: Config, qps: f64, burst: u32) -> Result<Client, kube::Error> {
    if qps <= 0.0 {
        return Client::try_from(config);
    }
    let burst = burst.max(1);
    let period = Duration::from_secs_f64(f64::from(burst) / qps);
    let layer = tower::limit::RateLimitLayer::new(u64::from(burst), period);
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

/// Logs to stderr: human-readable by default, one JSON object per line with `json`.
/// `RUST_LOG` overrides `level`.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{level},kube=warn,kube_lease_manager=warn").into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
