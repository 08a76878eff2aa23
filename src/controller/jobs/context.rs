//! What every reconcile of a job shares: the client, the caches, the options, and the operator's
//! memory (what it saw and did that the API objects do not say), behind one lock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{
    Client, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use super::observe::LeaseMemory;
use crate::controller::events::Recorder;
use crate::controller::lean::WorkerPod;
use crate::controller::owners::Cached;
use crate::controller::{Options, expectations::Expectations, now, watches::Filled, writes::with_written};
use crate::operator::{
    Metrics,
    metrics::{JobLabel, PhaseLabel},
};
use nightshift_api::{BackgroundJob, BackgroundJobStatus, BackgroundJobTemplate, Phase};
use nightshift_core::{Refusal, jobs::queue::Claim};

/// How long something the operator did may take to show in its caches before it stops waiting.
const EXPECTATION_TTL: Duration = Duration::from_secs(60);

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub jobs: Store<BackgroundJob>,
    pub pods: Cached<WorkerPod>,
    pub leases: Cached<Lease>,
    pub templates: Store<BackgroundJobTemplate>,
    pub options: Options,
    pub memory: Mutex<Memory>,
    pub metrics: Arc<Metrics>,
    /// Asks the controller to look at a job again (queued ones, when workers free up).
    pub wake: futures::channel::mpsc::UnboundedSender<ObjectRef<BackgroundJob>>,
    /// True once every cache has had its first LIST; see [`Filled`].
    pub filled: Filled,
}

/// What the operator remembers between reconciles. Lost on a restart, by design: each entry
/// only saves work or API calls, and is rebuilt from the caches.
pub struct Memory {
    /// Per Lease ("namespace/name"): when the operator saw it renewed and its progress move.
    pub leases: HashMap<String, LeaseMemory>,
    /// Per pod uid: when the operator first saw it Running.
    pub running_since: HashMap<String, Timestamp>,
    /// Per job uid.
    pub jobs: HashMap<String, JobMemory>,
    /// Pods ("namespace/name") being created, or created and not in the cache yet: the job uid.
    pub creating: Expectations<String>,
    /// Pods (uid) whose tracking finalizer was removed, while the cache may still show it.
    pub released: Expectations<()>,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            leases: HashMap::new(),
            running_since: HashMap::new(),
            jobs: HashMap::new(),
            creating: Expectations::new(EXPECTATION_TTL),
            released: Expectations::new(EXPECTATION_TTL),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct JobMemory {
    /// When heartbeats were last folded into the status.
    pub last_fold: Option<Timestamp>,
    /// The workers' ServiceAccount, Role and RoleBinding are applied.
    pub access_applied: bool,
    /// The status last written, with the resourceVersion it produced: read-your-writes while
    /// the watch has not delivered it, so a stale cache never undoes a decision.
    pub written: Option<(u64, BackgroundJobStatus)>,
    /// The API server's refusal of the last pod create, until a create succeeds.
    pub refusal: Option<Refusal>,
}

impl Context {
    pub fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().expect("no reconcile panics holding the memory")
    }

    /// `job` with the status this process last wrote, when the cache has not caught up with it.
    pub fn with_latest_status(&self, job: Arc<BackgroundJob>) -> Arc<BackgroundJob> {
        let uid = job.uid().unwrap_or_default();
        let mut memory = self.memory();
        let Some(entry) = memory.jobs.get_mut(&uid) else { return job };
        with_written(job, &mut entry.written, |job| &mut job.status)
    }

    /// Every job's claim on the worker budget, counting the pods that exist and those being
    /// created.
    pub fn claims(&self, memory: &mut Memory) -> Vec<Claim> {
        let mut live: HashMap<String, i32> = HashMap::new();
        for pod in self.pods.state() {
            if occupies_worker(&pod)
                && let Some(owner) = pod.owner_references().iter().find(|o| o.controller == Some(true))
            {
                *live.entry(owner.uid.clone()).or_default() += 1;
            }
        }
        for (key, uid) in memory.creating.open(Instant::now()) {
            let (ns, name) = key.split_once('/').unwrap_or_default();
            if self.pods.get(&ObjectRef::new(name).within(ns)).is_none() {
                *live.entry(uid.clone()).or_default() += 1;
            }
        }
        let live_of = |job: &BackgroundJob| live.get(&job.uid().unwrap_or_default()).copied().unwrap_or(0);
        self.jobs.state().iter().filter_map(|job| Claim::of(job, live_of(job))).collect()
    }

    /// Workers freed up: jobs waiting for them (queued, or running below what they want) look again.
    pub fn wake_waiting(&self) {
        if self.options.budget.is_unlimited() {
            return;
        }
        for job in self.jobs.state() {
            let status = job.status.as_ref();
            let phase = status.and_then(|s| s.phase);
            let short = status.and_then(|s| s.workers.as_ref()).is_some_and(|w| w.active < w.desired);
            if phase == Some(Phase::Queued) || (phase == Some(Phase::Running) && short) {
                let _ = self.wake.unbounded_send(ObjectRef::from_obj(&*job));
            }
        }
    }

    /// The job, phase and worker gauges, from the caches.
    pub fn update_gauges(&self) {
        let mut by_phase: HashMap<String, i64> = HashMap::new();
        for phase in [Phase::Queued, Phase::Running, Phase::Suspended, Phase::Succeeded, Phase::Failed] {
            by_phase.insert(phase.to_string(), 0);
        }
        self.metrics.heartbeat_age.clear();
        let now = now();
        for job in self.jobs.state() {
            let status = job.status.as_ref();
            let phase = status.and_then(|s| s.phase).unwrap_or(Phase::Queued);
            *by_phase.entry(phase.to_string()).or_default() += 1;
            if phase == Phase::Running
                && let Some(beat) = status.and_then(|s| s.last_heartbeat_time.as_ref())
            {
                let label = JobLabel { namespace: job.namespace().unwrap_or_default(), job: job.name_any() };
                self.metrics.heartbeat_age.get_or_create(&label).set(now.duration_since(beat.0).as_secs_f64().max(0.0));
            }
        }
        for (phase, n) in by_phase {
            self.metrics.jobs.get_or_create(&PhaseLabel { phase }).set(n);
        }
        self.metrics.workers.set(self.pods.state().iter().filter(|p| occupies_worker(p)).count() as i64);
    }

    /// Drops what the operator remembers of jobs no longer in the cache: kube-runtime never
    /// reconciles a deleted job, so this is where its entries go.
    pub fn forget_gone_jobs(&self) {
        let uids: std::collections::HashSet<String> = self.jobs.state().iter().filter_map(|j| j.uid()).collect();
        self.memory().jobs.retain(|uid, _| uids.contains(uid));
    }
}

/// A pod that takes a worker from the budget: not finished. (One being deleted still counts:
/// it may still run. Compare [`nightshift_core::PodView::live`].)
pub fn occupies_worker(pod: &WorkerPod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}
