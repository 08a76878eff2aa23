//! Tests of the decision core: examples and a property test that drives `decide` against a
//! model of the pods, as the controller would, through random worker outcomes.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::build::pod;
use nightshift_api::Ranges;
use nightshift_api::{BackgroundJob, Backoff, Failure, Phase, reasons::EventReason};

fn job(shards: i32, max: i32, extra: serde_json::Value) -> BackgroundJob {
    let mut spec = json!({
        "shards": shards,
        "workers": {"min": 1, "max": max},
        "retry": {"limit": 2, "backoff": {"initialSeconds": 10, "factor": 2, "maxSeconds": 60}},
        "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    let mut job: BackgroundJob = nightshift_api::job_fixture::job("j", spec)
        .namespace("ns")
        .metadata("uid", json!("uid-1"))
        .metadata("generation", json!(1))
        .build();
    job.metadata.uid = Some("uid-1".into());
    job
}

fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn at(s: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(s)
}

/// The pods of a job as the API server would hold them, changed by the controller's actions.
#[derive(Default)]
struct World {
    pods: Vec<PodView>,
    max_live_seen: usize,
    /// Fold as the operator does (the last write counts as a fold); off: every change is written.
    fold: bool,
    last_fold: Option<Timestamp>,
}

impl World {
    fn apply(&mut self, job: &mut BackgroundJob, d: &Decision, now: Timestamp) {
        for &(shard, attempt) in &d.create {
            // What an earlier attempt saves while it stops (a checkpoint) must reach this one.
            let stopping = self.pods.iter().find(|p| {
                p.shard == shard
                    && p.attempt < attempt
                    && (p.stopping(now) || (p.running() && d.delete.contains(&p.name)))
            });
            assert!(stopping.is_none(), "attempt {attempt} of shard {shard} started while {stopping:?} stops");
            let name = pod::pod_name("j", shard, attempt);
            if !self.pods.iter().any(|p| p.name == name) {
                self.pods.push(PodView {
                    name,
                    shard,
                    attempt,
                    phase: PodPhase::Pending,
                    deletion: None,
                    tracked: true,
                    ready: false,
                    failure: None,
                    created: Some(now),
                    running_since: None,
                    disruption: None,
                    cannot_start: None,
                });
            }
        }
        for name in &d.delete {
            if let Some(p) = self.pods.iter_mut().find(|p| &p.name == name) {
                p.deletion = Some(now + SignedDuration::from_secs(30));
            }
        }
        if d.folded {
            self.last_fold = Some(now);
        }
        job.status = Some(d.status.clone());
        for name in &d.release {
            if let Some(p) = self.pods.iter_mut().find(|p| &p.name == name) {
                // Only what the status written with it (or before) records may go.
                let s = &d.status;
                let recorded = Ranges::from_opt(s.succeeded_shards.as_ref()).contains(p.shard)
                    || Ranges::from_opt(s.failed_shards.as_ref()).contains(p.shard)
                    || s.active.iter().any(|a| a.shard == p.shard && a.attempt > p.attempt)
                    || s.retrying.iter().any(|r| r.shard == p.shard && r.attempt > p.attempt)
                    || s.phase.is_some_and(|ph| ph.is_finished());
                assert!(recorded, "{name} released before its outcome was recorded: {s:?}");
                p.tracked = false;
            }
        }
        // Untracked pods being deleted are gone once they stopped (or their grace period ended:
        // the kubelet killed them).
        self.pods.retain(|p| !p.deleting() || p.tracked || p.stopping(now));
        self.check();
    }

    fn check(&mut self) {
        let live: Vec<&PodView> = self.pods.iter().filter(|p| p.live()).collect();
        self.max_live_seen = self.max_live_seen.max(live.len());
        let mut shards: Vec<i32> = live.iter().map(|p| p.shard).collect();
        shards.sort();
        let n = shards.len();
        shards.dedup();
        assert_eq!(n, shards.len(), "two live attempts of one shard: {live:?}");
    }
}

fn step(job: &mut BackgroundJob, world: &mut World, now: Timestamp) -> Decision {
    let last_fold = if world.fold { world.last_fold } else { None };
    let d = decide(&Observed::new(job, &world.pods).last_fold(last_fold), now);
    world.apply(job, &d, now);
    let s = d.status.shards.as_ref().unwrap();
    assert_eq!(s.pending + s.running + s.succeeded + s.failed, s.total, "counts add up: {s:?}");
    d
}

/// A pod deleted at `now`, with Kubernetes' default grace period of 30 s.
fn delete(world: &mut World, name: &str, now: Timestamp) {
    world.pods.iter_mut().find(|p| p.name == name).unwrap().deletion = Some(now + SignedDuration::from_secs(30));
}

/// The cluster takes the pod away: the Eviction API marks it and deletes it.
fn evict(world: &mut World, name: &str, now: Timestamp) {
    delete(world, name, now);
    let p = world.pods.iter_mut().find(|p| p.name == name).unwrap();
    p.disruption = Some(Failure {
        reason: "EvictionByEvictionAPI".into(),
        message: "Eviction API: evicting".into(),
        exit_code: None,
    });
}

/// A deleted pod's worker exited: the kubelet reports it Failed (143: it stopped on SIGTERM).
fn stop(world: &mut World, name: &str) {
    let p = world.pods.iter_mut().find(|p| p.name == name).unwrap();
    p.phase = PodPhase::Failed;
    p.failure = Some(Failure { reason: "Error".into(), message: String::new(), exit_code: Some(143) });
}

fn finish(world: &mut World, name: &str, ok: bool) {
    let p = world.pods.iter_mut().find(|p| p.name == name).unwrap();
    p.phase = if ok { PodPhase::Succeeded } else { PodPhase::Failed };
    if !ok {
        p.failure = Some(Failure { reason: "Error".into(), message: String::new(), exit_code: Some(1) });
    }
}

#[test]
fn happy_path_runs_max_workers_and_succeeds() {
    let mut job = job(5, 3, json!({}));
    let mut w = World::default();
    let now = t0();
    let d = step(&mut job, &mut w, now);
    assert_eq!(d.create, vec![(0, 1), (1, 1), (2, 1)]);
    assert_eq!(d.status.phase, Some(Phase::Running));
    assert!(d.events.iter().any(|e| e.reason == EventReason::Admitted));
    // Nothing changed: nothing to do, same status.
    let again = step(&mut job, &mut w, now);
    assert!(again.create.is_empty() && again.delete.is_empty());
    assert_eq!(Some(&again.status), job.status.as_ref());
    for round in 0..5 {
        let live: Vec<String> = w.pods.iter().filter(|p| p.live()).map(|p| p.name.clone()).collect();
        for name in live {
            finish(&mut w, &name, true);
        }
        let d = step(&mut job, &mut w, now);
        assert!(d.release.len() <= 3, "round {round}");
    }
    let status = job.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.succeeded_shards.as_deref(), Some("0-4"));
    assert_eq!(status.progress.unwrap().percent, 100);
    assert!(w.pods.iter().all(|p| !p.tracked), "every finalizer released");
    assert_eq!(w.max_live_seen, 3);
}

#[test]
fn failure_waits_for_backoff_then_retries_with_next_attempt() {
    let mut job = job(1, 3, json!({}));
    let mut w = World::default();
    let now = t0();
    step(&mut job, &mut w, now);
    finish(&mut w, "j-0-1", false);
    let d = step(&mut job, &mut w, now);
    assert!(d.create.is_empty());
    let r = &d.status.retrying[0];
    assert_eq!((r.shard, r.attempt, r.failures), (0, 2, 1));
    assert_eq!(r.next_retry_time.as_ref().unwrap().0, now + SignedDuration::from_secs(10));
    assert_eq!(r.last_failure.as_ref().unwrap().exit_code, Some(1));
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(10)));
    assert_eq!(d.release, vec!["j-0-1".to_string()]);
    // Before the backoff: nothing. After: attempt 2.
    assert!(step(&mut job, &mut w, now + SignedDuration::from_secs(9)).create.is_empty());
    let d = step(&mut job, &mut w, now + SignedDuration::from_secs(10));
    assert_eq!(d.create, vec![(0, 2)]);
    assert_eq!(d.status.active[0].failures, 1);
}

#[test]
fn retries_exhausted_fail_the_job_with_the_last_failure() {
    let mut job = job(2, 3, json!({}));
    let mut w = World::default();
    let mut now = t0();
    step(&mut job, &mut w, now);
    for attempt in 1..=3 {
        finish(&mut w, &format!("j-0-{attempt}"), false);
        step(&mut job, &mut w, now);
        now += SignedDuration::from_secs(100);
        step(&mut job, &mut w, now);
    }
    let status = job.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "RetriesExhausted");
    assert!(
        failed.message.contains("shard 0 failed 3 times") && failed.message.contains("exit code 1"),
        "{}",
        failed.message
    );
    // The live pod of shard 1 is stopped.
    assert!(w.pods.iter().all(|p| !p.live()));
}

#[test]
fn attempt_deadline_fails_the_attempt_and_job_deadline_fails_the_job() {
    let mut job = job(1, 1, json!({"timeouts": {"jobSeconds": 100, "attemptSeconds": 30}}));
    let mut w = World::default();
    let now = t0();
    let d = step(&mut job, &mut w, now);
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(30)));
    let d = step(&mut job, &mut w, now + SignedDuration::from_secs(30));
    assert_eq!(d.delete, vec!["j-0-1".to_string()]);
    assert_eq!(d.status.retrying[0].last_failure.as_ref().unwrap().reason, "AttemptDeadlineExceeded");
    let d = step(&mut job, &mut w, now + SignedDuration::from_secs(100));
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(d.status.conditions.iter().find(|c| c.type_ == "Failed").unwrap().reason, "DeadlineExceeded");
}

#[test]
fn a_worker_that_cannot_start_fails_its_attempt_and_is_retried() {
    let mut job = job(1, 1, json!({}));
    let mut w = World::default();
    let now = t0();
    step(&mut job, &mut w, now);
    // Pending and waiting on an image: nothing to judge yet.
    let d = step(&mut job, &mut w, now + SignedDuration::from_secs(1));
    assert!(d.delete.is_empty());
    w.pods[0].cannot_start = Some(Failure {
        reason: "ErrImagePull".into(),
        message: "container w cannot start: not found".into(),
        exit_code: None,
    });
    let d = step(&mut job, &mut w, now + SignedDuration::from_secs(2));
    assert_eq!(d.delete, vec!["j-0-1".to_string()]);
    let failure = d.status.retrying[0].last_failure.clone().unwrap();
    assert_eq!(
        (failure.reason.as_str(), failure.message.as_str()),
        ("ErrImagePull", "container w cannot start: not found")
    );
}

/// The job's condition of `type_`: (status, reason, lastTransitionTime).
fn condition(job: &BackgroundJob, type_: &str) -> Option<(String, String, Timestamp)> {
    let c = job.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.last_transition_time.0))
}

/// Decides with `refusal` observed, and applies the decision as the controller would.
fn step_refused(job: &mut BackgroundJob, w: &mut World, refusal: Option<&Refusal>, now: Timestamp) -> Decision {
    let d = decide(&Observed::new(job, &w.pods).refusal(refusal), now);
    w.apply(job, &d, now);
    d
}

#[test]
fn a_forbidden_pod_blocks_new_workers_for_a_while_and_the_condition_clears_after() {
    let mut job = job(3, 2, json!({}));
    let mut w = World::default();
    let forbidden = Refusal::Forbidden { message: "exceeded quota: pods".into(), at: t0() };
    let d = step_refused(&mut job, &mut w, Some(&forbidden), t0());
    assert!(d.create.is_empty(), "no worker starts while the API server forbids them");
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(FORBIDDEN_PAUSE_SECONDS as u64)));
    let blocked = condition(&job, "WorkersBlocked").unwrap();
    assert_eq!((blocked.0.as_str(), blocked.1.as_str()), ("True", "PodCreationForbidden"));
    // Still blocked 10 s later: the condition keeps its transition time.
    step_refused(&mut job, &mut w, Some(&forbidden), at(10));
    assert_eq!(condition(&job, "WorkersBlocked").unwrap().2, t0());
    // The pause is over: workers start (and the condition holds until a create succeeds).
    let d = step_refused(&mut job, &mut w, Some(&forbidden), at(FORBIDDEN_PAUSE_SECONDS));
    assert_eq!(d.create.len(), 2);
    assert_eq!(condition(&job, "WorkersBlocked").unwrap().0, "True");
    // A create succeeded: the controller forgets the refusal, and the condition turns False.
    step_refused(&mut job, &mut w, None, at(FORBIDDEN_PAUSE_SECONDS + 1));
    let cleared = condition(&job, "WorkersBlocked").unwrap();
    assert_eq!((cleared.0.as_str(), cleared.1.as_str()), ("False", "PodCreationAllowed"));
    assert_eq!(cleared.2, at(FORBIDDEN_PAUSE_SECONDS + 1));
}

/// A Lease (or the workers' RBAC) of the job's name that is someone else's: no worker starts,
/// the condition and one event say which object, and the job tries again after the pause.
#[test]
fn an_object_not_owned_holds_the_workers_back_and_says_which() {
    let mut job = job(3, 2, json!({}));
    let mut w = World::default();
    let message = "Lease j-0 exists and belongs to something else (holder other-app)".to_string();
    let not_owned = Refusal::NotOwned { message: message.clone(), at: t0() };
    let d = step_refused(&mut job, &mut w, Some(&not_owned), t0());
    assert!(d.create.is_empty(), "no worker starts beside someone else's object");
    assert_eq!(job.status.as_ref().unwrap().phase, Some(Phase::Running), "the job waits; it does not fail");
    let c = job.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "WorkersBlocked").unwrap().clone();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
        ("True", "ObjectNotOwned", message.as_str())
    );
    let said: Vec<&EventNote> = d.events.iter().filter(|e| e.reason == EventReason::ObjectNotOwned).collect();
    assert_eq!(said.len(), 1);
    assert!(said[0].warning && said[0].note == message);
    // Once: not again while it holds.
    let d = step_refused(&mut job, &mut w, Some(&not_owned), at(10));
    assert!(!d.events.iter().any(|e| e.reason == EventReason::ObjectNotOwned));
    assert!(d.create.is_empty());
    // The pause is over: it tries again.
    assert_eq!(step_refused(&mut job, &mut w, Some(&not_owned), at(FORBIDDEN_PAUSE_SECONDS)).create.len(), 2);
}

#[test]
fn an_invalid_pod_fails_the_job_with_the_api_servers_message() {
    let mut job = job(3, 2, json!({}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    let invalid = Refusal::Invalid { message: "the API server refused worker pod j-2-1: spec.x: Invalid".into() };
    let d = step_refused(&mut job, &mut w, Some(&invalid), at(1));
    assert_eq!(job.status.as_ref().unwrap().phase, Some(Phase::Failed));
    assert_eq!(condition(&job, "Failed").unwrap().1, "InvalidPodTemplate");
    assert_eq!(d.delete.len(), 2, "the workers that did start are stopped");
    assert!(d.events.iter().any(|e| e.reason == EventReason::Failed && e.note.contains("spec.x: Invalid")));
}

#[test]
fn a_job_asking_for_the_agent_fails_when_the_operator_has_no_agent_image() {
    let mut job = job(2, 2, json!({"heartbeat": {"injectAgent": true}}));
    let d = decide(&Observed::new(&job, &[]).agent_image(false), t0());
    assert!(d.create.is_empty());
    job.status = Some(d.status);
    assert_eq!(condition(&job, "Failed").unwrap().1, "AgentImageUnset");
    // With an image, the same job starts its workers.
    job.status = None;
    assert_eq!(decide(&Observed::new(&job, &[]), t0()).create.len(), 2);
}

mod outcomes;

#[test]
fn suspend_stops_workers_keeps_progress_and_resume_continues() {
    let mut job = job(4, 2, json!({}));
    let mut w = World::default();
    let now = t0();
    step(&mut job, &mut w, now);
    finish(&mut w, "j-0-1", true);
    step(&mut job, &mut w, now);
    job.spec.suspend = true;
    let d = step(&mut job, &mut w, now);
    assert_eq!(d.status.phase, Some(Phase::Suspended));
    assert_eq!(d.delete.len(), 2);
    step(&mut job, &mut w, now);
    assert!(w.pods.iter().all(|p| !p.live()));
    assert_eq!(job.status.as_ref().unwrap().succeeded_shards.as_deref(), Some("0"));
    // Resumed while the stopped workers still exit: their shards wait (they may checkpoint);
    // the shard never started does not.
    job.spec.suspend = false;
    assert_eq!(step(&mut job, &mut w, now + SignedDuration::from_secs(1)).create, vec![(3, 1)]);
    job.spec.suspend = true;
    step(&mut job, &mut w, now + SignedDuration::from_secs(1));
    for name in ["j-1-1", "j-2-1", "j-3-1"] {
        stop(&mut w, name);
    }
    step(&mut job, &mut w, now + SignedDuration::from_secs(2));
    job.spec.suspend = false;
    let d = step(&mut job, &mut w, now + SignedDuration::from_secs(5));
    assert_eq!(d.status.phase, Some(Phase::Running));
    // The interrupted shards run again as new attempts, with no failure counted.
    assert_eq!(d.create, vec![(1, 2), (2, 2)]);
    assert!(d.status.active.iter().all(|a| a.failures == 0));
    assert_eq!(d.status.retrying.iter().map(|r| r.shard).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn a_pod_created_before_a_crash_is_adopted_not_duplicated() {
    let job = job(3, 3, json!({}));
    let mut w = World::default();
    let now = t0();
    let d = decide(&Observed::new(&job, &w.pods), now);
    // The pods were created, but the status write was lost.
    w.apply(&mut job.clone(), &d, now);
    let d = decide(&Observed::new(&job, &w.pods), now);
    assert_eq!(d.status.active.len(), 3);
    assert!(d.create.is_empty(), "{:?}", d.create);
}

#[test]
fn finished_job_releases_pods_and_deletes_after_ttl() {
    let mut job = job(1, 1, json!({"ttlSecondsAfterFinished": 60}));
    let mut w = World::default();
    let now = t0();
    step(&mut job, &mut w, now);
    finish(&mut w, "j-0-1", true);
    let d = step(&mut job, &mut w, now);
    assert_eq!(d.status.phase, Some(Phase::Succeeded));
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(60)));
    assert!(!step(&mut job, &mut w, now + SignedDuration::from_secs(59)).delete_job);
    assert!(step(&mut job, &mut w, now + SignedDuration::from_secs(60)).delete_job);
}

#[test]
fn backoff_grows_and_is_capped() {
    let b = Backoff { initial_seconds: 10, factor: 2.0, max_seconds: 60 };
    let waits: Vec<i64> = (1..=6).map(|n| backoff_seconds(&b, n)).collect();
    assert_eq!(waits, vec![10, 20, 40, 60, 60, 60]);
}

#[derive(Clone, Debug)]
enum WorldEvent {
    Start(usize),
    Succeed(usize),
    Fail(usize),
    Delete(usize),
    Evict(usize),
    Wait(i64),
    Suspend(bool),
}

fn world_event() -> impl Strategy<Value = WorldEvent> {
    prop_oneof![
        3 => (0..8usize).prop_map(WorldEvent::Start),
        4 => (0..8usize).prop_map(WorldEvent::Succeed),
        2 => (0..8usize).prop_map(WorldEvent::Fail),
        1 => (0..8usize).prop_map(WorldEvent::Delete),
        1 => (0..8usize).prop_map(WorldEvent::Evict),
        2 => (0..120i64).prop_map(WorldEvent::Wait),
        1 => any::<bool>().prop_map(WorldEvent::Suspend),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_under_any_worker_behaviour(
        shards in 1..12i32,
        max in 1..4i32,
        limit in 0..3i32,
        initial in 0..6i64,
        events in prop::collection::vec(world_event(), 0..80),
        fold in any::<bool>(),
    ) {
        let mut job = job(shards, max, json!({"retry": {"limit": limit, "backoff": {"initialSeconds": initial, "factor": 2, "maxSeconds": 30}}}));
        let mut w = World { fold, ..World::default() };
        let mut now = t0();
        step(&mut job, &mut w, now);
        for event in events {
            let live: Vec<String> = w.pods.iter().filter(|p| p.live()).map(|p| p.name.clone()).collect();
            let pick = |i: usize| live.get(i % live.len().max(1)).cloned();
            match event {
                WorldEvent::Start(i) => if let Some(n) = pick(i) { w.pods.iter_mut().find(|p| p.name == n).unwrap().phase = PodPhase::Running },
                WorldEvent::Succeed(i) => if let Some(n) = pick(i) { finish(&mut w, &n, true) },
                WorldEvent::Fail(i) => if let Some(n) = pick(i) { finish(&mut w, &n, false) },
                WorldEvent::Delete(i) => if let Some(n) = pick(i) { delete(&mut w, &n, now) },
                WorldEvent::Evict(i) => if let Some(n) = pick(i) { evict(&mut w, &n, now) },
                WorldEvent::Wait(s) => now += SignedDuration::from_secs(s),
                WorldEvent::Suspend(s) => job.spec.suspend = s,
            }
            let d = step(&mut job, &mut w, now);
            let live = w.pods.iter().filter(|p| p.live()).count() as i32;
            prop_assert!(live <= max, "{} live pods with workers.max {}", live, max);
            // Failures recorded never exceed the limit for a shard still retrying.
            for r in &d.status.retrying {
                prop_assert!(r.failures <= limit);
            }
        }
        // Then every worker succeeds: the job finishes, with exact counts, and lets go of every pod.
        job.spec.suspend = false;
        for _ in 0..(4 * shards + 10) {
            now += SignedDuration::from_secs(60);
            let live: Vec<String> = w.pods.iter().filter(|p| p.live()).map(|p| p.name.clone()).collect();
            for n in live { finish(&mut w, &n, true); }
            step(&mut job, &mut w, now);
        }
        step(&mut job, &mut w, now);
        let status = job.status.clone().unwrap();
        let phase = status.phase.unwrap();
        prop_assert!(phase.is_finished(), "phase {:?}", phase);
        let s = status.shards.unwrap();
        if phase == Phase::Succeeded {
            prop_assert_eq!(s.succeeded, shards);
        } else {
            prop_assert!(s.failed >= 1 || status.conditions.iter().any(|c| c.reason == "DeadlineExceeded"));
        }
        prop_assert!(w.pods.iter().all(|p| !p.tracked), "a finalizer was never released");
        prop_assert!(w.max_live_seen as i32 <= max);
    }
}

mod bounded;
mod heartbeats;
mod results;

proptest! {
    #[test]
    fn an_estimate_is_never_before_now_and_never_divides_by_zero(
        elapsed in 0..1_000_000i64,
        fraction in prop_oneof![Just(0.0), Just(1.0), Just(f64::NAN), 0.0..=1.0f64, -1.0..2.0f64],
    ) {
        let now = t0() + SignedDuration::from_secs(elapsed);
        if let Some(eta) = super::summary::estimate(t0(), fraction, now) {
            prop_assert!(eta >= now);
            prop_assert!(fraction >= super::summary::ESTIMATE_AFTER_FRACTION && elapsed >= super::summary::ESTIMATE_AFTER_SECONDS);
            // The same rate: the time left is the time so far, scaled by what is left.
            let left = eta.duration_since(now).as_secs_f64();
            let expected = elapsed as f64 * (1.0 - fraction) / fraction;
            prop_assert!((left - expected).abs() <= 1.0, "left {} expected {}", left, expected);
        } else {
            prop_assert!(fraction.is_nan() || !(super::summary::ESTIMATE_AFTER_FRACTION..=1.0).contains(&fraction) || elapsed < super::summary::ESTIMATE_AFTER_SECONDS);
        }
    }
}

#[test]
fn workers_turning_ready_are_folded_not_written_at_once() {
    let mut job = job(3, 3, json!({}));
    let mut w = World::default();
    let d = step(&mut job, &mut w, t0());
    assert!(d.folded, "the admission write counts as a fold");
    for p in w.pods.iter_mut() {
        p.phase = PodPhase::Running;
        p.ready = true;
        p.running_since = Some(t0());
    }
    fn observe<'a>(job: &'a BackgroundJob, pods: &'a [PodView], last_fold: Option<Timestamp>) -> Observed<'a> {
        Observed::new(job, pods).last_fold(last_fold)
    }
    // Within four fold periods, readiness alone writes nothing and looks again when they are over.
    let d = decide(&observe(&job, &w.pods, Some(t0())), t0() + SignedDuration::from_secs(5));
    assert_eq!(Some(&d.status), job.status.as_ref(), "readiness alone is not written within the period");
    assert!(!d.folded);
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(55)));
    let d = decide(&observe(&job, &w.pods, Some(t0())), t0() + SignedDuration::from_secs(15));
    assert_eq!(Some(&d.status), job.status.as_ref(), "nor at the first fold instant");
    // After them, it is.
    let d = decide(&observe(&job, &w.pods, Some(t0())), t0() + SignedDuration::from_secs(60));
    assert!(d.folded);
    assert_eq!(d.status.workers.as_ref().map(|w| w.ready), Some(3));
    // Without a recent write (after a restart) it is written at once.
    let d = decide(&observe(&job, &w.pods, None), t0() + SignedDuration::from_secs(5));
    assert_eq!(d.status.workers.as_ref().map(|w| w.ready), Some(3));
    // A shard failing is written at once, with the readiness of the others.
    finish(&mut w, "j-0-1", false);
    let d = decide(&observe(&job, &w.pods, Some(t0())), t0() + SignedDuration::from_secs(5));
    assert!(d.folded);
    assert_eq!(d.status.retrying.len(), 1);
    assert_eq!(d.status.workers.as_ref().map(|w| w.ready), Some(2));
}

#[test]
fn a_shard_done_while_its_job_runs_on_waits_for_the_next_fold() {
    fn observe<'a>(job: &'a BackgroundJob, pods: &'a [PodView], last_fold: Option<Timestamp>) -> Observed<'a> {
        Observed::new(job, pods).last_fold(last_fold)
    }
    let at = |s: i64| t0() + SignedDuration::from_secs(s);
    let mut job = job(3, 3, json!({}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    finish(&mut w, "j-0-1", true);
    let d = decide(&observe(&job, &w.pods, Some(t0())), at(5));
    assert_eq!(Some(&d.status), job.status.as_ref(), "one shard of three done: no write of its own");
    assert!(d.release.is_empty(), "its finalizer stays until the outcome is written");
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(10)));
    // Without a recent write (after a restart, or when the period is over) it is written at once.
    let d = decide(&observe(&job, &w.pods, None), at(5));
    assert_eq!(d.status.shards.as_ref().map(|s| s.succeeded), Some(1));
    assert_eq!(d.release, vec!["j-0-1".to_string()]);
    let d = decide(&observe(&job, &w.pods, Some(t0())), at(15));
    assert_eq!(d.status.shards.as_ref().map(|s| s.succeeded), Some(1));
    // The last one finishes the job: one write records all three and releases every pod.
    finish(&mut w, "j-1-1", true);
    finish(&mut w, "j-2-1", true);
    let d = decide(&observe(&job, &w.pods, Some(t0())), at(6));
    assert_eq!(d.status.phase, Some(Phase::Succeeded));
    assert_eq!(d.release.len(), 3);

    // A shard that frees a worker for a waiting shard is written at once, with the new pod.
    let mut job = self::job(5, 3, json!({}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    finish(&mut w, "j-0-1", true);
    let d = decide(&observe(&job, &w.pods, Some(t0())), at(5));
    assert_eq!(d.create, vec![(3, 1)]);
    assert_eq!(d.status.shards.as_ref().map(|s| s.succeeded), Some(1));
    // A failure is never held back.
    let mut job = self::job(3, 3, json!({}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    finish(&mut w, "j-0-1", false);
    let d = decide(&observe(&job, &w.pods, Some(t0())), at(5));
    assert_ne!(Some(&d.status), job.status.as_ref());
}

#[test]
fn a_chained_job_waits_queued_then_starts_once_its_dependency_succeeded() {
    use crate::jobs::chain::Chain;
    let mut job = job(2, 2, json!({"after": ["load-catalog"]}));
    let w = World::default();
    let running = Chain { phases: [("load-catalog".to_string(), Phase::Running)].into(), cycle: None };
    let d = decide(&Observed::new(&job, &w.pods).chain(Some(&running)), t0());
    assert!(d.create.is_empty(), "no worker before load-catalog succeeded");
    assert_eq!(d.status.phase, Some(Phase::Queued));
    assert!(d.status.start_time.is_none());
    job.status = Some(d.status);
    let (status, reason, _) = condition(&job, "Admitted").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "WaitingForDependencies"));
    let done = Chain { phases: [("load-catalog".to_string(), Phase::Succeeded)].into(), cycle: None };
    let d = decide(&Observed::new(&job, &w.pods).chain(Some(&done)), at(30));
    assert_eq!(d.create, vec![(0, 1), (1, 1)]);
    assert_eq!(d.status.phase, Some(Phase::Running));
    // Once started, the chain is not judged again: a dependency failing later changes nothing.
    job.status = Some(d.status);
    let failed = Chain { phases: [("load-catalog".to_string(), Phase::Failed)].into(), cycle: None };
    let d = decide(&Observed::new(&job, &w.pods).chain(Some(&failed)), at(31));
    assert_eq!(d.status.phase, Some(Phase::Running));
}

#[test]
fn a_job_that_waits_for_one_thing_then_another_says_each_in_a_queued_event() {
    use crate::jobs::chain::Chain;
    let mut job = job(1, 1, json!({"after": ["load-catalog"], "templateRef": {"name": "t"}}));
    // Waiting for its template: one Queued event, and none on the next look.
    let d = decide(&Observed::new(&job, &[]), t0());
    let queued = |d: &Decision| d.events.iter().filter(|e| e.reason == EventReason::Queued).count();
    assert_eq!(queued(&d), 1);
    // Each relates to what it waits for: the event recorder folds events of one reason and
    // related object into one series that keeps the first note.
    use crate::Related;
    assert_eq!(d.events[0].related, Some(Related::Template("t".into())));
    job.status = Some(d.status);
    assert_eq!(queued(&decide(&Observed::new(&job, &[]), at(1))), 0);
    // Resolved, it waits for load-catalog: a second Queued event, naming it.
    job.metadata.annotations = Some([(nightshift_api::ANNOTATION_TEMPLATE.to_string(), "t/1".to_string())].into());
    let running = Chain { phases: [("load-catalog".to_string(), Phase::Running)].into(), cycle: None };
    let d = decide(&Observed::new(&job, &[]).chain(Some(&running)), at(2));
    let notes: Vec<(&str, Option<Related>)> = d
        .events
        .iter()
        .filter(|e| e.reason == EventReason::Queued)
        .map(|e| (e.note.as_str(), e.related.clone()))
        .collect();
    assert_eq!(notes, [("waiting for load-catalog (Running) to succeed", Some(Related::Job("load-catalog".into())))]);
}
