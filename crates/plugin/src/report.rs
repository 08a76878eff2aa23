//! `kubectl nightshift status JOB`: what `kubectl describe` cannot say plainly.

use std::fmt::Write;

use k8s_openapi::{api::core::v1::Event, jiff::Timestamp};
use kube::api::ListParams;

use super::{
    Error, Outcome, Output, Target,
    describe::{Glance, duration},
};
use nightshift_api::{BackgroundJob, BackgroundJobStatus};

pub async fn status(target: &Target, name: &str, output: Option<Output>) -> Result<Outcome, Error> {
    let job = target.job(name).await?;
    let status = job.status.clone().unwrap_or_default();
    match output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&status).expect("a status serializes")),
        Some(Output::Yaml) => print!("{}", serde_yaml_ng::to_string(&status).expect("a status serializes")),
        None => {
            let selector = format!("involvedObject.kind=BackgroundJob,involvedObject.name={name}");
            let events = target
                .namespaced::<Event>()
                .list(&ListParams::default().fields(&selector))
                .await
                .map_err(|e| Error::from_kube(e, target))?
                .items;
            print!("{}", report(&job, &events, Timestamp::now()));
        }
    }
    Ok(Outcome::Done)
}

/// The report, from the job and its events (pure).
pub fn report(job: &BackgroundJob, events: &[Event], now: Timestamp) -> String {
    let g = Glance::of(job, now);
    let status = job.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{:<11} {value}", format!("{name}:"));
    };
    field("Job", format!("{}/{}", g.namespace, g.name));
    let mut phase = g.phase.clone();
    if let Some(elapsed) = g.elapsed {
        phase += &format!(", {} {}", if g.finished() { "ran" } else { "running for" }, duration(elapsed));
    }
    if !g.message.is_empty() {
        phase += &format!(" ({}: {})", g.reason, g.message);
    }
    field("Phase", phase);
    let mut progress = format!("{}/{} ({}%)", g.done, g.total, g.percent);
    if let Some(rate) = g.rate.filter(|_| !g.finished()) {
        progress += &format!(", {rate:.1}/s");
    }
    if let (Some(eta), Some(at)) = (g.eta, &status.estimated_completion_time) {
        progress += &format!(", ETA {} ({})", duration(eta), at.0);
    }
    field("Progress", progress);
    let counts = status.shards.clone().unwrap_or_default();
    let ranges = |r: &Option<String>| r.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
    let shard_list = |shards: Vec<i32>| {
        if shards.is_empty() {
            String::new()
        } else {
            format!(" ({})", shards.iter().map(i32::to_string).collect::<Vec<_>>().join(","))
        }
    };
    let running: Vec<i32> = status.active.iter().map(|a| a.shard).collect();
    // Beyond the listed ones, retrying shards are grouped as ranges.
    let mut retrying = nightshift_api::Ranges::default();
    for shard in status.retrying.iter().map(|r| r.shard) {
        retrying.insert(shard);
    }
    for group in &status.retrying_groups {
        retrying.union(&nightshift_api::Ranges::parse(&group.shards));
    }
    let waiting = counts.pending - retrying.len() as i32;
    field(
        "Shards",
        format!(
            "{} in all{}: {} succeeded{}, {} failed{}, {} running{}, {} retrying{}, {} not started",
            g.shards,
            job.spec.only_shards.as_deref().map(|o| format!(" (spec.onlyShards {o})")).unwrap_or_default(),
            counts.succeeded,
            ranges(&status.succeeded_shards),
            counts.failed,
            ranges(&status.failed_shards),
            running.len(),
            shard_list(running.clone()),
            retrying.len(),
            retrying.to_opt_string().map(|r| format!(" ({r})")).unwrap_or_default(),
            waiting.max(0),
        ),
    );
    if !g.finished() {
        let workers = status.workers.clone().unwrap_or_default();
        field("Workers", format!("{} running of {} wanted, {} ready", workers.active, workers.desired, workers.ready));
    }
    if status.disruptions > 0 {
        field("Disrupted", format!("{} attempts taken away by the cluster (no retry used)", status.disruptions));
    }
    write_running(&mut out, &status, now);
    write_retrying(&mut out, &status, now);
    write_failures(&mut out, &status);
    write_events(&mut out, events, now);
    out
}

/// The running attempts, one a line.
fn write_running(out: &mut String, status: &BackgroundJobStatus, now: Timestamp) {
    if !status.active.is_empty() {
        let _ = writeln!(out, "Running:");
        for a in &status.active {
            let mut line = format!("  shard {} attempt {} on pod {}", a.shard, a.attempt, a.pod);
            if let Some(p) = &a.progress {
                line += &format!(", {}/{}", p.done, p.total);
                if !p.message.is_empty() {
                    line += &format!(" {:?}", p.message);
                }
            }
            if let Some(t) = &a.last_heartbeat_time {
                line += &format!(", heartbeat {} ago", duration((now - t.0).get_seconds()));
            }
            line += &format!(", for {}", duration((now - a.start_time.0).get_seconds()));
            if a.failures > 0 {
                line += &format!(", after {} failed attempt{}", a.failures, if a.failures == 1 { "" } else { "s" });
            }
            let _ = writeln!(out, "{line}");
        }
    }
}

/// The shards waiting for a retry: those listed, then the groups.
fn write_retrying(out: &mut String, status: &BackgroundJobStatus, now: Timestamp) {
    if !status.retrying.is_empty() {
        let _ = writeln!(out, "Retrying:");
        for r in &status.retrying {
            let when = match &r.next_retry_time {
                Some(t) if t.0 > now => format!("at {} (in {})", t.0, duration((t.0 - now).get_seconds())),
                Some(_) => "now".to_string(),
                None => "when resumed or a worker is free".to_string(),
            };
            let mut line = format!("  shard {} attempt {} {when}", r.shard, r.attempt);
            if let Some(f) = &r.last_failure {
                line += &format!("; last: {}", failure_text(f));
            }
            let _ = writeln!(out, "{line}");
        }
        for g in &status.retrying_groups {
            let when = g.next_retry_time.as_ref().map(|t| format!(" not before {}", t.0)).unwrap_or_default();
            let _ =
                writeln!(out, "  {} more: shards {}, after {} failed attempt(s){when}", g.count, g.shards, g.failures);
        }
    }
}

/// The shards that failed for good, and the conditions.
fn write_failures(out: &mut String, status: &BackgroundJobStatus) {
    if !status.shard_failures.is_empty() {
        let _ = writeln!(out, "Failed shards:");
        for f in &status.shard_failures {
            let rule = f.rule.as_deref().map(|r| format!(" by {r}")).unwrap_or_default();
            let _ = writeln!(out, "  shard {} attempt {}{rule}: {}", f.shard, f.attempt, failure_text(&f.failure));
        }
    }
    if !status.conditions.is_empty() {
        let _ = writeln!(out, "Conditions:");
        for c in &status.conditions {
            let _ = writeln!(out, "  {:<15} {:<5} {}: {}", c.type_, c.status, c.reason, c.message);
        }
    }
}

/// The latest 10 events, oldest first.
fn write_events(out: &mut String, events: &[Event], now: Timestamp) {
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| event_time(e));
    let last: Vec<&&Event> = events.iter().rev().take(10).collect();
    if !last.is_empty() {
        let _ = writeln!(out, "Events (latest {}):", last.len());
        for e in last.into_iter().rev() {
            let age = event_time(e).map(|t| format!("{} ago", duration((now - t).get_seconds()))).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<9} {:<8} {:<16} {}",
                age,
                e.type_.as_deref().unwrap_or(""),
                e.reason.as_deref().unwrap_or(""),
                e.message.as_deref().unwrap_or("").trim()
            );
        }
    }
}

fn failure_text(f: &nightshift_api::Failure) -> String {
    let mut s = f.reason.clone();
    if let Some(code) = f.exit_code {
        s = format!("exit code {code}, {s}");
    }
    if !f.message.is_empty() {
        s += &format!(": {}", f.message);
    }
    s
}

fn event_time(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use nightshift_api::job_fixture;

    #[test]
    fn the_report_says_where_every_shard_is_and_why() {
        let spec = json!({"shards": 6, "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}});
        let job: BackgroundJob = job_fixture::job("import", spec)
            .namespace("shop")
            .status(json!({
                    "phase": "Running", "startTime": "2026-11-23T12:00:00Z",
                    "shards": {"total": 6, "pending": 2, "running": 1, "succeeded": 3, "failed": 0, "summary": "3/6"},
                    "succeededShards": "0-2",
                    "workers": {"desired": 2, "active": 1, "ready": 1, "summary": "1/2"},
                    "active": [{"shard": 3, "attempt": 1, "pod": "import-3-1", "startTime": "2026-11-23T12:08:00Z",
                                "progress": {"done": 40, "total": 100, "message": "row 40"}}],
                    "retrying": [{"shard": 4, "attempt": 2, "failures": 1, "nextRetryTime": "2026-11-23T12:10:30Z",
                                  "lastFailure": {"reason": "Error", "exitCode": 3, "message": "bad row 17"}}],
                    "shardFailures": [{"shard": 5, "attempt": 1, "rule": "spec.retry.exitCodes[1] (FailShard)",
                                       "failure": {"reason": "Error", "exitCode": 65, "message": "row 9: no email"}}],
            }))
            .build();
        let now: Timestamp = "2026-11-23T12:10:00Z".parse().unwrap();
        let report = report(&job, &[], now);
        for expected in [
            "Job:        shop/import",
            "Phase:      Running, running for 10m00s",
            "Shards:     6 in all: 3 succeeded (0-2), 0 failed, 1 running (3), 1 retrying (4), 1 not started",
            "  shard 3 attempt 1 on pod import-3-1, 40/100 \"row 40\", for 2m00s",
            "  shard 4 attempt 2 at 2026-11-23T12:10:30Z (in 30s); last: exit code 3, Error: bad row 17",
            "  shard 5 attempt 1 by spec.retry.exitCodes[1] (FailShard): exit code 65, Error: row 9: no email",
        ] {
            assert!(report.contains(expected), "missing {expected:?} in:\n{report}");
        }
    }
}
