//! No lost wake-up, on the real node: after a burst of deletions (jobs, and with them their
//! running pods) a new job still runs to its end. With kube-runtime's shared-store subscribers
//! (before the fan-out in src/controller/triggers.rs) the operator stopped seeing pods finish after
//! such a burst, and the new job stayed Running 2/2 for good.

use kube::{
    ResourceExt,
    api::{DeleteParams, ListParams},
};
use nightshift_api::{LABEL_JOB, Phase};
use serde_json::json;

use crate::{
    node::{OnTheNode, job, node},
    support::{WAIT, wait_until},
};

#[tokio::test]
async fn a_job_runs_to_its_end_after_a_burst_of_deleted_jobs_and_pods() {
    let (f, _operator) = node("wakeups").await;
    let sleepers: Vec<String> = (0..6).map(|i| format!("sleeper-{i}")).collect();
    for name in &sleepers {
        f.create_job(&job(name, "exec sleep 300", json!({"shards": 3, "workers": {"max": 3}}))).await;
    }
    wait_until("18 workers running on the node", WAIT * 4, || async {
        let pods = f.pods.list(&ListParams::default().labels(LABEL_JOB)).await.map_err(|e| e.to_string())?.items;
        let running = pods.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        match running.count() {
            18 => Ok(()),
            n => Err(format!("{n} running")),
        }
    })
    .await;
    // As `kubectl delete namespace` does: every job, then the garbage collector takes their pods.
    for name in &sleepers {
        f.jobs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_until("the deleted jobs' pods gone", WAIT * 4, || async {
        let pods = f.pods.list(&ListParams::default().labels(LABEL_JOB)).await.map_err(|e| e.to_string())?.items;
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        if names.is_empty() { Ok(()) } else { Err(format!("left: {names:?}")) }
    })
    .await;

    f.create_job(&job("after", "sleep 1", json!({"shards": 2}))).await;
    let status = f.wait_status("after", "Succeeded", |s| (s.phase == Some(Phase::Succeeded)).then(|| s.clone())).await;
    assert_eq!(status.succeeded_shards.as_deref(), Some("0-1"));
}
