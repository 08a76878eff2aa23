//! Heartbeats on Leases against the real control plane: least-privilege worker tokens, the agent
//! reporting progress, silent, stalled and fenced workers, clock skew, and the status write rate.

use std::{process::Stdio, time::Duration};

use crate::support::node;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Pod, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use nightshift_api::{Phase, ShardProgress};
use nightshift_worker::{Checkpoint, Report, renewal_patch};
use serde_json::json;

use crate::support::{
    Operator, WAIT, api_error, client_with_token, fixture, fixture_with, kubeconfig_path, token, token_kubeconfig,
    wait_until,
};

/// One renewal, as any worker sends it (the agent's own patch, fenced on the holder), at `at`,
/// reporting `done` of `total` units when given.
async fn renew(
    leases: &Api<Lease>,
    lease: &str,
    holder: &str,
    at: Timestamp,
    progress: Option<(i64, i64)>,
) -> kube::Result<Lease> {
    let progress = progress.map(|(done, total)| ShardProgress { done, total, message: String::new() });
    let patch = renewal_patch(holder, at, &Report { progress, ..Report::default() });
    leases.patch(lease, &PatchParams::default(), &Patch::<()>::Json(patch)).await
}

/// Keeps renewing `lease` for `holder` every `every` until dropped; `progress(n)` gives the
/// progress of the n-th renewal, `at(n)` its renewTime.
fn keep_renewing(
    leases: Api<Lease>,
    lease: String,
    holder: String,
    every: Duration,
    at: impl Fn(i64) -> Timestamp + Send + 'static,
    progress: impl Fn(i64) -> Option<(i64, i64)> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for n in 0i64.. {
            let _ = renew(&leases, &lease, &holder, at(n), progress(n)).await;
            tokio::time::sleep(every).await;
        }
    })
}

fn heartbeat_job(timeout: i32, stall: Option<i32>) -> serde_json::Value {
    let mut hb = json!({"intervalSeconds": 1, "timeoutSeconds": timeout});
    if let Some(s) = stall {
        hb["stallSeconds"] = s.into();
    }
    json!({"shards": 1, "heartbeat": hb, "retry": {"limit": 3, "backoff": {"initialSeconds": 0, "factor": 1, "maxSeconds": 0}}})
}

#[tokio::test]
async fn a_worker_token_renews_its_own_lease_and_nothing_else() {
    let (f, _operator) = fixture("hb-rbac").await;
    f.create("alpha", json!({"shards": 2, "heartbeat": {"timeoutSeconds": 30}})).await;
    f.create("beta", json!({"shards": 1, "heartbeat": {"timeoutSeconds": 30}})).await;
    f.wait_live("alpha", 2).await;
    f.wait_live("beta", 1).await;
    let pod = f.pods.get("alpha-0-1").await.unwrap();
    assert_eq!(pod.spec.unwrap().service_account_name.as_deref(), Some("alpha-worker"));

    let token = token(&f.client, &f.ns.name, "alpha-worker").await;
    let worker = client_with_token(&token).await;
    let leases: Api<Lease> = Api::namespaced(worker.clone(), &f.ns.name);
    wait_until("the worker token to renew its own Lease", WAIT, || async {
        renew(&leases, "alpha-0", "alpha-0-1", Timestamp::now(), Some((1, 2)))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    renew(&leases, "alpha-1", "alpha-1-1", Timestamp::now(), None)
        .await
        .expect("a sibling shard's Lease of the same job");

    let refused = renew(&leases, "beta-0", "beta-0-1", Timestamp::now(), None).await.map(|_| ());
    assert_eq!(api_error(&refused).map(|e| e.0), Some(403), "another job's Lease: {refused:?}");
    let jobs: Api<nightshift_api::BackgroundJob> = Api::namespaced(worker.clone(), &f.ns.name);
    let refused = jobs.get("alpha").await.map(|_| ());
    assert_eq!(api_error(&refused).map(|e| e.0), Some(403), "the BackgroundJob itself: {refused:?}");
    let pods: Api<Pod> = Api::namespaced(worker.clone(), &f.ns.name);
    let refused = pods.list(&ListParams::default()).await.map(|_| ());
    assert_eq!(api_error(&refused).map(|e| e.0), Some(403), "pods: {refused:?}");
    let refused = leases.list(&ListParams::default()).await.map(|_| ());
    assert_eq!(api_error(&refused).map(|e| e.0), Some(403), "listing Leases: {refused:?}");
}

#[tokio::test]
async fn the_agent_run_with_a_worker_token_reports_progress_into_the_status() {
    let (f, _operator) = fixture("hb-agent").await;
    f.create("agented", heartbeat_job(30, None)).await;
    f.wait_live("agented", 1).await;
    node::mark_running(&f.pods, "agented-0-1").await.unwrap();
    let token = token(&f.client, &f.ns.name, "agented-worker").await;
    let kubeconfig = token_kubeconfig(&token, &format!("{}-worker.kubeconfig", f.ns.name));

    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["agent", "--", "sh", "-c"])
        .arg(r#"echo "::nightshift:: progress 3/10 loading rows"; echo '::nightshift:: result {"created":3}'; sleep 4; exit 3"#)
        .env("KUBECONFIG", &kubeconfig.0)
        .env("NIGHTSHIFT_NAMESPACE", &f.ns.name)
        .env("NIGHTSHIFT_LEASE", "agented-0")
        .env("NIGHTSHIFT_POD", "agented-0-1")
        .env("NIGHTSHIFT_HEARTBEAT_INTERVAL_SECONDS", "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = wait_until("the agent's progress in the job's status", WAIT, || async {
        let s = f.status("agented").await;
        let p = s.progress.clone().unwrap_or_default();
        if p.done == 3 && p.total == 10 { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    let progress = status.progress.unwrap();
    assert_eq!((progress.percent, progress.message.as_str()), (30, "loading rows"));
    assert!(status.last_heartbeat_time.is_some());
    assert_eq!(status.active[0].progress.as_ref().unwrap().done, 3);
    // A result counts once its shard succeeded: this attempt is about to fail.
    assert_eq!(status.result, None, "a running attempt's result is not merged");
    let exit = tokio::time::timeout(WAIT, agent.wait()).await.expect("the agent exits").unwrap();
    assert_eq!(exit.code(), Some(3), "the command's exit code is the agent's");
}

#[tokio::test]
async fn a_silent_worker_is_detected_and_its_shard_retried() {
    let (f, _operator) = fixture("hb-silent").await;
    f.create("quiet", heartbeat_job(3, None)).await;
    f.wait_live("quiet", 1).await;
    node::mark_running(&f.pods, "quiet-0-1").await.unwrap();
    let started = std::time::Instant::now();
    f.wait_live_exactly("quiet", &["quiet-0-2"]).await;
    let latency = started.elapsed();
    eprintln!("silent worker detected {:.1}s after it started running (timeoutSeconds 3)", latency.as_secs_f64());
    f.wait_event("quiet", "AttemptFailed", "HeartbeatTimeout").await;
    // The new attempt holds the Lease.
    let leases: Api<Lease> = f.ns.api();
    let lease = leases.get("quiet-0").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("quiet-0-2"));
}

#[tokio::test]
async fn a_worker_that_heartbeats_without_progress_fails_as_stalled() {
    let (f, _operator) = fixture("hb-stall").await;
    f.create("stuck", heartbeat_job(3, Some(4))).await;
    f.wait_live("stuck", 1).await;
    node::mark_running(&f.pods, "stuck-0-1").await.unwrap();
    let beats = keep_renewing(
        f.ns.api(),
        "stuck-0".into(),
        "stuck-0-1".into(),
        Duration::from_millis(500),
        |_| Timestamp::now(),
        |_| Some((7, 100)),
    );
    f.wait_live_exactly("stuck", &["stuck-0-2"]).await;
    beats.abort();
    let events = f.wait_event("stuck", "AttemptFailed", "Stalled").await;
    assert!(!events.iter().any(|(_, m)| m.contains("HeartbeatTimeout")), "it did heartbeat: {events:?}");
}

#[tokio::test]
async fn worker_clock_skew_changes_nothing() {
    let (f, _operator) = fixture("hb-skew").await;
    f.create("skewed", heartbeat_job(3, None)).await;
    f.wait_live("skewed", 1).await;
    node::mark_running(&f.pods, "skewed-0-1").await.unwrap();
    // The worker's clock is an hour behind: every renewTime is long "expired", yet each is new.
    let beats = keep_renewing(
        f.ns.api(),
        "skewed-0".into(),
        "skewed-0-1".into(),
        Duration::from_millis(500),
        |_| Timestamp::now() - SignedDuration::from_secs(3600),
        |n| Some((n, 1000)),
    );
    let status = wait_until("a heartbeat in the status", WAIT, || async {
        let s = f.status("skewed").await;
        if s.last_heartbeat_time.is_some() { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    // The operator's clock stamps heartbeats, not the worker's.
    let seen = status.last_heartbeat_time.unwrap().0;
    assert!((Timestamp::now() - seen).get_seconds().abs() < 60, "lastHeartbeatTime {seen} is on the operator's clock");
    // Three timeouts pass and the attempt lives on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(f.live_pods("skewed").await.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["skewed-0-1"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    beats.abort();
    // A clock ahead is no better: once renewals stop, the attempt fails on time.
    f.wait_live_exactly("skewed", &["skewed-0-2"]).await;
}

#[tokio::test]
async fn a_superseded_agent_is_fenced_and_stops() {
    let (f, _operator) = fixture("hb-fence").await;
    f.create("fenced", heartbeat_job(30, None)).await;
    f.wait_live("fenced", 1).await;
    node::mark_running(&f.pods, "fenced-0-1").await.unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["agent", "--", "sleep", "120"])
        .env("KUBECONFIG", kubeconfig_path())
        .env("NIGHTSHIFT_NAMESPACE", &f.ns.name)
        .env("NIGHTSHIFT_LEASE", "fenced-0")
        .env("NIGHTSHIFT_POD", "fenced-0-1")
        .env("NIGHTSHIFT_HEARTBEAT_INTERVAL_SECONDS", "1")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let leases: Api<Lease> = f.ns.api();
    wait_until("the agent's first renewal", WAIT, || async {
        let lease = leases.get("fenced-0").await.map_err(|e| e.to_string())?;
        if lease.spec.and_then(|s| s.renew_time).is_some() { Ok(()) } else { Err("not renewed".into()) }
    })
    .await;
    // The pod of attempt 1 is deleted (say, its node went away): attempt 2 takes the Lease over.
    f.pods.delete("fenced-0-1", &DeleteParams::default()).await.unwrap();
    f.wait_live_exactly("fenced", &["fenced-0-2"]).await;
    let exit = tokio::time::timeout(Duration::from_secs(30), agent.wait()).await;
    assert!(exit.is_ok(), "the fenced agent kept running");
}

#[tokio::test]
async fn steady_heartbeats_from_three_workers_stay_within_the_status_write_bound() {
    let (f, _operator) = fixture("hb-rate").await;
    f.create("steady", json!({"shards": 3, "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 10}})).await;
    let pods = f.wait_live("steady", 3).await;
    for pod in &pods {
        node::mark_running(&f.pods, pod).await.unwrap();
    }
    let mut beats = Vec::new();
    for (shard, pod) in pods.iter().enumerate() {
        beats.push(keep_renewing(
            f.ns.api(),
            format!("steady-{shard}"),
            pod.clone(),
            Duration::from_secs(1),
            |_| Timestamp::now(),
            |n| Some((n, 1000)),
        ));
    }
    // Let the start settle (readiness is folded in too), then count every change of the job for a minute.
    wait_until("3 ready workers in the status", WAIT, || async {
        let s = f.status("steady").await;
        if s.workers.as_ref().is_some_and(|w| w.ready == 3) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    let jobs = f.jobs.clone();
    let name = "steady".to_string();
    let counter = tokio::spawn(async move {
        let mut writes = 0u32;
        let mut last_version = None;
        // A watch error (a compaction expires its resourceVersion under load) is retried: ending
        // the count there would count nothing.
        let stream = watcher(jobs, watcher::Config::default().fields(&format!("metadata.name={name}")))
            .default_backoff()
            .applied_objects()
            .take_until(tokio::time::sleep(Duration::from_secs(60)));
        futures::pin_mut!(stream);
        use futures::StreamExt;
        while let Some(event) = stream.next().await {
            let Ok(job) = event else { continue };
            if last_version.is_some() && last_version != job.metadata.resource_version {
                writes += 1;
            }
            last_version = job.metadata.resource_version.clone();
        }
        writes
    });
    let writes = counter.await.unwrap();
    for b in beats {
        b.abort();
    }
    let renewals = 3 * 60;
    eprintln!("{renewals} renewals in 60 s became {writes} status writes");
    // The documented bound: one fold per 15 s, plus one for a fold already due at the start.
    assert!(writes <= 60 / 15 + 1, "{writes} status writes for {renewals} renewals");
    assert!(writes >= 2, "heartbeats and progress must still reach the status: {writes} writes");
    assert_eq!(f.status("steady").await.phase, Some(Phase::Running));
}

#[tokio::test]
async fn deleting_a_heartbeat_job_leaves_nothing_of_it() {
    let (f, _operator) = fixture("hb-delete").await;
    f.create("gone", json!({"shards": 2, "heartbeat": {"timeoutSeconds": 30}})).await;
    f.wait_live("gone", 2).await;
    let leases: Api<Lease> = f.ns.api();
    let roles: Api<Role> = f.ns.api();
    let bindings: Api<RoleBinding> = f.ns.api();
    let sas: Api<ServiceAccount> = f.ns.api();
    assert!(leases.get_opt("gone-1").await.unwrap().is_some());
    assert!(roles.get_opt("gone-worker").await.unwrap().is_some());
    f.jobs.delete("gone", &DeleteParams::background()).await.unwrap();
    wait_until("no pod, Lease, ServiceAccount, Role or RoleBinding of the job", WAIT, || async {
        let by_job = ListParams::default().labels("nightshift.dev/job=gone");
        let left = (
            f.all_pods("gone").await.len(),
            leases.list(&by_job).await.map_err(|e| e.to_string())?.items.len(),
            sas.get_opt("gone-worker").await.map_err(|e| e.to_string())?.is_some(),
            roles.get_opt("gone-worker").await.map_err(|e| e.to_string())?.is_some(),
            bindings.get_opt("gone-worker").await.map_err(|e| e.to_string())?.is_some(),
        );
        if left == (0, 0, false, false, false) {
            Ok(())
        } else {
            Err(format!("left (pods, leases, sa, role, binding): {left:?}"))
        }
    })
    .await;
}

/// A restarted operator (a new leader) times a silent worker from its last renewal, as the API
/// server stamped it, not from when it first saw the Lease or the running pod: the operator down
/// for 20 of the 30 s, the attempt fails about 10 s after the restart, not 30.
#[tokio::test]
async fn a_restarted_operator_times_a_silent_worker_from_its_last_renewal() {
    let (f, operator) = fixture("hb-restart").await;
    f.create("quiet", heartbeat_job(30, None)).await;
    f.wait_live("quiet", 1).await;
    node::mark_running(&f.pods, "quiet-0-1").await.unwrap();
    let leases: Api<Lease> = f.ns.api();
    wait_until("quiet's Lease", WAIT, || async {
        renew(&leases, "quiet-0", "quiet-0-1", Timestamp::now(), None).await.map_err(|e| e.to_string())
    })
    .await;
    let renewed = tokio::time::Instant::now();
    operator.kill().await;
    while renewed.elapsed() < Duration::from_secs(20) {
        assert_eq!(f.live_pods("quiet").await.len(), 1, "no operator runs: nothing judges the worker");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _restarted = Operator::start(&f.client, &f.ns.name).await;
    // 30 s after the renewal is 10 s from here; a full timeout from the restart would be 30 s.
    wait_until(
        "the silent attempt to fail before a full timeout from the restart",
        Duration::from_secs(22),
        || async {
            let live: Vec<String> = f.live_pods("quiet").await.iter().map(|p| p.name_any()).collect();
            if live.iter().any(|n| n == "quiet-0-1") { Err(format!("live {live:?}")) } else { Ok(()) }
        },
    )
    .await;
    f.wait_event("quiet", "AttemptFailed", "HeartbeatTimeout").await;
}

#[tokio::test]
async fn agent_injection_wraps_the_worker_and_needs_an_agent_image() {
    let (f, operator) = fixture("hb-inject").await;
    let spec = json!({
        "shards": 1,
        "heartbeat": {"timeoutSeconds": 30, "injectAgent": true},
        "template": {"spec": {"containers": [{"name": "w", "image": "registry.example/w:1", "command": ["import"], "args": ["--all"]}]}}
    });
    // Without an agent image the operator cannot inject: the job fails with the reason, once.
    f.create("no-image", spec.clone()).await;
    let status = f.wait_phase("no-image", Phase::Failed).await;
    assert_eq!(status.conditions.iter().find(|c| c.type_ == "Failed").unwrap().reason, "AgentImageUnset");
    operator.kill().await;

    let options = nightshift::controller::Options { agent_image: Some("nightshift:test".into()), ..Default::default() };
    let _operator = Operator::start_with(&f.client, &f.ns.name, options).await;
    f.create("injected", spec).await;
    f.wait_live("injected", 1).await;
    let pod = f.pods.get("injected-0-1").await.unwrap().spec.unwrap();
    let init = &pod.init_containers.unwrap()[0];
    assert_eq!(init.image.as_deref(), Some("nightshift:test"));
    assert_eq!(
        pod.containers[0].command.clone().unwrap(),
        // The agent gives the command the pod's grace period when fenced (Kubernetes' default, 30 s).
        ["/nightshift-agent/nightshift", "agent", "--grace-seconds", "30", "--", "import", "--all"]
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("injected-worker"));
}

/// From the progress a worker reports, the status estimates when the job will end; an estimate
/// past the deadline sets DeadlineAtRisk (one Warning event), and faster progress clears it.
#[tokio::test]
async fn the_estimate_follows_reported_progress_and_warns_once_of_a_missed_deadline() {
    let options = nightshift::controller::Options { fold_seconds: 1, ..Default::default() };
    let (f, _operator) = fixture_with("hb-eta", options).await;
    let mut spec = heartbeat_job(600, None);
    spec["timeouts"] = json!({"jobSeconds": 120});
    f.create("eta", spec).await;
    f.wait_live("eta", 1).await;
    node::mark_running(&f.pods, "eta-0-1").await.unwrap();
    // 1% of the work done, then no more: at that rate the job takes about 100 times the time so
    // far, far past its 120 s deadline.
    let slow = keep_renewing(
        f.ns.api(),
        "eta-0".into(),
        "eta-0-1".into(),
        Duration::from_millis(500),
        |_| Timestamp::now(),
        |_| Some((1, 100)),
    );
    let risk = |s: &nightshift_api::BackgroundJobStatus| {
        s.conditions.iter().find(|c| c.type_ == "DeadlineAtRisk").map(|c| (c.status.clone(), c.reason.clone()))
    };
    let late = wait_until("an estimate past the deadline", WAIT, || async {
        let s = f.status("eta").await;
        match (&s.estimated_completion_time, risk(&s)) {
            (Some(_), Some((status, _))) if status == "True" => Ok(s),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    let (start, eta) = (late.start_time.clone().unwrap().0, late.estimated_completion_time.clone().unwrap().0);
    assert!(eta.duration_since(start).as_secs() > 120, "1% done: the estimate {eta} is far past start {start} + 120 s");
    assert_eq!(risk(&late).unwrap().1, "EstimatePastDeadline");
    slow.abort();
    // Nearly done: the estimate comes back within the deadline, and the condition clears.
    let fast = keep_renewing(
        f.ns.api(),
        "eta-0".into(),
        "eta-0-1".into(),
        Duration::from_millis(500),
        |_| Timestamp::now(),
        |_| Some((99, 100)),
    );
    let clear = wait_until("the estimate back within the deadline", WAIT, || async {
        let s = f.status("eta").await;
        match risk(&s) {
            Some((status, reason)) if status == "False" => Ok((s, reason)),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    fast.abort();
    assert_eq!(clear.1, "EstimateWithinDeadline");
    assert!(clear.0.estimated_completion_time.unwrap().0 < start + SignedDuration::from_secs(120));
    let events = f.wait_event("eta", "DeadlineAtRisk", "after its deadline").await;
    assert_eq!(events.iter().filter(|(reason, _)| reason == "DeadlineAtRisk").count(), 1, "one warning: {events:?}");
}

/// A checkpoint lives in its shard's Lease: the operator restarting loses none of it, the
/// shard's next attempt gets it (NIGHTSHIFT_CHECKPOINT) and starts its progress from it, and no
/// other shard gets it.
#[tokio::test]
async fn a_checkpoint_outlives_the_operator_and_reaches_only_its_shards_next_attempt() {
    let options = nightshift::controller::Options { fold_seconds: 1, ..Default::default() };
    let (f, operator) = fixture_with("hb-checkpoint", options.clone()).await;
    let mut spec = heartbeat_job(30, None);
    spec["shards"] = 2.into();
    f.create("resume", spec).await;
    f.wait_live("resume", 2).await;
    for pod in ["resume-0-1", "resume-1-1"] {
        node::mark_running(&f.pods, pod).await.unwrap();
    }
    // Shard 1's worker reports 40/100 and saves a checkpoint there, then goes on to 55/100.
    let leases: Api<Lease> = f.ns.api();
    let at_40 = ShardProgress { done: 40, total: 100, message: "row 40".into() };
    let report = Report {
        progress: Some(ShardProgress { done: 55, total: 100, message: "row 55".into() }),
        checkpoint: Some(Checkpoint { text: "row=40 file=\"a b\"".into(), progress: Some(at_40) }),
        ..Report::default()
    };
    let patch = renewal_patch("resume-1-1", Timestamp::now(), &report);
    leases.patch("resume-1", &PatchParams::default(), &Patch::<()>::Json(patch)).await.unwrap();

    // The operator restarts; then both workers fail.
    operator.kill().await;
    let _operator = Operator::start_with(&f.client, &f.ns.name, options).await;
    f.finish("resume-0-1", 1).await;
    f.finish("resume-1-1", 1).await;
    f.wait_live_exactly("resume", &["resume-0-2", "resume-1-2"]).await;

    let checkpoint_of = |pod: Pod| {
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap_or_default();
        env.into_iter().find(|v| v.name == "NIGHTSHIFT_CHECKPOINT").and_then(|v| v.value)
    };
    assert_eq!(checkpoint_of(f.pods.get("resume-1-2").await.unwrap()).as_deref(), Some("row=40 file=\"a b\""));
    assert_eq!(checkpoint_of(f.pods.get("resume-0-2").await.unwrap()), None, "shard 0 saved no checkpoint");
    // The Lease keeps the checkpoint for the new attempt; what came after it (55/100) is gone.
    let lease = leases.get("resume-1").await.unwrap();
    assert_eq!(lease.annotations().get("nightshift.dev/checkpoint").map(String::as_str), Some("row=40 file=\"a b\""));
    assert_eq!(lease.annotations().get("nightshift.dev/progress").map(String::as_str), Some(""));
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("resume-1-2"));
    // The new attempt's progress starts from the checkpoint's 40/100, before it reports anything.
    node::mark_running(&f.pods, "resume-1-2").await.unwrap();
    renew(&leases, "resume-1", "resume-1-2", Timestamp::now(), None).await.unwrap();
    let status = wait_until("shard 1's attempt 2 at the checkpoint's progress", WAIT, || async {
        let s = f.status("resume").await;
        let progress = s.active.iter().find(|a| a.shard == 1 && a.attempt == 2).and_then(|a| a.progress.clone());
        if progress.as_ref().is_some_and(|p| (p.done, p.total) == (40, 100)) { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    assert_eq!(status.progress.map(|p| p.done), Some(40), "the job's progress counts the checkpoint");
}
