//! Heartbeats, progress, the estimate and the fold.

use super::*;
use nightshift_api::ShardProgress;

fn hb_job(stall: Option<i32>) -> BackgroundJob {
    let mut hb = json!({"intervalSeconds": 2, "timeoutSeconds": 10});
    if let Some(s) = stall {
        hb["stallSeconds"] = s.into();
    }
    job(1, 1, json!({"heartbeat": hb}))
}

/// The job after its first step, with its pod Running since `t0()`.
fn started(job: &mut BackgroundJob) -> Vec<PodView> {
    let mut w = World::default();
    step(job, &mut w, t0());
    let mut pods = w.pods;
    pods[0].phase = PodPhase::Running;
    pods[0].running_since = Some(t0());
    pods
}

fn lease(renewed: Option<i64>, progress: Option<(i64, i64, i64)>) -> LeaseView {
    LeaseView {
        shard: 0,
        holder: Some("j-0-1".into()),
        last_renewal: renewed.map(|s| t0() + SignedDuration::from_secs(s)),
        progress: progress.map(|(done, total, _)| ShardProgress { done, total, message: "rows".into() }),
        progress_since: progress.map(|(_, _, at)| t0() + SignedDuration::from_secs(at)),
        result: None,
        renewal_stamp_at_first_sight: None,
    }
}

#[test]
fn a_silent_worker_fails_with_heartbeat_timeout() {
    let mut job = hb_job(None);
    let pods = started(&mut job);
    let d = decide(&Observed::new(&job, &pods), at(9));
    assert!(d.delete.is_empty());
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(1)));
    let d = decide(&Observed::new(&job, &pods), at(10));
    assert_eq!(d.delete, vec!["j-0-1".to_string()]);
    let failure = d.status.retrying[0].last_failure.clone().unwrap();
    assert_eq!(failure.reason, "HeartbeatTimeout");
    assert!(failure.message.contains("no heartbeat for 10s"), "{}", failure.message);
}

/// A new leader (started at 6 s) finds the pod running and a Lease whose renewal the API server
/// stamped in the second 4 s (4.0 to 4.999), and sees no renewal after: the timeout (10 s) runs
/// from that second's end, 5 s, not from when it first saw either, and never from 4 s (up to a
/// second early).
#[test]
fn a_new_leader_counts_a_renewal_it_found_from_the_servers_stamp() {
    let mut job = hb_job(None);
    let mut pods = started(&mut job);
    pods[0].running_since = Some(at(6));
    let found = |stamped: i64| LeaseView { renewal_stamp_at_first_sight: Some(at(stamped)), ..lease(Some(6), None) };
    let d = decide(&Observed::new(&job, &pods).leases(&[found(4)]), at(14));
    assert!(d.delete.is_empty());
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(1)));
    let d = decide(&Observed::new(&job, &pods).leases(&[found(4)]), at(15));
    assert_eq!(d.delete, vec!["j-0-1".to_string()]);
    // A stamp after the first sight (the operator's clock behind the server's): a full timeout
    // from the first sight, no more.
    assert!(decide(&Observed::new(&job, &pods).leases(&[found(3600)]), at(15)).delete.is_empty());
    assert_eq!(decide(&Observed::new(&job, &pods).leases(&[found(3600)]), at(16)).delete.len(), 1);
    // A renewal seen since counts when it was seen: the stamp no longer matters.
    let seen = LeaseView { renewal_stamp_at_first_sight: None, ..found(-3600) };
    assert!(decide(&Observed::new(&job, &pods).leases(&[seen]), at(15)).delete.is_empty());
    // A stamp from before the attempt started is no renewal of it: the timeout runs from its start.
    assert!(decide(&Observed::new(&job, &pods).leases(&[found(-3600)]), at(9)).delete.is_empty());
    assert_eq!(decide(&Observed::new(&job, &pods).leases(&[found(-3600)]), at(10)).delete.len(), 1);
}

/// Renewals are seen to the nanosecond and judged so: a worker last seen at 8.3 s (timeout 10 s)
/// is alive at 18.2 s and failed at 18.3 s, not at 19; the step at 18.2 asks to look again at
/// 18.3 (counted, like every wait, from the whole second it judged at). The status holds whole
/// seconds, as if decided at 18 s, so that it compares equal when read back.
#[test]
fn a_silent_worker_fails_the_instant_its_timeout_passes() {
    let mut job = hb_job(None);
    let pods = started(&mut job);
    let ms = |ms: i64| t0() + SignedDuration::from_millis(ms);
    let leases = [LeaseView { last_renewal: Some(ms(8_300)), ..lease(None, None) }];
    let d = decide(&Observed::new(&job, &pods).leases(&leases), ms(18_200));
    assert!(d.delete.is_empty());
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_millis(300)));
    assert_eq!(d.status.last_heartbeat_time.as_ref().unwrap().0, at(8));
    assert_eq!(d.status, decide(&Observed::new(&job, &pods).leases(&leases), at(18)).status);
    let d = decide(&Observed::new(&job, &pods).leases(&leases), ms(18_300));
    assert_eq!(d.delete, vec!["j-0-1".to_string()]);
    assert_eq!(d.status.retrying[0].last_failure.as_ref().unwrap().reason, "HeartbeatTimeout");
    // The retry's backoff counts from the whole second the failure was judged in.
    assert_eq!(d.status.retrying[0].next_retry_time.as_ref().unwrap().0, at(28));
}

#[test]
fn renewals_keep_a_worker_alive_and_reach_the_status() {
    let mut job = hb_job(None);
    let pods = started(&mut job);
    let leases = [lease(Some(8), Some((40, 100, 8)))];
    let d = decide(&Observed::new(&job, &pods).leases(&leases), at(15));
    assert!(d.delete.is_empty(), "{:?}", d.delete);
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(3)));
    assert!(d.folded);
    let active = &d.status.active[0];
    assert_eq!(active.last_heartbeat_time.as_ref().unwrap().0, at(8));
    assert_eq!(active.progress.as_ref().unwrap().done, 40);
    let progress = d.status.progress.clone().unwrap();
    assert_eq!((progress.done, progress.total, progress.percent, progress.message.as_str()), (40, 100, 40, "rows"));
    assert_eq!(d.status.last_heartbeat_time.as_ref().unwrap().0, at(8));
}

#[test]
fn a_lease_held_by_another_attempt_is_no_heartbeat() {
    let mut job = hb_job(None);
    let pods = started(&mut job);
    let mut other = lease(Some(9), None);
    other.holder = Some("j-0-0".into());
    let d = decide(&Observed::new(&job, &pods).leases(&[other]), at(10));
    assert_eq!(d.status.retrying[0].last_failure.as_ref().unwrap().reason, "HeartbeatTimeout");
}

#[test]
fn heartbeats_without_progress_fail_as_stalled() {
    let mut job = hb_job(Some(30));
    let pods = started(&mut job);
    let leases = [lease(Some(29), Some((5, 100, 0)))];
    let d = decide(&Observed::new(&job, &pods).leases(&leases), at(29));
    assert!(d.delete.is_empty());
    let leases = [lease(Some(30), Some((5, 100, 0)))];
    let d = decide(&Observed::new(&job, &pods).leases(&leases), at(30));
    let failure = d.status.retrying[0].last_failure.clone().unwrap();
    assert_eq!(failure.reason, "Stalled");
}

#[test]
fn a_pod_not_yet_running_is_not_timed_out() {
    let mut job = hb_job(None);
    let mut pods = started(&mut job);
    pods[0].phase = PodPhase::Pending;
    let d = decide(&Observed::new(&job, &pods), at(600));
    assert!(d.delete.is_empty());
}

/// A heartbeat job running, its status folded at t0+10 with the renewal of t0+10.
fn folded_at_10() -> (BackgroundJob, Vec<PodView>) {
    let mut job = hb_job(None);
    let pods = started(&mut job);
    let leases = [lease(Some(10), Some((10, 100, 10)))];
    let d = decide(&Observed::new(&job, &pods).leases(&leases), at(10));
    job.status = Some(d.status);
    (job, pods)
}

#[test]
fn heartbeats_alone_write_the_status_at_most_once_per_fold_period() {
    let (job, pods) = folded_at_10();
    // New renewals and progress within the period: the status stays as it is.
    let leases = [lease(Some(20), Some((30, 100, 20)))];
    let d = decide(&Observed::new(&job, &pods).leases(&leases).last_fold(Some(at(10))), at(20));
    assert_eq!(Some(&d.status), job.status.as_ref(), "nothing written within the period");
    assert!(!d.folded);
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(5)));
    // Once the period is over, they are folded in.
    let leases = [lease(Some(24), Some((40, 100, 24)))];
    let d = decide(&Observed::new(&job, &pods).leases(&leases).last_fold(Some(at(10))), at(25));
    assert!(d.folded);
    assert_eq!(d.status.progress.unwrap().done, 40);
    // A worker turning ready rides along with the heartbeats' fold (alone it waits four periods).
    let mut ready = pods.clone();
    ready[0].ready = true;
    let d = decide(&Observed::new(&job, &ready).leases(&leases).last_fold(Some(at(10))), at(25));
    assert_eq!(job.status.as_ref().and_then(|s| s.workers.as_ref()).map(|w| w.ready), Some(0));
    assert_eq!(d.status.workers.as_ref().map(|w| w.ready), Some(1));
}

#[test]
fn job_progress_counts_finished_shards_and_partial_ones() {
    let mut job = job(4, 2, json!({"heartbeat": {"timeoutSeconds": 100}}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    finish(&mut w, "j-0-1", true);
    step(&mut job, &mut w, t0());
    // Shard 0 done (its worker reported 100/100); shards 1 and 2 run at 50% and 25%.
    let progress = |shard, done, holder: &str| LeaseView {
        shard,
        holder: Some(holder.into()),
        last_renewal: Some(t0()),
        progress: Some(ShardProgress { done, total: 100, message: String::new() }),
        progress_since: Some(t0()),
        result: Some(json!({"created": done, "errors": [format!("e{shard}")]})),
        renewal_stamp_at_first_sight: None,
    };
    let leases = [progress(0, 100, "j-0-1"), progress(1, 50, "j-1-1"), progress(2, 25, "j-2-1")];
    let d = decide(&Observed::new(&job, &w.pods).leases(&leases), t0());
    let p = d.status.progress.unwrap();
    assert_eq!((p.done, p.total, p.percent), (175, 300, 43)); // (1 + 0.5 + 0.25) / 4
    // The result holds what the shards that succeeded reported, not work in progress.
    assert_eq!(d.status.result, Some(json!({"created": 100, "errors": ["e0"]})));
    assert_eq!(d.status.result_shards.as_deref(), Some("0"));
}

/// Decides for a 1-shard heartbeat job (deadline 100 s) whose worker reports `done`/100 at
/// `now`, and records the status as the controller would.
fn report(job: &mut BackgroundJob, pods: &[PodView], done: i64, now: i64) -> Decision {
    let leases = [lease(Some(now), Some((done, 100, now)))];
    let d = decide(&Observed::new(job, pods).leases(&leases), at(now));
    job.status = Some(d.status.clone());
    d
}

#[test]
fn the_estimate_follows_the_progress_and_costs_no_write_of_its_own() {
    let mut job = hb_job(None);
    job.spec.heartbeat.as_mut().unwrap().timeout_seconds = 1000;
    let pods = started(&mut job);
    let d = report(&mut job, &pods, 50, 5);
    assert_eq!(d.status.estimated_completion_time, None, "too early: less than 10 s run");
    let d = report(&mut job, &pods, 25, 20);
    assert_eq!(d.status.estimated_completion_time.map(|t| t.0), Some(at(80)), "25% in 20 s: 60 s more");
    // Nothing new from the worker: the status stays as it is, estimate included.
    let prev = job.status.clone().unwrap();
    let leases = [lease(Some(20), Some((25, 100, 20)))];
    let d = decide(&Observed::new(&job, &pods).leases(&leases), at(30));
    assert_eq!(d.status, prev, "an estimate alone is never a write");
    // A stalled worker that still heartbeats: the next write carries a later estimate.
    let d = report(&mut job, &pods, 25, 50);
    assert_eq!(d.status.estimated_completion_time.map(|t| t.0), Some(at(200)));
}

#[test]
fn deadline_at_risk_turns_true_once_with_one_event_and_clears() {
    let mut job = job(1, 1, json!({"heartbeat": {"timeoutSeconds": 1000}, "timeouts": {"jobSeconds": 100}}));
    let pods = started(&mut job);
    let risk = |job: &BackgroundJob| {
        let c = job.status.as_ref()?.conditions.iter().find(|c| c.type_ == "DeadlineAtRisk")?;
        Some((c.status.clone(), c.reason.clone()))
    };
    let d = report(&mut job, &pods, 10, 20); // 10% in 20 s: done at 200 s, deadline 100 s
    assert_eq!(risk(&job), Some(("True".into(), "EstimatePastDeadline".into())));
    let warnings = |d: &Decision| d.events.iter().filter(|e| e.reason == EventReason::DeadlineAtRisk).count();
    assert_eq!(warnings(&d), 1);
    let d = report(&mut job, &pods, 15, 40); // still late (done at ~267 s): no second event
    assert_eq!((risk(&job).unwrap().0.as_str(), warnings(&d)), ("True", 0));
    report(&mut job, &pods, 90, 50); // done at ~56 s
    assert_eq!(risk(&job), Some(("False".into(), "EstimateWithinDeadline".into())));
}

#[test]
fn a_change_seen_long_after_the_last_fold_waits_for_the_fold_grid() {
    let (job, pods) = folded_at_10();
    // Last fold at 10, every 15 s: 25, 40, 55, ... A change seen at 47 waits for 55 (with the
    // changes seen by then), not written at once and the next one a period later.
    let leases = [lease(Some(46), Some((50, 100, 46)))];
    let observed = Observed::new(&job, &pods).leases(&leases).last_fold(Some(at(10)));
    let d = decide(&observed, at(47));
    assert!(!d.folded, "held until the grid");
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(8)));
    // At 55, or a reconcile woken a second late for it, it is written.
    assert!(decide(&observed, at(55)).folded);
    assert!(decide(&observed, at(56)).folded);
    // Within the first period, as before: written when it is over.
    let d = decide(&observed, at(20));
    assert!(!d.folded);
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(5)));
}
