//! The BackgroundJob API: types (`v1alpha1`), the CRD as installed (`crd`), the words of
//! conditions and events (`reasons`), shard ranges as the status writes them (`ranges`), and
//! the names the controller and the workers share (labels, finalizers, environment variables).
//! It depends on no other crate of the workspace.
//!
//! The workspace (README, "Development"): `nightshift-api` ← `nightshift-core` ← `nightshift`
//! (the operator, the root package); `nightshift-worker` and `nightshift-plugin` depend on the
//! API crate only; `nightshift-bench` on the API and the core.

pub mod crd;
#[cfg(any(test, feature = "fixtures"))]
pub mod job_fixture;
pub mod ranges;
pub mod reasons;
pub mod v1alpha1;

pub use ranges::Ranges;
pub use v1alpha1::*;

/// API group of every nightshift resource.
pub const GROUP: &str = "nightshift.dev";
/// Field manager (server-side apply) and event reporter of the operator.
pub const MANAGER: &str = "nightshift";

/// Label on worker pods: the job's name.
pub const LABEL_JOB: &str = "nightshift.dev/job";
/// Label on worker pods: the shard index.
pub const LABEL_SHARD: &str = "nightshift.dev/shard";
/// Label on worker pods: the attempt number (1 for the first run of a shard).
pub const LABEL_ATTEMPT: &str = "nightshift.dev/attempt";
/// Label on the jobs a BackgroundJobSchedule starts: the schedule's name.
pub const LABEL_SCHEDULE: &str = "nightshift.dev/schedule";
/// Annotation on the jobs a BackgroundJobSchedule starts: their scheduled time (RFC 3339).
pub const ANNOTATION_SCHEDULED_AT: &str = "nightshift.dev/scheduled-at";
/// Finalizer on worker pods, removed once the job's status records the pod's outcome.
pub const FINALIZER_TRACKING: &str = "nightshift.dev/tracking";

/// Annotations on worker pods that ask cluster autoscalers not to take them away, unless the
/// pod template sets them itself: Cluster Autoscaler's and Karpenter's.
pub const DO_NOT_DISRUPT: [(&str, &str); 2] =
    [("cluster-autoscaler.kubernetes.io/safe-to-evict", "false"), ("karpenter.sh/do-not-disrupt", "true")];

/// Lease annotation a worker writes: its progress as "DONE/TOTAL" (integers).
pub const ANNOTATION_PROGRESS: &str = "nightshift.dev/progress";
/// Lease annotation a worker writes: a short message about its progress.
pub const ANNOTATION_PROGRESS_MESSAGE: &str = "nightshift.dev/progress-message";
/// Lease annotation a worker writes: a small JSON object summarising its result.
pub const ANNOTATION_RESULT: &str = "nightshift.dev/result";
/// Lease annotation a worker writes: its latest checkpoint, a short opaque string (at most
/// [`MAX_CHECKPOINT_BYTES`]) that the shard's next attempt receives.
pub const ANNOTATION_CHECKPOINT: &str = "nightshift.dev/checkpoint";
/// Lease annotation a worker writes with each checkpoint: its progress ("DONE/TOTAL") when it
/// saved it, empty when it had reported none. The next attempt's progress starts from it.
pub const ANNOTATION_CHECKPOINT_PROGRESS: &str = "nightshift.dev/checkpoint-progress";
/// Annotation the controller writes on a job it resolved from a BackgroundJobTemplate:
/// "NAME/GENERATION" of the template, written with the fields taken from it.
pub const ANNOTATION_TEMPLATE: &str = "nightshift.dev/template";
/// Lease annotation the controller writes: the shard the Lease belongs to, for people and tools
/// reading it. The operator itself takes the shard from the Lease name, which a worker cannot change.
pub const ANNOTATION_SHARD: &str = "nightshift.dev/shard";
/// Longest result summary a worker may report, in bytes of JSON.
pub const MAX_RESULT_BYTES: usize = 4096;
/// Longest checkpoint a worker may save, in bytes. The Rust API and the agent refuse a longer
/// one (the previous checkpoint stays); the controller hands none of a longer one on.
pub const MAX_CHECKPOINT_BYTES: usize = 1024;

/// Environment every worker container gets.
pub mod env {
    pub const JOB: &str = "NIGHTSHIFT_JOB";
    pub const NAMESPACE: &str = "NIGHTSHIFT_NAMESPACE";
    pub const SHARD: &str = "NIGHTSHIFT_SHARD";
    pub const SHARDS: &str = "NIGHTSHIFT_SHARDS";
    pub const ATTEMPT: &str = "NIGHTSHIFT_ATTEMPT";
    pub const POD: &str = "NIGHTSHIFT_POD";
    /// The shard's Lease (only when the job has spec.heartbeat).
    pub const LEASE: &str = "NIGHTSHIFT_LEASE";
    /// Seconds between Lease renewals (only when the job has spec.heartbeat).
    pub const HEARTBEAT_INTERVAL_SECONDS: &str = "NIGHTSHIFT_HEARTBEAT_INTERVAL_SECONDS";
    /// The checkpoint the shard's last attempt saved (only when there is one).
    pub const CHECKPOINT: &str = "NIGHTSHIFT_CHECKPOINT";
    /// Prefix of the variables of spec.parameters: NIGHTSHIFT_PARAM_<key>, the key as written.
    pub const PARAM_PREFIX: &str = "NIGHTSHIFT_PARAM_";
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The longest suffix of `s` of at most `max` bytes that starts on a character boundary.
pub fn truncate_start(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::{truncate, truncate_start};

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("short", 256), "short");
        assert_eq!(truncate("abcdef", 3), "abc");
        // "é" is 2 bytes: cutting at 3 would split the second one.
        assert_eq!(truncate("éé", 3), "é");
        assert_eq!(truncate("✓✓", 5), "✓");
        let long = "✓".repeat(100);
        let cut = truncate(&long, 256);
        assert_eq!(cut.len(), 255);
        assert!(long.starts_with(cut));
        assert_eq!(truncate_start("abcdef", 3), "def");
        assert_eq!(truncate_start("aéé", 3), "é");
        assert_eq!(truncate_start("short", 256), "short");
    }
}
