//! The invariants, read from the event log's records (and, for the operator, from its pods):
//! each violation is one line that names the object and the log's time (t=…s) of the evidence.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::log::Rec;

/// What a job should end with.
pub struct Expect {
    pub job: String,
    pub phase: &'static str,
    /// status.result.imported at the end; never more at any status version.
    pub imported: i64,
}

/// The job's records in resourceVersion order (a watch's relist may repeat or reorder them).
fn job_versions<'a>(recs: &'a [Rec], job: &str) -> Vec<&'a Rec> {
    let mut v: Vec<&Rec> = recs.iter().filter(|r| r.kind == "job" && r.name == job && !r.deleted).collect();
    v.sort_by_key(|r| r.rv);
    v.dedup_by_key(|r| r.rv);
    v
}

fn imported(r: &Rec) -> Option<i64> {
    r.data["result"]["imported"].as_i64()
}

/// The job reached `phase`; its result never went above the work nor down, and ended at it.
pub fn job_outcome(recs: &[Rec], e: &Expect) -> Vec<String> {
    let mut out = Vec::new();
    let versions = job_versions(recs, &e.job);
    let Some(last) = versions.last() else {
        return vec![format!("{}: never seen in the event log", e.job)];
    };
    if last.data["phase"] != e.phase {
        out.push(format!("{}: ended in phase {} (t={:.1}s), not {}", e.job, last.data["phase"], last.t, e.phase));
    }
    if imported(last) != Some(e.imported) {
        out.push(format!(
            "{}: result {} at the end (t={:.1}s), not imported={}",
            e.job, last.data["result"], last.t, e.imported
        ));
    }
    let mut high: Option<(i64, u64)> = None;
    for r in &versions {
        let Some(n) = imported(r) else {
            if let Some((h, rv)) = high {
                out.push(format!("{}: result gone at rv {} (t={:.1}s), was imported={h} at rv {rv}", e.job, r.rv, r.t));
            }
            continue;
        };
        if n > e.imported {
            out.push(format!("{}: imported={n} > {} at rv {} (t={:.1}s)", e.job, e.imported, r.rv, r.t));
        }
        if let Some((h, rv)) = high
            && n < h
        {
            out.push(format!("{}: imported went down {h} (rv {rv}) -> {n} (rv {}, t={:.1}s)", e.job, r.rv, r.t));
        }
        if high.is_none_or(|(h, _)| n > h) {
            high = Some((n, r.rv));
        }
    }
    out
}

/// Never two attempts of one shard both Running with neither being deleted.
pub fn single_attempt(recs: &[Rec]) -> Vec<String> {
    let mut pods: BTreeMap<String, &Rec> = BTreeMap::new();
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for r in recs.iter().filter(|r| r.kind == "pod" && !r.data["job"].is_null()) {
        // Only newer versions replace what we know (a relist may replay older ones).
        if pods.get(&r.name).is_some_and(|old| old.rv > r.rv) {
            continue;
        }
        pods.insert(r.name.clone(), r);
        let shard = (r.data["job"].clone(), r.data["shard"].clone());
        let live: Vec<&String> = pods
            .iter()
            .filter(|(_, p)| (p.data["job"].clone(), p.data["shard"].clone()) == shard)
            .filter(|(_, p)| !p.deleted && p.data["phase"] == "Running" && p.data["deleting"] == false)
            .map(|(n, _)| n)
            .collect();
        if live.len() > 1 && reported.insert(format!("{live:?}")) {
            out.push(format!(
                "shard {}/{}: attempts {live:?} both Running, unfenced (t={:.1}s)",
                shard.0, shard.1, r.t
            ));
        }
    }
    out
}

/// A frozen worker, and how soon the operator deleted it.
pub struct Detection {
    pub pod: String,
    /// Seconds from the freeze to the pod's deletion (None: never deleted).
    pub latency: Option<f64>,
    /// Leader changes in between.
    pub takeovers: usize,
}

/// Slack on top of the bound: the new leader's first LISTs and reconcile, the watch's delay.
const DETECTION_SLACK: f64 = 10.0;

/// Each freeze's detection latency, from the event log: the freeze's note, then the first
/// record of that pod being deleted. The bound: the timeout from the freeze, or the last leader
/// change in between, whichever is later (a new leader times a worker from the renewal it found,
/// as the API server stamped it: decision::heartbeat::last_beat), plus [`DETECTION_SLACK`]: the
/// timeout plus one takeover. A freeze whose pod another fault deleted first is not a detection.
pub fn detections(recs: &[Rec], timeout: f64) -> (Vec<Detection>, Vec<String>) {
    let takeovers: Vec<f64> = leader_changes(recs);
    let mut found = Vec::new();
    let mut out = Vec::new();
    for freeze in recs.iter().filter(|r| r.kind == "fault" && r.name == "freeze") {
        let Some(pod) = freeze.data["pod"].as_str() else { continue };
        let deleted = recs
            .iter()
            .find(|r| r.kind == "pod" && r.name == pod && r.t > freeze.t && (r.deleted || r.data["deleting"] == true));
        let struck = recs.iter().any(|r| {
            r.kind == "fault"
                && r.data["pod"] == pod
                && r.t > freeze.t
                && deleted.is_none_or(|d| r.t < d.t)
                && matches!(r.name.as_str(), "evict" | "force-delete")
        });
        // A worker whose container ended as it was frozen (its pod Succeeded or Failed) is no
        // silent worker: nothing is to detect.
        let ended = recs.iter().any(|r| {
            r.kind == "pod"
                && r.name == pod
                && r.t >= freeze.t
                && deleted.is_none_or(|d| r.t <= d.t)
                && matches!(r.data["phase"].as_str(), Some("Succeeded" | "Failed"))
        });
        if struck || ended {
            continue;
        }
        let end = deleted.map_or(f64::MAX, |d| d.t);
        let within: Vec<f64> = takeovers.iter().copied().filter(|t| *t > freeze.t && *t < end).collect();
        let latency = deleted.map(|d| d.t - freeze.t);
        let bound = within.last().map_or(timeout, |last| timeout.max(last - freeze.t)) + DETECTION_SLACK;
        match latency {
            None => out.push(format!("frozen worker {pod} (t={:.1}s) was never deleted", freeze.t)),
            Some(l) if l > bound => out.push(format!(
                "frozen worker {pod} (t={:.1}s) deleted after {l:.1}s, over {bound:.1}s ({} leader changes in between)",
                freeze.t,
                within.len()
            )),
            Some(_) => {}
        }
        found.push(Detection { pod: pod.to_string(), latency, takeovers: within.len() });
    }
    (found, out)
}

/// When the operators' election Lease passed to another holder (the log's time; a Lease with no
/// holder in between is no leader).
fn leader_changes(recs: &[Rec]) -> Vec<f64> {
    let mut last: Option<&Value> = None;
    let mut changes = Vec::new();
    let mut leases: Vec<&Rec> = recs.iter().filter(|r| r.kind == "lease" && r.name == "nightshift-leader").collect();
    leases.sort_by_key(|r| r.rv);
    for r in leases.into_iter().filter(|r| !r.data["holder"].is_null()) {
        let holder = &r.data["holder"];
        if last.is_some_and(|h| h != holder) {
            changes.push(r.t);
        }
        last = Some(holder);
    }
    changes
}

/// Minutes (since 1970) a schedule ran, from its jobs' names SCHEDULE-MINUTES, each with how
/// many distinct jobs (uids are not logged for jobs: names are the key, so count creations).
pub fn scheduled_minutes(recs: &[Rec], schedule: &str) -> BTreeMap<i64, BTreeSet<String>> {
    let mut minutes: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r.kind == "job" && r.data["schedule"] == schedule) {
        if let Some(m) = r.name.rsplit('-').next().and_then(|m| m.parse().ok()) {
            minutes.entry(m).or_default().insert(r.name.clone());
        }
    }
    minutes
}

/// Every minute in `expected` ran exactly once.
pub fn every_minute_once(recs: &[Rec], schedule: &str, expected: std::ops::RangeInclusive<i64>) -> Vec<String> {
    let ran = scheduled_minutes(recs, schedule);
    let mut out = Vec::new();
    for m in expected {
        match ran.get(&m).map(|s| s.len()) {
            Some(1) => {}
            None => out
                .push(format!("schedule {schedule}: minute {m} never ran (ran: {:?})", ran.keys().collect::<Vec<_>>())),
            Some(n) => out.push(format!("schedule {schedule}: minute {m} ran {n} times: {:?}", ran[&m])),
        }
    }
    out
}

/// Why a result may be off that is not the operator's doing under the faults: the shared CRD
/// replaced (by another tree's tests) with one lacking status.resultShards, which the API server
/// then prunes from every read, so shards already merged look unmerged.
pub fn crd_skew(recs: &[Rec]) -> Vec<String> {
    let mut out = Vec::new();
    let mut had = None;
    for r in recs.iter().filter(|r| r.kind == "crd") {
        let fields = r.data["statusFields"].as_array().cloned().unwrap_or_default();
        let has = fields.iter().any(|f| f == "resultShards");
        if had == Some(true) && !has {
            out.push(format!(
                "ENVIRONMENT: the BackgroundJob CRD lost status.resultShards at t={:.1}s (rv {}, managers {}): status.result merges are no longer deduplicated",
                r.t, r.rv, r.data["managers"]
            ));
        }
        had = Some(has);
    }
    out
}

/// Violations the harness noted while it ran (an operator log that panicked, a leftover).
pub fn noted(recs: &[Rec]) -> Vec<String> {
    recs.iter()
        .filter(|r| r.kind == "violation")
        .map(|r| format!("{}: {} (t={:.1}s)", r.name, short(&r.data), r.t))
        .collect()
}

pub fn short(v: &Value) -> String {
    let s = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    if s.chars().count() > 300 { format!("{}…", s.chars().take(300).collect::<String>()) } else { s }
}

/// The invariants on made-up logs, without a cluster (what a bare `cargo test` runs): each
/// regression the matrix is meant to catch is caught, and a clean log passes.
pub fn self_test() -> Result<(), String> {
    let rec = |kind: &str, name: &str, rv: u64, data: Value| Rec {
        t: rv as f64,
        kind: kind.into(),
        deleted: false,
        name: name.into(),
        rv,
        data,
    };
    let job = |rv, phase: &str, n: Option<i64>| {
        rec(
            "job",
            "j",
            rv,
            serde_json::json!({"phase": phase, "result": n.map(|n| serde_json::json!({"imported": n}))}),
        )
    };
    let expect = Expect { job: "j".into(), phase: "Succeeded", imported: 7000 };
    let clean = [job(1, "Running", None), job(2, "Running", Some(500)), job(4, "Succeeded", Some(7000))];
    let cases: [(&str, Vec<Rec>, usize); 5] = [
        ("clean", clean.to_vec(), 0),
        (
            "lost shards (went down)",
            vec![job(2, "Running", Some(3000)), job(3, "Running", Some(2500)), job(5, "Succeeded", Some(7000))],
            1,
        ),
        ("counted twice", vec![job(2, "Running", Some(7500)), job(3, "Succeeded", Some(7500))], 3),
        ("result gone", vec![job(2, "Running", Some(500)), job(3, "Succeeded", None)], 2),
        ("stale phase", vec![job(3, "Succeeded", Some(7000)), job(2, "Running", Some(6500))], 0),
    ];
    for (what, recs, want) in cases {
        let got = job_outcome(&recs, &expect);
        if got.len() != want {
            return Err(format!("job_outcome on {what}: want {want} violations, got {got:?}"));
        }
    }
    let pod = |name: &str, rv, phase: &str, deleting: bool| {
        rec("pod", name, rv, serde_json::json!({"job": "j", "shard": "0", "phase": phase, "deleting": deleting}))
    };
    let fenced =
        [pod("j-0-1", 1, "Running", false), pod("j-0-1", 2, "Running", true), pod("j-0-2", 3, "Running", false)];
    let doubled = [pod("j-0-1", 1, "Running", false), pod("j-0-2", 3, "Running", false)];
    if !single_attempt(&fenced).is_empty() || single_attempt(&doubled).len() != 1 {
        return Err(format!("single_attempt: {:?} / {:?}", single_attempt(&fenced), single_attempt(&doubled)));
    }
    let note = |kind: &str, name: &str, t: f64, data: Value| Rec { t, rv: 0, ..rec(kind, name, 0, data) };
    let leader =
        |rv, holder: Option<&str>| rec("lease", "nightshift-leader", rv, serde_json::json!({"holder": holder}));
    let frozen = [
        leader(1, Some("a")),
        note("fault", "freeze", 2.0, serde_json::json!({"pod": "j-0-1"})),
        leader(19, None),
        leader(20, Some("b")),
        pod("j-0-1", 29, "Running", true),
    ];
    // Taken over at 20 s, plus slack (10 s): 27 s after the freeze is in bounds, one change.
    let (d, v) = detections(&frozen, 15.0);
    if d.len() != 1 || d[0].takeovers != 1 || d[0].latency != Some(27.0) || !v.is_empty() {
        return Err(format!("detections (in bounds): {v:?}"));
    }
    let late = [note("fault", "freeze", 2.0, serde_json::json!({"pod": "j-0-1"})), pod("j-0-1", 30, "Running", true)];
    if detections(&late, 15.0).1.len() != 1 || detections(&late[..1], 15.0).1.len() != 1 {
        return Err("detections: a late or a missing detection passed".into());
    }
    // Frozen as its container ended: Succeeded, deleted with the job much later, no violation.
    let ended = [
        note("fault", "freeze", 2.0, serde_json::json!({"pod": "j-0-1"})),
        pod("j-0-1", 3, "Succeeded", false),
        pod("j-0-1", 60, "Succeeded", true),
    ];
    if !detections(&ended, 15.0).1.is_empty() {
        return Err("detections: a worker that ended as it was frozen counted as a late detection".into());
    }
    let sched = |name: &str| rec("job", name, 1, serde_json::json!({"schedule": "s"}));
    let ran = [sched("s-100"), sched("s-102"), sched("s-103")];
    let missed = every_minute_once(&ran, "s", 100..=103);
    if missed.len() != 1 || !missed[0].contains("minute 101 never ran") {
        return Err(format!("every_minute_once: {missed:?}"));
    }
    Ok(())
}
