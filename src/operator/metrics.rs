//! Prometheus metrics, named by the Prometheus conventions (`nightshift_` prefix, base units,
//! `_total` counters), served at /metrics.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub namespace: String,
    pub job: String,
}

/// Everything the operator reports, and the readiness it serves.
pub struct Metrics {
    registry: Registry,
    pub jobs: Family<PhaseLabel, Gauge>,
    pub workers: Gauge,
    pub worker_budget: Gauge,
    pub attempts_started: Counter,
    pub attempts_failed: Family<ReasonLabel, Counter>,
    pub attempts_disrupted: Family<ReasonLabel, Counter>,
    pub attempts_resumed: Counter,
    pub heartbeat_age: Family<JobLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub status_writes: Counter,
    /// Status writes the API server refused because the job changed since it was read.
    pub status_writes_fenced: Counter,
    /// Events decided but not sent yet (they wait behind the work for the client's API budget).
    pub events_pending: Gauge,
    pub leader: Gauge,
    /// The controller's caches have synced (or it does not run: a follower).
    pub caches_synced: AtomicBool,
    /// This replica knows whether it leads.
    pub leadership_known: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("nightshift");
        let m = Metrics {
            jobs: Family::default(),
            workers: Gauge::default(),
            worker_budget: Gauge::default(),
            attempts_started: Counter::default(),
            attempts_failed: Family::default(),
            attempts_disrupted: Family::default(),
            attempts_resumed: Counter::default(),
            heartbeat_age: Family::default(),
            reconcile_duration: Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            reconcile_errors: Family::default(),
            status_writes: Counter::default(),
            status_writes_fenced: Counter::default(),
            events_pending: Gauge::default(),
            leader: Gauge::default(),
            caches_synced: AtomicBool::new(false),
            leadership_known: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register("jobs", "BackgroundJobs by phase", m.jobs.clone());
        registry.register("workers", "Live worker pods", m.workers.clone());
        registry.register(
            "events_pending",
            "Events decided but not sent yet (events wait behind other requests for the API budget)",
            m.events_pending.clone(),
        );
        registry.register("worker_budget", "Most worker pods allowed at once (-1: no limit)", m.worker_budget.clone());
        registry.register("attempts_started", "Shard attempts started", m.attempts_started.clone());
        registry.register("attempts_failed", "Shard attempts failed, by reason", m.attempts_failed.clone());
        registry.register(
            "attempts_disrupted",
            "Shard attempts the cluster took away (eviction, preemption, ...), by reason; retried without using a retry",
            m.attempts_disrupted.clone(),
        );
        registry.register(
            "attempts_resumed",
            "Shard attempts started from the checkpoint of the attempt before",
            m.attempts_resumed.clone(),
        );
        registry.register_with_unit(
            "heartbeat_age",
            "Age of the latest heartbeat of a running job with heartbeats",
            prometheus_client::registry::Unit::Seconds,
            m.heartbeat_age.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile of a job takes",
            prometheus_client::registry::Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        registry.register("reconcile_errors", "Failed reconciles, by error", m.reconcile_errors.clone());
        registry.register("status_writes", "Job status writes", m.status_writes.clone());
        registry.register(
            "status_writes_fenced",
            "Job status writes refused because the job changed since it was read (409)",
            m.status_writes_fenced.clone(),
        );
        registry.register("leader", "1 while this replica leads and reconciles", m.leader.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode to a String");
        out
    }

    pub fn ready(&self) -> bool {
        self.leadership_known.load(Ordering::Relaxed) && self.caches_synced.load(Ordering::Relaxed)
    }

    /// Times a reconcile until dropped.
    pub fn time_reconcile(self: &Arc<Self>) -> ReconcileTimer {
        ReconcileTimer { metrics: self.clone(), start: Instant::now() }
    }
}

/// Records the time a reconcile took when it goes out of scope, however it ended.
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_the_naming_conventions() {
        let m = Metrics::default();
        m.jobs.get_or_create(&PhaseLabel { phase: "Running".into() }).set(2);
        m.attempts_failed.get_or_create(&ReasonLabel { reason: "HeartbeatTimeout".into() }).inc();
        m.attempts_disrupted.get_or_create(&ReasonLabel { reason: "EvictionByEvictionAPI".into() }).inc();
        let text = m.encode();
        assert!(text.contains("nightshift_jobs{phase=\"Running\"} 2"), "{text}");
        assert!(text.contains("nightshift_attempts_failed_total{reason=\"HeartbeatTimeout\"} 1"), "{text}");
        assert!(text.contains("nightshift_attempts_disrupted_total{reason=\"EvictionByEvictionAPI\"} 1"), "{text}");
        assert!(text.contains("# TYPE nightshift_reconcile_duration_seconds histogram"), "{text}");
        assert!(text.contains("# UNIT nightshift_reconcile_duration_seconds seconds"), "{text}");
    }
}
