//! The status of a BackgroundJob: what the controller observed and decided.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reasons::ConditionType;

/// Where a job is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Not started yet.
    Queued,
    /// Workers are running or about to.
    Running,
    /// spec.suspend is true: no worker runs.
    Suspended,
    /// Every shard succeeded.
    Succeeded,
    /// A shard failed more often than spec.retry allows, a deadline passed, or the pod template was refused.
    Failed,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What the controller observed and decided. Its size is bounded whatever spec.shards: shards
/// that are done are kept as ranges, active shards are at most spec.workers.max, and at most
/// [`MAX_RETRYING_LISTED`] retrying shards are listed one by one (the others in
/// retryingGroups).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundJobStatus {
    /// Queued, Running, Suspended, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Admitted, Suspended, Complete and Failed, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The BackgroundJobTemplate (spec.templateRef) written into the spec, and its generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_template: Option<super::ResolvedTemplate>,
    /// When the job was first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_time: Option<Time>,
    /// When the job was admitted and its first workers started; spec.timeouts.jobSeconds counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How many shards are in each state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardCounts>,
    /// Shards that succeeded, as ranges of indexes ("0-55,57,60-62").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_shards: Option<String>,
    /// Shards that failed for good (retries exhausted), as ranges of indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_shards: Option<String>,
    /// Why shards failed for good, one entry each (the first 20): the last attempt's failure and,
    /// when a spec.retry.exitCodes rule decided, which.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_failures: Vec<ShardFailure>,
    /// Worker pods: desired, live and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkerCounts>,
    /// Attempts the cluster took away (eviction, drain, preemption, ...), retried at once
    /// without using a retry; counted apart from failures.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disruptions: i32,
    /// Shards with a live attempt, one entry each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["shard"]))]
    pub active: Vec<ActiveShard>,
    /// Shards whose last attempt failed and that wait for their next attempt, one entry each:
    /// the lowest 20; the others are in retryingGroups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["shard"]))]
    pub retrying: Vec<RetryingShard>,
    /// The shards waiting for their next attempt beyond those status.retrying lists, as ranges,
    /// grouped by the failures and disruptions they have had (at most 20 groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retrying_groups: Vec<RetryingGroup>,
    /// Work done over all shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    /// When the job is estimated to finish: the rate of its progress since it started, carried
    /// to 100%. Set while it runs, once it has run 10 s and done at least 1% of its work;
    /// updated with the status writes that happen anyway (heartbeat folds, shards done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion_time: Option<Time>,
    /// The latest heartbeat of any worker, on the operator's clock (folded in at most every 15 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// A small summary the workers reported (for example counts of rows created and failed):
    /// each shard's, merged in once, when its success is recorded. Absent when the merge
    /// outgrew 4 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::free_form_object")]
    pub result: Option<serde_json::Value>,
    /// Shards whose result summaries are merged into result, as ranges of indexes. A shard is
    /// merged once: no later step, leader or Lease can take it out or count it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_shards: Option<String>,
}

impl BackgroundJobStatus {
    /// What a job not admitted yet waits for: the reason of its Admitted condition, when False
    /// (WaitingForTemplate, WaitingForDependencies, WaitingForWorkers).
    pub fn waiting_for(&self) -> Option<&str> {
        let admitted = self.conditions.iter().find(|c| c.type_ == ConditionType::Admitted.as_str())?;
        (admitted.status == "False").then_some(admitted.reason.as_str())
    }
}

/// Shards by state; they add up to total.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardCounts {
    /// spec.shards.
    pub total: i32,
    /// Not started yet, or waiting to be retried.
    pub pending: i32,
    /// With a live attempt.
    pub running: i32,
    /// Done.
    pub succeeded: i32,
    /// Failed for good.
    pub failed: i32,
    /// "succeeded/total", for kubectl.
    pub summary: String,
}

/// Worker pods of the job.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    /// How many should run now: the shards left, within spec.workers.
    pub desired: i32,
    /// Live worker pods (not finished, not being deleted).
    pub active: i32,
    /// Live worker pods that are Ready.
    pub ready: i32,
    /// "active/desired", for kubectl.
    pub summary: String,
}

/// A shard with a live attempt.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveShard {
    /// Shard index.
    pub shard: i32,
    /// Attempt number, 1 for the first run of the shard.
    pub attempt: i32,
    /// Failed attempts of this shard before this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: i32,
    /// Attempts of this shard before this one that the cluster took away (no failure).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disruptions: i32,
    /// The worker pod running it.
    pub pod: String,
    /// When the attempt started (its pod was created); spec.timeouts.attemptSeconds counts from here.
    pub start_time: Time,
    /// The attempt's latest heartbeat, on the operator's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// The attempt's progress as its worker reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ShardProgress>,
}

/// One shard's progress, as its worker reported it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardProgress {
    /// Units done.
    pub done: i64,
    /// Units in all.
    pub total: i64,
    /// The worker's latest message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A shard whose last attempt failed, waiting for its retry.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryingShard {
    /// Shard index.
    pub shard: i32,
    /// Number of the attempt that runs next.
    pub attempt: i32,
    /// Failed attempts of this shard so far.
    pub failures: i32,
    /// Attempts of this shard the cluster took away so far (no failure).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disruptions: i32,
    /// Not before this time; unset after an interruption that is not a failure (a suspend, a
    /// disruption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Time>,
    /// Why the last attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
}

/// Shards waiting for their next attempt that status.retrying does not list one by one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryingGroup {
    /// The shards, as ranges of indexes ("40-97,99").
    pub shards: String,
    /// How many shards.
    pub count: i32,
    /// Number of the attempt that runs next: the highest among the shards (a shard's attempt
    /// numbers may skip some).
    pub attempt: i32,
    /// Failed attempts of each shard so far (the most among them, should more than 20 groups
    /// have been needed: a shard then has fewer retries left, never more).
    pub failures: i32,
    /// Attempts of each shard the cluster took away so far (the most among them, likewise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disruptions: i32,
    /// Not before this time: the latest among the shards. Unset: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Time>,
}

/// Most shards status.retrying lists one by one.
pub const MAX_RETRYING_LISTED: usize = 20;
/// Most entries of status.retryingGroups.
pub const MAX_RETRYING_GROUPS: usize = 20;

/// A shard that failed for good.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardFailure {
    /// Shard index.
    pub shard: i32,
    /// Its last attempt.
    pub attempt: i32,
    /// Why that attempt failed: reason, exit code, the container's last message.
    pub failure: Failure,
    /// The rule that decided, "spec.retry.exitCodes[1] (FailShard)"; unset when retries ran out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Most entries status.shardFailures keeps.
pub const MAX_SHARD_FAILURES: usize = 20;

/// Why an attempt failed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// One word: Error, AttemptDeadlineExceeded, PodDeleted, ...
    pub reason: String,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The worker container's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Work done, as the workers report it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// Units done.
    pub done: i64,
    /// Units in all (as known so far).
    pub total: i64,
    /// done/total in percent, rounded down.
    pub percent: i32,
    /// The latest message a worker gave.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// "percent%", for kubectl.
    pub summary: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}
