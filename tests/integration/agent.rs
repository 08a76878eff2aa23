//! `nightshift agent` against the real control plane: the built binary runs a command as a local
//! process, heartbeats on a Lease the test made (no controller), reports the command's progress
//! and result, passes its output through, and stops it when another attempt takes the Lease.

use std::process::Output;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use nightshift_api::{ANNOTATION_PROGRESS, ANNOTATION_PROGRESS_MESSAGE, ANNOTATION_RESULT, ANNOTATION_SHARD};
use serde_json::json;
use tokio::process::Command;

use crate::support::{TestNamespace, WAIT, client, kubeconfig_path, wait_until};

const LEASE: &str = "job-0";

/// A Lease as the controller makes it: held by pod-a, with the shard annotation.
async fn create_lease(ns: &TestNamespace) -> Api<Lease> {
    let leases: Api<Lease> = ns.api();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": LEASE, "annotations": {ANNOTATION_SHARD: "0"}},
        "spec": {"holderIdentity": "pod-a"}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.expect("creating the Lease");
    leases
}

/// `nightshift agent -- CMD...` as pod-a, renewing every second; stdout and stderr captured,
/// killed if the test ends first.
fn agent(ns: &TestNamespace, command: &[&str]) -> Command {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_nightshift"));
    agent
        .arg("agent")
        .arg("--grace-seconds")
        .arg("5")
        .arg("--")
        .args(command)
        .env("KUBECONFIG", kubeconfig_path())
        .env("RUST_LOG", "info,kube=warn")
        .env("NIGHTSHIFT_LEASE", LEASE)
        .env("NIGHTSHIFT_NAMESPACE", &ns.name)
        .env("NIGHTSHIFT_POD", "pod-a")
        .env("NIGHTSHIFT_HEARTBEAT_INTERVAL_SECONDS", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    agent
}

/// Waits, bounded, for the agent to exit; returns its output.
async fn finish(agent: tokio::process::Child, what: &str) -> Output {
    tokio::time::timeout(WAIT, agent.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the agent did not exit within {WAIT:?} ({what})"))
        .expect("collecting the agent's output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn annotation(lease: &Lease, key: &str) -> Option<String> {
    lease.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn agent_passes_output_through_reports_progress_and_result_and_keeps_the_exit_code() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "agent-report").await;
    let leases = create_lease(&ns).await;

    let script = r#"echo hello; echo "::nightshift:: progress 3/10 loading"; echo "::nightshift:: result {\"created\":3}"; sleep 2; exit 7"#;
    let child = agent(&ns, &["sh", "-c", script]).spawn().expect("starting the agent");
    let output = finish(child, "sh exiting 7").await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));

    assert_eq!(output.status.code(), Some(7), "stderr: {stderr}");
    assert_eq!(
        stdout, "hello\n::nightshift:: progress 3/10 loading\n::nightshift:: result {\"created\":3}\n",
        "stdout passes through unchanged; stderr: {stderr}"
    );
    // The final flush ran before the agent exited: no need to wait for a tick.
    let lease = leases.get(LEASE).await.unwrap();
    let spec = lease.spec.clone().unwrap();
    assert!(spec.renew_time.is_some(), "renewTime is set: {lease:?}");
    assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
    assert_eq!(annotation(&lease, ANNOTATION_PROGRESS).as_deref(), Some("3/10"), "stderr: {stderr}");
    assert_eq!(annotation(&lease, ANNOTATION_PROGRESS_MESSAGE).as_deref(), Some("loading"));
    let result: serde_json::Value = serde_json::from_str(&annotation(&lease, ANNOTATION_RESULT).unwrap()).unwrap();
    assert_eq!(result, json!({"created": 3}));
    assert_eq!(annotation(&lease, ANNOTATION_SHARD).as_deref(), Some("0"), "the controller's annotation stays");
}

#[tokio::test]
async fn a_fenced_agent_stops_its_command_and_renews_no_more() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "agent-fenced").await;
    let leases = create_lease(&ns).await;

    let child = agent(&ns, &["sleep", "60"]).spawn().expect("starting the agent");
    wait_until("the agent's first renewal", WAIT, || async {
        let lease = leases.get(LEASE).await.map_err(|e| e.to_string())?;
        lease.spec.and_then(|s| s.renew_time).map(|_| ()).ok_or_else(|| "no renewTime yet".to_string())
    })
    .await;

    // A newer attempt takes the shard. The renewTime in the response is the last one pod-a can
    // ever have written: from here on its fenced renewals fail.
    let taken = leases
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(json!({"spec": {"holderIdentity": "pod-b"}})))
        .await
        .expect("handing the Lease to pod-b");
    let renewed_before = taken.spec.unwrap().renew_time;

    let output = finish(child, "fenced, with `sleep 60` as its command").await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(128 + 15), "sleep ended by SIGTERM; stderr: {stderr}");
    assert!(stderr.contains("lease job-0 is held by another attempt"), "stderr: {stderr}");

    let lease = leases.get(LEASE).await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("pod-b"));
    assert_eq!(spec.renew_time, renewed_before, "no renewal (nor final flush) after the fence");
}

#[tokio::test]
async fn a_command_that_does_not_exist_exits_127() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "agent-missing").await;
    create_lease(&ns).await;

    let child = agent(&ns, &["nightshift-no-such-command", "--flag"]).spawn().expect("starting the agent");
    let output = finish(child, "a missing command").await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(127), "stderr: {stderr}");
    assert!(stderr.contains("cannot start \"nightshift-no-such-command\""), "stderr: {stderr}");
}

#[tokio::test]
async fn without_a_lease_the_agent_only_runs_the_command() {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_nightshift"));
    agent
        .args(["agent", "--", "sh", "-c", "echo '::nightshift:: progress 1/2'; echo plain; exit 3"])
        .env_remove("NIGHTSHIFT_LEASE")
        // Nothing may talk to a cluster: point any attempt at a file that is not there.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = finish(agent.spawn().expect("starting the agent"), "no heartbeat").await;
    assert_eq!(output.status.code(), Some(3), "stderr: {}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "::nightshift:: progress 1/2\nplain\n");
}
