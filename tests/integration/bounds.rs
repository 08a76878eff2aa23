//! Bounded by design, against the real control plane: the status of a job whose thousands of
//! shards all fail stays small enough to be written (so the job can end), and spec.onlyShards
//! cannot name shards the job does not have.

use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::{
    api::core::v1::Pod, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use nightshift_api::{BackgroundJob, BackgroundJobStatus, LABEL_JOB, MAX_RETRYING_LISTED, Phase};
use serde_json::json;

use crate::support::{TestNamespace, WAIT, client, fixture, install_crd, kubectl};

/// Fails a pod the way a kubelet reports it, in one status write of the test's own: kwok's way
/// (mark_finished) waits for each pod, and writes no termination message (which counts here: the
/// status lists the failures' messages).
async fn fail(pods: &Api<Pod>, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {"phase": "Failed", "containerStatuses": [{
        "name": "worker", "image": "simulated", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "x".repeat(200),
                                 "startedAt": now, "finishedAt": now}}}]}});
    // A pod the operator deleted meanwhile is no loss: its job is over.
    let _ = pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await;
}

/// Shards waiting for a retry, listed or grouped.
fn retrying(status: &BackgroundJobStatus) -> i32 {
    status.retrying.len() as i32 + status.retrying_groups.iter().map(|g| g.count).sum::<i32>()
}

/// 5,000 shards on 1,000 workers, each failing its first attempt with an hour's backoff: all
/// 5,000 wait for a retry at once, which the status once listed one by one (past etcd's limit:
/// no status write, no end). The status is read whole, as stored, while the pods fail.
#[tokio::test]
async fn five_thousand_failing_shards_keep_the_status_small_and_the_job_ends_failed() {
    let (f, _operator) = fixture("bounded").await;
    let retry = json!({"limit": 1, "backoff": {"initialSeconds": 3600, "factor": 1, "maxSeconds": 3600}});
    // No node plays these pods: the test fails each itself. A scheduler name no scheduler has
    // keeps them unbound: bound to kwok's node, each pod costs the API server a binding and an
    // event more, and on two busy cores the test ran out of its time (3,101 of 5,000 retrying).
    let unbound = json!({"spec": {"schedulerName": "nightshift-unscheduled",
                                  "containers": [{"name": "worker", "image": "registry.example/worker:1"}]}});
    let spec = json!({"shards": 5000, "workers": {"min": 1, "max": 1000}, "retry": retry, "template": unbound});
    f.create("many", spec).await;
    let crds: Api<CustomResourceDefinition> = Api::all(f.client.clone());
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    let mut largest = 0;
    loop {
        let job = f.jobs.get("many").await.unwrap();
        let size = serde_json::to_vec(&job).unwrap().len();
        largest = largest.max(size);
        let status = job.status.unwrap_or_default();
        if retrying(&status) == 5000 {
            assert!(status.retrying.len() <= MAX_RETRYING_LISTED && status.active.is_empty(), "{status:?}");
            break;
        }
        let counts = (status.shards.as_ref(), status.retrying.len(), status.retrying_groups.len());
        assert!(tokio::time::Instant::now() < deadline, "{} of 5000 retrying: {counts:?}", retrying(&status));
        // On a shared control plane another test run may install an older CRD meanwhile, whose
        // schema lacks status.retryingGroups (the operator's status writes then fail with 500).
        // Say so, rather than install ours again: each change of the CRD ends every watch of
        // BackgroundJobs on the cluster, the other runs' operators' too.
        let crd = crds.get("backgroundjobs.nightshift.dev").await.unwrap();
        let current = serde_json::to_string(&crd.spec).unwrap().contains("retryingGroups");
        assert!(current, "another test run installed a CRD without status.retryingGroups; run this test alone");
        // Only the pending ones: listing all 5,000 pods each round would dwarf the rest.
        let pending = ListParams::default().labels(&format!("{LABEL_JOB}=many")).fields("status.phase=Pending");
        let live: Vec<String> = f.pods.list(&pending).await.unwrap().iter().map(|p| p.name_any()).collect();
        let pods = &f.pods;
        stream::iter(live).for_each_concurrent(64, |pod| async move { fail(pods, &pod).await }).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(largest < 256 * 1024, "the job was {largest} bytes at most, far under etcd's 1.5 MiB");

    f.jobs.patch("many", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancel": true}}))).await.unwrap();
    let status = f.wait_phase("many", Phase::Failed).await;
    assert_eq!(status.conditions.iter().find(|c| c.type_ == "Failed").map(|c| c.reason.as_str()), Some("Cancelled"));
    let size = serde_json::to_vec(&f.jobs.get("many").await.unwrap()).unwrap().len();
    assert!(size < 64 * 1024, "{size} bytes");
}

fn job_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: nightshift.dev/v1alpha1\nkind: BackgroundJob\nmetadata: {{name: {name}}}\nspec:\n{spec}  \
         template: {{spec: {{containers: [{{name: w, image: registry.example/w:1}}]}}}}\n"
    )
}

/// spec.onlyShards beyond spec.shards is refused at `kubectl apply` and through the API, naming
/// the field; a job's own shards (or the default 1), and a schedule's job template, are judged.
#[tokio::test]
async fn only_shards_that_do_not_exist_are_refused_at_apply() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "only-shards").await;
    const SAYS: &str = "spec.onlyShards must name only shards that exist: every index must be below spec.shards";
    let refused = [
        job_yaml("past", "  shards: 14\n  onlyShards: \"20-25\"\n"),
        job_yaml("one-past", "  shards: 14\n  onlyShards: \"0,3-14\"\n"),
        job_yaml("default-one", "  onlyShards: \"1\"\n"),
    ];
    for manifest in &refused {
        let (code, out, err) = kubectl(&ns.name, &["apply", "-f", "-"], manifest).await;
        assert_ne!(code, 0, "kubectl apply took it: {out}");
        assert!(err.contains("spec.onlyShards") && err.contains(SAYS), "{err}");
    }
    for manifest in
        [job_yaml("last", "  shards: 14\n  onlyShards: \"3,7-9,13\"\n"), job_yaml("zero", "  onlyShards: \"0\"\n")]
    {
        let (code, out, err) = kubectl(&ns.name, &["apply", "-f", "-"], &manifest).await;
        assert_eq!(code, 0, "kubectl apply refused it: {out}{err}");
    }
    // Through the API, as an app sends it.
    let jobs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &ApiResource::erase::<BackgroundJob>(&()));
    let manifest: DynamicObject =
        serde_yaml_ng::from_str(&job_yaml("typed", "  shards: 3\n  onlyShards: \"2-4\"\n")).unwrap();
    let e = jobs.create(&PostParams::default(), &manifest).await.unwrap_err();
    assert!(e.to_string().contains(SAYS), "{e}");
    // A schedule's job template, with its own path.
    let schedule = "apiVersion: nightshift.dev/v1alpha1\nkind: BackgroundJobSchedule\nmetadata: {name: nightly}\nspec:\n  \
        schedule: \"@daily\"\n  jobTemplate:\n    spec:\n      shards: 2\n      onlyShards: \"5\"\n      \
        template: {spec: {containers: [{name: w, image: registry.example/w:1}]}}\n";
    let (code, _, err) = kubectl(&ns.name, &["apply", "-f", "-"], schedule).await;
    assert_ne!(code, 0);
    assert!(err.contains("spec.jobTemplate.spec.onlyShards must name only shards that exist"), "{err}");
}
