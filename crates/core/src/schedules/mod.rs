//! The pure core of `BackgroundJobSchedule`: parsing a cron schedule in its time zone, and
//! deciding from the last scheduled time and `now` which scheduled time to run, as the
//! Kubernetes CronJob controller does. Time is always an argument.

use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp, Zoned, tz::TimeZone};
use kube::ResourceExt;

use nightshift_api::{
    ActiveJob, BackgroundJobSchedule, BackgroundJobScheduleSpec, BackgroundJobScheduleStatus, ConcurrencyPolicy, Phase,
    reasons::{ConditionType, EventReason, Reason},
    time_zones,
};

use crate::{EventNote, Related, conditions::set_condition, time::time};

/// `Tick::missed` stops counting here, so a schedule down for years costs no CPU: this value
/// means "this many or more" (CronJob warns of too many missed start times above 100).
pub const MISSED_COUNT_LIMIT: u32 = 101;

const ALLOWED: &str =
    "use 5 fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly";

/// A parsed schedule: the cron pattern and its time zone (UTC when none).
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: Cron,
    zone: TimeZone,
}

impl Cadence {
    /// Parses spec.schedule and spec.timeZone; every refusal names the field and what is allowed.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Cadence, String> {
        let refuse = |why: &str| {
            let why = why.trim_end_matches('.');
            format!("spec.schedule: {schedule:?} is not a cron schedule: {why}; {ALLOWED}")
        };
        // CronJob refuses TZ=/CRON_TZ= too: one place for the zone. No valid pattern holds "TZ".
        if schedule.to_ascii_uppercase().contains("TZ") {
            return Err(format!(
                "spec.schedule: {schedule:?} names a time zone; put it in spec.timeZone (like Europe/Berlin) and keep the schedule to {}",
                &ALLOWED[4..]
            ));
        }
        // Kubernetes (robfig/cron) knows @midnight; croner does not.
        let pattern = if schedule.trim().eq_ignore_ascii_case("@midnight") { "@daily" } else { schedule };
        // No seconds field (CronJob has none) and no year field.
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(pattern).map_err(|e| refuse(&e.to_string()))?;
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => time_zones().get(name).map_err(|_| {
                format!("spec.timeZone: {name:?} is not a time zone of the IANA database (like Europe/Berlin or America/New_York)")
            })?,
        };
        let cadence = Cadence { cron, zone };
        // A pattern that names no real date ("0 0 31 2 *") would never run: refuse it now rather
        // than leave a schedule that silently does nothing.
        if cadence.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(refuse("it matches no date"));
        }
        Ok(cadence)
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.zone.clone());
        self.cron.find_next_occurrence(&z, false).ok().map(|z| z.timestamp())
    }

    /// The scheduled time at or before `z` (inclusive) or strictly before it.
    fn previous(&self, z: &Zoned, inclusive: bool) -> Option<Zoned> {
        self.cron.find_previous_occurrence(z, inclusive).ok()
    }
}

/// What a schedule should do now (Kubernetes CronJob controller's `mostRecentScheduleTime`
/// semantics, pkg/controller/cronjob/utils.go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The scheduled time to start a job for now, if any: the most recent scheduled time in
    /// (since, now], where since = last scheduled time, else the schedule's creation time; with a
    /// starting deadline, only if now - run <= deadline.
    pub run: Option<Timestamp>,
    /// Scheduled times in (since, now] that were passed over (not run), at most
    /// [`MISSED_COUNT_LIMIT`].
    pub missed: u32,
    /// The next scheduled time strictly after now (when to look again).
    pub next: Option<Timestamp>,
}

/// `last_scheduled`: status.lastScheduleTime; `created`: the schedule's creationTimestamp;
/// `starting_deadline_seconds`: spec.startingDeadlineSeconds. When a deadline is set, times
/// before now - deadline are not even considered (as CronJob does: it moves `since` forward).
pub fn tick(
    cadence: &Cadence,
    last_scheduled: Option<Timestamp>,
    created: Timestamp,
    starting_deadline_seconds: Option<i64>,
    now: Timestamp,
) -> Tick {
    let since = last_scheduled.unwrap_or(created);
    // A negative deadline (the CRD refuses it) counts as 0; one too large to subtract as none.
    let cutoff = starting_deadline_seconds.and_then(|s| now.checked_sub(SignedDuration::from_secs(s.max(0))).ok());
    let considered = |t: &Timestamp| *t > since && cutoff.is_none_or(|c| *t >= c);
    // Walk back from now, not forward from `since`: a schedule down for years costs at most
    // MISSED_COUNT_LIMIT searches. Each search starts from the exact value the last returned,
    // which keeps croner on the right pass of a repeated (fall-back) hour.
    let mut at = cadence.previous(&now.to_zoned(cadence.zone.clone()), true);
    let run = at.as_ref().map(Zoned::timestamp).filter(considered);
    let mut missed = 0;
    while run.is_some() && missed < MISSED_COUNT_LIMIT {
        at = at.and_then(|z| cadence.previous(&z, false));
        match at.as_ref().map(Zoned::timestamp) {
            Some(t) if considered(&t) => missed += 1,
            _ => break,
        }
    }
    Tick { run, missed, next: cadence.next_after(now) }
}

/// The job's name for the run scheduled at `t`: "<schedule>-<minutes since the Unix epoch>", as
/// CronJob names its Jobs, so one scheduled time never yields two jobs (a second create is
/// refused as AlreadyExists), across restarts and replicas.
pub fn job_name(schedule: &str, t: Timestamp) -> String {
    // Go's `t.Unix() / 60`, truncating as CronJob's getTimeHashInMinutes does.
    format!("{schedule}-{}", t.as_second() / 60)
}

/// A job of a schedule, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledJob {
    pub name: String,
    /// Its annotation nightshift.dev/scheduled-at, when it holds a time.
    pub scheduled_at: Option<Timestamp>,
    /// None until the job controller wrote one.
    pub phase: Option<Phase>,
    pub completion_time: Option<Timestamp>,
}

impl ScheduledJob {
    fn finished(&self) -> bool {
        self.phase.is_some_and(Phase::is_finished)
    }

    /// Oldest first: by scheduled time, then name.
    fn age_key(&self) -> (Option<Timestamp>, &str) {
        (self.scheduled_at, &self.name)
    }
}

/// A job to create: its name and scheduled time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRun {
    pub name: String,
    pub scheduled_at: Timestamp,
}

/// What to do for one schedule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleDecision {
    /// The job to start, if a run is due.
    pub create: Option<ScheduledRun>,
    /// Active jobs to delete before `create` (spec.concurrencyPolicy Replace).
    pub replace: Vec<String>,
    /// Finished jobs beyond the history limits, to delete once `status` is written (so that a
    /// restart in between still finds the last scheduled time in the status).
    pub delete: Vec<String>,
    /// The status to write (only when it differs from the current one).
    pub status: BackgroundJobScheduleStatus,
    pub events: Vec<EventNote>,
    /// Look again after this long at the latest: at the next scheduled time.
    pub requeue_after: Option<Duration>,
}

/// Decides for a schedule from its jobs (those it owns) and `now`, as the CronJob controller
/// does: at most one run (the most recent time due), spec.concurrencyPolicy against the active
/// jobs, and the history limits.
pub fn decide(schedule: &BackgroundJobSchedule, jobs: &[ScheduledJob], now: Timestamp) -> ScheduleDecision {
    decide_with(schedule, jobs, &[], now)
}

/// [`decide`], with `taken`: names of jobs in the namespace that the schedule does not control.
/// A run whose name is one of them is skipped (never created over, deleted or counted as the
/// run), and the schedule says so until its next run.
pub fn decide_with(
    schedule: &BackgroundJobSchedule,
    jobs: &[ScheduledJob],
    taken: &[String],
    now: Timestamp,
) -> ScheduleDecision {
    let spec = &schedule.spec;
    let generation = schedule.metadata.generation;
    let old = schedule.status.clone().unwrap_or_default();
    let mut d = ScheduleDecision { status: old.clone(), ..Default::default() };
    keep_history(spec, jobs, &old, &mut d);
    let condition = |status: bool, reason: Reason, message: String, d: &mut ScheduleDecision| {
        set_condition(&mut d.status.conditions, ConditionType::Scheduling, status, reason, message, now, generation);
    };
    let cadence = match Cadence::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(cadence) => cadence,
        Err(message) => {
            let known =
                old.conditions.iter().any(|c| c.reason == Reason::InvalidSchedule.as_str() && c.message == message);
            if !known {
                d.events.push(EventNote::warning(EventReason::InvalidSchedule, message.clone()));
            }
            condition(false, Reason::InvalidSchedule, message, &mut d);
            return finish(d, jobs, None);
        }
    };
    if spec.suspend {
        condition(false, Reason::Suspended, "spec.suspend is true: no job starts".into(), &mut d);
        return finish(d, jobs, None);
    }
    let zone = spec.time_zone.as_deref().unwrap_or("UTC");
    let on_time = format!("starts a job at the times of {:?} in {zone}", spec.schedule);
    let last = last_scheduled(&old, jobs);
    d.status.last_schedule_time = last.map(time);
    let created = schedule.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let tick = tick(&cadence, last, created, spec.starting_deadline_seconds, now);
    match tick.run {
        Some(run) if tick.missed >= MISSED_COUNT_LIMIT => {
            let message = format!(
                "too many missed start times (> {}) before {run}: set or decrease spec.startingDeadlineSeconds or check clock skew",
                MISSED_COUNT_LIMIT - 1
            );
            d.events.push(EventNote::warning(EventReason::TooManyMissedTimes, message.clone()));
            condition(true, Reason::TooManyMissedTimes, message, &mut d);
        }
        Some(run) if tick.missed > 0 => {
            let message =
                format!("missed {} scheduled start time(s) before {run}; starting only the latest", tick.missed);
            d.events.push(EventNote::warning(EventReason::MissSchedule, message.clone()));
            condition(true, Reason::MissSchedule, message, &mut d);
        }
        // A late or skipped run's condition holds until the next run.
        None if old.conditions.iter().any(|c| {
            let late = [Reason::MissSchedule.as_str(), Reason::TooManyMissedTimes.as_str()];
            c.type_ == ConditionType::Scheduling.as_str()
                && ((c.status == "True" && late.contains(&c.reason.as_str()))
                    || c.reason == Reason::ObjectNotOwned.as_str())
        }) => {}
        _ => condition(true, Reason::Scheduled, on_time, &mut d),
    }
    if let Some(run) = tick.run {
        let name = job_name(&schedule.name_any(), run);
        if taken.contains(&name) {
            skip_taken(name, run, now, generation, &mut d);
        } else {
            start(schedule, jobs, run, &mut d);
        }
    }
    let requeue = tick.next.map(|next| Duration::from_secs(next.duration_since(now).as_secs().max(1) as u64));
    finish(d, jobs, requeue)
}

/// The latest successful time, and the finished jobs beyond the history limits (to delete).
fn keep_history(
    spec: &BackgroundJobScheduleSpec,
    jobs: &[ScheduledJob],
    old: &BackgroundJobScheduleStatus,
    d: &mut ScheduleDecision,
) {
    let succeeded = jobs.iter().filter(|j| j.phase == Some(Phase::Succeeded));
    let last_success = succeeded.filter_map(|j| j.completion_time).max();
    if let Some(t) = last_success.filter(|t| old.last_successful_time.as_ref().is_none_or(|o| o.0 < *t)) {
        d.status.last_successful_time = Some(time(t));
    }
    d.delete = beyond_history(spec, jobs);
    for name in &d.delete {
        d.events.push(
            EventNote::normal(EventReason::SuccessfulDelete, format!("deleted finished job {name} (history limit)"))
                .about(Related::Job(name.clone())),
        );
    }
}

/// The latest scheduled time run. A job's scheduled time counts as run even if the status never
/// said so (the operator stopped between creating the job and writing the status).
fn last_scheduled(old: &BackgroundJobScheduleStatus, jobs: &[ScheduledJob]) -> Option<Timestamp> {
    old.last_schedule_time.as_ref().map(|t| t.0).into_iter().chain(jobs.iter().filter_map(|j| j.scheduled_at)).max()
}

/// The run at `run` is skipped: its job's name is someone else's job. It counts as passed, as a
/// missed run does; the Scheduling condition (False) and an event name that job.
fn skip_taken(name: String, run: Timestamp, now: Timestamp, generation: Option<i64>, d: &mut ScheduleDecision) {
    let message = format!(
        "BackgroundJob {name} exists and belongs to something else (not this schedule): the run of {run} is skipped and that job left untouched; rename or delete it to free the name of a run"
    );
    d.events.push(EventNote::warning(EventReason::ObjectNotOwned, message.clone()).about(Related::Job(name)));
    let conditions = &mut d.status.conditions;
    set_condition(conditions, ConditionType::Scheduling, false, Reason::ObjectNotOwned, message, now, generation);
    if d.status.last_schedule_time.as_ref().is_none_or(|t| t.0 < run) {
        d.status.last_schedule_time = Some(time(run));
    }
}

/// The run at `run`: under spec.concurrencyPolicy, a job to create, and the active jobs it replaces.
fn start(schedule: &BackgroundJobSchedule, jobs: &[ScheduledJob], run: Timestamp, d: &mut ScheduleDecision) {
    let name = job_name(&schedule.name_any(), run);
    let taken = |d: &mut ScheduleDecision| {
        if d.status.last_schedule_time.as_ref().is_none_or(|t| t.0 < run) {
            d.status.last_schedule_time = Some(time(run));
        }
    };
    if jobs.iter().any(|j| j.name == name) {
        return taken(d);
    }
    let mut active: Vec<&ScheduledJob> = jobs.iter().filter(|j| !j.finished()).collect();
    active.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    let names = || active.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ");
    match schedule.spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            d.events.push(
                EventNote::normal(
                    EventReason::JobAlreadyActive,
                    format!(
                        "not starting the run of {run}: {} still active and spec.concurrencyPolicy is Forbid",
                        names()
                    ),
                )
                .about(Related::Job(active[0].name.clone())),
            );
            return;
        }
        ConcurrencyPolicy::Replace if !active.is_empty() => {
            d.events.push(
                EventNote::normal(
                    EventReason::SuccessfulDelete,
                    format!(
                        "deleted active job(s) {} to start the run of {run} (spec.concurrencyPolicy Replace)",
                        names()
                    ),
                )
                .about(Related::Job(active[0].name.clone())),
            );
            d.replace = active.iter().map(|j| j.name.clone()).collect();
        }
        _ => {}
    }
    let created = EventNote::normal(EventReason::SuccessfulCreate, format!("created job {name} for {run}"));
    d.events.push(created.about(Related::Job(name.clone())));
    d.create = Some(ScheduledRun { name, scheduled_at: run });
    taken(d);
}

/// The finished jobs beyond spec.successfulJobsHistoryLimit and spec.failedJobsHistoryLimit, oldest first.
fn beyond_history(spec: &BackgroundJobScheduleSpec, jobs: &[ScheduledJob]) -> Vec<String> {
    let mut delete = Vec::new();
    for (phase, limit) in
        [(Phase::Succeeded, spec.successful_jobs_history_limit), (Phase::Failed, spec.failed_jobs_history_limit)]
    {
        let mut done: Vec<&ScheduledJob> = jobs.iter().filter(|j| j.phase == Some(phase)).collect();
        done.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        let over = done.len().saturating_sub(limit.max(0) as usize);
        delete.extend(done[..over].iter().map(|j| j.name.clone()));
    }
    delete
}

/// The active list: the jobs not finished nor replaced now, and the one created, oldest first.
fn finish(mut d: ScheduleDecision, jobs: &[ScheduledJob], requeue_after: Option<Duration>) -> ScheduleDecision {
    let mut active: Vec<&ScheduledJob> =
        jobs.iter().filter(|j| !j.finished() && !d.replace.contains(&j.name)).collect();
    active.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    d.status.active = active.iter().map(|j| ActiveJob { name: j.name.clone() }).collect();
    if let Some(run) = &d.create {
        d.status.active.push(ActiveJob { name: run.name.clone() });
    }
    d.requeue_after = requeue_after;
    d
}

#[cfg(test)]
mod tests;
