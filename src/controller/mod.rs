//! The imperative shell: watches jobs and their pods, asks [`crate::decision::decide`] what to
//! do, and does it: creates and deletes pods, writes the status (server-side apply, only when it
//! changed), releases tracking finalizers once the status holds the outcome, publishes events.

mod observe;
mod workers;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, future};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{ObjectReference, Pod},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::{
    api::{self, BackgroundJob, BackgroundJobStatus},
    decision::{
        self, Decision,
        queue::{self, Budget},
    },
    runtime::{
        Metrics,
        metrics::{ErrorLabel, JobLabel, PhaseLabel, ReasonLabel},
    },
};

use observe::LeaseMemory;
pub use observe::{lease_view, pod_view};

/// Everything that can go wrong in a reconcile. Each is retried; none stops the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
        }
    }
}

/// Options of `nightshift run` that the controller itself uses.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace (all when None).
    pub namespace: Option<String>,
    /// How long to gather triggers for one job before reconciling it.
    pub debounce: Duration,
    /// How many jobs are reconciled at once.
    pub concurrency: u16,
    /// The image holding the nightshift binary, copied into workers that ask for the agent.
    pub agent_image: Option<String>,
    /// Heartbeats alone change a job's status at most once per this many seconds.
    pub fold_seconds: i64,
    /// Caps on live worker pods, operator-wide and per namespace.
    pub budget: Budget,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: None,
            debounce: Duration::from_millis(50),
            concurrency: 64,
            agent_image: None,
            fold_seconds: decision::FOLD_SECONDS,
            budget: Budget::default(),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pods: Store<Pod>,
    leases: Store<Lease>,
    agent_image: Option<String>,
    fold_seconds: i64,
    /// Per Lease ("namespace/name"): when the operator saw it renewed and its progress move.
    lease_memory: Mutex<HashMap<String, LeaseMemory>>,
    /// Per pod uid: when the operator first saw it Running.
    running_since: Mutex<HashMap<String, Timestamp>>,
    /// Per job uid: when heartbeats were last folded into its status.
    folds: Mutex<HashMap<String, Timestamp>>,
    /// Jobs (uid) whose workers' ServiceAccount, Role and RoleBinding this process has applied.
    accounts: Mutex<std::collections::HashSet<String>>,
    /// The status we last wrote per job uid, with the resourceVersion it produced: read-your-writes
    /// while the watch has not delivered it yet, so a stale cache never undoes a decision.
    written: Mutex<HashMap<String, (u64, BackgroundJobStatus)>>,
    /// Pods (uid) whose tracking finalizer we removed, while the watch may not show it yet.
    released: Mutex<HashMap<String, Instant>>,
    /// Pods we created that the watch has not shown yet ("namespace/name" -> when, job uid).
    created: Mutex<HashMap<String, (Instant, String)>>,
    budget: Budget,
    /// Held while a job's share of the budget is computed and its pods reserved, so concurrent
    /// reconciles never hand out the same free worker twice.
    budget_lock: Mutex<()>,
    /// Pods decided but not yet created ("namespace/name" -> job uid): they count against the budget.
    in_flight: Mutex<HashMap<String, String>>,
    jobs: std::sync::OnceLock<Store<BackgroundJob>>,
    pub metrics: Arc<Metrics>,
    /// Asks the controller to look at jobs again (queued ones, when workers free up).
    wake: futures::channel::mpsc::UnboundedSender<ObjectRef<BackgroundJob>>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_with_metrics(client, options, shutdown, Arc::new(Metrics::default())).await
}

/// [`run`], reporting to `metrics`.
pub async fn run_with_metrics(
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    metrics: Arc<Metrics>,
) {
    let (jobs, pods_api, leases_api): (Api<BackgroundJob>, Api<Pod>, Api<Lease>) = match &options.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    // Only our pods and Leases, by label: the operator never caches the rest of the cluster.
    let selector = watcher::Config::default().labels(api::LABEL_JOB);
    let (pod_store, pod_writer) = reflector::store_shared(1024);
    let pod_events = pod_writer.subscribe().expect("a shared store hands out subscribers");
    let pod_watch = watcher(pods_api, selector.clone()).default_backoff().modify(lean).reflect_shared(pod_writer);
    // Leases are cached but do not trigger reconciles: renewals are folded in on a timer.
    let (lease_store, lease_writer) = reflector::store();
    let lease_watch = watcher(leases_api, selector).default_backoff().modify(lean).reflect(lease_writer);

    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    let reporter = Reporter { controller: api::MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        pods: pod_store.clone(),
        leases: lease_store,
        agent_image: options.agent_image.clone(),
        fold_seconds: options.fold_seconds,
        lease_memory: Mutex::default(),
        running_since: Mutex::default(),
        folds: Mutex::default(),
        accounts: Mutex::default(),
        written: Mutex::default(),
        created: Mutex::default(),
        released: Mutex::default(),
        budget: options.budget,
        budget_lock: Mutex::default(),
        in_flight: Mutex::default(),
        jobs: std::sync::OnceLock::new(),
        wake: wake_tx,
        metrics: metrics.clone(),
    });
    metrics.worker_budget.set(options.budget.total.map_or(-1, i64::from));

    let (job_reader, job_writer) = reflector::store();
    let job_watch =
        watcher(jobs, watcher::Config::default()).default_backoff().modify(lean).reflect(job_writer).applied_objects();
    let controller = Controller::for_stream(job_watch, job_reader)
        .with_config(
            kube::runtime::controller::Config::default().debounce(options.debounce).concurrency(options.concurrency),
        )
        .owns_shared_stream(pod_events)
        .reconcile_on(wake_rx);
    let job_store = controller.store();
    let _ = ctx.jobs.set(job_store.clone());

    // Pods of a deleted job: the garbage collector deletes them, and their tracking finalizer,
    // which no reconcile of the (gone) job will release, goes here.
    let orphans = {
        let ctx = ctx.clone();
        let job_store = job_store.clone();
        pod_watch.for_each(move |event| {
            let ctx = ctx.clone();
            let job_store = job_store.clone();
            async move {
                match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        ctx.observe_pod(&pod);
                        if !is_live(&pod) {
                            ctx.wake_waiting();
                        }
                        release_if_orphaned(&ctx, &job_store, &pod).await;
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        ctx.running_since.lock().unwrap().remove(&pod.uid().unwrap_or_default());
                        ctx.wake_waiting();
                    }
                    _ => {}
                }
            }
        })
    };
    // Heartbeats are judged by when the operator sees a Lease change, so note it as it happens.
    let heartbeats = {
        let ctx = ctx.clone();
        lease_watch.for_each(move |event| {
            match event {
                Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                    let key = format!("{}/{}", lease.namespace().unwrap_or_default(), lease.name_any());
                    ctx.lease_memory.lock().unwrap().entry(key).or_default().observe(&lease, now());
                }
                Ok(watcher::Event::Delete(lease)) => {
                    let key = format!("{}/{}", lease.namespace().unwrap_or_default(), lease.name_any());
                    ctx.lease_memory.lock().unwrap().remove(&key);
                }
                _ => {}
            }
            future::ready(())
        })
    };

    let reconciler =
        controller.graceful_shutdown_on(shutdown).run(reconcile, error_policy, ctx.clone()).for_each(|result| {
            if let Err(e) = result {
                debug!(error = %e, "reconcile failed");
            }
            future::ready(())
        });
    // Gauges from the caches, every few seconds; readiness once the caches have synced.
    let gauges = {
        let ctx = ctx.clone();
        let job_store = job_store.clone();
        async move {
            let _ = job_store.wait_until_ready().await;
            let _ = ctx.pods.wait_until_ready().await;
            let _ = ctx.leases.wait_until_ready().await;
            ctx.metrics.caches_synced.store(true, std::sync::atomic::Ordering::Relaxed);
            loop {
                ctx.update_gauges(&job_store);
                ctx.forget_gone_jobs(&job_store);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    info!(namespace = options.namespace.as_deref().unwrap_or("(all)"), "controller started");
    tokio::select! {
        _ = orphans => {},
        _ = heartbeats => {},
        _ = gauges => {},
        _ = reconciler => {},
    }
    info!("controller stopped");
}

async fn release_if_orphaned(ctx: &Context, jobs: &Store<BackgroundJob>, pod: &Pod) {
    if pod.metadata.deletion_timestamp.is_none() || !pod.finalizers().iter().any(|f| f == api::FINALIZER_TRACKING) {
        return;
    }
    if jobs.wait_until_ready().await.is_err() {
        return;
    }
    let owner = pod.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "BackgroundJob");
    let owner_alive = owner.is_some_and(|o| {
        jobs.state()
            .iter()
            .any(|j| j.metadata.uid.as_deref() == Some(o.uid.as_str()) && j.metadata.deletion_timestamp.is_none())
    });
    if !owner_alive {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        if let Err(e) = release(&api, pod).await {
            warn!(pod = %pod.name_any(), error = %e, "releasing the finalizer of an orphaned worker pod");
        }
    }
}

fn error_policy(job: Arc<BackgroundJob>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.get_or_create(&ErrorLabel { error: error.metric_label().into() }).inc();
    warn!(namespace = %job.namespace().unwrap_or_default(), job = %job.name_any(), error = %error, "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

/// `now`, in whole seconds: the precision of the times in the status, so that an unchanged
/// status compares equal.
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time")
}

async fn reconcile(job: Arc<BackgroundJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time_reconcile();
    if job.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes the pods; `release_if_orphaned` lets them go.
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let job = ctx.with_latest_status(job);

    let owned = |meta: &kube::api::ObjectMeta| {
        meta.namespace.as_deref() == Some(ns.as_str())
            && meta.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
    };
    let pods: Vec<Arc<Pod>> = ctx.pods.state_filter(|p| owned(&p.metadata));
    ctx.forget_seen(&ns, &pods);
    let views: Vec<_> = {
        let running = ctx.running_since.lock().unwrap();
        pods.iter().filter_map(|p| pod_view(p, running.get(&p.uid().unwrap_or_default()).copied())).collect()
    };
    let leases: Vec<_> = {
        let memory = ctx.lease_memory.lock().unwrap();
        ctx.leases
            .state_filter(|l| owned(&l.metadata))
            .iter()
            .filter_map(|l| lease_view(l, memory.get(&format!("{ns}/{}", l.name_any()))))
            .collect()
    };
    let last_fold = ctx.folds.lock().unwrap().get(&uid).copied();

    let now = now();
    let observe = |grant| decision::Observed {
        job: &job,
        pods: &views,
        leases: &leases,
        last_fold,
        fold_seconds: ctx.fold_seconds,
        grant,
    };
    let mut d = if ctx.budget.is_unlimited() {
        decision::decide(&observe(None), now)
    } else {
        // Share out the budget and reserve this job's new pods in one step.
        let _turn = ctx.budget_lock.lock().unwrap();
        let grants = queue::plan(ctx.budget, &ctx.claims());
        let grant = grants.get(&(ns.clone(), name.clone())).cloned().unwrap_or_default();
        let d = decision::decide(&observe(Some(&grant)), now);
        let mut in_flight = ctx.in_flight.lock().unwrap();
        for (shard, attempt) in &d.create {
            in_flight.insert(format!("{ns}/{}", decision::pod::pod_name(&name, *shard, *attempt)), uid.clone());
        }
        d
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs_api: Api<BackgroundJob> = Api::namespaced(ctx.client.clone(), &ns);

    let _reserved = Reservation {
        ctx: &ctx,
        keys: d.create.iter().map(|(s, a)| format!("{ns}/{}", decision::pod::pod_name(&name, *s, *a))).collect(),
    };
    create_pods(&ctx, &job, &pods_api, &mut d, now).await?;
    for pod in &d.delete {
        match pods_api.delete(pod, &DeleteParams::background()).await {
            Ok(_) => info!(namespace = %ns, job = %name, pod, "deleted worker pod"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }

    if job.status.as_ref() != Some(&d.status) {
        let patch = json!({
            "apiVersion": BackgroundJob::api_version(&()),
            "kind": BackgroundJob::kind(&()),
            "status": d.status,
        });
        let written =
            jobs_api.patch_status(&name, &PatchParams::apply(api::MANAGER).force(), &Patch::Apply(&patch)).await?;
        ctx.remember(&uid, &written);
        if d.folded {
            ctx.folds.lock().unwrap().insert(uid.clone(), now);
        }
        ctx.metrics.status_writes.inc();
        debug!(namespace = %ns, job = %name, phase = ?d.status.phase, "status written");
    }

    // Release concurrently, and never twice: a lagging cache still shows a released finalizer.
    let to_release: Vec<&Arc<Pod>> = d
        .release
        .iter()
        .filter_map(|n| pods.iter().find(|p| p.metadata.name.as_deref() == Some(n.as_str())))
        .filter(|p| !ctx.recently_released(&p.uid().unwrap_or_default()))
        .collect();
    let released = futures::future::join_all(to_release.iter().map(|p| release(&pods_api, p))).await;
    for (pod, result) in to_release.iter().zip(released) {
        result?;
        ctx.released.lock().unwrap().insert(pod.uid().unwrap_or_default(), Instant::now());
    }

    for reason in &d.failed_attempts {
        ctx.metrics.attempts_failed.get_or_create(&ReasonLabel { reason: reason.clone() }).inc();
    }
    // One event per kind per reconcile (three workers started is one event, not three; the
    // workers a job starts with are part of its Admitted event), sent in the background and
    // behind every other request (runtime::limit): events are for people, and must not slow the
    // work down.
    let mut events: Vec<decision::EventNote> = Vec::new();
    for note in &d.events {
        if note.reason == "WorkerStarted" {
            ctx.metrics.attempts_started.inc();
        }
        if note.warning {
            warn!(namespace = %ns, job = %name, reason = note.reason, "{}", note.note);
        } else {
            info!(namespace = %ns, job = %name, reason = note.reason, "{}", note.note);
        }
        match events.last_mut() {
            Some(last) if last.reason == note.reason && last.warning == note.warning && last.note.len() < 512 => {
                last.note = format!("{}; {}", last.note, note.note);
            }
            Some(last)
                if matches!(last.reason, "Admitted" | "Resumed")
                    && note.reason == "WorkerStarted"
                    && last.note.len() < 512 =>
            {
                last.note = format!("{}; started {}", last.note, note.note);
            }
            _ => events.push(note.clone()),
        }
    }
    if !events.is_empty() {
        let (ctx, reference) = (ctx.clone(), job.object_ref(&()));
        ctx.metrics.events_pending.inc_by(events.len() as i64);
        tokio::spawn(async move {
            for note in events {
                let _sent = PendingEvent(&ctx.metrics);
                let event = Event {
                    type_: if note.warning { EventType::Warning } else { EventType::Normal },
                    reason: note.reason.into(),
                    note: Some(note.note),
                    action: note.reason.into(),
                    secondary: note.pod.map(|pod| ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod),
                        namespace: reference.namespace.clone(),
                        ..Default::default()
                    }),
                };
                if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                    debug!(error = %e, "publishing an event");
                }
            }
        });
    }

    if d.delete_job {
        info!(namespace = %ns, job = %name, "ttlSecondsAfterFinished passed; deleting the job");
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid: Some(uid.clone()), resource_version: None }),
            ..DeleteParams::background()
        };
        match jobs_api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    Ok(d.requeue_after.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// Creates the decided pods. A pod the API server refuses for good (an invalid template) fails
/// the job with the server's message instead of being retried forever.
async fn create_pods(
    ctx: &Context,
    job: &BackgroundJob,
    pods_api: &Api<Pod>,
    d: &mut Decision,
    now: Timestamp,
) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_default();
    if d.create.is_empty() {
        return Ok(());
    }
    if let Some(hb) = &job.spec.heartbeat {
        if hb.inject_agent && ctx.agent_image.is_none() {
            let message = "spec.heartbeat.injectAgent is true, but this operator has no agent image (nightshift run --agent-image)".to_string();
            d.events.push(decision::EventNote { warning: true, reason: "Failed", note: message.clone(), pod: None });
            d.status = decision::fail(job, std::mem::take(&mut d.status), "AgentImageUnset", message, now);
            d.status.active.clear();
            d.status.retrying.clear();
            d.create.clear();
            return Ok(());
        }
        let uid = job.metadata.uid.clone().unwrap_or_default();
        if !ctx.accounts.lock().unwrap().contains(&uid) {
            workers::apply_account(&ctx.client, job).await?;
            ctx.accounts.lock().unwrap().insert(uid);
        }
    }
    // Pods (and their Leases) are created concurrently: a reconcile costs one round trip, not one per pod.
    let todo: Vec<(i32, Pod)> = std::mem::take(&mut d.create)
        .into_iter()
        .map(|(shard, attempt)| (shard, decision::pod::worker_pod(job, shard, attempt, ctx.agent_image.as_deref())))
        .filter(|(_, pod)| !ctx.recently_created(&format!("{ns}/{}", pod.name_any())))
        .collect();
    if job.spec.heartbeat.is_some() {
        // The Lease names the new attempt before its pod exists: an older attempt still
        // running is fenced from this moment on.
        futures::future::try_join_all(todo.iter().map(|(shard, pod)| {
            workers::apply_lease(&ctx.client, job, *shard, pod.metadata.name.as_deref().unwrap_or_default(), now)
        }))
        .await?;
    }
    let params = PostParams { field_manager: Some(api::MANAGER.into()), ..Default::default() };
    let results = futures::future::join_all(todo.iter().map(|(_, pod)| pods_api.create(&params, pod))).await;
    let mut failure = None;
    for ((shard, pod), result) in todo.iter().zip(results) {
        let pod_name = pod.name_any();
        match result {
            Ok(_) => {
                let uid = job.metadata.uid.clone().unwrap_or_default();
                ctx.created.lock().unwrap().insert(format!("{ns}/{pod_name}"), (Instant::now(), uid));
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
                if d.status.phase != Some(api::Phase::Failed) {
                    let message = format!("the API server refused worker pod {pod_name}: {}", e.message);
                    d.events.push(decision::EventNote {
                        warning: true,
                        reason: "Failed",
                        note: message.clone(),
                        pod: None,
                    });
                    d.status = decision::fail(job, std::mem::take(&mut d.status), "InvalidPodTemplate", message, now);
                    d.status.active.clear();
                    d.status.retrying.clear();
                }
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                // Quota or Pod Security: may pass later. Say so in the status, retry calmly.
                let message = format!("the API server refused worker pod {pod_name}: {}", e.message);
                warn!(namespace = %ns, job = %job.name_any(), "{message}");
                d.status.active.retain(|a| a.shard != *shard);
                set_blocked_condition(&mut d.status, message, now);
                d.requeue_after =
                    Some(d.requeue_after.map_or(Duration::from_secs(30), |r| r.min(Duration::from_secs(30))));
            }
            Err(e) => failure = Some(e),
        }
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn set_blocked_condition(status: &mut BackgroundJobStatus, message: String, now: Timestamp) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    status.conditions.retain(|c| c.type_ != "WorkersBlocked");
    status.conditions.push(Condition {
        type_: "WorkersBlocked".into(),
        status: "True".into(),
        reason: "PodCreationForbidden".into(),
        message,
        last_transition_time: Time(now),
        observed_generation: None,
    });
}

/// Removes the tracking finalizer, guarded by a test so a stale index removes nothing else.
async fn release(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let Some(index) = pod.finalizers().iter().position(|f| f == api::FINALIZER_TRACKING) else {
        return Ok(());
    };
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": api::FINALIZER_TRACKING},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")}
    ]))
    .expect("a valid JSON patch");
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(()),
        // Gone, or the finalizers changed under us (released already): nothing to do.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(e),
    }
}

impl Context {
    fn update_gauges(&self, jobs: &Store<BackgroundJob>) {
        let mut by_phase: HashMap<String, i64> = HashMap::new();
        for phase in ["Queued", "Running", "Suspended", "Succeeded", "Failed"] {
            by_phase.insert(phase.into(), 0);
        }
        self.metrics.heartbeat_age.clear();
        let now = now();
        for job in jobs.state() {
            let status = job.status.as_ref();
            let phase = status.and_then(|s| s.phase).map_or("Queued".to_string(), |p| p.to_string());
            *by_phase.entry(phase.clone()).or_default() += 1;
            if phase == "Running"
                && let Some(beat) = status.and_then(|s| s.last_heartbeat_time.as_ref())
            {
                let label = JobLabel { namespace: job.namespace().unwrap_or_default(), job: job.name_any() };
                self.metrics.heartbeat_age.get_or_create(&label).set(now.duration_since(beat.0).as_secs_f64().max(0.0));
            }
        }
        for (phase, n) in by_phase {
            self.metrics.jobs.get_or_create(&PhaseLabel { phase }).set(n);
        }
        self.metrics.workers.set(self.pods.state().iter().filter(|p| is_live(p)).count() as i64);
    }

    /// Drops what the operator remembers per job (last fold, applied accounts, last written
    /// status) for jobs no longer in the cache: kube-runtime never reconciles a deleted job, so
    /// this is where its entries go.
    fn forget_gone_jobs(&self, jobs: &Store<BackgroundJob>) {
        let uids: std::collections::HashSet<String> = jobs.state().iter().filter_map(|j| j.uid()).collect();
        self.folds.lock().unwrap().retain(|uid, _| uids.contains(uid));
        self.accounts.lock().unwrap().retain(|uid| uids.contains(uid));
        self.written.lock().unwrap().retain(|uid, _| uids.contains(uid));
    }

    /// Every job's claim on the budget, from the pods that exist and those being created.
    fn claims(&self) -> Vec<queue::Claim> {
        let Some(jobs) = self.jobs.get() else { return Vec::new() };
        let mut live: HashMap<String, i32> = HashMap::new();
        for pod in self.pods.state() {
            if is_live(&pod)
                && let Some(owner) = pod.owner_references().iter().find(|o| o.controller == Some(true))
            {
                *live.entry(owner.uid.clone()).or_default() += 1;
            }
        }
        for (key, (_, uid)) in self.created.lock().unwrap().iter() {
            let (ns, name) = key.split_once('/').unwrap_or_default();
            if self.pods.get(&ObjectRef::new(name).within(ns)).is_none() {
                *live.entry(uid.clone()).or_default() += 1;
            }
        }
        for uid in self.in_flight.lock().unwrap().values() {
            *live.entry(uid.clone()).or_default() += 1;
        }
        jobs.state()
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none() && !j.spec.suspend)
            .filter(|j| !j.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished()))
            .map(|j| {
                let status = j.status.clone().unwrap_or_default();
                let remaining = status.shards.as_ref().map_or(j.spec.shards, |s| s.total - s.succeeded - s.failed);
                queue::Claim {
                    namespace: j.namespace().unwrap_or_default(),
                    name: j.name_any(),
                    priority: j.spec.priority,
                    created: j.metadata.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                    admitted: status.phase == Some(api::Phase::Running),
                    live: live.get(&j.uid().unwrap_or_default()).copied().unwrap_or(0),
                    wants: remaining.min(j.spec.workers.max).max(0),
                    min: j.spec.workers.min,
                }
            })
            .collect()
    }

    /// Workers freed up: jobs waiting for them (queued, or running below what they want) look again.
    fn wake_waiting(&self) {
        if self.budget.is_unlimited() {
            return;
        }
        let Some(jobs) = self.jobs.get() else { return };
        for job in jobs.state() {
            let status = job.status.as_ref();
            let phase = status.and_then(|s| s.phase);
            let short = status.and_then(|s| s.workers.as_ref()).is_some_and(|w| w.active < w.desired);
            if phase == Some(api::Phase::Queued) || (phase == Some(api::Phase::Running) && short) {
                let _ = self.wake.unbounded_send(ObjectRef::from_obj(&*job));
            }
        }
    }

    fn observe_pod(&self, pod: &Pod) {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running {
            self.running_since.lock().unwrap().entry(pod.uid().unwrap_or_default()).or_insert_with(now);
        }
    }

    fn with_latest_status(&self, job: Arc<BackgroundJob>) -> Arc<BackgroundJob> {
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let seen = resource_version(&job);
        let mut written = self.written.lock().unwrap();
        match written.get(&uid) {
            Some((rv, status)) if seen < *rv => {
                let mut job = (*job).clone();
                job.status = Some(status.clone());
                Arc::new(job)
            }
            Some(_) => {
                written.remove(&uid);
                job
            }
            None => job,
        }
    }

    fn remember(&self, uid: &str, written: &BackgroundJob) {
        if let Some(status) = &written.status {
            self.written.lock().unwrap().insert(uid.to_string(), (resource_version(written), status.clone()));
        }
    }

    fn recently_released(&self, uid: &str) -> bool {
        let mut released = self.released.lock().unwrap();
        released.retain(|_, at| at.elapsed() < Duration::from_secs(60));
        released.contains_key(uid)
    }

    fn recently_created(&self, key: &str) -> bool {
        let mut created = self.created.lock().unwrap();
        created.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(60));
        created.contains_key(key)
    }

    fn forget_seen(&self, ns: &str, pods: &[Arc<Pod>]) {
        let mut created = self.created.lock().unwrap();
        if created.is_empty() {
            return;
        }
        for pod in pods {
            created.remove(&format!("{ns}/{}", pod.name_any()));
        }
    }
}

/// Drops managedFields before an object enters a cache: decisions never read them, and they are
/// often half of an object's size (measured: a BackgroundJob is 5.4 KB with them, 2.0 KB without).
fn lean<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// An event on its way out: no longer pending once sent (or given up on).
struct PendingEvent<'a>(&'a Metrics);

impl Drop for PendingEvent<'_> {
    fn drop(&mut self) {
        self.0.events_pending.dec();
    }
}

/// Budget reservations of pods being created, released however the creating ends.
struct Reservation<'a> {
    ctx: &'a Context,
    keys: Vec<String>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.ctx.in_flight.lock().unwrap();
        for key in &self.keys {
            in_flight.remove(key);
        }
    }
}

/// A pod that occupies a worker: not finished (being deleted still counts: it may still run).
fn is_live(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// resourceVersions are etcd revisions: comparable as numbers in practice. Unparseable ones
/// count as newest, so the cache is then simply not used.
fn resource_version(job: &BackgroundJob) -> u64 {
    job.metadata.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}
