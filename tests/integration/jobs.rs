//! The controller against the real control plane: BackgroundJobs run to completion, retry,
//! time out, suspend, clean up, and survive an operator restart. The test plays the node with
//! the test's node (support/node.rs), so each pod's outcome is the test's choice.

use std::collections::BTreeMap;

use crate::support::node;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use nightshift_api::{FINALIZER_TRACKING, Phase};
use serde_json::json;

use crate::support::{Operator, WAIT, fixture, wait_until};

fn label(pod: &Pod, key: &str) -> String {
    pod.labels().get(key).cloned().unwrap_or_default()
}

#[tokio::test]
async fn five_shards_run_on_at_most_three_workers_to_success() {
    let (f, _operator) = fixture("happy").await;
    f.create("import", json!({"shards": 5, "workers": {"min": 1, "max": 3}})).await;
    let first = f.wait_live("import", 3).await;
    assert_eq!(first, ["import-0-1", "import-1-1", "import-2-1"]);

    let pod = f.pods.get("import-1-1").await.unwrap();
    let owner = &pod.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("BackgroundJob", "import", Some(true)));
    assert_eq!(pod.finalizers(), [FINALIZER_TRACKING]);
    assert_eq!(pod.annotations().get(node::PHASE).map(String::as_str), Some("Pending"), "the template's annotation");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let selector = BTreeMap::from([("type".to_string(), "kwok".to_string())]);
    assert_eq!(spec.node_selector, Some(selector), "the template's, for the test's node");
    let env: BTreeMap<String, String> =
        spec.containers[0].env.clone().unwrap().into_iter().map(|e| (e.name, e.value.unwrap_or_default())).collect();
    assert_eq!(env["NIGHTSHIFT_SHARD"], "1");
    assert_eq!(env["NIGHTSHIFT_SHARDS"], "5");
    assert_eq!(env["NIGHTSHIFT_ATTEMPT"], "1");
    assert_eq!(env["NIGHTSHIFT_JOB"], "import");
    assert_eq!(env["NIGHTSHIFT_NAMESPACE"], f.ns.name);

    let status = wait_until("status to show 3 workers", WAIT, || async {
        let s = f.status("import").await;
        if s.workers.as_ref().is_some_and(|w| w.active == 3 && w.desired == 3) { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    assert_eq!(status.phase, Some(Phase::Running));
    assert!(status.conditions.iter().any(|c| c.type_ == "Admitted" && c.status == "True"));

    for pod in &first {
        f.finish(pod, 0).await;
    }
    let next = f.wait_live("import", 2).await;
    assert_eq!(next, ["import-3-1", "import-4-1"]);
    for pod in &next {
        f.finish(pod, 0).await;
    }
    let status = f.wait_phase("import", Phase::Succeeded).await;
    let shards = status.shards.unwrap();
    assert_eq!((shards.total, shards.succeeded, shards.failed, shards.pending, shards.running), (5, 5, 0, 0, 0));
    assert_eq!(status.succeeded_shards.as_deref(), Some("0-4"));
    assert_eq!(status.progress.unwrap().percent, 100);
    assert!(status.completion_time.is_some());
    assert!(status.conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True"));
    wait_until("every tracking finalizer released", WAIT, || async {
        let tracked: Vec<String> =
            f.all_pods("import").await.iter().filter(|p| !p.finalizers().is_empty()).map(|p| p.name_any()).collect();
        if tracked.is_empty() { Ok(()) } else { Err(format!("{tracked:?}")) }
    })
    .await;
    assert_eq!(f.all_pods("import").await.len(), 5, "one pod per shard, none twice");
    // The first workers are told in the Admitted event; later ones each in a WorkerStarted one.
    f.wait_event("import", "Admitted", "on pod import-2-1").await;
    f.wait_event("import", "WorkerStarted", "on pod import-4-1").await;
    f.wait_event("import", "Succeeded", "").await;
}

#[tokio::test]
async fn a_failed_shard_is_retried_after_backoff_and_then_succeeds() {
    let (f, _operator) = fixture("retry").await;
    f.create(
        "flaky",
        json!({"shards": 1, "retry": {"limit": 2, "backoff": {"initialSeconds": 5, "factor": 2, "maxSeconds": 10}}}),
    )
    .await;
    f.wait_live("flaky", 1).await;
    f.finish("flaky-0-1", 3).await;
    // A backoff of 5 s: the shard is seen waiting for its retry, never already running it.
    let status = wait_until("the shard to wait for its retry", WAIT, || async {
        let s = f.status("flaky").await;
        assert!(!s.active.iter().any(|a| a.attempt == 2), "attempt 2 ran before its backoff was seen: {s:?}");
        if s.retrying.is_empty() { Err(format!("{s:?}")) } else { Ok(s) }
    })
    .await;
    let r = &status.retrying[0];
    assert_eq!((r.shard, r.attempt, r.failures), (0, 2, 1));
    assert!(r.next_retry_time.is_some());
    assert_eq!(r.last_failure.as_ref().unwrap().exit_code, Some(3));
    f.wait_live_exactly("flaky", &["flaky-0-2"]).await;
    let active = wait_until("the status to record attempt 2", WAIT, || async {
        let active = f.status("flaky").await.active;
        if active.first().is_some_and(|a| a.attempt == 2) { Ok(active) } else { Err(format!("{active:?}")) }
    })
    .await;
    assert_eq!((active[0].attempt, active[0].failures), (2, 1));
    f.finish("flaky-0-2", 0).await;
    let status = f.wait_phase("flaky", Phase::Succeeded).await;
    assert_eq!(status.shards.unwrap().succeeded, 1);
    f.wait_event("flaky", "AttemptFailed", "exit code 3").await;
}

#[tokio::test]
async fn exhausted_retries_fail_the_job_with_the_last_failure() {
    let (f, _operator) = fixture("exhaust").await;
    f.create(
        "doomed",
        json!({"shards": 2, "workers": {"max": 1}, "retry": {"limit": 1, "backoff": {"initialSeconds": 0, "factor": 1, "maxSeconds": 0}}}),
    )
    .await;
    f.wait_live("doomed", 1).await;
    f.finish("doomed-0-1", 7).await;
    f.wait_live_exactly("doomed", &["doomed-0-2"]).await;
    f.finish("doomed-0-2", 9).await;
    let status = f.wait_phase("doomed", Phase::Failed).await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "RetriesExhausted");
    assert!(
        failed.message.contains("shard 0 failed 2 times") && failed.message.contains("exit code 9"),
        "{}",
        failed.message
    );
    assert_eq!(status.failed_shards.as_deref(), Some("0"));
    assert!(f.live_pods("doomed").await.is_empty());
    assert!(
        !f.all_pods("doomed").await.iter().any(|p| p.labels()["nightshift.dev/shard"] == "1"),
        "shard 1 never started"
    );
}

#[tokio::test]
async fn an_attempt_past_its_deadline_is_stopped_and_retried() {
    let (f, _operator) = fixture("attempt-timeout").await;
    f.create(
        "slow",
        json!({"shards": 1, "timeouts": {"attemptSeconds": 2},
               "retry": {"limit": 1, "backoff": {"initialSeconds": 0, "factor": 1, "maxSeconds": 0}}}),
    )
    .await;
    f.wait_live("slow", 1).await;
    node::mark_running(&f.pods, "slow-0-1").await.unwrap();
    // Attempt 1 never finishes: after 2 s it is deleted and attempt 2 runs.
    f.wait_live_exactly("slow", &["slow-0-2"]).await;
    wait_until("the timed-out pod to be gone", WAIT, || async {
        match f.pods.get_opt("slow-0-1").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(p) => Err(format!("still there: finalizers {:?}", p.finalizers())),
        }
    })
    .await;
    f.wait_event("slow", "AttemptFailed", "AttemptDeadlineExceeded").await;
    f.finish("slow-0-2", 0).await;
    f.wait_phase("slow", Phase::Succeeded).await;
}

#[tokio::test]
async fn the_job_deadline_stops_every_worker_and_fails_the_job() {
    let (f, _operator) = fixture("job-timeout").await;
    f.create("capped", json!({"shards": 3, "timeouts": {"jobSeconds": 3}})).await;
    f.wait_live("capped", 3).await;
    let status = f.wait_phase("capped", Phase::Failed).await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "DeadlineExceeded");
    wait_until("every worker pod to be gone", WAIT, || async {
        let left: Vec<String> = f.all_pods("capped").await.iter().map(|p| p.name_any()).collect();
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;
}

#[tokio::test]
async fn suspend_stops_workers_and_resume_finishes_the_rest() {
    let (f, _operator) = fixture("suspend").await;
    f.create("pausable", json!({"shards": 4, "workers": {"max": 2}})).await;
    f.wait_live("pausable", 2).await;
    f.finish("pausable-0-1", 0).await;
    assert_eq!(f.wait_live("pausable", 2).await, ["pausable-1-1", "pausable-2-1"]);

    f.jobs.patch("pausable", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await.unwrap();
    let status = f.wait_phase("pausable", Phase::Suspended).await;
    assert_eq!(status.succeeded_shards.as_deref(), Some("0"), "progress kept");
    f.wait_live("pausable", 0).await;

    f.jobs
        .patch("pausable", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}})))
        .await
        .unwrap();
    let resumed = f.wait_live("pausable", 2).await;
    assert_eq!(resumed, ["pausable-1-2", "pausable-2-2"], "interrupted shards rerun as new attempts");
    for pod in &resumed {
        f.finish(pod, 0).await;
    }
    f.wait_live_exactly("pausable", &["pausable-3-1"]).await;
    f.finish("pausable-3-1", 0).await;
    let status = f.wait_phase("pausable", Phase::Succeeded).await;
    assert_eq!(status.shards.unwrap().succeeded, 4);
    assert!(status.retrying.is_empty());
}

#[tokio::test]
async fn deleting_a_running_job_removes_its_pods() {
    let (f, _operator) = fixture("delete").await;
    f.create("doomed", json!({"shards": 6})).await;
    f.wait_live("doomed", 3).await;
    f.finish("doomed-0-1", 0).await;
    f.wait_live("doomed", 3).await;
    f.jobs.delete("doomed", &DeleteParams::background()).await.unwrap();
    wait_until("the job and all its pods to be gone", WAIT, || async {
        let pods: Vec<String> = f.all_pods("doomed").await.iter().map(|p| p.name_any()).collect();
        let job = f.jobs.get_opt("doomed").await.map_err(|e| e.to_string())?;
        if pods.is_empty() && job.is_none() {
            Ok(())
        } else {
            Err(format!("pods {pods:?}, job present: {}", job.is_some()))
        }
    })
    .await;
}

#[tokio::test]
async fn a_finished_job_is_deleted_after_its_ttl() {
    let (f, _operator) = fixture("ttl").await;
    f.create("brief", json!({"shards": 1, "ttlSecondsAfterFinished": 2})).await;
    f.wait_live("brief", 1).await;
    f.finish("brief-0-1", 0).await;
    f.wait_phase("brief", Phase::Succeeded).await;
    wait_until("the job to be deleted after its TTL", WAIT, || async {
        let job = f.jobs.get_opt("brief").await.map_err(|e| e.to_string())?;
        let pods = f.all_pods("brief").await.len();
        if job.is_none() && pods == 0 { Ok(()) } else { Err(format!("job present: {}, pods {pods}", job.is_some())) }
    })
    .await;
}

#[tokio::test]
async fn an_operator_restart_mid_run_loses_and_duplicates_nothing() {
    let (f, operator) = fixture("restart").await;
    f.create(
        "durable",
        json!({"shards": 6, "retry": {"limit": 2, "backoff": {"initialSeconds": 0, "factor": 1, "maxSeconds": 0}}}),
    )
    .await;
    f.wait_live("durable", 3).await;
    f.finish("durable-0-1", 0).await;
    f.wait_live("durable", 3).await;

    // The operator dies; meanwhile workers finish and fail.
    operator.kill().await;
    f.finish("durable-1-1", 0).await;
    f.finish("durable-2-1", 5).await;
    f.finish("durable-3-1", 0).await;
    let _operator = Operator::start(&f.client, &f.ns.name).await;

    // Everything that runs from here on succeeds.
    f.run_to_success("durable").await;
    let status = f.status("durable").await;
    let shards = status.shards.unwrap();
    assert_eq!((shards.succeeded, shards.failed, shards.pending, shards.running), (6, 0, 0, 0));
    assert_eq!(status.succeeded_shards.as_deref(), Some("0-5"));
    let pods = f.all_pods("durable").await;
    let mut succeeded_per_shard: BTreeMap<String, usize> = BTreeMap::new();
    for pod in &pods {
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
            *succeeded_per_shard.entry(label(pod, "nightshift.dev/shard")).or_default() += 1;
        }
    }
    assert_eq!(succeeded_per_shard.len(), 6, "{succeeded_per_shard:?}");
    assert!(succeeded_per_shard.values().all(|n| *n == 1), "a shard ran to success twice: {succeeded_per_shard:?}");
    let attempts: Vec<String> =
        pods.iter().filter(|p| label(p, "nightshift.dev/shard") == "2").map(|p| p.name_any()).collect();
    assert_eq!(attempts.len(), 2, "shard 2: the failed attempt and its retry, {attempts:?}");
    wait_until("every tracking finalizer released", WAIT, || async {
        let tracked = f.all_pods("durable").await.iter().filter(|p| !p.finalizers().is_empty()).count();
        if tracked == 0 { Ok(()) } else { Err(format!("{tracked} pods still tracked")) }
    })
    .await;
}

#[tokio::test]
async fn a_pod_template_the_api_server_refuses_fails_the_job_with_its_message() {
    let (f, _operator) = fixture("bad-template").await;
    // The CRD schema cannot know container names must be DNS labels; the API server does.
    f.create("invalid", json!({"template": {"spec": {"containers": [{"name": "Not_A_DNS_Label", "image": "x"}]}}}))
        .await;
    let status = f.wait_phase("invalid", Phase::Failed).await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "InvalidPodTemplate");
    assert!(failed.message.contains("Not_A_DNS_Label"), "{}", failed.message);
    assert!(f.all_pods("invalid").await.is_empty());
    // No retry storm: the job stays failed and quiet.
    let events = f.wait_event("invalid", "Failed", "Not_A_DNS_Label").await;
    assert_eq!(events.iter().filter(|(r, _)| r == "Failed").count(), 1, "{events:?}");
}

#[tokio::test]
async fn a_quota_that_forbids_pods_blocks_workers_until_it_is_lifted() {
    let (f, _operator) = fixture("quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(f.client.clone(), &f.ns.name);
    let quota = serde_json::from_value(json!({"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}));
    quotas.create(&PostParams::default(), &quota.unwrap()).await.unwrap();
    f.create("blocked", json!({"shards": 1})).await;
    let condition =
        |s: &nightshift_api::BackgroundJobStatus| s.conditions.iter().find(|c| c.type_ == "WorkersBlocked").cloned();
    let blocked = wait_until("WorkersBlocked to be True", WAIT, || async {
        let s = f.status("blocked").await;
        match condition(&s) {
            Some(c) if c.status == "True" => Ok((s, c)),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    let (status, c) = blocked;
    assert_eq!(c.reason, "PodCreationForbidden");
    assert!(c.message.contains("quota"), "the API server's words: {}", c.message);
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.workers.as_ref().map(|w| w.active), Some(0));
    assert!(f.all_pods("blocked").await.is_empty());

    quotas.delete("no-pods", &DeleteParams::default()).await.unwrap();
    f.run_to_success("blocked").await;
    let cleared = wait_until("WorkersBlocked to be False", WAIT, || async {
        let s = f.status("blocked").await;
        condition(&s).filter(|c| c.status == "False").ok_or(format!("{s:?}"))
    })
    .await;
    assert_eq!(cleared.reason, "PodCreationAllowed");
    assert!(cleared.last_transition_time.0 > c.last_transition_time.0, "the condition changed when it cleared");
}
