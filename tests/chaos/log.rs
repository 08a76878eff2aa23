//! The event log: a watch of the namespace's BackgroundJobs, pods and Leases, every event
//! written as one JSON line (a summary of the object: what the invariants read) to a file under
//! target/chaos/, next to the faults injected and what the harness did, so that a violation can
//! be read afterwards. The invariants are checked on the same records, kept in memory.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
use nightshift_api::BackgroundJob;
use serde_json::{Value, json};

/// One line of the log.
#[derive(Clone, Debug)]
pub struct Rec {
    /// Seconds since the log started.
    pub t: f64,
    /// job, pod, lease, fault, note, watch-error
    pub kind: String,
    pub deleted: bool,
    pub name: String,
    /// The object's resourceVersion (etcd revision), 0 for the harness's own lines.
    pub rv: u64,
    pub data: Value,
}

pub struct EventLog {
    pub path: PathBuf,
    start: Instant,
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    recs: Mutex<Vec<Rec>>,
}

impl EventLog {
    pub fn create(name: &str) -> Arc<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/chaos");
        std::fs::create_dir_all(&dir).expect("creating target/chaos");
        let path = dir.join(format!("{name}.jsonl"));
        let file = std::fs::File::create(&path).expect("creating the event log");
        Arc::new(Self {
            path,
            start: Instant::now(),
            file: Mutex::new(std::io::BufWriter::new(file)),
            recs: Mutex::new(Vec::new()),
        })
    }

    pub fn write(&self, kind: &str, deleted: bool, name: &str, rv: u64, data: Value) {
        let rec =
            Rec { t: self.start.elapsed().as_secs_f64(), kind: kind.into(), deleted, name: name.into(), rv, data };
        let line = json!({"t": (rec.t * 1000.0).round() / 1000.0, "kind": kind, "deleted": deleted,
                          "name": name, "rv": rv, "data": rec.data});
        let mut file = self.file.lock().unwrap();
        let _ = writeln!(file, "{line}");
        let _ = file.flush();
        self.recs.lock().unwrap().push(rec);
    }

    /// A line of the harness's own: a fault, or what it did.
    pub fn note(&self, kind: &str, name: &str, data: Value) {
        eprintln!("chaos: {kind} {name} {data}");
        self.write(kind, false, name, 0, data);
    }

    pub fn records(&self) -> Vec<Rec> {
        self.recs.lock().unwrap().clone()
    }

    /// Watches jobs, pods and Leases of `ns` until the returned tasks are aborted.
    pub fn watch(self: &Arc<Self>, client: &kube::Client, ns: &str) -> Vec<tokio::task::JoinHandle<()>> {
        let jobs: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<BackgroundJob>(&()));
        vec![
            self.spawn("job", jobs, job_summary),
            self.spawn("pod", Api::<Pod>::namespaced(client.clone(), ns), pod_summary),
            self.spawn("lease", Api::<Lease>::namespaced(client.clone(), ns), lease_summary),
            self.spawn("crd", Api::<CustomResourceDefinition>::all(client.clone()), crd_summary),
        ]
    }

    fn spawn<K>(
        self: &Arc<Self>,
        kind: &'static str,
        api: Api<K>,
        summary: fn(&K) -> Value,
    ) -> tokio::task::JoinHandle<()>
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    {
        let log = self.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let (obj, deleted) = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                    Ok(watcher::Event::Delete(o)) => (o, true),
                    Ok(_) => continue,
                    Err(e) => {
                        log.write("watch-error", false, kind, 0, json!(e.to_string()));
                        continue;
                    }
                };
                let data = summary(&obj);
                if data.is_null() {
                    continue;
                }
                let rv = obj.resource_version().and_then(|v| v.parse().ok()).unwrap_or(0);
                log.write(kind, deleted, &obj.name_any(), rv, data);
            }
        })
    }
}

fn job_summary(job: &DynamicObject) -> Value {
    let status = &job.data["status"];
    json!({
        "phase": status["phase"], "result": status["result"], "shards": status["shards"]["summary"],
        "succeededShards": status["succeededShards"], "resultShards": status["resultShards"],
        "active": status["active"].as_array().map(|a| a.iter().map(|s| s["pod"].clone()).collect::<Vec<_>>()),
        "schedule": job.labels().get(nightshift_api::LABEL_SCHEDULE),
        "deleting": job.metadata.deletion_timestamp.is_some(),
    })
}

fn pod_summary(pod: &Pod) -> Value {
    let labels = pod.labels();
    let status = pod.status.clone().unwrap_or_default();
    let containers: Vec<Value> = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| {
            let state = c.state.clone().unwrap_or_default();
            let (s, detail) = match (state.running, state.waiting, state.terminated) {
                (Some(_), _, _) => ("running", json!(null)),
                (_, Some(w), _) => ("waiting", json!(w.reason)),
                (_, _, Some(t)) => ("terminated", json!({"exitCode": t.exit_code, "reason": t.reason})),
                _ => ("unknown", json!(null)),
            };
            json!({"name": c.name, "state": s, "detail": detail, "restarts": c.restart_count})
        })
        .collect();
    json!({
        "job": labels.get(nightshift_api::LABEL_JOB), "shard": labels.get(nightshift_api::LABEL_SHARD),
        "attempt": labels.get(nightshift_api::LABEL_ATTEMPT), "phase": status.phase,
        "deleting": pod.metadata.deletion_timestamp.is_some(), "uid": pod.metadata.uid,
        "finalizers": pod.finalizers(), "containers": containers,
    })
}

fn lease_summary(lease: &Lease) -> Value {
    let spec = lease.spec.clone().unwrap_or_default();
    let a = lease.annotations();
    json!({
        "holder": spec.holder_identity, "renew": spec.renew_time.map(|t| t.0.to_string()),
        "transitions": spec.lease_transitions, "progress": a.get(nightshift_api::ANNOTATION_PROGRESS),
        "checkpoint": a.get(nightshift_api::ANNOTATION_CHECKPOINT), "result": a.get(nightshift_api::ANNOTATION_RESULT),
    })
}

/// The BackgroundJob CRD's status fields: shared by everyone's tests, and a schema without a
/// field the operator writes prunes it, also from what it reads back.
fn crd_summary(crd: &CustomResourceDefinition) -> Value {
    if crd.name_any() != "backgroundjobs.nightshift.dev" {
        return Value::Null;
    }
    let schema = crd.spec.versions.first().and_then(|v| v.schema.clone()).and_then(|s| s.open_api_v3_schema);
    let status = schema.and_then(|s| s.properties).and_then(|p| p.get("status").cloned());
    let fields: Vec<String> = status.and_then(|s| s.properties).map(|p| p.into_keys().collect()).unwrap_or_default();
    let managers: Vec<Option<String>> = crd.managed_fields().iter().map(|m| m.manager.clone()).collect();
    json!({"statusFields": fields, "managers": managers})
}
