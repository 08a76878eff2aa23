//! Tests of the schedule's pure core: cadence and tick (below), decide (`decide.rs`).

use super::*;
use nightshift_api::MAX_SCHEDULE_NAME_LENGTH;
use proptest::prelude::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn cad(schedule: &str, zone: Option<&str>) -> Cadence {
    Cadence::parse(schedule, zone).unwrap()
}

/// Wakes like the controller at each of `wakes`, applying every run; returns the runs.
fn drive(c: &Cadence, created: Timestamp, wakes: impl IntoIterator<Item = Timestamp>) -> Vec<Timestamp> {
    let mut runs: Vec<Timestamp> = vec![];
    for now in wakes {
        runs.extend(tick(c, runs.last().copied(), created, None, now).run);
    }
    runs
}

/// Every minute from `from` for `minutes` minutes, at second 7.
fn minutes(from: &str, minutes: i64) -> impl Iterator<Item = Timestamp> {
    let from = ts(from);
    (0..minutes).map(move |m| from + SignedDuration::from_secs(m * 60 + 7))
}

/// The schedule's times in (from, to], walked forward with `next_after`.
fn times(c: &Cadence, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
    std::iter::successors(c.next_after(from), |t| c.next_after(*t)).take_while(|t| *t <= to).collect()
}

#[test]
fn examples() {
    let every = cad("* * * * *", None);
    assert_eq!(every.next_after(ts("2025-01-01T10:00:00Z")), Some(ts("2025-01-01T10:01:00Z")));
    assert_eq!(every.next_after(ts("2025-01-01T10:00:30.5Z")), Some(ts("2025-01-01T10:01:00Z")));
    let hourly = cad("@hourly", None);
    assert_eq!(hourly.next_after(ts("2025-01-01T10:00:00Z")), Some(ts("2025-01-01T11:00:00Z")));
    assert_eq!(cad("@midnight", None).next_after(ts("2025-01-01T10:00:00Z")), Some(ts("2025-01-02T00:00:00Z")));
    // 02:30 in Berlin is 01:30 UTC in winter (CET) and 00:30 UTC in summer (CEST).
    let berlin = cad("30 2 * * *", Some("Europe/Berlin"));
    assert_eq!(berlin.next_after(ts("2025-01-15T00:00:00Z")), Some(ts("2025-01-15T01:30:00Z")));
    assert_eq!(berlin.next_after(ts("2025-07-15T00:00:00Z")), Some(ts("2025-07-15T00:30:00Z")));
    assert_eq!(job_name("nightly", ts("2025-01-01T10:00:00Z")), "nightly-28928760");
    // The last second jiff knows still fits 10 digits.
    let longest = job_name(&"n".repeat(MAX_SCHEDULE_NAME_LENGTH), Timestamp::MAX);
    assert_eq!(longest.len(), nightshift_api::crd::MAX_NAME_LENGTH);
}

#[test]
fn refusals_name_the_field() {
    for bad in ["61 * * * *", "0 * * * * *", "TZ=UTC * * * * *", "CRON_TZ=UTC 0 * * * *", "", "0 0 31 2 *", "@every 5m"]
    {
        let e = Cadence::parse(bad, None).unwrap_err();
        assert!(e.starts_with("spec.schedule: ") && e.contains("@hourly"), "{e}");
    }
    let e = Cadence::parse("61 * * * *", None).unwrap_err();
    assert!(
        e.contains("\"61 * * * *\" is not a cron schedule: Component error: Number out of bounds; use 5 fields"),
        "{e}"
    );
    for bad in ["Mars/Olympus", "", "Local"] {
        let e = Cadence::parse("@daily", Some(bad)).unwrap_err();
        assert!(e.starts_with("spec.timeZone: ") && e.contains("IANA"), "{e}");
    }
}

#[test]
fn cronjob_catch_up_and_deadline() {
    let hourly = cad("@hourly", None);
    let created = ts("2025-01-01T09:30:00Z");
    let last = Some(ts("2025-01-01T10:00:00Z"));
    // Down from 10:05 to 13:10: 11:00 and 12:00 are missed, 13:00 is run late.
    let t = tick(&hourly, last, created, None, ts("2025-01-01T13:10:00Z"));
    assert_eq!(t, Tick { run: Some(ts("2025-01-01T13:00:00Z")), missed: 2, next: Some(ts("2025-01-01T14:00:00Z")) });
    // 13:00 is 20 minutes old, past a 600 s deadline: nothing in the window is considered.
    let t = tick(&hourly, last, created, Some(600), ts("2025-01-01T13:20:00Z"));
    assert_eq!((t.run, t.missed), (None, 0));
    // Within the deadline it still runs; nothing before `created` counts.
    let t = tick(&hourly, None, created, Some(600), ts("2025-01-01T10:09:00Z"));
    assert_eq!((t.run, t.missed), (Some(ts("2025-01-01T10:00:00Z")), 0));
    // Years down: the count stops at the limit.
    let t = tick(&cad("* * * * *", None), last, created, None, ts("2030-01-01T00:00:00Z"));
    assert_eq!((t.run, t.missed), (Some(ts("2030-01-01T00:00:00Z")), MISSED_COUNT_LIMIT));
}

// What croner does (README "DST handling", observed here): a fixed-time job whose time falls
// in a spring-forward gap runs once, at the first minute after the gap; in a fall-back
// overlap it runs once, on the first pass. Wildcard/step jobs run on every real occurrence
// of their wall clock time, so twice in a repeated hour.
#[test]
fn dst_in_new_york() {
    let ny = Some("America/New_York");
    // 2025-03-09: 02:00 EST jumps to 03:00 EDT, so 02:30 runs at 03:00 EDT (07:00 UTC).
    let spring = drive(&cad("30 2 * * *", ny), ts("2025-03-09T04:00:00Z"), minutes("2025-03-09T04:00:00Z", 24 * 60));
    assert_eq!(spring, [ts("2025-03-09T07:00:00Z")]);
    // 2025-11-02: 02:00 EDT falls back to 01:00 EST; 01:30 runs once, at 01:30 EDT.
    let fall = drive(&cad("30 1 * * *", ny), ts("2025-11-02T04:00:00Z"), minutes("2025-11-02T04:00:00Z", 24 * 60));
    assert_eq!(fall, [ts("2025-11-02T05:30:00Z")]);
    // Every 15 minutes through both 1 o'clock hours (05:00-06:59 UTC): 8 runs, 15 minutes apart.
    let quarter = drive(&cad("*/15 * * * *", ny), ts("2025-11-02T04:59:00Z"), minutes("2025-11-02T04:59:00Z", 120));
    assert_eq!(quarter, times(&cad("*/15 * * * *", None), ts("2025-11-02T04:59:00Z"), ts("2025-11-02T06:59:00Z")));
    assert_eq!(quarter.len(), 8);
}

fn schedule() -> impl Strategy<Value = String> {
    // Hours 0-3 often: that is where the DST transitions are.
    let hour = prop_oneof![0..4u32, 0..24u32];
    prop_oneof![
        (0..60u32, hour).prop_map(|(m, h)| format!("{m} {h} * * *")),
        (1..=30u32).prop_map(|k| format!("*/{k} * * * *")),
        (0..30u32).prop_map(|m| format!("{m},{} * * * *", m + 30)),
        (0..60u32, proptest::sample::subsequence((0..7).collect::<Vec<u32>>(), 1..=3))
            .prop_map(|(m, d)| { format!("{m} * * * {}", d.iter().map(u32::to_string).collect::<Vec<_>>().join(",")) }),
        Just("@hourly".to_string()),
    ]
}

fn start() -> impl Strategy<Value = Timestamp> {
    // The 2025 transitions of the zones below (UTC), or anywhere in 2025.
    let transitions = [
        "2025-03-09T07:00:00Z",
        "2025-03-30T01:00:00Z",
        "2025-04-05T15:00:00Z",
        "2025-10-04T15:30:00Z",
        "2025-10-26T01:00:00Z",
        "2025-11-02T06:00:00Z",
    ];
    prop_oneof![
        (proptest::sample::select(transitions.to_vec()), 0..6 * 3600i64)
            .prop_map(|(t, back)| ts(t) - SignedDuration::from_secs(back)),
        (0..365 * 86400i64).prop_map(|s| ts("2025-01-01T00:00:00Z") + SignedDuration::from_secs(s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn no_missed_or_doubled_run(
        schedule in schedule(),
        zone in proptest::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
        created in start(),
        gaps in proptest::collection::vec(prop_oneof![12 => 1..=90i64, 1 => 3600..4 * 3600i64], 50..300),
    ) {
        let c = cad(&schedule, Some(zone));
        let (mut last, mut prev, mut runs) = (None, created, vec![]);
        for gap in &gaps {
            let now = prev + SignedDuration::from_secs(*gap);
            let t = tick(&c, last, created, None, now);
            // (1) never the same time twice, never one at or before the last run.
            if let Some(run) = t.run {
                prop_assert!(last.is_none_or(|l| run > l) && run <= now);
                last = Some(run);
                runs.push(run);
            }
            // (2) what came due since the last wake is run (the latest) or counted as missed.
            let due = times(&c, prev, now);
            prop_assert_eq!(t.run, due.last().copied(), "due {:?}", due);
            prop_assert_eq!(t.missed as usize, due.len().saturating_sub(1).min(MISSED_COUNT_LIMIT as usize));
            // (3) when to look again.
            prop_assert!(t.next.is_some_and(|n| n > now));
            prop_assert_eq!(t.next, c.next_after(now));
            prev = now;
        }
        let expected = times(&c, created, prev);
        let spacing = expected.windows(2).map(|w| w[1].as_second() - w[0].as_second()).min().unwrap_or(i64::MAX);
        if gaps.iter().all(|g| *g < spacing) {
            prop_assert_eq!(runs, expected);
        }
    }
}

// decide

fn sched(spec: serde_json::Value) -> BackgroundJobSchedule {
    let mut full = serde_json::json!({
        "schedule": "* * * * *",
        "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}}}
    });
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    let mut s: BackgroundJobSchedule = serde_json::from_value(serde_json::json!({
        "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJobSchedule",
        "metadata": {"name": "nightly", "namespace": "ns", "generation": 1,
                     "creationTimestamp": "2025-01-01T09:59:30Z"},
        "spec": full
    }))
    .unwrap();
    s.status = None;
    s
}

fn job(t: &str, phase: Option<Phase>) -> ScheduledJob {
    let t = ts(t);
    ScheduledJob {
        name: job_name("nightly", t),
        scheduled_at: Some(t),
        phase,
        completion_time: phase.filter(|p| p.is_finished()).map(|_| t + SignedDuration::from_secs(30)),
    }
}

fn scheduling(d: &ScheduleDecision) -> (String, String, String) {
    let c = d.status.conditions.iter().find(|c| c.type_ == "Scheduling").expect("a Scheduling condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn reasons(d: &ScheduleDecision) -> Vec<EventReason> {
    d.events.iter().map(|e| e.reason).collect()
}

#[test]
fn a_due_run_creates_its_job_and_waits_for_the_next() {
    let s = sched(serde_json::json!({}));
    let d = decide(&s, &[], ts("2025-01-01T10:00:02Z"));
    let run = d.create.clone().unwrap();
    assert_eq!((run.name.as_str(), run.scheduled_at), ("nightly-28928760", ts("2025-01-01T10:00:00Z")));
    assert_eq!(d.status.last_schedule_time.as_ref().map(|t| t.0), Some(ts("2025-01-01T10:00:00Z")));
    assert_eq!(d.status.active, [ActiveJob { name: "nightly-28928760".into() }]);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(58)));
    assert_eq!(reasons(&d), [EventReason::SuccessfulCreate]);
    assert_eq!(scheduling(&d).0, "True");
    // Nothing due before the first minute after creation.
    let d = decide(&s, &[], ts("2025-01-01T09:59:40Z"));
    assert_eq!((d.create, d.requeue_after), (None, Some(Duration::from_secs(20))));
}

#[test]
fn a_job_that_exists_is_not_created_again() {
    let s = sched(serde_json::json!({}));
    // The status was never written (a restart): the job says the time was run.
    let jobs = [job("2025-01-01T10:00:00Z", None)];
    let d = decide(&s, &jobs, ts("2025-01-01T10:00:40Z"));
    assert_eq!(d.create, None);
    assert_eq!(d.status.last_schedule_time.as_ref().map(|t| t.0), Some(ts("2025-01-01T10:00:00Z")));
    assert!(d.events.is_empty(), "{:?}", d.events);
}

#[test]
fn forbid_skips_while_active_and_replace_deletes_first() {
    let jobs = [job("2025-01-01T10:00:00Z", Some(Phase::Running))];
    let now = ts("2025-01-01T10:01:01Z");
    let forbid = decide(&sched(serde_json::json!({"concurrencyPolicy": "Forbid"})), &jobs, now);
    assert_eq!(forbid.create, None);
    assert_eq!(reasons(&forbid), [EventReason::JobAlreadyActive]);
    // lastScheduleTime stays: the run may still start if the job finishes in time.
    assert_eq!(forbid.status.last_schedule_time.map(|t| t.0), Some(ts("2025-01-01T10:00:00Z")));
    let replace = decide(&sched(serde_json::json!({"concurrencyPolicy": "Replace"})), &jobs, now);
    assert_eq!(replace.replace, ["nightly-28928760"]);
    assert_eq!(replace.create.unwrap().name, "nightly-28928761");
    assert_eq!(replace.status.active, [ActiveJob { name: "nightly-28928761".into() }]);
    // Each event relates to its job, so the recorder keeps them apart (and folds a repeat of one).
    let related: Vec<_> = replace.events.iter().map(|e| (e.reason, e.related.clone())).collect();
    assert_eq!(
        related,
        [
            (EventReason::SuccessfulDelete, Some(Related::Job("nightly-28928760".into()))),
            (EventReason::SuccessfulCreate, Some(Related::Job("nightly-28928761".into()))),
        ]
    );
    assert_eq!(forbid.events[0].related, Some(Related::Job("nightly-28928760".into())));
    let allow = decide(&sched(serde_json::json!({})), &jobs, now);
    assert_eq!(allow.status.active.len(), 2);
}

/// Someone else's job has the run's name: under Replace too, nothing is deleted or created,
/// the run counts as passed, and the schedule says why until its next run.
#[test]
fn a_run_named_like_someone_elses_job_is_skipped_and_said() {
    let jobs = [job("2025-01-01T10:00:00Z", Some(Phase::Running))];
    let s = sched(serde_json::json!({"concurrencyPolicy": "Replace"}));
    let taken = ["nightly-28928761".to_string()];
    let d = decide_with(&s, &jobs, &taken, ts("2025-01-01T10:01:01Z"));
    assert_eq!((d.create.clone(), d.replace.clone()), (None, Vec::<String>::new()));
    assert_eq!(d.status.active, [ActiveJob { name: "nightly-28928760".into() }], "the active run stays");
    assert_eq!(d.status.last_schedule_time.as_ref().map(|t| t.0), Some(ts("2025-01-01T10:01:00Z")));
    let (status, reason, message) = scheduling(&d);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ObjectNotOwned"));
    assert!(message.starts_with("BackgroundJob nightly-28928761 exists and belongs to something else"), "{message}");
    assert_eq!(reasons(&d), [EventReason::ObjectNotOwned]);
    assert_eq!(d.events[0].related, Some(Related::Job("nightly-28928761".into())));
    // Later in that minute the condition holds; the next minute's run starts as usual.
    let s = BackgroundJobSchedule { status: Some(d.status), ..s };
    let d = decide_with(&s, &jobs, &taken, ts("2025-01-01T10:01:30Z"));
    assert_eq!((scheduling(&d).1.as_str(), d.create), ("ObjectNotOwned", None));
    let d = decide_with(&s, &jobs, &taken, ts("2025-01-01T10:02:01Z"));
    assert_eq!(d.create.as_ref().unwrap().name, "nightly-28928762");
    assert_eq!(scheduling(&d).1, "Scheduled");
}

#[test]
fn history_limits_delete_the_oldest_finished() {
    let s = sched(serde_json::json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0}));
    let jobs = [
        job("2025-01-01T10:00:00Z", Some(Phase::Succeeded)),
        job("2025-01-01T10:01:00Z", Some(Phase::Failed)),
        job("2025-01-01T10:02:00Z", Some(Phase::Succeeded)),
        job("2025-01-01T10:03:00Z", Some(Phase::Running)),
    ];
    let d = decide(&s, &jobs, ts("2025-01-01T10:03:30Z"));
    assert_eq!(d.delete, ["nightly-28928760", "nightly-28928761"]);
    assert_eq!(d.status.last_successful_time.map(|t| t.0), Some(ts("2025-01-01T10:02:30Z")));
    assert_eq!(d.status.active, [ActiveJob { name: "nightly-28928763".into() }]);
}

#[test]
fn bad_input_suspend_and_missed_times() {
    // Past the schema (an older CRD, or the regex's approximation): a condition, no job.
    let d = decide(&sched(serde_json::json!({"schedule": "0 0 31 2 *"})), &[], ts("2025-01-01T10:03:30Z"));
    let (status, reason, message) = scheduling(&d);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSchedule"));
    assert!(message.starts_with("spec.schedule: "), "{message}");
    assert_eq!(
        (&d.create, d.requeue_after, reasons(&d).as_slice()),
        (&None, None, [EventReason::InvalidSchedule].as_slice())
    );
    let d = decide(&sched(serde_json::json!({"timeZone": "Mars/Olympus"})), &[], ts("2025-01-01T10:03:30Z"));
    assert!(scheduling(&d).2.starts_with("spec.timeZone: "));
    // The same message again is no new event.
    let mut s = sched(serde_json::json!({"timeZone": "Mars/Olympus"}));
    s.status = Some(d.status.clone());
    assert!(decide(&s, &[], ts("2025-01-01T10:04:30Z")).events.is_empty());

    let d = decide(&sched(serde_json::json!({"suspend": true})), &[], ts("2025-01-01T10:03:30Z"));
    assert_eq!((scheduling(&d).1.as_str(), d.create), ("Suspended", None));

    // Down for a day: one run (the latest), a warning.
    let d = decide(&sched(serde_json::json!({})), &[], ts("2025-01-02T10:00:30Z"));
    assert_eq!(reasons(&d), [EventReason::TooManyMissedTimes, EventReason::SuccessfulCreate]);
    assert_eq!(scheduling(&d).1, "TooManyMissedTimes");
    let d = decide(&sched(serde_json::json!({})), &[], ts("2025-01-01T10:05:30Z"));
    assert_eq!(reasons(&d), [EventReason::MissSchedule, EventReason::SuccessfulCreate]);
    assert!(d.events[0].note.starts_with("missed 5 scheduled"), "{}", d.events[0].note);
    // The condition says so until the next run, which is on time.
    let (status, reason, message) = scheduling(&d);
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        ("True", "MissSchedule", d.events[0].note.as_str())
    );
    let mut s = sched(serde_json::json!({}));
    s.status = Some(d.status.clone());
    let jobs = [job("2025-01-01T10:05:00Z", None)];
    let later = decide(&s, &jobs, ts("2025-01-01T10:05:50Z"));
    assert_eq!((later.create.as_ref(), scheduling(&later).1.as_str()), (None, "MissSchedule"));
    let next = decide(&s, &jobs, ts("2025-01-01T10:06:01Z"));
    assert!(next.create.is_some());
    assert_eq!(scheduling(&next).1, "Scheduled");
    // With a deadline, a run too late is not started.
    let d = decide(&sched(serde_json::json!({"startingDeadlineSeconds": 10})), &[], ts("2025-01-01T10:05:30Z"));
    assert_eq!((d.create, d.events.len()), (None, 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    /// The world as the controller meets it: wakes at random moments (some late), jobs
    /// finishing at random, and crashes that lose the status write (a restart then decides from
    /// the jobs alone). Never two jobs for one scheduled time (a create of an existing name is
    /// refused by the API server, as AlreadyExists), Forbid never has two active jobs, and the
    /// history limits hold after every wake.
    #[test]
    fn decide_over_wakes_and_restarts(
        policy in proptest::sample::select(vec!["Allow", "Forbid", "Replace"]),
        schedule in proptest::sample::select(vec!["* * * * *", "*/5 * * * *", "0 * * * *"]),
        limits in (0..3i32, 0..3i32),
        deadline in proptest::option::of(0..600i64),
        steps in proptest::collection::vec((prop_oneof![8 => 1..90i64, 1 => 600..7200i64], 0..4u8, any::<bool>()), 20..120),
    ) {
        let mut s = sched(serde_json::json!({
            "schedule": schedule, "concurrencyPolicy": policy, "startingDeadlineSeconds": deadline,
            "successfulJobsHistoryLimit": limits.0, "failedJobsHistoryLimit": limits.1,
        }));
        let mut now = ts("2025-01-01T09:59:30Z");
        let mut store: Vec<ScheduledJob> = vec![];
        let mut ever: std::collections::BTreeSet<String> = Default::default();
        for (gap, finish, crash) in steps {
            now += SignedDuration::from_secs(gap);
            // Some active job finishes.
            if finish > 0 && let Some(j) = store.iter_mut().find(|j| !j.finished()) {
                j.phase = Some(if finish == 1 { Phase::Failed } else { Phase::Succeeded });
                j.completion_time = Some(now);
            }
            let d = decide(&s, &store, now);
            store.retain(|j| !d.replace.contains(&j.name));
            if let Some(run) = &d.create {
                prop_assert!(run.scheduled_at <= now);
                if !store.iter().any(|j| j.name == run.name) {
                    prop_assert!(ever.insert(run.name.clone()), "{} created twice", run.name);
                    store.push(ScheduledJob { name: run.name.clone(), scheduled_at: Some(run.scheduled_at), phase: None, completion_time: None });
                }
            }
            // A crash after creating loses the status write and the history deletes after it.
            if !crash {
                s.status = Some(d.status.clone());
                store.retain(|j| !d.delete.contains(&j.name));
            }
            if policy == "Forbid" {
                prop_assert!(store.iter().filter(|j| !j.finished()).count() <= 1);
            }
            if !crash {
                let count = |p: Phase| store.iter().filter(|j| j.phase == Some(p)).count() as i32;
                prop_assert!(count(Phase::Succeeded) <= limits.0 && count(Phase::Failed) <= limits.1);
                let active: Vec<&str> = store.iter().filter(|j| !j.finished()).map(|j| j.name.as_str()).collect();
                let listed: Vec<&str> = d.status.active.iter().map(|a| a.name.as_str()).collect();
                prop_assert_eq!(active, listed);
            }
        }
    }
}
