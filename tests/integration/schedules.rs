//! BackgroundJobSchedules against the real control plane. The scenarios bound to minute
//! boundaries (every minute, Forbid, Replace, two replicas, a restart) run concurrently in one
//! test, a thread each, each in a namespace with an operator of its own, so the file costs about
//! two minutes of wall time, not two per scenario. The test plays the node.

use std::time::Duration;

use crate::support::node;
use k8s_openapi::{
    api::core::v1::Event,
    jiff::{SignedDuration, Timestamp, tz::TimeZone},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use nightshift_api::{ANNOTATION_SCHEDULED_AT, BackgroundJob, BackgroundJobSchedule, LABEL_SCHEDULE};
use serde_json::json;

use crate::support::{Fixture, Operator, TestNamespace, WAIT, client, fixture, install_crd, kubectl, wait_until};

/// Past a minute boundary, and the operator's reaction to it.
const MINUTE: Duration = Duration::from_secs(75);

/// A schedule manifest for `kubectl apply`: `extra` are more lines of its spec.
fn schedule_yaml(name: &str, schedule: &str, extra: &str) -> String {
    // For the test's node; in JSON, which is YAML too.
    let template = node::template(serde_json::json!({
        "restartPolicy": "Never", "containers": [{"name": "worker", "image": "registry.example/worker:1"}]
    }));
    format!(
        r#"apiVersion: nightshift.dev/v1alpha1
kind: BackgroundJobSchedule
metadata:
  name: {name}
spec:
  schedule: "{schedule}"
{extra}
  jobTemplate:
    metadata:
      labels: {{team: data}}
    spec:
      template: {template}
"#
    )
}

async fn apply(f: &Fixture, manifest: &str) {
    let (code, out, err) = kubectl(&f.ns.name, &["apply", "-f", "-"], manifest).await;
    assert_eq!(code, 0, "kubectl apply: {out}{err}");
}

/// The schedule's jobs, oldest first.
async fn jobs_of(f: &Fixture, schedule: &str) -> Vec<BackgroundJob> {
    let mut jobs =
        f.jobs.list(&ListParams::default().labels(&format!("{LABEL_SCHEDULE}={schedule}"))).await.unwrap().items;
    jobs.sort_by_key(|j| j.name_any());
    jobs
}

/// Waits until the schedule has `n` jobs; returns their names, oldest first.
async fn wait_jobs(f: &Fixture, schedule: &str, n: usize, timeout: Duration) -> Vec<String> {
    wait_until(&format!("{n} job(s) of {schedule}"), timeout, || async {
        let names: Vec<String> = jobs_of(f, schedule).await.iter().map(|j| j.name_any()).collect();
        if names.len() == n { Ok(names) } else { Err(format!("jobs {names:?}")) }
    })
    .await
}

async fn schedule_status(f: &Fixture, name: &str) -> nightshift_api::BackgroundJobScheduleStatus {
    let api: Api<BackgroundJobSchedule> = f.ns.api();
    api.get_status(name).await.unwrap().status.unwrap_or_default()
}

/// Each scenario on a thread and runtime of its own, as separate tests are: a scenario that ends
/// cleans its namespace up in a blocking Drop, which on a shared runtime froze the other
/// scenarios' operators (their next-minute runs started seconds late).
#[test]
fn schedules_start_jobs_at_the_minute() {
    fn on_its_own(scenario: impl Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(scenario)
    }
    // Each scenario's failure, named, at the end of the output (its panic message is printed
    // when it happens, amid the other scenarios' operator logs).
    let failures: Vec<String> = std::thread::scope(|s| {
        let scenarios = [
            ("every minute", s.spawn(|| on_its_own(every_minute()))),
            ("forbid", s.spawn(|| on_its_own(forbid()))),
            ("replace", s.spawn(|| on_its_own(replace()))),
            ("two replicas", s.spawn(|| on_its_own(two_replicas()))),
            ("restart", s.spawn(|| on_its_own(restart()))),
        ];
        scenarios
            .into_iter()
            .filter_map(|(name, run)| run.join().err().map(|e| format!("{name}: {}", said(&e))))
            .collect()
    });
    assert!(failures.is_empty(), "scenarios failed:\n{}", failures.join("\n"));
}

/// What a panic said.
fn said(payload: &Box<dyn std::any::Any + Send>) -> &str {
    payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied()).unwrap_or("?")
}

/// An every-minute schedule starts `<schedule>-<minutes>`, owned by it, at the minute; its run
/// to success shows in status.lastSuccessfulTime; `kubectl get` shows CronJob's columns.
async fn every_minute() {
    let (f, _operator) = fixture("sched-minute").await;
    apply(&f, &schedule_yaml("report", "* * * * *", "")).await;
    let name = wait_jobs(&f, "report", 1, MINUTE).await.remove(0);
    let job = f.jobs.get(&name).await.unwrap();
    let at: Timestamp = job.annotations()[ANNOTATION_SCHEDULED_AT].parse().unwrap();
    assert_eq!(at.as_second() % 60, 0, "scheduled on a minute: {at}");
    assert_eq!(name, format!("report-{}", at.as_second() / 60));
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("BackgroundJobSchedule", "report", Some(true))
    );
    assert_eq!(job.labels().get("team").map(String::as_str), Some("data"));
    let status = wait_until("lastScheduleTime and the active job", WAIT, || async {
        let s = schedule_status(&f, "report").await;
        if s.last_schedule_time.is_some() && !s.active.is_empty() { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    assert_eq!(status.last_schedule_time.unwrap().0, at);
    assert_eq!(status.active[0].name, name);
    let (_, table, _) = kubectl(&f.ns.name, &["get", "backgroundjobschedules"], "").await;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"], "{table}");
    assert!(table.contains(&name), "{table}");

    f.run_to_success(&name).await;
    let status = wait_until("lastSuccessfulTime", WAIT, || async {
        let s = schedule_status(&f, "report").await;
        if s.last_successful_time.is_some() && !s.active.iter().any(|a| a.name == name) {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert!(status.last_successful_time.unwrap().0 >= at);
    let events = f.wait_event("report", "SuccessfulCreate", &name).await;
    assert!(!events.iter().any(|(r, _)| r == "InvalidSchedule"), "{events:?}");
}

/// Forbid: while the first job runs, the next minute starts none.
async fn forbid() {
    let (f, _operator) = fixture("sched-forbid").await;
    apply(&f, &schedule_yaml("sync", "* * * * *", "  concurrencyPolicy: Forbid")).await;
    let first = wait_jobs(&f, "sync", 1, MINUTE).await.remove(0);
    // Its worker pod never finishes: the test's node leaves it Pending.
    // The next minute comes up to 60 s after the first job was created.
    wait_until("a JobAlreadyActive event of sync", MINUTE, || async {
        let events = f.events("sync").await;
        if events.iter().any(|(r, m)| r == "JobAlreadyActive" && m.contains(&first)) {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;
    assert_eq!(jobs_of(&f, "sync").await.len(), 1, "no second job while {first} is active");
    let status = schedule_status(&f, "sync").await;
    assert_eq!(status.active.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), [first.as_str()]);
}

/// Replace: at the next minute the running job is deleted and the new one started.
async fn replace() {
    let (f, _operator) = fixture("sched-replace").await;
    apply(&f, &schedule_yaml("refresh", "* * * * *", "  concurrencyPolicy: Replace")).await;
    let first = wait_jobs(&f, "refresh", 1, MINUTE).await.remove(0);
    // Its worker pod never finishes: the test's node leaves it Pending.
    let second = wait_until("the next minute's job in place of the first", MINUTE, || async {
        let names: Vec<String> = jobs_of(&f, "refresh").await.iter().map(|j| j.name_any()).collect();
        match names.as_slice() {
            [only] if *only != first => Ok(only.clone()),
            _ => Err(format!("jobs {names:?}")),
        }
    })
    .await;
    // An event each, not the first folded into a series: each relates to its job.
    f.wait_event("refresh", "SuccessfulCreate", &second).await;
    let events = f.wait_event("refresh", "SuccessfulDelete", &first).await;
    assert!(events.iter().any(|(_, m)| m.contains("spec.concurrencyPolicy Replace")), "{events:?}");
    let api: Api<Event> = f.ns.api();
    let related: Vec<(String, String)> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
        .filter_map(|e| e.related.map(|r| (r.kind.unwrap_or_default(), r.name.unwrap_or_default())))
        .collect();
    assert!(related.contains(&("BackgroundJob".to_string(), second.clone())), "{related:?}");
    let status = schedule_status(&f, "refresh").await;
    assert!(!status.active.iter().any(|a| a.name == first), "{status:?}");
}

/// Two operators at once on one namespace (two replicas without leader election): one job per
/// scheduled time, over two minutes.
async fn two_replicas() {
    let (f, _operator) = fixture("sched-replicas").await;
    let _second = Operator::start(&f.client, &f.ns.name).await;
    apply(&f, &schedule_yaml("twice", "* * * * *", "")).await;
    let first = wait_jobs(&f, "twice", 1, MINUTE).await;
    let both = wait_jobs(&f, "twice", 2, MINUTE).await;
    assert_eq!(both[0], first[0]);
    let times: Vec<i64> = jobs_of(&f, "twice")
        .await
        .iter()
        .map(|j| j.annotations()[ANNOTATION_SCHEDULED_AT].parse::<Timestamp>().unwrap().as_second())
        .collect();
    assert_eq!(times[1] - times[0], 60, "one job per minute: {both:?}");
    // An event for each run, whichever replica created it (published after its job, so waited for).
    for job in &both {
        f.wait_event("twice", "SuccessfulCreate", job).await;
    }
}

/// A restart does not run a time again, even once its job is gone (history limit 0).
async fn restart() {
    let (f, operator) = fixture("sched-restart").await;
    apply(&f, &schedule_yaml("nightly", "* * * * *", "  successfulJobsHistoryLimit: 0")).await;
    let first = wait_jobs(&f, "nightly", 1, MINUTE).await.remove(0);
    // It succeeds, and goes at once (the history keeps none).
    for pod in f.wait_live(&first, 1).await {
        f.finish(&pod, 0).await;
    }
    wait_jobs(&f, "nightly", 0, WAIT).await;
    assert!(schedule_status(&f, "nightly").await.last_successful_time.is_some());
    operator.kill().await;
    // A new process: a client of its own (new connections), like a restarted pod.
    let _restarted = Operator::start(&client().await, &f.ns.name).await;
    // The next minute's job, and never the first again: within a minute, as before the restart
    // (a restarted operator whose schedule reconcile waited for the job cache for good was
    // kube-runtime 5.0.0's store waking only its last waiter: context::Filled).
    let next = wait_until("the next minute's job", MINUTE, || async {
        let names: Vec<String> = jobs_of(&f, "nightly").await.iter().map(|j| j.name_any()).collect();
        assert!(!names.contains(&first), "{first} was created again after the restart: {names:?}");
        names.into_iter().next().ok_or_else(|| "no job yet".to_string())
    })
    .await;
    assert_ne!(next, first);
    assert_eq!(jobs_of(&f, "nightly").await.len(), 1);
}

/// A schedule that did not run for days (suspended here; an operator that was down decides the
/// same from status.lastScheduleTime): one catch-up run, of the latest time, and a condition and
/// an event that say how many times it passed over. No minute boundary to wait for: the schedule
/// runs daily at the minute an hour ago, so its next time is 23 hours away.
#[tokio::test]
async fn a_late_schedule_runs_the_latest_time_once_and_says_what_it_missed() {
    let (f, _operator) = fixture("sched-late").await;
    let api: Api<BackgroundJobSchedule> = f.ns.api();
    let now = Timestamp::now();
    let an_hour_ago = (now - SignedDuration::from_hours(1)).to_zoned(TimeZone::UTC);
    let daily = format!("{} {} * * *", an_hour_ago.minute(), an_hour_ago.hour());
    let late = [
        ("late", SignedDuration::from_hours(2 * 24 + 2), "MissSchedule", "missed 2 scheduled start time(s) before"),
        ("later", SignedDuration::from_hours(200 * 24), "TooManyMissedTimes", "too many missed start times (> 100)"),
    ];
    for (name, ago, _, _) in late {
        apply(&f, &schedule_yaml(name, &daily, "  suspend: true")).await;
        let last = Timestamp::from_second((now - ago).as_second()).unwrap();
        let status = json!({"status": {"lastScheduleTime": last.to_string()}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
        api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}}))).await.unwrap();
    }
    for (name, _, reason, says) in late {
        let condition = wait_until(&format!("the Scheduling condition of {name}"), WAIT, || async {
            let status = schedule_status(&f, name).await;
            match status.conditions.iter().find(|c| c.type_ == "Scheduling") {
                Some(c) if c.reason == reason => Ok(c.clone()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(condition.status, "True");
        assert!(condition.message.starts_with(says), "{}", condition.message);
        f.wait_event(name, reason, says).await;
        // One job, of the latest scheduled time, an hour ago (what status.lastScheduleTime says).
        let jobs = jobs_of(&f, name).await;
        assert_eq!(jobs.len(), 1, "one catch-up run: {:?}", jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>());
        let at = jobs[0].annotations()[ANNOTATION_SCHEDULED_AT].parse::<Timestamp>().unwrap();
        assert_eq!(at.as_second(), an_hour_ago.timestamp().as_second() / 60 * 60, "the latest time");
        assert_eq!(schedule_status(&f, name).await.last_schedule_time.map(|t| t.0), Some(at));
    }
}

/// What the schema refuses at `kubectl apply`, naming the field; and what it takes.
#[tokio::test]
async fn bad_schedules_are_refused_at_apply() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "sched-refused").await;
    let refused = [
        (schedule_yaml("minute61", "61 * * * *", ""), "spec.schedule must be 5 cron fields"),
        (schedule_yaml("six", "0 * * * * *", ""), "spec.schedule must be 5 cron fields"),
        (
            schedule_yaml("mars", "@daily", "  timeZone: Mars/Olympus"),
            "spec.timeZone must be a time zone of the IANA database",
        ),
        (schedule_yaml(&"n".repeat(42), "@daily", ""), "metadata.name must be at most 41 characters"),
    ];
    for (manifest, says) in &refused {
        let (code, out, err) = kubectl(&ns.name, &["apply", "-f", "-"], manifest).await;
        assert_ne!(code, 0, "kubectl apply took it: {out}");
        assert!(err.contains(says), "expected {says:?} in: {err}");
    }
    let taken = [
        schedule_yaml("weekdays", "*/15 9-17 * * MON-FRI", "  timeZone: Europe/Berlin"),
        schedule_yaml("midnight", "@midnight", "  timeZone: America/New_York"),
        schedule_yaml("january", "0 0 1 jan *", ""),
        schedule_yaml(&"n".repeat(41), "30 2 * * 0,6", ""),
    ];
    for manifest in &taken {
        let (code, out, err) = kubectl(&ns.name, &["apply", "-f", "-"], manifest).await;
        assert_eq!(code, 0, "kubectl apply refused it: {out}{err}");
    }
    // And the README's example.
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/schedule.yaml")).unwrap();
    let (code, out, err) = kubectl(&ns.name, &["apply", "-f", "-"], &example).await;
    assert_eq!(code, 0, "kubectl apply refused examples/schedule.yaml: {out}{err}");
    // The typed client too: a create through the API names the field.
    let api: Api<BackgroundJobSchedule> = ns.api();
    let mut schedule: BackgroundJobSchedule =
        serde_yaml_ng::from_str(&schedule_yaml("typed", "* * 32 * *", "")).unwrap();
    schedule.metadata.namespace = None;
    let e = api.create(&PostParams::default(), &schedule).await.unwrap_err();
    assert!(e.to_string().contains("spec.schedule"), "{e}");
}
