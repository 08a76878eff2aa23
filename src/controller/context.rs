//! What every reconcile shares: the client, the caches, the options, and the operator's memory
//! (what it saw and did that the API objects do not say), behind one lock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{
    Client, Resource, ResourceExt,
    runtime::{
        events::Recorder,
        reflector::{ObjectRef, Store},
    },
};

use super::{Options, expectations::Expectations, now, observe::LeaseMemory};
use crate::{
    api::{BackgroundJob, BackgroundJobStatus, BackgroundJobTemplate, Phase},
    decision::{Refusal, jobs::queue::Claim},
    operator::{
        Metrics,
        metrics::{JobLabel, PhaseLabel},
    },
};

/// How long something the operator did may take to show in its caches before it stops waiting.
const EXPECTATION_TTL: Duration = Duration::from_secs(60);

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub jobs: Store<BackgroundJob>,
    pub pods: Store<Pod>,
    pub leases: Store<Lease>,
    pub templates: Store<BackgroundJobTemplate>,
    pub options: Options,
    pub memory: Mutex<Memory>,
    pub metrics: Arc<Metrics>,
    /// Asks the controller to look at a job again (queued ones, when workers free up).
    pub wake: futures::channel::mpsc::UnboundedSender<ObjectRef<BackgroundJob>>,
    /// True once every cache has had its first LIST; see [`Filled`].
    pub filled: Filled,
}

/// Whether every cache has had its first LIST, for any number of waiters. kube-runtime 5.0.0's
/// `Store::wait_until_ready` wakes only the last task that polled it (a oneshot receiver keeps
/// one waker): two reconciles waiting on it, or a reconcile and the controller, and the others
/// wait for ever. So one task waits for the stores (`gauges`) and says so here.
#[derive(Clone)]
pub struct Filled(tokio::sync::watch::Receiver<bool>);

impl Filled {
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Self(rx))
    }

    /// Returns once every cache is filled (at once after that).
    pub async fn wait(&self) {
        let _ = self.0.clone().wait_for(|filled| *filled).await;
    }
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
/// it may still run. Compare [`crate::decision::PodView::live`].)
pub fn occupies_worker(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// How the operator's memory names a namespaced object: "namespace/name".
pub fn object_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// resourceVersions are etcd revisions: comparable as numbers in practice. Unparseable ones
/// count as newest, so the cache is then simply not used.
pub fn resource_version(object: &impl Resource) -> u64 {
    object.meta().resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// The server-side apply body that writes `status` onto `object` only at the version it was
/// decided from: its resourceVersion is a precondition, so the API server answers 409 when the
/// object changed since (a paused former leader, a decision from a stale cache).
pub fn fenced_status<K: Resource<DynamicType = ()>>(object: &K, status: &impl serde::Serialize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": object.meta().resource_version},
        "status": status,
    })
}

/// Read-your-writes. `written` is the status this process last wrote to `object`, with the
/// resourceVersion that write produced: while the cache shows an older `object`, it gets that
/// status and resourceVersion (so a stale cache never undoes a decision, and the next write is
/// fenced on the version it was decided from); once the cache has caught up, `written` is
/// forgotten.
pub fn with_written<K: Resource + Clone, S: Clone>(
    object: Arc<K>,
    written: &mut Option<(u64, S)>,
    status: fn(&mut K) -> &mut Option<S>,
) -> Arc<K> {
    match written {
        Some((rv, latest)) if resource_version(&*object) < *rv => {
            let mut newer = (*object).clone();
            *status(&mut newer) = Some(latest.clone());
            newer.meta_mut().resource_version = Some(rv.to_string());
            Arc::new(newer)
        }
        _ => {
            *written = None;
            object
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{reflector, watcher::Event};

    use super::{super::triggers::tests::poll_pending, Filled};

    /// Why the operator waits on [`Filled`]: in kube-runtime 5.0.0 two tasks waiting for one store
    /// (a reconcile and the controller, two reconciles) and only the last to poll is woken when
    /// the first LIST arrives; the other waits for ever. (When this fails, kube-runtime fixed it.)
    #[test]
    fn a_store_of_kube_runtime_5_wakes_only_its_last_waiter() {
        let (reader, mut writer) = reflector::store::<Pod>();
        let (first, second) = (reader.clone(), reader.clone());
        let mut first = pin!(first.wait_until_ready());
        let mut second = pin!(second.wait_until_ready());
        let (woken_first, woken_second) = (poll_pending(first.as_mut()), poll_pending(second.as_mut()));
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        assert!(woken_second.woken());
        assert!(!woken_first.woken(), "the first waiter was woken too");
    }

    #[test]
    fn filled_wakes_every_waiter() {
        let (tx, filled) = Filled::new();
        let (a, b) = (filled.clone(), filled.clone());
        let mut first = pin!(a.wait());
        let mut second = pin!(b.wait());
        let (woken_first, woken_second) = (poll_pending(first.as_mut()), poll_pending(second.as_mut()));
        tx.send(true).unwrap();
        assert!(woken_first.woken() && woken_second.woken());
    }
}
