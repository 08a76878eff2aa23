//! BackgroundJobSchedules: a controller of their own beside the job controller, fed by the same
//! watch of BackgroundJobs (a second subscriber of its shared store, not a second LIST/WATCH).
//! Each reconcile of a schedule is observe → decide → act → record:
//!
//! - observe: the schedule (with the status this process last wrote, if the cache is behind),
//!   the jobs it owns from the shared cache, and those it created that the cache does not show yet;
//! - decide: [`decision::schedules::decide`], pure, `now` an argument;
//! - act: delete the jobs a run replaces (by uid, only those it controls), then create the
//!   run's job (AlreadyExists counts as created when the job is the schedule's: that is how a
//!   restart, or a second replica, never doubles a run; anyone else's job of that name is left
//!   alone, and the run skipped);
//! - record: write the status (fenced on its version, only when it changed), then delete the jobs
//!   beyond the history limits, and publish events.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, PostParams},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use tracing::{debug, info, warn};

use super::{
    Error,
    events::{self, Recorder},
    expectations::Expectations,
    now,
    watches::{Filled, object_key},
    writes::{FENCED_RETRY, delete_by_uid, resource_version, with_written, write_status},
};
use crate::operator::Metrics;
use nightshift_api::{BackgroundJob, BackgroundJobSchedule, BackgroundJobScheduleStatus};
use nightshift_core::{
    EventNote,
    build::job::job_of_run,
    schedules::{ScheduleDecision, ScheduledJob, decide_with},
};

/// How long a created job may take to show in the cache before the schedule stops counting it.
const EXPECTATION_TTL: Duration = Duration::from_secs(60);

pub struct ScheduleContext {
    pub client: Client,
    pub recorder: Recorder,
    /// The job controller's cache of BackgroundJobs.
    pub jobs: Store<BackgroundJob>,
    /// The schedule controller's own cache, to forget what it remembers of deleted schedules.
    pub schedules: Store<BackgroundJobSchedule>,
    pub metrics: Arc<Metrics>,
    /// Every cache has had its first LIST: deciding on a half-filled job cache could start a run
    /// twice.
    filled: Filled,
    memory: Mutex<ScheduleMemory>,
}

/// What the schedule controller remembers between reconciles; lost on a restart, by design
/// (the caches, filled from a fresh LIST, then hold all of it).
struct ScheduleMemory {
    /// Per schedule uid: the status last written, with the resourceVersion it produced.
    written: HashMap<String, Option<(u64, BackgroundJobScheduleStatus)>>,
    /// Jobs created ("namespace/name") that the cache may not show yet: their schedule's uid
    /// and the job as decide sees it.
    creating: Expectations<(String, ScheduledJob)>,
    /// Per schedule uid: the event notes of its last reconcile. A note said then is not said
    /// again (a skipped run is decided again on each change of the active job; one event does).
    noted: HashMap<String, Vec<EventNote>>,
}

impl ScheduleContext {
    pub fn new(
        client: Client,
        recorder: Recorder,
        jobs: Store<BackgroundJob>,
        schedules: Store<BackgroundJobSchedule>,
        metrics: Arc<Metrics>,
        filled: Filled,
    ) -> Self {
        let memory = ScheduleMemory {
            written: HashMap::new(),
            creating: Expectations::new(EXPECTATION_TTL),
            noted: HashMap::new(),
        };
        Self { client, recorder, jobs, schedules, metrics, filled, memory: Mutex::new(memory) }
    }

    fn memory(&self) -> MutexGuard<'_, ScheduleMemory> {
        self.memory.lock().expect("no reconcile panics holding the memory")
    }
}

#[tracing::instrument(name = "reconcile", skip_all, fields(namespace = schedule.namespace().unwrap_or_default(), schedule = schedule.name_any()))]
pub async fn reconcile(schedule: Arc<BackgroundJobSchedule>, ctx: Arc<ScheduleContext>) -> Result<Action, Error> {
    if schedule.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes its jobs.
        return Ok(Action::await_change());
    }
    // Deciding on a half-filled job cache could start a run twice (the name would refuse the
    // second job, but Replace could delete the first): wait for the first LIST.
    ctx.filled.wait().await;
    let now = now();
    let (schedule, jobs, mut taken) = observe(&ctx, schedule);
    let mut d = decide_with(&schedule, &jobs, &taken, now);
    debug!(jobs = jobs.len(), create = ?d.create.as_ref().map(|r| &r.name), requeue = ?d.requeue_after, "decided");
    if let Some(name) = act(&ctx, &schedule, &d).await? {
        // The run's name turned out to be someone else's job (created since the cache was
        // read): decided again knowing it, the run is skipped and the schedule says why.
        taken.push(name);
        d = decide_with(&schedule, &jobs, &taken, now);
    }
    record(&ctx, &schedule, d).await
}
/// The schedule, the jobs it controls, and the names of jobs named like its runs
/// (`SCHEDULE-...`) that it does not control: those it must never create, delete or count.
fn observe(
    ctx: &ScheduleContext,
    schedule: Arc<BackgroundJobSchedule>,
) -> (Arc<BackgroundJobSchedule>, Vec<ScheduledJob>, Vec<String>) {
    let (ns, uid) = (schedule.namespace().unwrap_or_default(), schedule.uid().unwrap_or_default());
    let controlled = |j: &BackgroundJob| controlled_by(j, &uid);
    let prefix = format!("{}-", schedule.name_any());
    let in_ns = |j: &BackgroundJob| j.metadata.namespace.as_deref() == Some(ns.as_str());
    let owned = ctx.jobs.state_filter(|j| in_ns(j) && controlled(j));
    let taken: Vec<String> = ctx
        .jobs
        .state_filter(|j| in_ns(j) && !controlled(j) && j.name_any().starts_with(&prefix))
        .iter()
        .map(|j| j.name_any())
        .collect();
    let mut jobs: Vec<ScheduledJob> = owned.iter().map(|j| scheduled_job(j)).collect();
    let mut memory = ctx.memory();
    for job in &jobs {
        memory.creating.forget(&object_key(&ns, &job.name));
    }
    let unseen: Vec<ScheduledJob> = memory
        .creating
        .open(Instant::now())
        .filter(|(_, (owner, _))| *owner == uid)
        .map(|(_, (_, j))| j.clone())
        .collect();
    jobs.extend(unseen);
    // Read-your-writes: the status this process wrote, while the cache has not caught up.
    let schedule = match memory.written.get_mut(&uid) {
        Some(written) => with_written(schedule, written, |s| &mut s.status),
        None => schedule,
    };
    (schedule, jobs, taken)
}

/// Whether the object with uid `uid` is `job`'s controller.
fn controlled_by(job: &BackgroundJob, uid: &str) -> bool {
    job.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true))
}

/// A job as decide sees it.
fn scheduled_job(job: &BackgroundJob) -> ScheduledJob {
    let status = job.status.as_ref();
    ScheduledJob {
        name: job.name_any(),
        scheduled_at: job
            .annotations()
            .get(nightshift_api::ANNOTATION_SCHEDULED_AT)
            .and_then(|t| t.parse::<Timestamp>().ok()),
        phase: status.and_then(|s| s.phase),
        completion_time: status.and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
    }
}

/// Deletes the jobs the run replaces and creates the run's job. Returns the run's name when a
/// job of that name exists that this schedule does not control (left untouched).
async fn act(
    ctx: &ScheduleContext,
    schedule: &BackgroundJobSchedule,
    d: &ScheduleDecision,
) -> Result<Option<String>, Error> {
    delete_jobs(ctx, schedule, &d.replace).await?;
    let Some(run) = &d.create else { return Ok(None) };
    let ns = schedule.namespace().unwrap_or_default();
    let job = job_of_run(schedule, &run.name, run.scheduled_at);
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &ApiResource::erase::<BackgroundJob>(&()));
    let params = PostParams { field_manager: Some(nightshift_api::MANAGER.into()), ..Default::default() };
    match api.create(&params, &job).await {
        Ok(_) => info!(job = run.name, scheduled = %run.scheduled_at, "created the job"),
        // Created already, by this operator before a restart or by another replica: then this
        // schedule controls it. Anyone else's job of that name is not this run.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing: BackgroundJob = Api::namespaced(ctx.client.clone(), &ns).get(&run.name).await?;
            if !controlled_by(&existing, &schedule.uid().unwrap_or_default()) {
                warn!(job = run.name, "a job of the run's name exists and is not this schedule's; left alone");
                return Ok(Some(run.name.clone()));
            }
            debug!(job = run.name, "the job exists already")
        }
        Err(e) => return Err(e.into()),
    }
    let view = ScheduledJob {
        name: run.name.clone(),
        scheduled_at: Some(run.scheduled_at),
        phase: None,
        completion_time: None,
    };
    ctx.memory().creating.expect(
        object_key(&ns, &run.name),
        (schedule.uid().unwrap_or_default(), view),
        Instant::now(),
    );
    Ok(None)
}

async fn record(
    ctx: &Arc<ScheduleContext>,
    schedule: &BackgroundJobSchedule,
    d: ScheduleDecision,
) -> Result<Action, Error> {
    if schedule.status.as_ref() != Some(&d.status) {
        // Fenced like a job's status: a paused former leader, or a decision from a stale cache,
        // cannot overwrite a newer status (an older lastScheduleTime, a shorter active list)
        // nor delete jobs on its word.
        let Some(written) = write_status(&ctx.client, &ctx.metrics, schedule, &d.status).await? else {
            return Ok(Action::requeue(FENCED_RETRY));
        };
        let rv = resource_version(&written);
        if let Some(status) = written.status {
            ctx.memory().written.insert(schedule.uid().unwrap_or_default(), Some((rv, status)));
        }
        debug!("status written");
    }
    delete_jobs(ctx, schedule, &d.delete).await?;
    let fresh: Vec<EventNote> = {
        let mut memory = ctx.memory();
        let said = memory.noted.insert(schedule.uid().unwrap_or_default(), d.events.clone()).unwrap_or_default();
        if memory.noted.len() > 2 * ctx.schedules.state().len() + 16 {
            let live: std::collections::HashSet<String> =
                ctx.schedules.state().iter().filter_map(|s| s.uid()).collect();
            memory.noted.retain(|uid, _| live.contains(uid));
            memory.written.retain(|uid, _| live.contains(uid));
        }
        d.events.into_iter().filter(|note| !said.contains(note)).collect()
    };
    events::send(&ctx.recorder, &ctx.metrics, schedule.object_ref(&()), &fresh);
    Ok(d.requeue_after.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// Deletes jobs this schedule controls, each by uid: a job of the name that is someone else's,
/// or was created since, is never deleted in its place.
async fn delete_jobs(ctx: &ScheduleContext, schedule: &BackgroundJobSchedule, names: &[String]) -> Result<(), Error> {
    let ns = schedule.namespace().unwrap_or_default();
    let api: Api<BackgroundJob> = Api::namespaced(ctx.client.clone(), &ns);
    for name in names {
        // A job created moments ago may not be in the cache yet.
        let job = match ctx.jobs.get(&ObjectRef::new(name).within(&ns)) {
            Some(job) => job,
            None => match api.get_opt(name).await? {
                Some(job) => Arc::new(job),
                None => continue,
            },
        };
        if !controlled_by(&job, &schedule.uid().unwrap_or_default()) {
            warn!(job = name, "not deleting a job this schedule does not control");
            continue;
        }
        if delete_by_uid(&api, name, job.uid()).await? {
            info!(job = name, "deleted the job");
        }
    }
    Ok(())
}
