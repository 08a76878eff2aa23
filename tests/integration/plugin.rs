//! `kubectl nightshift`, the binary as built, against the real control plane and node: exit
//! codes a CI step can use, merged logs from real pods, submit, and bars on a real terminal.

use serde_json::json;

use crate::{
    node::{OnTheNode, job, node},
    support::{TempFile, kubeconfig_path, plugin},
};

/// `watch` ends when its jobs end: 0 when all succeeded, 1 when one failed, 3 for a job that is
/// not there; `status` names the failure, its exit code and the worker's message.
#[tokio::test]
async fn watch_exits_0_on_success_and_1_on_failure_and_status_says_why() {
    let (n, _operator) = node("plugin-watch").await;
    let ns = n.ns.name.clone();
    n.create_job(&job("good", "echo working; sleep 2", json!({"shards": 2}))).await;
    n.create_job(&job("bad", "echo 'bad row 17' >/dev/termination-log; exit 3", json!({"retry": {"limit": 0}}))).await;
    let kubeconfig = kubeconfig_path();

    let (code, out, err) = plugin(&kubeconfig, &ns, &["watch", "good"]).await;
    assert_eq!(code, 0, "watch good:\n{out}{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("{ns}/good 100% (2/2) Succeeded")), "watch good ended with {last:?}:\n{out}");

    let (code, out, err) = plugin(&kubeconfig, &ns, &["watch", "good", "bad"]).await;
    assert_eq!(code, 1, "a failed job makes watch exit 1:\n{out}{err}");
    assert!(out.contains(&format!("{ns}/bad 0% (0/1) Failed")), "{out}");

    let (code, _, err) = plugin(&kubeconfig, &ns, &["watch", "nosuch"]).await;
    assert_eq!(code, 3);
    assert!(err.contains(&format!("backgroundjob \"nosuch\" not found in namespace \"{ns}\"")), "{err}");

    let (code, out, err) = plugin(&kubeconfig, &ns, &["status", "bad"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Phase:      Failed"), "{out}");
    assert!(out.contains("RetriesExhausted") && out.contains("exit code 3") && out.contains("bad row 17"), "{out}");
    let (code, out, _) = plugin(&kubeconfig, &ns, &["status", "bad", "-o", "json"]).await;
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status -o json is JSON");
    assert_eq!(status["phase"], "Failed");

    // kubectl finds it on PATH: `kubectl nightshift`.
    let bin = crate::support::plugin_bin().parent().unwrap().to_path_buf();
    let path =
        std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())))
            .unwrap();
    let output = tokio::process::Command::new("kubectl")
        .env("PATH", path)
        .args(["nightshift", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["-n", &ns, "status", "good"])
        .output()
        .await
        .expect("kubectl runs");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && out.contains("Phase:      Succeeded"), "kubectl nightshift status good:\n{out}");
}

/// No cluster at the kubeconfig's address: exit 3, saying where it looked.
#[tokio::test]
async fn an_unreachable_cluster_is_said_plainly() {
    let kubeconfig = TempFile::new(
        "nightshift-unreachable.kubeconfig",
        r#"{"apiVersion": "v1", "kind": "Config", "current-context": "gone",
            "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:9"}}],
            "users": [{"name": "me", "user": {"token": "x"}}],
            "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "me", "namespace": "shop"}}]}"#,
    );
    let (code, _, err) = plugin(&kubeconfig.0, "shop", &["status", "import"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.starts_with("error: cannot reach the cluster at https://127.0.0.1:9/"), "{err}");
}

/// `logs -f` merges every worker's log with [shard/attempt] prefixes, follows the retry of a
/// failed shard as it starts, and ends by itself when the job ends.
#[tokio::test]
async fn logs_follow_every_shard_and_new_attempts_until_the_job_ends() {
    let (n, _operator) = node("plugin-logs").await;
    let ns = n.ns.name.clone();
    let script = r#"for i in 1 2 3; do echo "tick $i of shard $NIGHTSHIFT_SHARD"; sleep 1; done
if [ "$NIGHTSHIFT_SHARD" = 1 ] && [ "$NIGHTSHIFT_ATTEMPT" = 1 ]; then echo "failing once"; exit 1; fi"#;
    n.create_job(&job("ticks", script, json!({"shards": 2}))).await;
    let (code, out, err) = plugin(&kubeconfig_path(), &ns, &["logs", "ticks", "-f"]).await;
    assert_eq!(code, 0, "{err}");
    for line in ["[0/1] tick 3 of shard 0", "[1/1] tick 1 of shard 1", "[1/1] failing once", "[1/2] tick 3 of shard 1"]
    {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in logs -f:\n{out}");
    }
    n.wait_phase("ticks", nightshift_api::Phase::Succeeded).await;
    // Without -f: what is there, one shard and attempt when asked.
    let (code, out, _) = plugin(&kubeconfig_path(), &ns, &["logs", "ticks", "--shard", "1", "--attempt", "2"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["[1/2] tick 1 of shard 1", "[1/2] tick 2 of shard 1", "[1/2] tick 3 of shard 1"]
    );
}

/// `submit --generate-name --set ... --wait` prints the new job's name first and exits with its
/// outcome; on a terminal, `watch --shards` draws bars (checked through a pseudo-terminal).
#[tokio::test]
async fn submit_prints_the_name_and_waits_for_the_outcome_and_watch_draws_bars_on_a_terminal() {
    let (n, _operator) = node("plugin-submit").await;
    let ns = n.ns.name.clone();
    let manifest =
        serde_json::to_string(&job("sub", "echo working; sleep 3; exit ${EXIT:-0}", json!({"retry": {"limit": 0}})))
            .unwrap();
    let file = TempFile::new(&format!("{ns}-job.json"), &manifest);
    let path = file.0.to_str().unwrap();
    let (code, out, err) = plugin(&kubeconfig_path(), &ns, &["submit", path, "--generate-name", "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let name = out.lines().next().unwrap_or_default().to_string();
    assert!(name.starts_with("sub-") && name.len() > 4, "the first line is the job's name: {out}");
    assert_eq!(n.status(&name).await.phase, Some(nightshift_api::Phase::Succeeded));

    let env = r#"spec.template.spec.containers.0.env=[{"name": "EXIT", "value": "4"}]"#;
    let (code, out, _) =
        plugin(&kubeconfig_path(), &ns, &["submit", path, "--name", "sub-fails", "--set", env, "--wait"]).await;
    assert_eq!(code, 1, "the job failed: {out}");
    assert_eq!(out.lines().next(), Some("sub-fails"));

    // A pseudo-terminal: bars (escape codes redraw them), one per running shard, then the summary.
    let (code, _, err) = plugin(&kubeconfig_path(), &ns, &["submit", path, "--name", "sub-tty"]).await;
    assert_eq!(code, 0, "{err}");
    let command = format!(
        "stty cols 120; {} --kubeconfig {} -n {ns} watch sub-tty --shards",
        crate::support::plugin_bin().display(),
        kubeconfig_path().display()
    );
    let run = tokio::process::Command::new("script").args(["-qec", &command, "/dev/null"]).output();
    let output = tokio::time::timeout(crate::support::WAIT * 2, run).await.expect("watch ends").expect("script runs");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{screen}");
    assert!(screen.contains("\u{1b}["), "no escape codes: not drawn as bars:\n{screen}");
    assert!(screen.contains(&format!("{ns}/sub-tty")) && screen.contains("shard 0 attempt 1"), "{screen}");
    assert!(screen.contains(&format!("{ns}/sub-tty 100% (1/1) Succeeded")), "{screen}");
}

/// `cancel` stops every worker of a running job and ends it Failed with reason Cancelled; the
/// job stays, and cannot be un-cancelled.
#[tokio::test]
async fn cancel_stops_the_workers_and_keeps_the_record() {
    let (n, _operator) = node("plugin-cancel").await;
    let ns = n.ns.name.clone();
    n.create_job(&job("endless", "while true; do sleep 1; done", json!({"shards": 2}))).await;
    n.wait_running("endless-0-1").await;
    n.wait_running("endless-1-1").await;
    let (code, out, err) = plugin(&kubeconfig_path(), &ns, &["cancel", "endless"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    let status = n.wait_phase("endless", nightshift_api::Phase::Failed).await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").expect("a Failed condition");
    assert_eq!(failed.reason, "Cancelled");
    crate::support::wait_until("no live worker pod", crate::support::WAIT * 2, || async {
        let live = n.live_pods("endless").await;
        if live.is_empty() { Ok(()) } else { Err(format!("{} live", live.len())) }
    })
    .await;
    let undo = n
        .jobs
        .patch(
            "endless",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"cancel": false}})),
        )
        .await;
    let message = crate::support::api_error(&undo.map(|_| ())).map(|e| e.1).unwrap_or_default();
    assert!(message.contains("spec.cancel cannot be set back to false"), "{message}");
    let (code, _, err) = plugin(&kubeconfig_path(), &ns, &["cancel", "endless"]).await;
    assert_eq!(code, 2, "an ended job: {err}");
}

/// `rerun --failed` makes a new job of exactly the shards that did not succeed, linked to the
/// old one by a label; it runs only those (here they succeed the second time).
#[tokio::test]
async fn rerun_failed_runs_exactly_the_shards_that_did_not_succeed() {
    let (n, _operator) = node("plugin-rerun").await;
    let ns = n.ns.name.clone();
    // Shard 1 fails in the first job; the others succeed first.
    let script = r#"if [ "$NIGHTSHIFT_JOB" = first ] && [ "$NIGHTSHIFT_SHARD" = 1 ]; then sleep 2; exit 3; fi; echo "shard $NIGHTSHIFT_SHARD done""#;
    n.create_job(&job("first", script, json!({"shards": 3, "retry": {"limit": 0}}))).await;
    let status = n.wait_phase("first", nightshift_api::Phase::Failed).await;
    assert_eq!((status.succeeded_shards.as_deref(), status.failed_shards.as_deref()), (Some("0,2"), Some("1")));

    let (code, out, err) = plugin(&kubeconfig_path(), &ns, &["rerun", "first", "--failed", "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let name = out.lines().next().unwrap_or_default().to_string();
    assert!(name.starts_with("first-rerun-"), "{out}");
    let rerun = n.jobs.get(&name).await.unwrap();
    assert_eq!(rerun.spec.only_shards.as_deref(), Some("1"));
    assert_eq!(
        rerun.metadata.labels.unwrap_or_default().get("nightshift.dev/rerun-of").map(String::as_str),
        Some("first")
    );
    let status = rerun.status.unwrap();
    assert_eq!(status.phase, Some(nightshift_api::Phase::Succeeded));
    assert_eq!((status.succeeded_shards.as_deref(), status.shards.map(|s| s.total)), (Some("1"), Some(1)));
    let pods = n.all_pods(&name).await;
    assert_eq!(pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect::<Vec<_>>(), [format!("{name}-1-1")]);
}
