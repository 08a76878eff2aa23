//! A job's retries: how many, the backoff between them, and the exit codes that decide them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Retries of failed shards.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Retries per shard after its first attempt fails. When a shard fails once more than this,
    /// the job fails with reason RetriesExhausted. Default 3.
    #[serde(default = "default_retry_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub limit: i32,
    /// Wait before each retry: initialSeconds, multiplied by factor after each failure, at most maxSeconds.
    #[serde(default)]
    pub backoff: Backoff,
    /// Attempts per shard the cluster may take away (an eviction, a drain, a preemption: the
    /// pod's DisruptionTarget condition) that are retried at once and use no retry. A shard
    /// disrupted more often than this counts each further disruption as a failure, so a job is
    /// never disrupted forever. Default 10.
    #[serde(default = "default_disruption_limit")]
    #[schemars(range(min = 0, max = 1000))]
    pub disruption_limit: i32,
    /// Rules on the exit code of a worker that failed (its first container that exited non-zero):
    /// FailJob fails the whole job at once (bad input: no retry can help); FailShard fails that
    /// shard for good without a retry, and the job goes on with the others; Ignore retries it
    /// after backoff.initialSeconds without counting against limit (bounded only by
    /// timeouts.jobSeconds). An exit code may appear in one rule only. Codes no rule names are
    /// retried under limit. Disruptions are never judged by these rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(r, r.codes.all(c, self.filter(s, c in s.codes).size() == 1))",
         "message": "spec.retry.exitCodes: an exit code may appear in one rule only"}
    ]))]
    pub exit_codes: Vec<ExitCodeRule>,
    /// How a job ends whose shards have all ended, some failed by a FailShard rule: false
    /// (default) Failed, reason ShardsFailed, naming them; true Succeeded, with status.failedShards
    /// and status.shardFailures listing them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_failed_shards: bool,
}

/// What to do when a worker exits with one of `codes`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExitCodeRule {
    /// Exit codes, 1 to 255 (0 is success; 128+N is death by signal N).
    #[schemars(length(min = 1, max = 32), inner(range(min = 1, max = 255)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub codes: Vec<i32>,
    pub action: ExitCodeAction,
}

/// The action of an exit-code rule.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExitCodeAction {
    /// The job fails at once (reason ExitCodeRule); its other workers are stopped.
    FailJob,
    /// The shard fails for good, without a retry; the job goes on with the others.
    FailShard,
    /// The shard is retried after backoff.initialSeconds without counting against retry.limit.
    Ignore,
}

impl std::fmt::Display for ExitCodeAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

fn default_retry_limit() -> i32 {
    3
}

fn default_disruption_limit() -> i32 {
    10
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            limit: default_retry_limit(),
            backoff: Backoff::default(),
            disruption_limit: default_disruption_limit(),
            exit_codes: Vec::new(),
            allow_failed_shards: false,
        }
    }
}

/// Exponential backoff between retries of a shard.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.initialSeconds <= self.maxSeconds", "message": "spec.retry.backoff.initialSeconds must not exceed spec.retry.backoff.maxSeconds"}
]))]
pub struct Backoff {
    /// Seconds before the first retry of a shard. Default 10.
    #[serde(default = "default_initial_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub initial_seconds: i64,
    /// Each further retry waits this many times longer than the one before. Default 2.
    #[serde(default = "default_factor")]
    #[schemars(range(min = 1, max = 10))]
    pub factor: f64,
    /// The longest wait before a retry, in seconds. Default 600.
    #[serde(default = "default_max_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_seconds: i64,
}

fn default_initial_seconds() -> i64 {
    10
}
fn default_factor() -> f64 {
    2.0
}
fn default_max_seconds() -> i64 {
    600
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_seconds: default_initial_seconds(),
            factor: default_factor(),
            max_seconds: default_max_seconds(),
        }
    }
}
