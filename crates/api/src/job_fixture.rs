//! One builder of BackgroundJobs for tests, the unit tests' (`crate::job_fixture`) and the
//! integration tests' (`tests/integration/support`, which includes this file): a job as a test
//! would write it in YAML, with only what the test is about spelled out.
//!
//! `job("import", json!({"shards": 4, "template": ...})).namespace("shop").status(json!({...})).build()`

use serde_json::{Value, json};

/// A BackgroundJob being written: apiVersion and kind, `metadata.name`, and the spec given.
#[derive(Clone, Debug)]
pub struct JobFixture(Value);

/// The job `name` with `spec` as written (nothing defaulted: the API server and the types do that).
pub fn job(name: &str, spec: Value) -> JobFixture {
    JobFixture(json!({
        "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJob",
        "metadata": {"name": name},
        "spec": spec,
    }))
}

#[allow(dead_code)] // each test crate uses a part
impl JobFixture {
    pub fn namespace(self, namespace: &str) -> Self {
        self.metadata("namespace", json!(namespace))
    }

    /// Sets one field of metadata: uid, labels, annotations, generation, creationTimestamp, ...
    pub fn metadata(mut self, field: &str, value: Value) -> Self {
        self.0["metadata"][field] = value;
        self
    }

    pub fn status(mut self, status: Value) -> Self {
        self.0["status"] = status;
        self
    }

    /// The manifest, as `kubectl apply` or a create of JSON would send it.
    pub fn manifest(self) -> Value {
        self.0
    }

    /// The typed job (a `BackgroundJob`).
    pub fn build<K: serde::de::DeserializeOwned>(self) -> K {
        serde_json::from_value(self.0).expect("a valid BackgroundJob")
    }
}
