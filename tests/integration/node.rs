//! On the real node: worker pods run real containers (containerd + runc), from the images
//! `tests/cluster/images.sh` built and imported. The operator runs in this process; its pods
//! are scheduled by kube-scheduler and run by the kubelet, so exit codes, OOM kills, image pull
//! errors, SIGTERM, heartbeats from inside pods, the mounted token and `kubectl logs` are real.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, EvictParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use nightshift_api::{BackgroundJob, BackgroundJobStatus, LABEL_JOB, Phase};
use serde_json::json;

use crate::support::{
    Fixture, Operator, WAIT, api_error, client_with_token, fixture_with, job_fixture, kubeconfig_path, wait_until,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn example_image() -> String {
    format!("nightshift-example:{VERSION}")
}

/// A namespace with its own operator (agent image: the operator image built here; heartbeats
/// folded every second so progress shows quickly).
pub async fn node(prefix: &str) -> (Fixture, Operator) {
    let options = nightshift::controller::Options {
        agent_image: Some(format!("nightshift:{VERSION}")),
        fold_seconds: 1,
        ..Default::default()
    };
    fixture_with(prefix, options).await
}

/// A job whose one container runs `script` with busybox sh in the example image.
pub fn job(name: &str, script: &str, spec: serde_json::Value) -> BackgroundJob {
    let mut full = json!({
        "retry": {"limit": 1, "backoff": {"initialSeconds": 1, "factor": 1, "maxSeconds": 1}},
        "template": {"spec": {
            "terminationGracePeriodSeconds": 10,
            "containers": [{"name": "worker", "image": example_image(), "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", script]}]
        }}
    });
    for (k, v) in spec.as_object().unwrap() {
        if k == "template" {
            full[k] = merge(full[k].clone(), v.clone());
        } else {
            full[k] = v.clone();
        }
    }
    job_fixture::job(name, full).build()
}

/// `over` merged into `base`: objects key by key, arrays of objects item by item (so a test can
/// change the first container's command alone), anything else replaced.
fn merge(base: serde_json::Value, over: serde_json::Value) -> serde_json::Value {
    use serde_json::Value::{Array, Object};
    match (base, over) {
        (Object(mut b), Object(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Object(b)
        }
        (Array(b), Array(o)) if o.iter().all(|v| v.is_object()) => {
            let n = b.len().max(o.len());
            let (mut b, mut o) = (b.into_iter(), o.into_iter());
            Array(
                (0..n)
                    .map(|_| match (b.next(), o.next()) {
                        (Some(old), Some(v)) => merge(old, v),
                        (old, v) => v.or(old).unwrap(),
                    })
                    .collect(),
            )
        }
        (_, over) => over,
    }
}

/// What the real node adds to the fixture: jobs as written (no test-node scheduler name), and
/// waits on what the kubelet reports. Real pods start in about a second; a job of a few shards
/// ends well within `WAIT * 2`.
pub trait OnTheNode {
    async fn create_job(&self, job: &BackgroundJob);
    async fn wait_status<T>(&self, name: &str, what: &str, check: impl Fn(&BackgroundJobStatus) -> Option<T>) -> T;
    async fn wait_terminated(&self, pod: &str) -> (i32, String);
    async fn wait_running(&self, pod: &str);
}

impl OnTheNode for Fixture {
    async fn create_job(&self, job: &BackgroundJob) {
        self.jobs.create(&PostParams::default(), job).await.unwrap();
    }

    async fn wait_status<T>(&self, name: &str, what: &str, check: impl Fn(&BackgroundJobStatus) -> Option<T>) -> T {
        wait_until(&format!("{name}: {what}"), WAIT * 2, || async {
            let status = self.status(name).await;
            check(&status).ok_or_else(|| format!("{status:?}"))
        })
        .await
    }

    /// Waits until the pod's first container has terminated; returns (exit code, reason).
    async fn wait_terminated(&self, pod: &str) -> (i32, String) {
        wait_until(&format!("{pod}'s container to terminate"), WAIT * 2, || async {
            let pod = self.pods.get(pod).await.map_err(|e| e.to_string())?;
            terminated(&pod).ok_or_else(|| format!("{:?}", pod.status.and_then(|s| s.container_statuses)))
        })
        .await
    }

    /// Waits until the pod is Running on the node (its main container started).
    async fn wait_running(&self, pod: &str) {
        wait_until(&format!("{pod} to run"), WAIT * 2, || async {
            let p = self.pods.get_opt(pod).await.map_err(|e| e.to_string())?.ok_or("not created yet")?;
            let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if phase == "Running" { Ok(()) } else { Err(format!("phase {phase}: {:?}", p.status)) }
        })
        .await
    }
}

fn terminated(pod: &Pod) -> Option<(i32, String)> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let t = statuses.first()?.state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.reason.clone().unwrap_or_default()))
}

/// `kubectl --kubeconfig <harness> args...` from PATH; its stdout, or a panic with its stderr.
async fn kubectl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .await
        .expect("kubectl on PATH (tests/run-integration.sh puts it there)");
    assert!(output.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Watches the job's pods and returns the first terminated state (exit code) of a pod
/// `matching`, as the kubelet reported it, even if the pod is deleted right after.
async fn exit_code_seen(pods: Api<Pod>, job: &str, matching: impl Fn(&Pod) -> bool) -> i32 {
    let stream = watcher(pods, watcher::Config::default().labels(&format!("{LABEL_JOB}={job}")))
        .applied_objects()
        .try_filter_map(|p| {
            let code = if matching(&p) { terminated(&p).map(|(c, _)| c) } else { None };
            futures::future::ready(Ok(code))
        });
    let mut stream = std::pin::pin!(stream);
    tokio::time::timeout(WAIT * 2, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no terminated pod of {job} seen within {:?}", WAIT * 2))
        .expect("the watch ended")
        .expect("the watch failed")
}

/// The example worker (`examples/worker/bulk-import.sh`) wrapped by the injected agent: its
/// progress and result lines become the job's progress and result, from inside real pods;
/// `kubectl logs` shows what it printed.
#[tokio::test]
async fn the_injected_agent_runs_the_real_worker_and_its_progress_reaches_the_status() {
    let (n, _operator) = node("node-agent").await;
    let spec = json!({
        "shards": 2,
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 20, "injectAgent": true},
        "template": {"spec": {"containers": [{
            "name": "worker", "image": example_image(), "command": ["/bulk-import.sh"],
            "env": [{"name": "BATCH_SIZE", "value": "100"}, {"name": "BATCH_SECONDS", "value": "0.5"}]
        }]}}
    });
    n.create_job(&job("import", "", spec)).await;
    n.wait_status("import", "progress reported from inside a running worker", |s| {
        s.active.iter().find_map(|a| a.progress.as_ref().filter(|p| p.done > 0 && p.total > 0).map(|_| ()))
    })
    .await;
    let status = n.wait_phase("import", Phase::Succeeded).await;
    let progress = status.progress.expect("the job's progress");
    assert_eq!(progress.percent, 100, "{progress:?}");
    let result = status.result.expect("the workers' merged result");
    assert_eq!(result["imported"], json!(7000), "the two shards imported all 7,000 rows: {result}");

    // The agent passed the worker's output through: `kubectl logs` shows it.
    let logs = kubectl(&["-n", &n.ns.name, "logs", "import-0-1"]).await;
    assert!(logs.contains("shard 0: imported rows"), "kubectl logs import-0-1:\n{logs}");
    let pod = n.pods.get("import-0-1").await.unwrap();
    assert_eq!(terminated(&pod), Some((0, "Completed".into())));
}

/// A worker that exits 3 (through the agent, which keeps the code): the failure is recorded
/// with exit code 3 and the shard retried; after the retries the job fails saying so.
#[tokio::test]
async fn a_real_exit_code_is_recorded_and_retried() {
    let (n, _operator) = node("node-exit").await;
    let spec = json!({"heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 20, "injectAgent": true}});
    n.create_job(&job("exit3", "echo 'bad row 17'; exit 3", spec)).await;
    let status = n.wait_phase("exit3", Phase::Failed).await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").expect("a Failed condition");
    assert_eq!(failed.reason, "RetriesExhausted");
    assert!(failed.message.contains("exit code 3"), "{}", failed.message);
    for pod in ["exit3-0-1", "exit3-0-2"] {
        let (code, _) = n.wait_terminated(pod).await;
        assert_eq!(code, 3, "{pod}'s exit code");
    }
}

/// A container over its memory limit is killed by the kernel and reported as OOMKilled.
#[tokio::test]
async fn a_worker_over_its_memory_limit_is_reported_as_oom_killed() {
    let (n, _operator) = node("node-oom").await;
    let spec = json!({
        "retry": {"limit": 0},
        "template": {"spec": {"containers": [{
            "name": "worker", "resources": {"limits": {"memory": "16Mi"}, "requests": {"memory": "16Mi"}}
        }]}}
    });
    // dd's 64 MiB buffer, filled from /dev/zero, does not fit in 16 MiB.
    n.create_job(&job("oom", "dd if=/dev/zero of=/dev/null bs=64M count=1", spec)).await;
    let status = n.wait_phase("oom", Phase::Failed).await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").expect("a Failed condition");
    assert!(failed.message.contains("OOMKilled"), "{}", failed.message);
    let (code, reason) = n.wait_terminated("oom-0-1").await;
    assert_eq!((code, reason.as_str()), (137, "OOMKilled"));
}

/// An image that does not exist: the kubelet would back off for ever (ImagePullBackOff); the
/// attempt fails at the kubelet's first report, the shard is retried under spec.retry, and the
/// job fails with the kubelet's reason and message.
#[tokio::test]
async fn an_image_that_does_not_exist_fails_the_job_with_the_kubelets_reason() {
    let (n, _operator) = node("node-image").await;
    let spec =
        json!({"template": {"spec": {"containers": [{"name": "worker", "image": "nightshift-no-such-image:1"}]}}});
    n.create_job(&job("noimage", "true", spec)).await;
    let status = n.wait_phase("noimage", Phase::Failed).await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").expect("a Failed condition");
    assert_eq!(failed.reason, "RetriesExhausted");
    assert!(
        ["ErrImagePull", "ImagePullBackOff"].iter().any(|r| failed.message.contains(r))
            && failed.message.contains("nightshift-no-such-image"),
        "{}",
        failed.message
    );
}

/// Suspend and delete stop real worker processes with SIGTERM, forwarded by the agent: the
/// worker's trap runs (exit 42, where SIGKILL at the end of the grace period would give 137).
#[tokio::test]
async fn suspend_and_delete_send_sigterm_to_the_real_worker() {
    let (n, _operator) = node("node-term").await;
    let script = "trap 'echo got SIGTERM; exit 42' TERM; echo working; while true; do sleep 1 & wait $!; done";
    let spec = json!({"heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 20, "injectAgent": true}});
    n.create_job(&job("term", script, spec)).await;
    n.wait_running("term-0-1").await;

    let seen = tokio::spawn(exit_code_seen(n.pods.clone(), "term", |p| p.name_any() == "term-0-1"));
    n.jobs.patch("term", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await.unwrap();
    assert_eq!(seen.await.unwrap(), 42, "the worker's SIGTERM trap ran on suspend");
    n.wait_phase("term", Phase::Suspended).await;

    n.jobs.patch("term", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}}))).await.unwrap();
    let resumed =
        n.wait_status("term", "a new attempt after resume", |s| s.active.first().map(|a| a.pod.clone())).await;
    n.wait_running(&resumed).await;
    let seen = tokio::spawn(exit_code_seen(n.pods.clone(), "term", move |p| p.name_any() == resumed));
    n.jobs.delete("term", &DeleteParams::background()).await.unwrap();
    assert_eq!(seen.await.unwrap(), 42, "the worker's SIGTERM trap ran when its job was deleted");
}

/// attemptSeconds kills a real hung process (sh as PID 1 ignores SIGTERM: SIGKILL after the
/// grace period) and the shard is retried.
#[tokio::test]
async fn attempt_seconds_kills_a_hung_process_and_retries() {
    let (n, _operator) = node("node-hung").await;
    let spec = json!({
        "timeouts": {"attemptSeconds": 3},
        "template": {"spec": {"terminationGracePeriodSeconds": 1}}
    });
    n.create_job(&job("hung", "echo hanging; sleep 3600", spec)).await;
    n.wait_running("hung-0-2").await;
    let events = kubectl(&["-n", &n.ns.name, "get", "events", "--field-selector", "involvedObject.name=hung"]).await;
    assert!(events.contains("AttemptDeadlineExceeded"), "events of hung:\n{events}");
    wait_until("the hung attempt's pod to be gone", WAIT * 2, || async {
        match n.pods.get_opt("hung-0-1").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(p) => Err(format!("still there: {:?}", p.status.and_then(|s| s.container_statuses))),
        }
    })
    .await;
}

/// A worker whose process is alive but never heartbeats (a sleep instead of the agent) is
/// detected as HeartbeatTimeout and retried.
#[tokio::test]
async fn a_silent_real_worker_is_detected_and_retried() {
    let (n, _operator) = node("node-silent").await;
    let spec = json!({"heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3}});
    n.create_job(&job("silent", "sleep 3600", spec)).await;
    n.wait_running("silent-0-2").await;
    let events = kubectl(&["-n", &n.ns.name, "get", "events", "--field-selector", "involvedObject.name=silent"]).await;
    assert!(events.contains("HeartbeatTimeout"), "events of silent:\n{events}");
}

/// A superseded attempt's agent is fenced: when the Lease names another holder, the agent
/// stops its worker (SIGTERM: the trap's exit 42) and exits. The pod's own mounted token
/// renews its shard's Lease and is refused on another job's Lease.
#[tokio::test]
async fn a_fenced_agent_exits_and_the_mounted_token_is_least_privileged() {
    let (n, _operator) = node("node-fence").await;
    let script = "trap 'echo fenced; exit 42' TERM; while true; do sleep 1 & wait $!; done";
    let spec = json!({"heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 30, "injectAgent": true}});
    n.create_job(&job("fence", script, spec.clone())).await;
    n.create_job(&job("other", script, spec)).await;
    n.wait_running("fence-0-1").await;
    n.wait_running("other-0-1").await;

    // The token the kubelet mounted into the worker, read from inside the container.
    let token = kubectl(&[
        "-n",
        &n.ns.name,
        "exec",
        "fence-0-1",
        "-c",
        "worker",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ])
    .await;
    let worker = client_with_token(token.trim()).await;
    let leases: Api<Lease> = Api::namespaced(worker, &n.ns.name);
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let renew = json!({"spec": {"renewTime": now}});
    leases.patch("fence-0", &PatchParams::default(), &Patch::Merge(&renew)).await.expect("renewing its own Lease");
    let refused = leases.patch("other-0", &PatchParams::default(), &Patch::Merge(&renew)).await.map(|_| ());
    assert_eq!(api_error(&refused).map(|e| e.0), Some(403), "another job's Lease: {refused:?}");

    // Another attempt takes the Lease: the running agent must stop its worker and exit.
    let seen = tokio::spawn(exit_code_seen(n.pods.clone(), "fence", |p| p.name_any() == "fence-0-1"));
    let admin: Api<Lease> = n.ns.api();
    admin
        .patch("fence-0", &PatchParams::default(), &Patch::Merge(json!({"spec": {"holderIdentity": "fence-0-99"}})))
        .await
        .unwrap();
    assert_eq!(seen.await.unwrap(), 42, "the fenced agent stopped its worker with SIGTERM");
    let logs = kubectl(&["-n", &n.ns.name, "logs", "fence-0-1"]).await;
    assert!(logs.contains("fenced"), "kubectl logs fence-0-1:\n{logs}");
}

/// A worker the cluster takes away — evicted through the Eviction API, as `kubectl drain` does —
/// runs again at once and uses no retry: with retry.limit 0, a failure would fail the job, the
/// eviction does not. Its pod asked autoscalers to leave it alone.
#[tokio::test]
async fn an_evicted_worker_runs_again_at_once_and_uses_no_retry() {
    let (n, _operator) = node("node-evict").await;
    // Attempt 1 works until it is taken away; attempt 2 finishes.
    let script = r#"if [ "$NIGHTSHIFT_ATTEMPT" = 1 ]; then sleep 600; fi; echo finished"#;
    let spec = json!({"retry": {"limit": 0}, "template": {"spec": {"terminationGracePeriodSeconds": 1}}});
    n.create_job(&job("evicted", script, spec)).await;
    n.wait_running("evicted-0-1").await;
    let annotations = n.pods.get("evicted-0-1").await.unwrap().metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("cluster-autoscaler.kubernetes.io/safe-to-evict").map(String::as_str), Some("false"));
    assert_eq!(annotations.get("karpenter.sh/do-not-disrupt").map(String::as_str), Some("true"));

    let evicted_at = std::time::Instant::now();
    n.pods.evict("evicted-0-1", &EvictParams::default()).await.expect("the Eviction API evicts the worker");
    n.wait_running("evicted-0-2").await;
    eprintln!("eviction to the next attempt running on the node: {:?}", evicted_at.elapsed());
    let status = n.wait_phase("evicted", Phase::Succeeded).await;
    assert_eq!(status.disruptions, 1, "{status:?}");
    assert_eq!(status.failed_shards, None);
    let events = n.wait_event("evicted", "AttemptDisrupted", "EvictionByEvictionAPI").await;
    assert!(!events.iter().any(|(reason, _)| reason == "AttemptFailed"), "no failure recorded: {events:?}");
    assert_eq!(n.wait_terminated("evicted-0-2").await.0, 0);
}

/// The bulk-import example checkpoints the rows it committed; evicted midway, its next attempt
/// resumes after the last of them (its log says so, and its progress never starts again from
/// zero), uses no retry, and the import still counts every row once.
#[tokio::test]
async fn an_evicted_bulk_import_resumes_from_its_checkpoint() {
    let (n, _operator) = node("node-resume").await;
    let spec = json!({
        "retry": {"limit": 0},
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 20, "injectAgent": true},
        "template": {"spec": {"containers": [{
            "name": "worker", "image": example_image(), "command": ["/bulk-import.sh"],
            "env": [{"name": "BATCH_SIZE", "value": "100"}, {"name": "BATCH_SECONDS", "value": "0.3"}]
        }]}}
    });
    n.create_job(&job("resume", "", spec)).await;
    let before = n
        .wait_status("resume", "a fifth of the rows imported", |s| {
            s.active.iter().find_map(|a| a.progress.as_ref().filter(|p| p.done >= 1400).map(|p| p.done))
        })
        .await;

    let evicted_at = std::time::Instant::now();
    n.pods.evict("resume-0-1", &EvictParams::default()).await.expect("the Eviction API evicts the worker");
    n.wait_running("resume-0-2").await;
    eprintln!("eviction to the next attempt running on the node: {:?}", evicted_at.elapsed());
    let resumed = n
        .wait_status("resume", "attempt 2's progress", |s| {
            s.active.iter().find(|a| a.attempt == 2).and_then(|a| a.progress.as_ref()).map(|p| p.done)
        })
        .await;
    assert!(resumed >= before, "attempt 2 started from its checkpoint ({resumed} rows done), not from zero");

    let status = n.wait_phase("resume", Phase::Succeeded).await;
    assert_eq!((status.disruptions, status.failed_shards.as_deref()), (1, None), "{status:?}");
    let result = status.result.expect("the worker's result");
    assert_eq!(result["imported"], json!(7000), "every row imported once: {result}");
    let logs = kubectl(&["-n", &n.ns.name, "logs", "resume-0-2"]).await;
    let line = logs.lines().find(|l| l.contains("resuming from checkpoint after row")).unwrap_or_else(|| {
        panic!("kubectl logs resume-0-2 does not say it resumed:\n{logs}");
    });
    let row: i64 = line.split("after row ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(row >= before, "resumed after row {row}, and {before} rows were reported done before the eviction");
    assert!(!logs.contains("imported rows 1-100 "), "attempt 2 imported no row twice:\n{logs}");
}

/// On suspend the worker gets SIGTERM and the pod's grace period: the checkpoint it saves then
/// (after 2 s of cleaning up) is the one the next attempt receives, although the job is resumed
/// at once: the next attempt waits for the old one to stop.
#[tokio::test]
async fn a_checkpoint_saved_in_the_grace_period_reaches_the_next_attempt() {
    let (n, _operator) = node("node-grace").await;
    let script = r#"trap 'sleep 2; echo "::nightshift:: checkpoint saved-in-the-grace-period"; exit 143' TERM
echo "attempt $NIGHTSHIFT_ATTEMPT resumes from [${NIGHTSHIFT_CHECKPOINT:-}]"
if [ "$NIGHTSHIFT_ATTEMPT" != 1 ]; then exit 0; fi
echo "::nightshift:: checkpoint saved-while-working"
while true; do sleep 1 & wait $!; done"#;
    let spec = json!({"heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 20, "injectAgent": true}});
    n.create_job(&job("grace", script, spec)).await;
    n.wait_running("grace-0-1").await;
    let leases: Api<Lease> = n.ns.api();
    let checkpoint = |lease: &Lease| lease.annotations().get("nightshift.dev/checkpoint").cloned().unwrap_or_default();
    wait_until("the worker's first checkpoint in its Lease", WAIT, || async {
        let lease = leases.get("grace-0").await.map_err(|e| e.to_string())?;
        if checkpoint(&lease) == "saved-while-working" { Ok(()) } else { Err(format!("{lease:?}")) }
    })
    .await;

    let suspend = |on: bool| json!({"spec": {"suspend": on}});
    n.jobs.patch("grace", &PatchParams::default(), &Patch::Merge(suspend(true))).await.unwrap();
    n.wait_phase("grace", Phase::Suspended).await;
    n.jobs.patch("grace", &PatchParams::default(), &Patch::Merge(suspend(false))).await.unwrap();
    let status = n.wait_phase("grace", Phase::Succeeded).await;
    assert_eq!(status.failed_shards, None);
    let logs = kubectl(&["-n", &n.ns.name, "logs", "grace-0-2"]).await;
    assert!(logs.contains("attempt 2 resumes from [saved-in-the-grace-period]"), "kubectl logs grace-0-2:\n{logs}");
    assert_eq!(checkpoint(&leases.get("grace-0").await.unwrap()), "saved-in-the-grace-period");
}

/// Exit-code rules on real exits: 65 fails only its shard (the job ends Succeeded with it listed,
/// as allowFailedShards asks), and its status names the rule, the code and the worker's last
/// log line (FallbackToLogsOnError); 2 fails the whole job at once, with no retry used.
#[tokio::test]
async fn exit_code_rules_fail_a_shard_alone_or_the_job_at_once() {
    let (n, _operator) = node("node-rules").await;
    let retry = |allow: bool| {
        json!({"limit": 3, "backoff": {"initialSeconds": 1, "factor": 1, "maxSeconds": 1}, "allowFailedShards": allow,
               "exitCodes": [{"codes": [2], "action": "FailJob"}, {"codes": [65], "action": "FailShard"}]})
    };
    let script = r#"echo "importing shard $NIGHTSHIFT_SHARD"; if [ "$NIGHTSHIFT_SHARD" = 1 ]; then echo "row 17: not an email" >&2; exit 65; fi"#;
    n.create_job(&job("rows", script, json!({"shards": 3, "retry": retry(true)}))).await;
    let status = n.wait_phase("rows", Phase::Succeeded).await;
    assert_eq!((status.succeeded_shards.as_deref(), status.failed_shards.as_deref()), (Some("0,2"), Some("1")));
    let failure = &status.shard_failures[0];
    assert_eq!(
        (failure.shard, failure.attempt, failure.rule.as_deref()),
        (1, 1, Some("spec.retry.exitCodes[1] (FailShard)"))
    );
    assert_eq!(failure.failure.exit_code, Some(65));
    assert!(failure.failure.message.contains("row 17: not an email"), "the worker's last words: {failure:?}");
    let complete = status.conditions.iter().find(|c| c.type_ == "Complete").unwrap();
    assert!(complete.message.contains("1 failed (1), allowed by spec.retry.allowFailedShards"), "{}", complete.message);

    let script = r#"echo "input file is corrupt" >&2; exit 2"#;
    n.create_job(&job("corrupt", script, json!({"shards": 1, "retry": retry(false)}))).await;
    let status = n.wait_phase("corrupt", Phase::Failed).await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "ExitCodeRule");
    assert!(
        failed.message.contains("exited with code 2, which spec.retry.exitCodes[0] (FailJob) says fails the job")
            && failed.message.contains("input file is corrupt"),
        "{}",
        failed.message
    );
    assert!(n.pods.get_opt("corrupt-0-2").await.unwrap().is_none(), "no retry");
}
