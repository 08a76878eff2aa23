//! Chains in the shell: what a job's spec.after names, read from the job cache, and which jobs to
//! wake when a job they wait for changes phase or goes away (no polling).

use std::collections::{BTreeSet, HashMap};

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, reflector::Store, watcher},
};

use nightshift_api::{BackgroundJob, Phase};

use nightshift_core::jobs::chain::{self, Chain};

/// The chain of a job that has not started and names others in spec.after, from the cache.
pub fn chain_of(jobs: &Store<BackgroundJob>, job: &BackgroundJob) -> Option<Chain> {
    let started = job.status.as_ref().is_some_and(|s| s.start_time.is_some());
    if job.spec.after.is_empty() || started {
        return None;
    }
    let ns = job.namespace().unwrap_or_default();
    let get = |name: &str| jobs.get(&ObjectRef::new(name).within(&ns));
    let phases = job
        .spec
        .after
        .iter()
        .filter_map(|name| {
            let phase = get(name)?.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Queued);
            Some((name.clone(), phase))
        })
        .collect();
    let cycle = chain::find_cycle(&job.name_any(), |name| get(name).map(|j| j.spec.after.clone()));
    Some(Chain { phases, cycle })
}

type Key = (String, String);

/// Which jobs wait for which, kept from the job watch's events: a job's event wakes the jobs
/// waiting for it when its phase changed or it was deleted. Holds only jobs that wait and
/// what they wait for, so a cluster without chains costs a lookup per event.
#[derive(Default)]
pub struct Dependents {
    /// (namespace, name of a job) → the jobs not started yet whose spec.after names it.
    waiting: HashMap<Key, BTreeSet<String>>,
    /// The last phase seen of each job something waits for.
    phases: HashMap<Key, Option<Phase>>,
}

impl Dependents {
    /// Takes in one event of the job watch; returns the jobs to reconcile because of it.
    pub fn observe(&mut self, event: &watcher::Event<BackgroundJob>) -> Vec<ObjectRef<BackgroundJob>> {
        match event {
            watcher::Event::Apply(job) | watcher::Event::InitApply(job) => {
                let started =
                    job.status.as_ref().is_some_and(|s| s.start_time.is_some() || s.completion_time.is_some());
                self.note(job, !started);
                let phase = job.status.as_ref().and_then(|s| s.phase);
                let key = key(job);
                match self.phases.get_mut(&key) {
                    Some(seen) if *seen == phase => Vec::new(),
                    Some(seen) => {
                        *seen = phase;
                        self.wake(&key)
                    }
                    None if self.waiting.contains_key(&key) => {
                        self.phases.insert(key.clone(), phase);
                        self.wake(&key)
                    }
                    None => Vec::new(),
                }
            }
            watcher::Event::Delete(job) => {
                self.note(job, false);
                let key = key(job);
                self.phases.remove(&key);
                self.wake(&key)
            }
            _ => Vec::new(),
        }
    }

    /// Records whether `job` waits for the jobs its spec.after names.
    fn note(&mut self, job: &BackgroundJob, waits: bool) {
        let (ns, name) = key(job);
        for dependency in &job.spec.after {
            let dep = (ns.clone(), dependency.clone());
            if waits {
                self.waiting.entry(dep).or_default().insert(name.clone());
            } else if let Some(set) = self.waiting.get_mut(&dep) {
                set.remove(&name);
                if set.is_empty() {
                    self.waiting.remove(&dep);
                    self.phases.remove(&dep);
                }
            }
        }
    }

    fn wake(&self, key: &Key) -> Vec<ObjectRef<BackgroundJob>> {
        let Some(names) = self.waiting.get(key) else { return Vec::new() };
        names.iter().map(|name| ObjectRef::new(name).within(&key.0)).collect()
    }
}

fn key(job: &BackgroundJob) -> Key {
    (job.namespace().unwrap_or_default(), job.name_any())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job(name: &str, after: &[&str], phase: Option<&str>) -> BackgroundJob {
        let status = phase.map(|p| json!({"phase": p}));
        let spec = json!({"after": after, "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}});
        nightshift_api::job_fixture::job(name, spec).namespace("ns").status(json!(status)).build()
    }

    fn names(refs: Vec<ObjectRef<BackgroundJob>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_dependency_wakes_its_dependents_when_its_phase_changes_or_it_goes() {
        let mut d = Dependents::default();
        assert!(d.observe(&watcher::Event::Apply(job("images", &["catalog"], Some("Queued")))).is_empty());
        // First sight of the dependency, then renewals of the same phase: one wake.
        assert_eq!(names(d.observe(&watcher::Event::Apply(job("catalog", &[], Some("Running"))))), ["images"]);
        assert!(d.observe(&watcher::Event::Apply(job("catalog", &[], Some("Running")))).is_empty());
        assert_eq!(names(d.observe(&watcher::Event::Apply(job("catalog", &[], Some("Succeeded"))))), ["images"]);
        assert_eq!(names(d.observe(&watcher::Event::Delete(job("catalog", &[], Some("Succeeded"))))), ["images"]);
        // Once the dependent has started it waits for nothing: no more wakes, nothing kept.
        let mut started = job("images", &["catalog"], Some("Running"));
        started.status.as_mut().unwrap().start_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        d.observe(&watcher::Event::Apply(started));
        assert!(d.observe(&watcher::Event::Apply(job("catalog", &[], Some("Failed")))).is_empty());
        assert!(d.waiting.is_empty() && d.phases.is_empty());
    }
}
