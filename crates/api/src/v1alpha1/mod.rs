//! `nightshift.dev/v1alpha1` BackgroundJob: what a user asks for (spec) and what the controller
//! reports (status). Every field is described, so `kubectl explain` reads well.

// kube(printcolumn(...)) repeats `type_ = "string"` by design; the lint mistakes it for a typo.
#![allow(clippy::duplicated_attributes)]

mod retry;
mod schedule;
mod status;
mod template;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
pub use retry::*;
pub use schedule::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use status::*;
pub use template::*;

/// A long-running background job: `shards` units of work, run on 1 to 3 (by default) worker
/// pods at a time, with retries, timeouts and progress in the status.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nightshift.dev",
    version = "v1alpha1",
    kind = "BackgroundJob",
    plural = "backgroundjobs",
    singular = "backgroundjob",
    shortname = "bgj",
    shortname = "bgjob",
    category = "nightshift",
    namespaced,
    status = "BackgroundJobStatus",
    derive = "PartialEq",
    doc = "A long-running background job: its shards run on worker pods, retried with backoff, with progress and timeouts tracked in the status.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Queued, Running, Suspended, Succeeded or Failed"
    ),
    printcolumn(
        name = "Workers",
        type_ = "string",
        json_path = ".status.workers.summary",
        description = "live worker pods / desired"
    ),
    printcolumn(
        name = "Shards",
        type_ = "string",
        json_path = ".status.shards.summary",
        description = "succeeded shards / total",
        priority = 1
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress.summary",
        description = "work done, in percent"
    ),
    printcolumn(
        name = "ETA",
        type_ = "string",
        json_path = ".status.estimatedCompletionTime",
        description = "when the job is estimated to finish, from its progress so far",
        priority = 1
    ),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeatTime",
        description = "age of the latest worker heartbeat"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundJobSpec {
    /// Units of work. Each shard runs in one worker pod at a time and learns its index from
    /// NIGHTSHIFT_SHARD (0 to shards-1). Default 1. Cannot change once the job is admitted.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 100000))]
    pub shards: i32,

    /// Run only these shards, as ranges of indexes like status.failedShards ("3,7-9"); the
    /// others are not part of this job (its shard counts and progress leave them out). Every
    /// index must be below spec.shards. `kubectl nightshift rerun --failed` sets it. Unset: all.
    /// Cannot change once the job is admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$"), length(max = 10000))]
    pub only_shards: Option<String>,

    /// How many worker pods run at once: at least min (when that many shards are left) and at
    /// most max. Default 1 to 3.
    #[serde(default)]
    pub workers: Workers,

    /// The worker pod. restartPolicy must be Never (a failed attempt is retried as a new pod, under
    /// spec.retry). Set it here or take it from spec.templateRef. Cannot change once the job is admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<PodTemplateSpec>")]
    pub template: Option<PodTemplate>,

    /// A BackgroundJobTemplate in this namespace to take the pod template and defaults from:
    /// its shards, workers, timeouts, retry, heartbeat, ttlSecondsAfterFinished and parameters
    /// fill each of these fields the job leaves unset (a field set here replaces the template's
    /// whole). It is read once, before the job is admitted, and written into this spec
    /// (status.resolvedTemplate says which generation); a later edit of the template changes no
    /// job that has read it. Until it exists, the job waits Queued (reason WaitingForTemplate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,

    /// Values for the workers: each becomes the environment variable NIGHTSHIFT_PARAM_<key> of
    /// every container of every worker (the key as written, like envFrom with a prefix). Keys:
    /// letters, digits and underscores, not starting with a digit, at most 63 characters; at most
    /// 32 keys; values at most 4096 characters. Cannot change once the job is admitted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]{0,62}$'))",
         "message": "spec.parameters: keys must be letters, digits and underscores, not start with a digit, and be at most 63 characters (each becomes NIGHTSHIFT_PARAM_<key>)"},
    ]))]
    #[schemars(extend("additionalProperties" = {"type": "string", "maxLength": 4096}))]
    pub parameters: BTreeMap<String, String>,

    /// Deadlines for the whole job and for each attempt of a shard. Default 10800 s (3 hours) for
    /// the job, none for an attempt.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// How often a failed shard is retried, and how long to wait before each retry. Default 3
    /// retries, 10 s before the first, doubling up to 600 s.
    #[serde(default)]
    pub retry: Retry,

    /// Heartbeats the workers must send on their shard's Lease. Unset: none are required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,

    /// Jobs in this namespace that must succeed before this one starts (a chain). Until they
    /// have, the job waits Queued (condition Admitted False, reason WaitingForDependencies, naming
    /// them); if one fails, or does not exist for 60 s (never created, or deleted), the job fails
    /// with reason DependencyFailed. At most 20 names, not the job's own. Cannot change once the
    /// job is admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub after: Vec<String>,

    /// Jobs with a higher priority are started first when workers are scarce.
    #[serde(default)]
    pub priority: i32,

    /// While true, no worker runs: live workers are stopped and the progress kept. Set it back to
    /// false to continue with the shards that are left.
    #[serde(default)]
    pub suspend: bool,

    /// Set to true to stop the job for good: its workers are stopped (SIGTERM and their grace
    /// period) and it ends Failed with reason Cancelled, its status kept (delete the job to remove
    /// it). Cannot be set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self || !oldSelf", "message": "spec.cancel cannot be set back to false: a cancelled job stays cancelled"}
    ]))]
    pub cancel: bool,

    /// Seconds after the job succeeds or fails before it is deleted, with its pods. Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

impl BackgroundJobSpec {
    /// The worker pod's template; empty for a job whose spec.templateRef is not resolved yet
    /// (the controller starts no worker for such a job).
    pub fn pod_template(&self) -> PodTemplateSpec {
        self.template.as_ref().map(PodTemplate::get).unwrap_or_default()
    }
}

fn default_shards() -> i32 {
    1
}

/// Bounds on the number of worker pods running at once.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.min <= self.max", "message": "spec.workers.min must not exceed spec.workers.max"}
]))]
pub struct Workers {
    /// Fewest worker pods the job runs with while at least that many shards are left. Default 1.
    #[serde(default = "default_min_workers")]
    #[schemars(range(min = 1, max = 1000))]
    pub min: i32,
    /// Most worker pods the job runs at once. Default 3.
    #[serde(default = "default_max_workers")]
    #[schemars(range(min = 1, max = 1000))]
    pub max: i32,
}

fn default_min_workers() -> i32 {
    1
}
fn default_max_workers() -> i32 {
    3
}

impl Default for Workers {
    fn default() -> Self {
        Self { min: default_min_workers(), max: default_max_workers() }
    }
}

/// Deadlines, in seconds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Seconds the whole job may run, counted from when it starts. Past it, live workers are
    /// stopped and the job fails with reason DeadlineExceeded. Default 10800 (3 hours).
    #[serde(default = "default_job_seconds")]
    #[schemars(range(min = 1))]
    pub job_seconds: i64,
    /// Seconds one attempt of a shard may run. Past it, that attempt fails with reason
    /// AttemptDeadlineExceeded and is retried under spec.retry. Unset: no limit but the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub attempt_seconds: Option<i64>,
}

fn default_job_seconds() -> i64 {
    10800
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { job_seconds: default_job_seconds(), attempt_seconds: None }
    }
}

/// The heartbeat protocol: each worker renews its shard's Lease every intervalSeconds and may
/// report progress and a result on it (see the README). Silence or a stall fails the attempt.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.timeoutSeconds > self.intervalSeconds", "message": "spec.heartbeat.timeoutSeconds must be greater than spec.heartbeat.intervalSeconds"}
]))]
pub struct Heartbeat {
    /// Seconds between two renewals of the Lease, told to the worker (NIGHTSHIFT_HEARTBEAT_INTERVAL_SECONDS). Default 10.
    #[serde(default = "default_interval_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
    /// Seconds without a renewal after which the attempt has failed (reason HeartbeatTimeout), is
    /// stopped and retried. Counted on the operator's clock from when the worker pod runs. Default 40.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 2, max = 86400))]
    pub timeout_seconds: i32,
    /// Seconds without progress (the reported done count not advancing) while heartbeats go on,
    /// after which the attempt has failed (reason Stalled). Unset: no stall detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub stall_seconds: Option<i32>,
    /// Wrap the first container's command in `nightshift agent --`, copied in by an init
    /// container from the operator's image: the agent heartbeats for the command and turns its
    /// `::nightshift:: progress DONE/TOTAL` output lines into progress. The container must set command.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inject_agent: bool,
}

fn default_interval_seconds() -> i32 {
    10
}
/// spec.heartbeat.timeoutSeconds when not given; also a Lease's duration for a job without heartbeats.
pub const DEFAULT_HEARTBEAT_TIMEOUT_SECONDS: i32 = 40;

fn default_timeout_seconds() -> i32 {
    DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
}

/// A pod template, kept as its compact JSON: a typed `PodTemplateSpec` takes several KB of
/// memory even when nearly empty (measured: a job of the benchmark held 7 KB typed against
/// 0.1 KB as JSON), and the operator caches every job but reads a template only when it
/// creates a pod. It is checked to be a valid `PodTemplateSpec` when it is read from the API
/// server, so [`PodTemplate::get`] cannot fail on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTemplate(std::sync::Arc<str>);

impl PodTemplate {
    /// The template, typed.
    pub fn get(&self) -> PodTemplateSpec {
        serde_json::from_str(&self.0).expect("checked when the template was read")
    }
}

impl From<PodTemplateSpec> for PodTemplate {
    fn from(template: PodTemplateSpec) -> Self {
        Self(serde_json::to_string(&template).expect("a PodTemplateSpec serializes").into())
    }
}

impl<'de> Deserialize<'de> for PodTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PodTemplateSpec::deserialize(deserializer).map(Self::from)
    }
}

impl Serialize for PodTemplate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(serializer)
    }
}
