//! The shard book: every shard of a running job in exactly one state, read from the last status
//! and corrected by the pods seen — succeeded or failed (ranges), active (one live attempt),
//! retrying (waiting for its next attempt) or pending (never started) — and the phases of a
//! step that move shards between those states. Each phase is a method; `decide::decide_now` runs
//! them in order.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{
    heartbeat::heartbeat_failure,
    retrying,
    view::{LeaseView, PodPhase, PodView},
};
use crate::{
    Decision, EventNote, Related,
    time::{min_opt, plus, time, until, whole},
};
use nightshift_api::{
    ActiveShard, BackgroundJob, BackgroundJobStatus, Failure, Ranges, RetryingShard, ShardFailure,
    reasons::{AttemptReason, EventReason, Reason},
};

pub(super) struct Book<'a> {
    pub job: &'a BackgroundJob,
    /// The whole second the step is judged at.
    pub now: Timestamp,
    /// The instant the step is decided at, to the nanosecond: heartbeats are judged at it.
    at: Timestamp,
    /// Shards in this run: spec.shards, less those spec.onlyShards leaves out.
    pub total: i32,
    /// spec.shards: every index is below it.
    limit: i32,
    /// Shards spec.onlyShards leaves out: never started, never counted.
    skipped: Ranges,
    pub succeeded: Ranges,
    pub failed: Ranges,
    pub active: BTreeMap<i32, ActiveShard>,
    pub retrying: BTreeMap<i32, RetryingShard>,
    /// The pods of each shard the spec has.
    pods: BTreeMap<i32, Vec<&'a PodView>>,
    /// Pods of current attempts that go on.
    pub live: Vec<&'a PodView>,
    /// The first reason found to fail the whole job.
    pub job_failure: Option<(Reason, String)>,
    /// Attempts the cluster took away, over the job's life.
    pub disruptions: i32,
    /// Why shards failed for good (status.shardFailures).
    pub shard_failures: Vec<ShardFailure>,
    /// The actions decided so far.
    pub d: Decision,
}

impl<'a> Book<'a> {
    /// The book as the last status left it, with the pods seen sorted by shard. Pods of shards
    /// the spec does not have are let go of at once.
    pub fn open(job: &'a BackgroundJob, prev: &BackgroundJobStatus, pods: &'a [PodView], at: Timestamp) -> Self {
        let limit = job.spec.shards.max(0);
        let skipped: Ranges = match &job.spec.only_shards {
            Some(only) => Ranges::parse(only).gaps(limit).collect(),
            None => Ranges::default(),
        };
        let total = limit - skipped.len() as i32;
        let in_run = |shard: i32| (0..limit).contains(&shard) && !skipped.contains(shard);
        let mut book = Book {
            job,
            now: whole(at),
            at,
            total,
            limit,
            succeeded: Ranges::from_opt(prev.succeeded_shards.as_ref()),
            failed: Ranges::from_opt(prev.failed_shards.as_ref()),
            // Entries for shards the spec no longer has cannot happen through the API; be safe.
            active: prev.active.iter().filter(|a| in_run(a.shard)).map(|a| (a.shard, a.clone())).collect(),
            retrying: retrying::unpack(&prev.retrying, &prev.retrying_groups)
                .into_iter()
                .filter(|(shard, _)| in_run(*shard))
                .collect(),
            pods: BTreeMap::new(),
            live: Vec::new(),
            job_failure: None,
            disruptions: prev.disruptions,
            shard_failures: prev.shard_failures.clone(),
            d: Decision::default(),
            skipped: skipped.clone(),
        };
        for pod in pods {
            if in_run(pod.shard) {
                book.pods.entry(pod.shard).or_default().push(pod);
            } else {
                book.let_go(pod);
            }
        }
        book
    }

    /// Stops a live pod, or releases a finished one whose outcome is recorded (or moot).
    fn let_go(&mut self, pod: &PodView) {
        if pod.live() {
            self.stop(&pod.name);
        } else if pod.tracked {
            self.d.release.push(pod.name.clone());
        }
    }

    fn stop(&mut self, pod: &str) {
        if !self.d.delete.iter().any(|p| p == pod) {
            self.d.delete.push(pod.to_string());
        }
    }

    /// Adopts pods of attempts the status does not know yet (created just before a crash or a
    /// failed status write): the newest attempt of a shard is its current one.
    pub fn adopt(&mut self) {
        for (&shard, pods) in &self.pods {
            if self.succeeded.contains(shard) || self.failed.contains(shard) {
                continue;
            }
            let Some(newest) = pods.iter().max_by_key(|p| p.attempt) else { continue };
            let known = self
                .active
                .get(&shard)
                .map(|a| a.attempt)
                .or_else(|| self.retrying.get(&shard).map(|r| r.attempt - 1))
                .unwrap_or(0);
            if newest.attempt > known {
                let (failures, disruptions) = self
                    .retrying
                    .remove(&shard)
                    .map(|r| (r.failures, r.disruptions))
                    .or(self.active.get(&shard).map(|a| (a.failures, a.disruptions)))
                    .unwrap_or((0, 0));
                self.active.insert(
                    shard,
                    ActiveShard {
                        shard,
                        attempt: newest.attempt,
                        failures,
                        disruptions,
                        pod: newest.name.clone(),
                        start_time: time(newest.created.unwrap_or(self.now)),
                        last_heartbeat_time: None,
                        progress: None,
                    },
                );
            }
        }
    }

    /// Judges the current attempt of every active shard: succeeded, failed (by itself, deleted,
    /// past its deadline, unable to start, silent or stalled), interrupted by a suspend, or
    /// going on.
    pub fn judge_attempts(&mut self, leases: &BTreeMap<i32, &LeaseView>) {
        let spec = &self.job.spec;
        let shards: Vec<i32> = self.active.keys().copied().collect();
        for shard in shards {
            let entry = self.active[&shard].clone();
            let current = self.pods.get(&shard).and_then(|ps| ps.iter().find(|p| p.attempt == entry.attempt)).copied();
            let Some(pod) = current else {
                // Created but not seen yet, or gone without our finalizer: (re)create, by the same name.
                if spec.suspend {
                    self.interrupt(&entry);
                } else {
                    self.d.create.push((shard, entry.attempt));
                }
                continue;
            };
            if pod.phase == PodPhase::Succeeded {
                self.active.remove(&shard);
                self.succeeded.insert(shard);
                continue;
            }
            // The cluster took the pod away (evicted, drained, preempted): not the worker's failure.
            let taken = pod.phase == PodPhase::Failed || (pod.deleting() && !spec.suspend);
            if let Some(cause) = pod.disruption.clone().filter(|_| taken) {
                self.disrupt_attempt(&entry, cause);
                continue;
            }
            if pod.phase == PodPhase::Failed {
                let failure = pod.failure.clone().unwrap_or_else(|| Failure {
                    reason: AttemptReason::Error.into(),
                    message: String::new(),
                    exit_code: None,
                });
                self.fail_attempt(&entry, failure);
                continue;
            }
            if spec.suspend {
                self.interrupt(&entry);
                if !pod.deleting() {
                    self.d.delete.push(pod.name.clone());
                }
                continue;
            }
            if pod.deleting() {
                let failure = Failure {
                    reason: AttemptReason::PodDeleted.into(),
                    message: format!("pod {} was deleted before it finished", pod.name),
                    exit_code: None,
                };
                self.fail_attempt(&entry, failure);
                continue;
            }
            let deadline = spec.timeouts.attempt_seconds.map(|s| plus(entry.start_time.0, s));
            let failure = if deadline.is_some_and(|t| self.now >= t) {
                Some(Failure {
                    reason: AttemptReason::AttemptDeadlineExceeded.into(),
                    message: format!(
                        "attempt ran longer than spec.timeouts.attemptSeconds ({}s)",
                        spec.timeouts.attempt_seconds.unwrap_or(0)
                    ),
                    exit_code: None,
                })
            } else if let Some(failure) = pod.cannot_start.clone() {
                // The kubelet would retry forever (ImagePullBackOff): spec.retry decides instead.
                Some(failure)
            } else {
                let lease = leases.get(&shard).copied();
                heartbeat_failure(spec.heartbeat.as_ref(), &entry, pod, lease, self.at, &mut self.d.requeue_after)
            };
            match failure {
                Some(failure) => {
                    self.d.delete.push(pod.name.clone());
                    self.fail_attempt(&entry, failure);
                }
                None => {
                    self.live.push(pod);
                    if let Some(deadline) = deadline {
                        self.d.requeue_after = min_opt(self.d.requeue_after, until(self.now, deadline));
                    }
                }
            }
        }
    }

    /// Every other pod: a superseded attempt, or a shard that is done. Stops the live ones and
    /// releases the finished ones.
    pub fn stop_superseded(&mut self) {
        let pods: Vec<&PodView> = self.pods.values().flatten().copied().collect();
        for pod in pods {
            let current = self.active.get(&pod.shard).is_some_and(|a| a.attempt == pod.attempt)
                && self.live.iter().any(|p| p.name == pod.name);
            if !current {
                self.let_go(pod);
            }
        }
    }

    /// Shards neither succeeded nor failed.
    pub fn remaining(&self) -> i64 {
        i64::from(self.total) - self.succeeded.len() - self.failed.len()
    }

    /// Stops every worker: the job failed.
    pub fn stop_all(&mut self) {
        for pod in std::mem::take(&mut self.live) {
            self.stop(&pod.name);
        }
        self.d.create.clear();
        self.active.clear();
    }

    /// Starts up to `free` attempts: retries that are due first (lowest shard first), then
    /// shards never started.
    pub fn start_attempts(&mut self, mut free: i64) {
        let now = self.now;
        let due: Vec<i32> = self
            .retrying
            .values()
            .filter(|r| r.next_retry_time.as_ref().is_none_or(|t| t.0 <= now))
            .map(|r| r.shard)
            .collect();
        let due: Vec<i32> = due.into_iter().filter(|&shard| !self.wait_for_stop(shard)).collect();
        for shard in due {
            if free <= 0 {
                break;
            }
            let r = self.retrying.remove(&shard).expect("a due retry is in the book");
            self.start(shard, r.attempt, r.failures, r.disruptions);
            free -= 1;
        }
        if free > 0 {
            let mut taken = self.succeeded.clone();
            for s in self.active.keys().chain(self.retrying.keys()) {
                taken.insert(*s);
            }
            taken.union(&self.failed);
            taken.union(&self.skipped);
            let fresh: Vec<i32> = taken.gaps(self.limit).take(free as usize).collect();
            for shard in fresh {
                self.start(shard, 1, 0, 0);
            }
        }
        if let Some(secs) = self.job.spec.timeouts.attempt_seconds.filter(|_| !self.d.create.is_empty()) {
            self.d.requeue_after = min_opt(self.d.requeue_after, std::time::Duration::from_secs(secs.max(1) as u64));
        }
        for r in self.retrying.values() {
            if let Some(t) = &r.next_retry_time
                && t.0 > now
            {
                self.d.requeue_after = min_opt(self.d.requeue_after, until(now, t.0));
            }
        }
    }

    /// Whether the next attempt of `shard` waits for an earlier one to stop: one this step
    /// deletes, or one being deleted that is still within its grace period (a requeue is set for
    /// its end). A worker told to stop may save a checkpoint until it exits, and the next
    /// attempt must start from that one. Past the grace period it no longer waits: a node that
    /// is gone never reports its pods stopped, and the Lease fences a worker that still runs.
    fn wait_for_stop(&mut self, shard: i32) -> bool {
        let (now, pods) = (self.now, self.pods.get(&shard).map(Vec::as_slice).unwrap_or_default());
        let stopped_now = pods.iter().any(|p| p.running() && self.d.delete.contains(&p.name));
        let grace_ends = pods.iter().filter(|p| p.stopping(now)).filter_map(|p| p.deletion).min();
        if let Some(end) = grace_ends {
            self.d.requeue_after = min_opt(self.d.requeue_after, until(now, end));
        }
        stopped_now || grace_ends.is_some()
    }

    fn start(&mut self, shard: i32, attempt: i32, failures: i32, disruptions: i32) {
        let pod = crate::build::pod::pod_name(&self.job.name_any(), shard, attempt);
        let note = format!("shard {shard} attempt {attempt} on pod {pod}");
        self.d.events.push(EventNote::normal(EventReason::WorkerStarted, note).about(Related::Pod(pod.clone())));
        self.d.create.push((shard, attempt));
        self.active.insert(
            shard,
            ActiveShard {
                shard,
                attempt,
                failures,
                disruptions,
                pod,
                start_time: time(self.now),
                last_heartbeat_time: None,
                progress: None,
            },
        );
    }
}
