//! What a person wants to know of a job, from its status alone: pure, so the bars, the plain
//! lines, `status` and the dashboard say the same thing the same way.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use nightshift_api::{BackgroundJob, Phase};

/// A job at a glance.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Glance {
    pub namespace: String,
    pub name: String,
    /// Queued, Running, Suspended, Succeeded, Failed; "Pending" before the operator saw it.
    pub phase: String,
    /// Units of work done and in all, as the workers reported them so far (shards, when they
    /// report none).
    pub done: i64,
    pub total: i64,
    /// Of the whole job: shards not started yet count as not done.
    pub percent: i32,
    pub shards_succeeded: i32,
    pub shards_failed: i32,
    pub shards_running: i32,
    pub shards: i32,
    pub workers: i32,
    pub workers_desired: i32,
    /// Seconds since the latest heartbeat, when the job has one.
    pub heartbeat_age: Option<i64>,
    /// Units per second since the job started.
    pub rate: Option<f64>,
    /// Seconds until the operator's estimated completion.
    pub eta: Option<i64>,
    /// Failed attempts of the shards still running or retrying, and the job's disruptions.
    pub failures: i32,
    pub disruptions: i32,
    /// Why it waits (Queued, with its place in the queue), or how it ended.
    pub reason: String,
    pub message: String,
    /// Seconds since it started (or until it ended).
    pub elapsed: Option<i64>,
}

impl Glance {
    pub fn of(job: &BackgroundJob, now: Timestamp) -> Self {
        let status = job.status.clone().unwrap_or_default();
        let phase = status.phase.map(|p| p.to_string()).unwrap_or_else(|| "Pending".into());
        let shards = status.shards.clone().unwrap_or_default();
        // The shards of this run (spec.onlyShards may leave some out), as the operator counts them.
        let in_run = if status.shards.is_some() { shards.total } else { job.spec.shards };
        // The operator's percent counts every shard, those that reported no total yet too; done
        // and total are the units reported so far.
        let (done, total, percent) = match &status.progress {
            Some(p) if p.total > 0 => (p.done, p.total, p.percent),
            _ => (i64::from(shards.succeeded), i64::from(in_run), shards.succeeded * 100 / in_run.max(1)),
        };
        let started = status.start_time.as_ref().map(|t| t.0);
        let end = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
        let elapsed = started.map(|s| (end - s).get_seconds().max(0));
        let rate = elapsed.filter(|&e| e > 0 && done > 0).map(|e| done as f64 / e as f64);
        let heartbeat_age = status.last_heartbeat_time.as_ref().map(|t| (now - t.0).get_seconds().max(0));
        let eta = status.estimated_completion_time.as_ref().map(|t| (t.0 - now).get_seconds().max(0));
        let failures = status.active.iter().map(|a| a.failures).chain(status.retrying.iter().map(|r| r.failures)).sum();
        let (reason, message) = explanation(job);
        let workers = status.workers.clone().unwrap_or_default();
        Glance {
            namespace: job.namespace().unwrap_or_default(),
            name: job.name_any(),
            phase,
            done,
            total,
            percent,
            shards_succeeded: shards.succeeded,
            shards_failed: shards.failed,
            shards_running: shards.running,
            shards: in_run,
            workers: workers.active,
            workers_desired: workers.desired,
            heartbeat_age,
            rate,
            eta,
            failures,
            disruptions: status.disruptions,
            reason,
            message,
            elapsed,
        }
    }

    pub fn finished(&self) -> bool {
        self.phase == Phase::Succeeded.to_string() || self.phase == Phase::Failed.to_string()
    }

    /// The bar's words: everything but the counts the bar shows.
    pub fn words(&self) -> String {
        let mut parts = vec![self.phase.clone(), format!("shards {}/{}", self.shards_succeeded, self.shards)];
        if self.shards_failed > 0 {
            parts.push(format!("{} failed", self.shards_failed));
        }
        if !self.finished() {
            parts.push(format!("workers {}/{}", self.workers, self.workers_desired));
        }
        if let Some(age) = self.heartbeat_age.filter(|_| !self.finished()) {
            parts.push(format!("heartbeat {} ago", duration(age)));
        }
        if let Some(rate) = self.rate.filter(|_| !self.finished()) {
            parts.push(format!("{}/s", rate_text(rate)));
        }
        if let Some(eta) = self.eta.filter(|_| !self.finished()) {
            parts.push(format!("ETA {}", duration(eta)));
        }
        if self.failures > 0 {
            parts.push(format!("{} failed attempt{}", self.failures, plural(self.failures)));
        }
        if self.disruptions > 0 {
            parts.push(format!("{} disruption{}", self.disruptions, plural(self.disruptions)));
        }
        if self.phase == Phase::Queued.to_string() || self.finished() {
            if let Some(elapsed) = self.elapsed.filter(|_| self.finished()) {
                parts.push(format!("in {}", duration(elapsed)));
            }
            if !self.message.is_empty() {
                parts.push(self.message.clone());
            }
        }
        parts.join(" · ")
    }

    /// One line with everything, for logs and pipes.
    pub fn line(&self) -> String {
        format!("{}/{} {}% ({}/{}) {}", self.namespace, self.name, self.percent, self.done, self.total, self.words())
    }
}

/// Why a job waits, or how it ended: the condition that says so.
fn explanation(job: &BackgroundJob) -> (String, String) {
    let status = job.status.as_ref();
    let wanted = match status.and_then(|s| s.phase) {
        Some(Phase::Queued) => "Admitted",
        Some(Phase::Succeeded) => "Complete",
        Some(Phase::Failed) => "Failed",
        Some(Phase::Suspended) => "Suspended",
        _ => return Default::default(),
    };
    status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == wanted))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// "45s", "3m05s", "2h03m", "3d4h".
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn rate_text(rate: f64) -> String {
    if rate >= 10.0 { format!("{rate:.0}") } else { format!("{rate:.1}") }
}

fn plural(n: i32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job(status: serde_json::Value) -> BackgroundJob {
        let spec = json!({"shards": 14, "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}});
        nightshift_api::job_fixture::job("import", spec).namespace("shop").status(status).build()
    }

    fn now() -> Timestamp {
        "2026-11-23T12:10:00Z".parse().unwrap()
    }

    #[test]
    fn durations_read_like_kubectl_ages() {
        assert_eq!(duration(-3), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7380), "2h03m");
        assert_eq!(duration(3 * 86400 + 4 * 3600 + 59), "3d4h");
    }

    #[test]
    fn a_running_job_at_a_glance() {
        let g = Glance::of(
            &job(json!({
                "phase": "Running", "startTime": "2026-11-23T12:00:00Z",
                "lastHeartbeatTime": "2026-11-23T12:09:58Z",
                "estimatedCompletionTime": "2026-11-23T12:20:00Z",
                "progress": {"done": 3000, "total": 7000, "percent": 42, "summary": "42%"},
                "shards": {"total": 14, "pending": 5, "running": 3, "succeeded": 6, "failed": 0, "summary": "6/14"},
                "workers": {"desired": 3, "active": 3, "ready": 3, "summary": "3/3"},
                "retrying": [{"shard": 9, "attempt": 2, "failures": 1}],
                "disruptions": 1,
            })),
            now(),
        );
        assert_eq!(
            (g.done, g.total, g.percent, g.heartbeat_age, g.eta, g.failures),
            (3000, 7000, 42, Some(2), Some(600), 1)
        );
        assert_eq!(g.rate, Some(5.0));
        assert_eq!(
            g.line(),
            "shop/import 42% (3000/7000) Running · shards 6/14 · workers 3/3 · heartbeat 2s ago · 5.0/s · ETA 10m00s · \
             1 failed attempt · 1 disruption"
        );
    }

    #[test]
    fn a_queued_job_says_why_and_a_finished_one_how() {
        let queued = Glance::of(
            &job(json!({"phase": "Queued", "conditions": [{"type": "Admitted", "status": "False",
                "reason": "WaitingForWorkers", "message": "needs 1 worker to start; number 2 in the queue",
                "lastTransitionTime": "2026-11-23T12:00:00Z"}]})),
            now(),
        );
        assert!(
            queued
                .line()
                .ends_with("Queued · shards 0/14 · workers 0/0 · needs 1 worker to start; number 2 in the queue"),
            "{}",
            queued.line()
        );
        let failed = Glance::of(
            &job(
                json!({"phase": "Failed", "startTime": "2026-11-23T12:00:00Z", "completionTime": "2026-11-23T12:01:05Z",
                "shards": {"total": 14, "pending": 0, "running": 0, "succeeded": 13, "failed": 1, "summary": "13/14"},
                "conditions": [{"type": "Failed", "status": "True", "reason": "RetriesExhausted",
                "message": "shard 3 failed 4 times", "lastTransitionTime": "2026-11-23T12:01:05Z"}]}),
            ),
            now(),
        );
        assert!(failed.finished());
        assert_eq!(failed.reason, "RetriesExhausted");
        assert_eq!(
            failed.line(),
            "shop/import 92% (13/14) Failed · shards 13/14 · 1 failed · in 1m05s · shard 3 failed 4 times"
        );
        // Not seen by the operator yet.
        assert_eq!(Glance::of(&job(json!(null)), now()).phase, "Pending");
        // A rerun of 2 of its 14 shards counts those 2.
        let rerun = Glance::of(
            &job(json!({"phase": "Running",
                "shards": {"total": 2, "pending": 0, "running": 1, "succeeded": 1, "failed": 0, "summary": "1/2"}})),
            now(),
        );
        assert_eq!((rerun.shards, rerun.done, rerun.total, rerun.percent), (2, 1, 2, 50));
    }
}
