//! The heartbeat runs in BENCHMARKS.md: what one measured, its table, and the targets they are
//! held to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::*;
use heartbeats::{FOLD_SECS, PER_JOB, WINDOW_FOLDS};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct HeartbeatResult {
    pub(crate) workers: usize,
    pub(crate) jobs: usize,
    #[serde(default)]
    pub(crate) interval_secs: u64,
    #[serde(default)]
    pub(crate) timeout_secs: u64,
    /// Workers heartbeating when the window opened (all of them, unless the machine could not).
    #[serde(default)]
    pub(crate) heartbeating: usize,
    /// From the first create until every worker heartbeats.
    pub(crate) ready_secs: Option<f64>,
    pub(crate) window_secs: f64,
    /// CPU over the window, in cores (CPU seconds per second).
    pub(crate) operator_cores: f64,
    pub(crate) apiserver_cores: f64,
    pub(crate) etcd_cores: f64,
    /// VmHWM over the whole run (creating every pod and Lease included), and VmRSS after the window.
    pub(crate) operator_peak_mib: f64,
    pub(crate) operator_rss_mib: f64,
    /// The operator's mutating requests in the window, by "verb resource[/subresource]".
    pub(crate) operator_requests: BTreeMap<String, u64>,
    /// The workers' renewals in the window (patch leases), and those answered with an error.
    pub(crate) renewals: u64,
    pub(crate) renewal_errors: u64,
    /// Seconds since each live worker's Lease was last renewed, at the window's end: p99 and max.
    /// Within an interval (plus a request) when the generator keeps up; more, and the bench, not
    /// the operator, fell behind.
    #[serde(default)]
    pub(crate) lease_age_p99: Option<f64>,
    #[serde(default)]
    pub(crate) lease_age_max: Option<f64>,
    pub(crate) silenced: usize,
    /// Seconds from a silenced worker's last renewal (its Lease's renewTime) until the bench saw
    /// its attempt leave status.active, sorted; the undetected ones are missing.
    pub(crate) detection_secs: Vec<f64>,
    /// Seconds of silence the operator counted when it decided each HeartbeatTimeout (its log,
    /// whole seconds on its own clock), sorted: detection less this is its write and the watch.
    #[serde(default)]
    pub(crate) decision_secs: Vec<f64>,
    /// Shards retried that were not silenced: a heartbeating worker's attempt failed.
    pub(crate) other_failures: usize,
}

impl HeartbeatResult {
    pub(crate) fn status_writes_per_job_minute(&self) -> f64 {
        let writes: u64 =
            self.operator_requests.iter().filter(|(k, _)| k.ends_with("backgroundjobs/status")).map(|(_, v)| v).sum();
        writes as f64 / self.jobs.max(1) as f64 / (self.window_secs / 60.0)
    }
    pub(crate) fn requests_per_sec(&self) -> f64 {
        self.operator_requests.values().sum::<u64>() as f64 / self.window_secs
    }
    pub(crate) fn detection(&self, q: f64) -> Option<f64> {
        quantile(&self.detection_secs, q)
    }
    pub(crate) fn decision(&self, q: f64) -> Option<f64> {
        quantile(&self.decision_secs, q)
    }
}

/// The `q` quantile of sorted values (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied()
}

pub(crate) fn render_heartbeats(w: &mut String, runs: &[HeartbeatResult]) {
    use std::fmt::Write;
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "## Heartbeats at scale\n\nBackgroundJobs of {PER_JOB} workers each (`workers: {{min: {PER_JOB}, max: {PER_JOB}}}`, \
         `heartbeat: {{}}`: a renewal every 10 s, failed after 40 s of silence; or a longer interval, the timeout 4 of them), their pods kept \
         Running on kwok's fake node. Every worker renews its shard's Lease with progress as the agent does: the bench \
         runs the agent's own renew loop (`nightshift_worker::Heartbeat`) for each running pod, from the pod's \
         NIGHTSHIFT_* environment, as the admin (the agent uses the worker's token: the same request; the bench sends them on at most BENCH_HEARTBEAT_CONNECTIONS (256) connections, where each agent holds one of its own: the local \
         API server is reached through socat, two processes per connection). *Lease age* is how long ago each live worker's Lease was renewed when the window closed (p99 / max): within an interval when the generator kept up; beyond it, the bench fell behind, not the operator. The operator \
         (no client limit, status folded every {FOLD_SECS} s) is measured over {WINDOW_FOLDS} folds once every worker \
         heartbeats; then one worker in each of a spread of jobs goes silent, one after the other over an interval, and the time from its last renewal (its \
         Lease's renewTime) until the bench sees its attempt leave `status.active` is taken; *decided* is the silence the operator had counted when it decided (its log, whole seconds): the rest of detection is the operator's status write (the pod is deleted after it) and the watch. CPU in cores (CPU \
         seconds per second) over the window; requests from the audit log (mutating only).\n"
    );
    let _ = writeln!(
        w,
        "| workers (jobs) | renewal every s (timeout s) | heartbeating / until all s | renewals/s (errors) | Lease age p99 / max s | operator requests/s | status writes per job per minute | operator CPU cores | operator peak / steady MiB | API server CPU cores | etcd CPU cores | silenced | detection p50 / p99 / max s | decided p50 / p99 / max s | other attempts failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in runs {
        let _ = writeln!(
            w,
            "| {} ({}) | {} ({}) | {} / {} | {:.0} ({}) | {} / {} | {:.1} | {:.2} | {:.3} | {:.1} / {:.1} | {:.2} | {:.2} | {} ({} seen) | {} / {} / {} | {} / {} / {} | {} |",
            r.workers,
            r.jobs,
            r.interval_secs,
            r.timeout_secs,
            r.heartbeating,
            f(r.ready_secs),
            r.renewals as f64 / r.window_secs,
            r.renewal_errors,
            f(r.lease_age_p99),
            f(r.lease_age_max),
            r.requests_per_sec(),
            r.status_writes_per_job_minute(),
            r.operator_cores,
            r.operator_peak_mib,
            r.operator_rss_mib,
            r.apiserver_cores,
            r.etcd_cores,
            r.silenced,
            r.detection_secs.len(),
            f(r.detection(0.5)),
            f(r.detection(0.99)),
            f(r.detection(1.0)),
            f(r.decision(0.5)),
            f(r.decision(0.99)),
            f(r.decision(1.0)),
            r.other_failures
        );
    }
    let _ = writeln!(w);
    for r in runs {
        let requests = r.operator_requests.iter().map(|(k, v)| format!("{v}× `{k}`")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            w,
            "- {} workers: the operator's requests in the {:.0} s window: {requests}.",
            r.workers, r.window_secs
        );
    }
    let _ = writeln!(
        w,
        "\nThe anchor: a kubelet renews its node's Lease once per 10 s (KEP-589), an update of a small object; a worker \
         renews once per `intervalSeconds` (10 s by default), a JSON patch of a small object: at the default a \
         worker writes like a node, 1,000 workers like 1,000 nodes. {}\n",
        runs.iter()
            .map(|r| format!(
                "{} workers every {} s write like {} nodes: {:.2} API server cores per 100 renewals/s.",
                r.workers,
                r.interval_secs,
                r.workers as u64 * 10 / r.interval_secs.max(1),
                r.apiserver_cores / (r.renewals as f64 / r.window_secs / 100.0).max(f64::MIN_POSITIVE)
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

pub(crate) fn heartbeat_targets(runs: &[HeartbeatResult]) -> Vec<String> {
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    let per_fold = 60.0 / FOLD_SECS as f64;
    let mut out = Vec::new();
    for r in runs {
        let at = format!("{} workers every {} s", r.workers, r.interval_secs);
        let writes = r.status_writes_per_job_minute();
        out.push(format!(
            "| {at}: status writes per job ≤ one per fold ({per_fold:.0} a minute), whatever its workers | {writes:.2} a minute | {} |",
            verdict(writes <= per_fold)
        ));
        let p99 = r.detection(0.99);
        let all = r.detection_secs.len() == r.silenced;
        out.push(format!(
            "| {at}: every silent worker's attempt failed, p99 within timeoutSeconds + 2 s ({} s) | {} of {}, p99 {} s | {} |",
            r.timeout_secs + 2,
            r.detection_secs.len(),
            r.silenced,
            f(p99),
            verdict(all && p99.is_some_and(|p| p <= (r.timeout_secs + 2) as f64))
        ));
        out.push(format!(
            "| {at}: every worker heartbeats, and no heartbeating worker's attempt fails | {} of {} heartbeating, {} failed | {} |",
            r.heartbeating,
            r.workers,
            r.other_failures,
            verdict(r.heartbeating == r.workers && r.other_failures == 0)
        ));
        out.push(format!(
            "| {at}: operator peak RSS within the chart's limit ({CHART_LIMIT_MIB} MiB) | {:.1} MiB | {} |",
            r.operator_peak_mib,
            verdict(r.operator_peak_mib < CHART_LIMIT_MIB)
        ));
    }
    out
}
