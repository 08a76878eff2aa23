//! One seed: the chart installed into a namespace of its own, bulk-import jobs (the example:
//! 14 shards of 500 rows, heartbeats and checkpoints) run one after another on the real node
//! while faults chosen by the seed hit them at moments chosen by the seed; in the long form a
//! schedule firing every minute runs beside them. Then the invariants, from the event log.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use nightshift_api::{BackgroundJob, BackgroundJobSchedule, LABEL_JOB};
use serde_json::{Value, json};

use crate::{
    Config, Outcome, Rng,
    check::{self, Expect},
    faults,
    log::EventLog,
    setup::{Env, wait_until},
};

/// The jobs' heartbeat: renewals this often (seconds), silent for this long is a failure.
pub const HEARTBEAT_INTERVAL: u64 = 5;
pub const HEARTBEAT_TIMEOUT: u64 = 15;
const SCHEDULE: &str = "every-minute";
const ROWS: i64 = 7000;

/// The example job (examples/bulk-import.yaml) named `name`, with a shorter heartbeat timeout
/// and enough quick retries for the faults it meets.
fn bulk_import(name: &str) -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bulk-import.yaml")).unwrap();
    let mut job: Value = serde_yaml_ng::from_str(&text).expect("examples/bulk-import.yaml");
    job["metadata"] = json!({"name": name});
    job["spec"]["heartbeat"]["intervalSeconds"] = json!(HEARTBEAT_INTERVAL);
    job["spec"]["heartbeat"]["timeoutSeconds"] = json!(HEARTBEAT_TIMEOUT);
    job["spec"]["retry"] = json!({"limit": 10, "backoff": {"initialSeconds": 1, "factor": 2, "maxSeconds": 5}});
    job
}

fn jobs(env: &Env) -> Api<DynamicObject> {
    Api::namespaced_with(env.client.clone(), &env.ns, &ApiResource::erase::<BackgroundJob>(&()))
}

async fn phase(env: &Env, job: &str) -> Result<String, String> {
    let j = jobs(env).get(job).await.map_err(|e| e.to_string())?;
    Ok(j.data["status"]["phase"].as_str().unwrap_or("").to_string())
}

fn finished(phase: &str) -> bool {
    phase == "Succeeded" || phase == "Failed"
}

/// Runs the seed; violations and faults go into `out`.
pub async fn run(env: &Env, log: &Arc<EventLog>, cfg: &Config, out: &mut Outcome) -> Result<(), String> {
    let mut rng = Rng::new(out.seed);
    let deadline = Instant::now() + cfg.duration;
    let schedule_start = if cfg.long() { Some(start_schedule(env, log).await?) } else { None };
    let mut n = 0;
    loop {
        n += 1;
        let name = format!("import-{n}");
        let job: BackgroundJob = serde_json::from_value(bulk_import(&name)).unwrap();
        env.api::<BackgroundJob>().create(&PostParams::default(), &job).await.map_err(|e| e.to_string())?;
        log.note("note", &name, json!("created"));
        let budget = if cfg.long() { usize::MAX } else { cfg.faults_per_job };
        strike_until_done(env, log, cfg, &mut rng, &name, budget, out).await?;
        let end = match wait_done(env, &name, Duration::from_secs(600)).await {
            Ok(end) => end,
            Err(e) => return Err(format!("{e}{}", schema_hint(env).await)),
        };
        log.note("note", &name, json!({"finished": end}));
        seen_in_log(log, &name).await;
        out.violations.extend(check::job_outcome(
            &log.records(),
            &Expect { job: name.clone(), phase: "Succeeded", imported: ROWS },
        ));
        delete_and_check_gone(env, log, &name, out).await;
        if !cfg.long() || Instant::now() >= deadline {
            break;
        }
    }
    if let Some(start) = schedule_start {
        finish_schedule(env, log, start, out).await?;
    }
    Ok(())
}

/// Faults at moments the seed chooses (2 to 12 s apart) until the job finished or `budget`
/// faults were injected.
async fn strike_until_done(
    env: &Env,
    log: &Arc<EventLog>,
    cfg: &Config,
    rng: &mut Rng,
    job: &str,
    budget: usize,
    out: &mut Outcome,
) -> Result<(), String> {
    let mut injected = 0;
    while injected < budget {
        let at = Instant::now() + Duration::from_millis(2000 + rng.below(10_000));
        while Instant::now() < at {
            if finished(&phase(env, job).await.unwrap_or_default()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Err(e) = crate::setup::apply_crds() {
            log.note("note", "crds", json!(e));
        }
        let fault = cfg.faults[rng.below(cfg.faults.len() as u64) as usize];
        match faults::inject(env, log, rng, fault).await {
            Ok(what) => {
                log.note("fault-done", fault.name(), json!(what));
                out.faults.push(fault);
                injected += 1;
            }
            Err(why) => {
                log.note("fault-skipped", fault.name(), json!(why));
                out.skipped += 1;
            }
        }
    }
    Ok(())
}

/// Waits (at most 15 s) until the event log too has seen the job finished: the invariants read
/// the log, whose watch may lag the GET that saw it.
async fn seen_in_log(log: &EventLog, job: &str) {
    let _ = wait_until(&format!("the event log to see {job} finished"), Duration::from_secs(15), || async {
        let recs = log.records();
        let last = recs.iter().filter(|r| r.kind == "job" && r.name == job).max_by_key(|r| r.rv);
        match last.and_then(|r| r.data["phase"].as_str()) {
            Some(p) if finished(p) => Ok(()),
            p => Err(format!("{p:?}")),
        }
    })
    .await;
}

/// When the leader's status writes fail on the CRD's schema, says so: the cluster's CRD is older
/// than the operator image, not a fault's doing.
async fn schema_hint(env: &Env) -> String {
    let Ok((leader, _)) = env.leader().await else { return String::new() };
    let text = env.api::<Pod>().logs(&leader, &Default::default()).await.unwrap_or_default();
    match text.lines().rev().find(|l| l.contains("field not declared in schema")) {
        Some(line) => format!("; ENVIRONMENT: the leader's status writes fail on the CRD schema: {line}"),
        None => String::new(),
    }
}

async fn wait_done(env: &Env, job: &str, timeout: Duration) -> Result<String, String> {
    wait_until(&format!("{job} to finish"), timeout, || async {
        let p = phase(env, job).await?;
        if finished(&p) { Ok(p) } else { Err(format!("phase {p:?}")) }
    })
    .await
}

/// Deletes the job; within 90 s its pods, Leases and worker RBAC must be gone too.
async fn delete_and_check_gone(env: &Env, log: &EventLog, job: &str, out: &mut Outcome) {
    if let Err(e) = jobs(env).delete(job, &DeleteParams::default()).await {
        out.violations.push(format!("{job}: delete failed: {e}"));
        return;
    }
    let lp = ListParams::default().labels(&format!("{LABEL_JOB}={job}"));
    let left = wait_until(&format!("{job} and its objects to be gone"), Duration::from_secs(90), || async {
        let mut left: Vec<String> = Vec::new();
        if jobs(env).get_opt(job).await.map_err(|e| e.to_string())?.is_some() {
            left.push(format!("backgroundjob/{job}"));
        }
        left.extend(names(env.api::<Pod>(), &lp, "pod").await?);
        left.extend(names(env.api::<Lease>(), &lp, "lease").await?);
        left.extend(names(env.api::<ServiceAccount>(), &lp, "serviceaccount").await?);
        left.extend(names(env.api::<Role>(), &lp, "role").await?);
        left.extend(names(env.api::<RoleBinding>(), &lp, "rolebinding").await?);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;
    match left {
        Ok(()) => log.note("note", job, json!("deleted, nothing left")),
        Err(e) => {
            log.note("violation", job, json!(e));
            out.violations.push(format!("{job}: left after delete: {e}"));
        }
    }
}

async fn names<K>(api: Api<K>, lp: &ListParams, kind: &str) -> Result<Vec<String>, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(lp).await.map_err(|e| e.to_string())?;
    Ok(list.items.iter().map(|o| format!("{kind}/{}", o.name_any())).collect())
}

/// A schedule firing every minute: a 2-shard import of the same rows (one batch a shard).
/// Returns when it was created (seconds since 1970).
async fn start_schedule(env: &Env, log: &EventLog) -> Result<i64, String> {
    let mut spec = bulk_import("unused")["spec"].clone();
    spec["shards"] = json!(2);
    spec["workers"] = json!({"min": 1, "max": 2});
    spec["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "BATCH_SIZE", "value": "3500"}, {"name": "BATCH_SECONDS", "value": "1"}]);
    let schedule: BackgroundJobSchedule = serde_json::from_value(json!({
        "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJobSchedule",
        "metadata": {"name": SCHEDULE},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Allow", "startingDeadlineSeconds": 300,
                 "successfulJobsHistoryLimit": 1000, "failedJobsHistoryLimit": 1000, "jobTemplate": {"spec": spec}}
    }))
    .map_err(|e| e.to_string())?;
    env.api::<BackgroundJobSchedule>().create(&PostParams::default(), &schedule).await.map_err(|e| e.to_string())?;
    let now = unix_now();
    log.note("note", SCHEDULE, json!({"created": now}));
    Ok(now)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Suspends the schedule, waits for its jobs, then checks: every minute from the first after
/// it was created to the last that had a minute to start ran exactly once, each run succeeded
/// with every row imported once, and deleting them leaves nothing.
async fn finish_schedule(env: &Env, log: &EventLog, start: i64, out: &mut Outcome) -> Result<(), String> {
    let end = unix_now();
    let patch = json!({"spec": {"suspend": true}});
    env.api::<BackgroundJobSchedule>()
        .patch(SCHEDULE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| e.to_string())?;
    log.note("note", SCHEDULE, json!({"suspended": end}));
    let lp = ListParams::default().labels(&format!("{}={SCHEDULE}", nightshift_api::LABEL_SCHEDULE));
    wait_until("the schedule's jobs to finish", Duration::from_secs(300), || async {
        let list = jobs(env).list(&lp).await.map_err(|e| e.to_string())?;
        let running: Vec<String> = list
            .items
            .iter()
            .filter(|j| !finished(j.data["status"]["phase"].as_str().unwrap_or("")))
            .map(|j| j.name_any())
            .collect();
        if running.is_empty() { Ok(()) } else { Err(format!("running {running:?}")) }
    })
    .await?;
    let first = start / 60 + 1;
    let last = (end - 60) / 60;
    for names in check::scheduled_minutes(&log.records(), SCHEDULE).values() {
        for job in names {
            seen_in_log(log, job).await;
        }
    }
    let recs = log.records();
    out.violations.extend(check::every_minute_once(&recs, SCHEDULE, first..=last));
    for (_, names) in check::scheduled_minutes(&recs, SCHEDULE) {
        for job in names {
            out.violations
                .extend(check::job_outcome(&recs, &Expect { job: job.clone(), phase: "Succeeded", imported: ROWS }));
            delete_and_check_gone(env, log, &job, out).await;
        }
    }
    Ok(())
}
