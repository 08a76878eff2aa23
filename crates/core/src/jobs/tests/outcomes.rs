//! How attempts end: disruptions, cancel, a subset of shards, exit-code rules.

use serde_json::json;

use super::*;

#[test]
fn an_evicted_worker_runs_again_at_once_and_uses_no_retry() {
    let mut job = job(1, 1, json!({"retry": {"limit": 0, "disruptionLimit": 2}}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    evict(&mut w, "j-0-1", at(1));
    let d = step(&mut job, &mut w, at(1));
    assert_eq!(d.create, vec![], "the next attempt waits while the evicted worker stops (it may checkpoint)");
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(30)), "at most its grace period");
    let event = d.events.iter().find(|e| e.reason == EventReason::AttemptDisrupted).expect("an AttemptDisrupted event");
    assert!(event.note.contains("EvictionByEvictionAPI") && event.note.contains("no retry used"), "{}", event.note);
    assert_eq!(d.release, vec!["j-0-1".to_string()], "the evicted pod is let go of");
    stop(&mut w, "j-0-1");
    let d = step(&mut job, &mut w, at(2));
    assert_eq!(d.create, vec![(0, 2)], "the next attempt starts as soon as it stopped, no backoff");
    let s = job.status.clone().unwrap();
    assert_eq!((s.active[0].failures, s.active[0].disruptions, s.disruptions), (0, 1, 1));
    assert_eq!(s.phase, Some(Phase::Running), "retry.limit 0, and the job goes on");
    assert!(!d.events.iter().any(|e| e.reason == EventReason::AttemptDisrupted), "the disruption was recorded once");
    // A second disruption is still free, and a worker that never reports stopping (its node is
    // gone) holds the next attempt only until its grace period ends; the third is past
    // disruptionLimit and counts as a failure.
    evict(&mut w, "j-0-2", at(3));
    assert_eq!(step(&mut job, &mut w, at(32)).create, vec![]);
    assert_eq!(step(&mut job, &mut w, at(33)).create, vec![(0, 3)]);
    evict(&mut w, "j-0-3", at(34));
    step(&mut job, &mut w, at(34));
    let s = job.status.clone().unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(s.disruptions, 2);
    let failed = s.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert!(failed.message.contains("spec.retry.disruptionLimit"), "{}", failed.message);
}

#[test]
fn cancel_stops_every_worker_and_fails_the_job_keeping_its_record() {
    let mut job = job(4, 2, json!({}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    finish(&mut w, "j-0-1", true);
    step(&mut job, &mut w, at(1));
    job.spec.cancel = true;
    let d = step(&mut job, &mut w, at(2));
    assert_eq!(d.delete.len(), 2, "both live workers are stopped: {:?}", d.delete);
    assert!(d.create.is_empty());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(condition(&job, "Failed").unwrap().1, "Cancelled");
    assert_eq!(d.status.succeeded_shards.as_deref(), Some("0"), "what was done stays recorded");
    assert!(d.events.iter().any(|e| e.reason == EventReason::Failed && e.note.contains("spec.cancel")));
    // A queued job is cancelled as well.
    let mut queued = self::job(1, 1, json!({"cancel": true}));
    let d = step(&mut queued, &mut World::default(), t0());
    assert!(d.create.is_empty());
    assert_eq!(d.status.phase, Some(Phase::Failed));
}

#[test]
fn only_shards_runs_just_those_and_counts_just_those() {
    let mut job = job(10, 3, json!({"onlyShards": "2,5-6"}));
    let mut w = World::default();
    let d = step(&mut job, &mut w, t0());
    assert_eq!(d.create, vec![(2, 1), (5, 1), (6, 1)]);
    let counts = d.status.shards.clone().unwrap();
    assert_eq!((counts.total, counts.pending, counts.running), (3, 0, 3));
    for name in ["j-2-1", "j-5-1", "j-6-1"] {
        finish(&mut w, name, true);
    }
    let d = step(&mut job, &mut w, at(1));
    assert_eq!(d.status.phase, Some(Phase::Succeeded));
    assert_eq!(d.status.succeeded_shards.as_deref(), Some("2,5-6"));
    assert_eq!(d.status.progress.map(|p| p.percent), Some(100));
    let complete = d.status.conditions.iter().find(|c| c.type_ == "Complete").unwrap();
    assert_eq!(complete.message, "all 3 shards succeeded");
}

/// Shards that do not exist (a job the CRD's rule could not judge: its shards come from a
/// template) fail the job before it starts anything, rather than "succeed" with none run.
#[test]
fn only_shards_beyond_the_shards_fail_the_job_at_once() {
    let mut job = job(14, 3, json!({"onlyShards": "3,20-25"}));
    let d = decide(&Observed::new(&job, &[]), t0());
    job.status = Some(d.status.clone());
    assert!(d.create.is_empty());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    let (reason, message) = said(&job, "Failed");
    assert_eq!(reason, "InvalidOnlyShards");
    assert!(message.starts_with("spec.onlyShards names shards up to 25"), "{message}");
    assert!(message.contains("spec.shards is 14, so indexes run from 0 to 13"), "{message}");
}

/// The reason and message of the job's condition of this type.
fn said(job: &BackgroundJob, type_: &str) -> (String, String) {
    let c = job.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.reason.clone(), c.message.clone())
}

/// The worker exited with `code`, saying `message` last.
fn exit(world: &mut World, name: &str, code: i32, message: &str) {
    let p = world.pods.iter_mut().find(|p| p.name == name).unwrap();
    p.phase = PodPhase::Failed;
    p.failure = Some(Failure { reason: "Error".into(), message: message.into(), exit_code: Some(code) });
}

fn rules(allow_failed_shards: bool) -> serde_json::Value {
    json!({"retry": {"limit": 0, "backoff": {"initialSeconds": 7, "factor": 2, "maxSeconds": 60},
        "allowFailedShards": allow_failed_shards,
        "exitCodes": [{"codes": [2], "action": "FailJob"}, {"codes": [65], "action": "FailShard"}, {"codes": [75], "action": "Ignore"}]}})
}

#[test]
fn an_exit_code_rule_can_fail_the_job_at_once() {
    let mut job = job(3, 3, rules(false));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    exit(&mut w, "j-1-1", 2, "bad input: row 17");
    let d = step(&mut job, &mut w, at(1));
    assert_eq!(d.status.phase, Some(Phase::Failed));
    let (reason, message) = said(&job, "Failed");
    assert_eq!(reason, "ExitCodeRule");
    assert_eq!(
        message,
        "shard 1 attempt 1 exited with code 2, which spec.retry.exitCodes[0] (FailJob) says fails the job: exit code 2, \
         Error: bad input: row 17"
    );
    assert_eq!(d.delete.len(), 2, "the other workers are stopped");
    let failure = &d.status.shard_failures[0];
    assert_eq!(
        (failure.shard, failure.failure.exit_code, failure.rule.as_deref()),
        (1, Some(2), Some("spec.retry.exitCodes[0] (FailJob)"))
    );
}

#[test]
fn a_fail_shard_rule_fails_that_shard_alone_and_the_job_at_its_end_unless_allowed() {
    for allowed in [false, true] {
        let mut job = job(3, 3, rules(allowed));
        let mut w = World::default();
        step(&mut job, &mut w, t0());
        exit(&mut w, "j-1-1", 65, "row 17: not an email");
        let d = step(&mut job, &mut w, at(1));
        assert_eq!(d.status.phase, Some(Phase::Running), "the job goes on");
        assert!(d.create.is_empty(), "no retry of shard 1");
        assert_eq!(d.status.failed_shards.as_deref(), Some("1"));
        finish(&mut w, "j-0-1", true);
        finish(&mut w, "j-2-1", true);
        let d = step(&mut job, &mut w, at(2));
        assert_eq!(d.status.failed_shards.as_deref(), Some("1"));
        assert_eq!(d.status.shard_failures[0].rule.as_deref(), Some("spec.retry.exitCodes[1] (FailShard)"));
        if allowed {
            assert_eq!(d.status.phase, Some(Phase::Succeeded));
            let (_, message) = said(&job, "Complete");
            assert!(message.contains("2 of 3 shards succeeded; 1 failed (1)"), "{message}");
        } else {
            assert_eq!(d.status.phase, Some(Phase::Failed));
            let (reason, message) = said(&job, "Failed");
            assert_eq!(reason, "ShardsFailed");
            assert!(
                message.contains("shard 1 failed by spec.retry.exitCodes[1] (FailShard): exit code 65"),
                "{message}"
            );
        }
    }
}

#[test]
fn an_ignore_rule_retries_without_counting_and_a_disruption_is_never_judged() {
    let mut job = job(1, 1, rules(false));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    exit(&mut w, "j-0-1", 75, "database busy");
    let d = step(&mut job, &mut w, at(1));
    let r = &d.status.retrying[0];
    assert_eq!((r.failures, r.next_retry_time.as_ref().map(|t| t.0)), (0, Some(at(8))), "retry.limit 0, yet retried");
    assert_eq!(step(&mut job, &mut w, at(8)).create, vec![(0, 2)]);
    // Evicted, its worker exits 2 on SIGTERM: a disruption, not a FailJob.
    evict(&mut w, "j-0-2", at(9));
    exit(&mut w, "j-0-2", 2, "");
    let d = step(&mut job, &mut w, at(9));
    assert_eq!(d.status.phase, Some(Phase::Running));
    assert_eq!(d.status.disruptions, 1);
}
