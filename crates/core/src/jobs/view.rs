//! What `decide` is given: the job, and what the controller saw of its pods and Leases and of
//! its own last act.

use k8s_openapi::jiff::Timestamp;

use super::{chain::Chain, queue::Grant};
use nightshift_api::{BackgroundJob, Failure, ShardProgress};

/// By default, heartbeats, progress, readiness and mid-job shard successes reach the status at
/// most this often per job (unless something else changes the status anyway): lease renewals
/// must not become status writes one for one, nor each of a job's shards a write of its own.
pub const FOLD_SECONDS: i64 = 15;

/// Everything `decide` looks at for one job. Built with [`Observed::new`] and the setters.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub job: &'a BackgroundJob,
    pub pods: &'a [PodView],
    pub leases: &'a [LeaseView],
    /// When heartbeats were last folded into this job's status (None: not since the operator started).
    pub last_fold: Option<Timestamp>,
    /// Heartbeats alone change the status at most once per this many seconds.
    pub fold_seconds: i64,
    /// What the worker budget allows this job now (None: no budget).
    pub grant: Option<&'a Grant>,
    /// The operator has an image to copy the agent from (`nightshift run --agent-image`).
    pub agent_image: bool,
    /// How the API server answered the last pod create of this job, when it refused it.
    pub refusal: Option<&'a Refusal>,
    /// The jobs spec.after names, for a job that has not started (None: none to wait for).
    pub chain: Option<&'a Chain>,
    /// For a job whose spec.templateRef is not resolved yet: the generation of that
    /// BackgroundJobTemplate in the cache (None: there is none).
    pub template_generation: Option<i64>,
}

impl<'a> Observed<'a> {
    pub fn new(job: &'a BackgroundJob, pods: &'a [PodView]) -> Self {
        Self {
            job,
            pods,
            leases: &[],
            last_fold: None,
            fold_seconds: FOLD_SECONDS,
            grant: None,
            agent_image: true,
            refusal: None,
            chain: None,
            template_generation: None,
        }
    }

    pub fn leases(self, leases: &'a [LeaseView]) -> Self {
        Self { leases, ..self }
    }

    pub fn last_fold(self, last_fold: Option<Timestamp>) -> Self {
        Self { last_fold, ..self }
    }

    pub fn fold_seconds(self, fold_seconds: i64) -> Self {
        Self { fold_seconds, ..self }
    }

    pub fn grant(self, grant: Option<&'a Grant>) -> Self {
        Self { grant, ..self }
    }

    pub fn agent_image(self, agent_image: bool) -> Self {
        Self { agent_image, ..self }
    }

    pub fn refusal(self, refusal: Option<&'a Refusal>) -> Self {
        Self { refusal, ..self }
    }

    pub fn chain(self, chain: Option<&'a Chain>) -> Self {
        Self { chain, ..self }
    }

    pub fn template_generation(self, template_generation: Option<i64>) -> Self {
        Self { template_generation, ..self }
    }
}

/// The API server refused to create a worker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400 or 422: the pod is invalid, and will stay so. The job fails.
    Invalid { message: String },
    /// 403 (a quota, Pod Security): it may pass later. New workers wait
    /// [`FORBIDDEN_PAUSE_SECONDS`] before the next try.
    Forbidden { message: String, at: Timestamp },
    /// An object the workers need (their Lease, ServiceAccount, Role or RoleBinding) exists and
    /// is not this job's: the operator leaves it alone, and new workers wait
    /// [`FORBIDDEN_PAUSE_SECONDS`] before the next try (someone may remove or rename it).
    NotOwned { message: String, at: Timestamp },
}

/// How long a job starts no new worker after the API server forbade one.
pub const FORBIDDEN_PAUSE_SECONDS: i64 = 30;

/// What the core needs to know of a shard's Lease. Times are on the operator's clock: when it saw
/// the value change, so a worker's clock cannot fool it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseView {
    pub shard: i32,
    /// The pod of the attempt that owns the shard.
    pub holder: Option<String>,
    /// When renewTime was last seen to change (None: never renewed).
    pub last_renewal: Option<Timestamp>,
    /// While `last_renewal` is only the first sight of a renewed Lease (this process started
    /// after the renewal): when the API server stamped that renewal (its managedFields time, on
    /// the server's clock, not the worker's). The core credits it, so that a leader change does
    /// not restart a silent worker's timeout.
    pub renewal_stamp_at_first_sight: Option<Timestamp>,
    /// The progress the worker reported.
    pub progress: Option<ShardProgress>,
    /// When the reported done count was last seen to change.
    pub progress_since: Option<Timestamp>,
    /// The result summary the worker reported.
    pub result: Option<serde_json::Value>,
}

/// What the core needs to know of a worker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub shard: i32,
    pub attempt: i32,
    pub phase: PodPhase,
    /// The pod's deletionTimestamp: it is being deleted, and the kubelet kills what still runs
    /// in it at this time, the end of its grace period.
    pub deletion: Option<Timestamp>,
    /// Still carries the tracking finalizer.
    pub tracked: bool,
    pub ready: bool,
    /// For a failed pod: why, in the pod's own words.
    pub failure: Option<Failure>,
    pub created: Option<Timestamp>,
    /// When the operator first saw it Running.
    pub running_since: Option<Timestamp>,
    /// The cluster is taking the pod away (its DisruptionTarget condition): why, in the
    /// cluster's words (EvictionByEvictionAPI, PreemptionByScheduler, DeletionByTaintManager, ...).
    pub disruption: Option<Failure>,
    /// For a pod not running yet: why a container cannot start, as the kubelet says (an image
    /// that cannot be pulled, a missing Secret key, ...), which fails the attempt.
    pub cannot_start: Option<Failure>,
}

impl PodView {
    /// Neither finished nor on its way out. (A pod being deleted may still run, and still
    /// occupies a worker in the budget: see the controller's `occupies_worker`.)
    pub fn live(&self) -> bool {
        !self.deleting() && self.running()
    }

    /// Being deleted.
    pub fn deleting(&self) -> bool {
        self.deletion.is_some()
    }

    /// Not finished: Pending or Running (perhaps being deleted).
    pub fn running(&self) -> bool {
        matches!(self.phase, PodPhase::Pending | PodPhase::Running)
    }

    /// Being deleted and still within its grace period at `now`: its worker may still be saving
    /// what it has done.
    pub fn stopping(&self, now: Timestamp) -> bool {
        self.running() && self.deletion.is_some_and(|t| now < t)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}
