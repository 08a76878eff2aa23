//! Chains (spec.after) against the real control plane: jobs applied together in one
//! `kubectl apply -f` run in order, a failed or deleted dependency fails the job waiting for it,
//! a cycle fails every job on it. The test plays the node, except for examples/chain.yaml, run
//! on the real node.

use std::time::Duration;

use crate::support::node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use nightshift_api::Phase;

use crate::support::{Fixture, WAIT, fixture, kubectl, wait_until};

/// A job manifest for `kubectl apply`, its pods for the test's node (the template in JSON, which
/// is YAML too).
fn job_yaml(name: &str, after: &[&str]) -> String {
    let template = node::template(serde_json::json!({
        "restartPolicy": "Never", "containers": [{"name": "worker", "image": "registry.example/worker:1"}]
    }));
    format!(
        r#"apiVersion: nightshift.dev/v1alpha1
kind: BackgroundJob
metadata:
  name: {name}
spec:
  after: {after:?}
  shards: 2
  template: {template}
"#
    )
}

/// Waits until the job has failed; returns its Failed condition.
async fn wait_failed(f: &Fixture, name: &str, timeout: Duration) -> Condition {
    wait_until(&format!("{name} to fail"), timeout, || async {
        let s = f.status(name).await;
        s.conditions.iter().find(|c| c.type_ == "Failed").cloned().ok_or_else(|| format!("{s:?}"))
    })
    .await
}

fn admitted(status: &nightshift_api::BackgroundJobStatus) -> (String, String, String) {
    let c = status.conditions.iter().find(|c| c.type_ == "Admitted").expect("an Admitted condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn jobs_applied_together_run_in_chain_order_woken_by_the_dependency() {
    let (f, _operator) = fixture("chain-order").await;
    // The dependent comes first in the file: the order of arrival does not matter.
    let manifests = [job_yaml("download-images", &["load-catalog"]), job_yaml("load-catalog", &[])].join("---\n");
    let (code, out, err) = kubectl(&f.ns.name, &["apply", "-f", "-"], &manifests).await;
    assert_eq!(code, 0, "kubectl apply: {out}{err}");

    let waiting = f.wait_phase("download-images", Phase::Queued).await;
    let (status, reason, message) = admitted(&waiting);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "WaitingForDependencies"));
    assert!(message.contains("load-catalog"), "{message}");
    f.wait_live("load-catalog", 2).await;
    assert!(
        f.all_pods("download-images").await.is_empty(),
        "no worker of download-images before load-catalog succeeded"
    );
    // `kubectl get` shows the wait.
    let (_, table, _) = kubectl(&f.ns.name, &["get", "backgroundjobs"], "").await;
    let line = table.lines().find(|l| l.starts_with("download-images")).unwrap_or_default().to_string();
    assert!(line.contains("Queued"), "{table}");

    f.run_to_success("load-catalog").await;
    // No timer is set for a present dependency: only load-catalog's change can wake it.
    f.wait_live("download-images", 2).await;
    f.run_to_success("download-images").await;
    let events = f.events("download-images").await;
    assert!(events.iter().any(|(r, m)| r == "Queued" && m.contains("load-catalog")), "{events:?}");
}

#[tokio::test]
async fn a_failed_dependency_fails_the_job_naming_it() {
    let (f, _operator) = fixture("chain-failed").await;
    let manifests = [
        job_yaml("import", &[]).replace("shards: 2", "shards: 1\n  retry: {limit: 0}"),
        job_yaml("report", &["import"]),
    ]
    .join("---\n");
    let (code, out, err) = kubectl(&f.ns.name, &["apply", "-f", "-"], &manifests).await;
    assert_eq!(code, 0, "kubectl apply: {out}{err}");
    let pods = f.wait_live("import", 1).await;
    f.finish(&pods[0], 1).await;
    f.wait_phase("import", Phase::Failed).await;
    let failed = wait_failed(&f, "report", WAIT).await;
    assert_eq!(failed.reason, "DependencyFailed");
    assert!(failed.message.contains("job import failed"), "{}", failed.message);
    assert!(f.all_pods("report").await.is_empty());
}

/// A dependency deleted before it succeeded is, like one never created, waited for a minute from
/// the dependent's queueing (jobs applied together arrive in any order), then fails the dependent
/// naming it: the one-shot recheck fires with no event to wake it.
#[tokio::test]
async fn a_deleted_dependency_fails_the_job_naming_it() {
    let (f, _operator) = fixture("chain-deleted").await;
    let manifests = [job_yaml("import", &[]), job_yaml("report", &["import"])].join("---\n");
    let (code, out, err) = kubectl(&f.ns.name, &["apply", "-f", "-"], &manifests).await;
    assert_eq!(code, 0, "kubectl apply: {out}{err}");
    f.wait_live("import", 2).await;
    let waiting = f.wait_phase("report", Phase::Queued).await;
    assert_eq!(admitted(&waiting).1, "WaitingForDependencies");
    let (code, out, err) = kubectl(&f.ns.name, &["delete", "backgroundjob", "import"], "").await;
    assert_eq!(code, 0, "kubectl delete: {out}{err}");
    // The minute from its queueing, and the reconcile after it.
    let failed = wait_failed(&f, "report", 2 * WAIT).await;
    assert_eq!(failed.reason, "DependencyFailed");
    assert!(failed.message.contains("job import does not exist"), "{}", failed.message);
    assert!(f.all_pods("report").await.is_empty());
}

#[tokio::test]
async fn a_cycle_fails_every_job_on_it() {
    let (f, _operator) = fixture("chain-cycle").await;
    let manifests = [job_yaml("a", &["b"]), job_yaml("b", &["c"]), job_yaml("c", &["a"])].join("---\n");
    let (code, out, err) = kubectl(&f.ns.name, &["apply", "-f", "-"], &manifests).await;
    assert_eq!(code, 0, "kubectl apply: {out}{err}");
    for name in ["a", "b", "c"] {
        let failed = wait_failed(&f, name, WAIT).await;
        assert_eq!(failed.reason, "DependencyCycle");
        let message = &failed.message;
        assert!(
            message.contains("a → b → c → a") || message.contains("b → c → a → b") || message.contains("c → a → b → c"),
            "{message}"
        );
        assert!(f.all_pods(name).await.is_empty());
    }
}

/// examples/chain.yaml with the bulk-import template, on the real node: download-images waits
/// for load-catalog, then runs; both succeed. (The template's batches are made quick.)
#[tokio::test]
async fn the_example_chain_runs_in_order_on_the_node() {
    let (f, _operator) = crate::node::node("chain-example").await;
    let example =
        |path: &str| std::fs::read_to_string(format!("{}/examples/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let template = example("templates/bulk-import-template.yaml")
        .replace(r#"BATCH_SIZE: "25""#, r#"BATCH_SIZE: "500""#)
        .replace(r#"BATCH_SECONDS: "0.45""#, r#"BATCH_SECONDS: "0""#);
    assert!(template.contains(r#"BATCH_SECONDS: "0""#), "the example template changed: {template}");
    let manifests = [template, example("chain.yaml")].join("\n---\n");
    let (code, out, err) = kubectl(&f.ns.name, &["apply", "-f", "-"], &manifests).await;
    assert_eq!(code, 0, "kubectl apply: {out}{err}");
    let loaded = f.wait_phase("load-catalog", Phase::Succeeded).await;
    let downloaded = f.wait_phase("download-images", Phase::Succeeded).await;
    let (loaded_at, started_at) = (loaded.completion_time.unwrap().0, downloaded.start_time.unwrap().0);
    assert!(
        started_at >= loaded_at,
        "download-images started at {started_at}, before load-catalog ended at {loaded_at}"
    );
    let events = f.events("download-images").await;
    assert!(events.iter().any(|(r, m)| r == "Queued" && m.contains("load-catalog")), "{events:?}");
}
