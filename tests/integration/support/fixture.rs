//! The fixture most tests start from: a namespace of their own with an operator of its own (run
//! in this process), its jobs' pods on the tests' node (`node`: kwok's fake node, steered by the
//! test), so that each pod's outcome is the test's choice.

use super::node;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use nightshift_api::{BackgroundJob, BackgroundJobStatus, LABEL_JOB, Phase};
use serde_json::json;

use super::{TestNamespace, WAIT, client, install_crd, wait_default_service_account, wait_until};

pub struct Fixture {
    pub client: Client,
    pub ns: TestNamespace,
    pub jobs: Api<BackgroundJob>,
    pub pods: Api<Pod>,
}

pub async fn fixture(prefix: &str) -> (Fixture, Operator) {
    fixture_with(prefix, Default::default()).await
}

/// A namespace with an operator of its own, run with these options.
pub async fn fixture_with(prefix: &str, options: nightshift::controller::Options) -> (Fixture, Operator) {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, prefix).await;
    wait_default_service_account(&ns).await;
    let operator = Operator::start_with(&client, &ns.name, options).await;
    let f = Fixture { jobs: ns.api(), pods: ns.api(), client, ns };
    (f, operator)
}

/// A job for the tests' node: its pod template is placed there (`node::place`), also when `spec`
/// brings its own, so that no kubelet of the cluster runs its pods and the test steers each.
fn manifest(name: &str, spec: serde_json::Value) -> BackgroundJob {
    let mut full = json!({
        "template": {"spec": {"containers": [{"name": "worker", "image": "registry.example/worker:1"}]}}
    });
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    assert!(full["template"]["spec"].is_object(), "the template has a spec");
    node::place(&mut full["template"]);
    super::job_fixture::job(name, full).build()
}

impl Fixture {
    pub async fn create(&self, name: &str, spec: serde_json::Value) {
        self.jobs.create(&PostParams::default(), &manifest(name, spec)).await.unwrap();
    }

    pub async fn status(&self, name: &str) -> BackgroundJobStatus {
        self.jobs.get_status(name).await.unwrap().status.unwrap_or_default()
    }

    pub async fn all_pods(&self, job: &str) -> Vec<Pod> {
        self.pods.list(&ListParams::default().labels(&format!("{LABEL_JOB}={job}"))).await.unwrap().items
    }

    /// Live pods: neither finished nor being deleted.
    pub async fn live_pods(&self, job: &str) -> Vec<Pod> {
        self.all_pods(job)
            .await
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), None | Some("Pending" | "Running"))
            })
            .collect()
    }

    /// Waits until exactly `n` live pods exist and returns their names, sorted.
    pub async fn wait_live(&self, job: &str, n: usize) -> Vec<String> {
        wait_until(&format!("{n} live pods of {job}"), WAIT, || async {
            let live = self.live_pods(job).await;
            let mut names: Vec<String> = live.iter().map(|p| p.name_any()).collect();
            names.sort();
            if names.len() == n { Ok(names) } else { Err(format!("live pods {names:?}")) }
        })
        .await
    }

    /// Waits until the live pods are exactly `names`.
    pub async fn wait_live_exactly(&self, job: &str, names: &[&str]) {
        wait_until(&format!("live pods of {job} to be {names:?}"), WAIT, || async {
            let mut live: Vec<String> = self.live_pods(job).await.iter().map(|p| p.name_any()).collect();
            live.sort();
            if live == names { Ok(()) } else { Err(format!("live pods {live:?}")) }
        })
        .await
    }

    pub async fn wait_phase(&self, job: &str, phase: Phase) -> BackgroundJobStatus {
        wait_until(&format!("{job} to reach phase {phase}"), WAIT, || async {
            let status = self.status(job).await;
            if status.phase == Some(phase) { Ok(status) } else { Err(format!("{status:?}")) }
        })
        .await
    }

    pub async fn finish(&self, pod: &str, exit_code: i32) {
        node::mark_running(&self.pods, pod).await.unwrap();
        node::mark_finished(&self.pods, pod, exit_code).await.unwrap();
    }

    /// Plays the node until the job has succeeded: each of its live pods succeeds, round after
    /// round. Waits `WAIT * 2`: retries and restarts take their time.
    pub async fn run_to_success(&self, job: &str) {
        wait_until(&format!("{job} to succeed, every pod of it succeeding"), WAIT * 2, || async {
            for pod in self.live_pods(job).await {
                self.finish(&pod.name_any(), 0).await;
            }
            let s = self.status(job).await;
            if s.phase == Some(Phase::Succeeded) { Ok(()) } else { Err(format!("{s:?}")) }
        })
        .await
    }

    /// Waits until the job has an event with `reason` whose message contains `text`, and returns
    /// all its events (events are published in the background, a moment after the change).
    pub async fn wait_event(&self, job: &str, reason: &str, text: &str) -> Vec<(String, String)> {
        wait_until(&format!("a {reason} event of {job} saying {text:?}"), WAIT, || async {
            let events = self.events(job).await;
            if events.iter().any(|(r, m)| r == reason && m.contains(text)) {
                Ok(events)
            } else {
                Err(format!("{events:?}"))
            }
        })
        .await
    }

    pub async fn events(&self, job: &str) -> Vec<(String, String)> {
        let events: Api<Event> = self.ns.api();
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(job))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }
}

/// The operator, run in this process against one namespace, until stopped or dropped; start
/// another to restart it.
pub struct Operator {
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub async fn start(client: &Client, namespace: &str) -> Self {
        Self::start_with(client, namespace, Default::default()).await
    }

    /// With these options (its namespace is set to `namespace`).
    pub async fn start_with(client: &Client, namespace: &str, options: nightshift::controller::Options) -> Self {
        let options = nightshift::controller::Options { namespace: Some(namespace.to_string()), ..options };
        let client = client.clone();
        let task = tokio::spawn(nightshift::controller::run(client, options, std::future::pending()));
        Self { task }
    }

    /// Stops it at once, as a crash would: nothing in memory survives.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
