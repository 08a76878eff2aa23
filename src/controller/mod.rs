//! The imperative shell around [`crate::decision`]: watches jobs, their pods and Leases, and
//! reconciles each job as observe → decide → act → record.
//!
//! A reading order: this file (the watches and tasks), `reconcile.rs` (the pipeline),
//! `act.rs` and `record.rs` (the API calls), then `context.rs` (what reconciles share and the
//! operator remembers), `expectations.rs`, `observe.rs` (objects to views), `access.rs` (the
//! workers' Lease and RBAC), `events.rs`, `orphans.rs`, `chains.rs` (spec.after),
//! `templates.rs` (spec.templateRef); `schedules.rs` is the BackgroundJobSchedule controller,
//! which shares the job watch.

mod access;
mod act;
mod chains;
mod context;
mod events;
mod expectations;
mod observe;
mod orphans;
mod reconcile;
mod record;
mod schedules;
mod templates;
mod triggers;

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, channel::mpsc::UnboundedSender, future};
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Recorder, Reporter},
        reflector, watcher,
    },
};
use tracing::{debug, info, warn};

use crate::{
    api::{self, BackgroundJob},
    decision::{self, queue::Budget},
    operator::{Metrics, metrics::ErrorLabel},
};

pub use context::fenced_status;
use context::{Context, object_key, occupies_worker};
pub use observe::{lease_view, pod_view};
use triggers::Fanout;

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
    let (jobs_api, pods_api, leases_api): (Api<BackgroundJob>, Api<Pod>, Api<Lease>) =
        (scoped(&client, &options), scoped(&client, &options), scoped(&client, &options));
    // What wakes a reconcile: keys sent by the watches below (see triggers.rs for why not
    // kube-runtime's shared streams), and the operator's own wake-ups (templates, chains, the
    // worker budget).
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    let (wake_schedule, wake_schedule_rx) = futures::channel::mpsc::unbounded();
    // Only our pods and Leases, by label: the operator never caches the rest of the cluster.
    let selector = watcher::Config::default().labels(api::LABEL_JOB);
    let (pod_store, pod_writer) = reflector::store();
    let pod_watch = watcher(pods_api, selector.clone()).default_backoff().modify(lean_pod).reflect(pod_writer);
    let pods_wake = Fanout::new(pod_store.clone(), triggers::controller_of::<Pod, BackgroundJob>, wake_tx.clone());
    // Leases are cached but do not trigger reconciles: renewals are folded in on a timer.
    let (lease_store, lease_writer) = reflector::store();
    let lease_watch = watcher(leases_api, selector).default_backoff().modify(lean_lease).reflect(lease_writer);
    let (template_store, template_writer) = reflector::store();
    let template_watch = watcher(scoped::<api::BackgroundJobTemplate>(&client, &options), watcher::Config::default())
        .default_backoff()
        .modify(lean)
        .reflect(template_writer)
        .applied_objects();
    // One watch of BackgroundJobs for both controllers: a change wakes the job and the schedule
    // that controls it; a change of phase, or a deletion, wakes the jobs whose spec.after waits
    // for it.
    let (job_store, job_writer) = reflector::store();
    let jobs_wake = Fanout::new(job_store.clone(), triggers::itself, wake_tx.clone()).changes_only();
    let schedules_wake = Fanout::new(
        job_store.clone(),
        triggers::controller_of::<BackgroundJob, api::BackgroundJobSchedule>,
        wake_schedule,
    );
    let mut dependents = chains::Dependents::default();
    let wake_dependents = wake_tx.clone();
    let job_watch =
        watcher(jobs_api, watcher::Config::default()).default_backoff().modify(lean).reflect(job_writer).for_each(
            move |event| {
                warn_failed("BackgroundJobs", &event);
                if let Ok(event) = event {
                    jobs_wake.send(&event);
                    schedules_wake.send(&event);
                    for job in dependents.observe(&event) {
                        let _ = wake_dependents.unbounded_send(job);
                    }
                }
                future::ready(())
            },
        );
    let (schedule_store, schedule_writer) = reflector::store();
    let schedule_watch = watcher(scoped::<api::BackgroundJobSchedule>(&client, &options), watcher::Config::default())
        .default_backoff()
        .modify(lean)
        .reflect(schedule_writer)
        .applied_objects()
        .inspect(|event| warn_failed("BackgroundJobSchedules", event));

    let (orphan_tx, orphan_rx) = futures::channel::mpsc::unbounded();
    let (filled_tx, filled) = context::Filled::new();
    let reporter = Reporter { controller: api::MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    metrics.worker_budget.set(options.budget.total.map_or(-1, i64::from));
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        jobs: job_store.clone(),
        pods: pod_store,
        leases: lease_store,
        templates: template_store,
        options: options.clone(),
        memory: Default::default(),
        metrics,
        wake: wake_tx,
        filled: filled.clone(),
    });

    let schedule_ctx = Arc::new(schedules::ScheduleContext::new(
        client.clone(),
        ctx.recorder.clone(),
        job_store.clone(),
        schedule_store.clone(),
        ctx.metrics.clone(),
        filled,
    ));
    // The job controller's triggers are all keys (reconcile_on); it reads jobs from the store.
    let controller = Controller::for_shared_stream(futures::stream::pending(), job_store)
        .with_config(
            kube::runtime::controller::Config::default().debounce(options.debounce).concurrency(options.concurrency),
        )
        .reconcile_on(wake_rx);

    // The pod and Lease watches only note what decisions need, on the operator's clock; the
    // pod watch also wakes jobs waiting for workers and queues possible orphans. Neither ever
    // waits for the API.
    let pods = pod_watch.for_each(|event| {
        warn_failed("Pods", &event);
        if let Ok(event) = &event {
            pods_wake.send(event);
        }
        on_pod(&ctx, &orphan_tx, event);
        future::ready(())
    });
    let heartbeats = lease_watch.for_each(|event| {
        warn_failed("Leases", &event);
        on_lease(&ctx, event);
        future::ready(())
    });
    // A template that appears (or changes) wakes the jobs waiting for it.
    let templates = template_watch.for_each(|template| {
        warn_failed("BackgroundJobTemplates", &template);
        if let Ok(template) = template {
            for job in templates::waiting_for(&ctx.jobs, &template) {
                let _ = ctx.wake.unbounded_send(job);
            }
        }
        future::ready(())
    });
    let shutdown = shutdown.shared();
    let schedule_reconciler = Controller::for_stream(schedule_watch, schedule_store)
        .with_config(kube::runtime::controller::Config::default().debounce(options.debounce))
        .reconcile_on(wake_schedule_rx)
        .graceful_shutdown_on(shutdown.clone())
        .run(schedules::reconcile, schedules::error_policy, schedule_ctx)
        .for_each(|result| {
            if let Err(e) = result {
                debug!(error = %e, "reconcile of a schedule failed");
            }
            future::ready(())
        });
    let reconciler = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = result {
                debug!(error = %e, "reconcile failed");
            }
            future::ready(())
        });
    info!(namespace = options.namespace.as_deref().unwrap_or("(all)"), "controller started");
    tokio::select! {
        _ = pods => {},
        _ = heartbeats => {},
        _ = templates => {},
        _ = gauges(&ctx, filled_tx) => {},
        _ = orphans::release_orphans(ctx.clone(), orphan_rx) => {},
        _ = job_watch => {},
        _ = future::join(reconciler, schedule_reconciler) => {},
    }
    info!("controller stopped");
}

/// The watcher retries a failed watch with backoff; say so, or a watch refused for good (RBAC, a
/// CRD not installed) would look like an idle operator.
fn warn_failed<T>(watch: &str, event: &Result<T, watcher::Error>) {
    if let Err(e) = event {
        warn!(watch, error = %e, "watch failed; retrying with backoff");
    }
}

fn on_pod(ctx: &Context, orphans: &UnboundedSender<Pod>, event: Result<watcher::Event<Pod>, watcher::Error>) {
    match event {
        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                ctx.memory().running_since.entry(pod.uid().unwrap_or_default()).or_insert_with(now);
            }
            if !occupies_worker(&pod) {
                ctx.wake_waiting();
            }
            if orphans::candidate(&pod) {
                let _ = orphans.unbounded_send(pod);
            }
        }
        Ok(watcher::Event::Delete(pod)) => {
            ctx.memory().running_since.remove(&pod.uid().unwrap_or_default());
            ctx.wake_waiting();
        }
        _ => {}
    }
}

/// Heartbeats are judged by when the operator sees a Lease change, so note it as it happens.
fn on_lease(ctx: &Context, event: Result<watcher::Event<Lease>, watcher::Error>) {
    match event {
        Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
            let key = object_key(&lease.namespace().unwrap_or_default(), &lease.name_any());
            ctx.memory().leases.entry(key).or_default().observe(&lease, now());
        }
        Ok(watcher::Event::Delete(lease)) => {
            let key = object_key(&lease.namespace().unwrap_or_default(), &lease.name_any());
            ctx.memory().leases.remove(&key);
        }
        _ => {}
    }
}

/// Gauges from the caches, every few seconds; readiness once the caches have synced.
/// The only waiter on the stores' readiness (see [`context::Filled`]), which it then announces.
async fn gauges(ctx: &Context, filled: tokio::sync::watch::Sender<bool>) {
    let _ = ctx.jobs.wait_until_ready().await;
    let _ = ctx.pods.wait_until_ready().await;
    let _ = ctx.leases.wait_until_ready().await;
    let _ = ctx.templates.wait_until_ready().await;
    let _ = filled.send(true);
    ctx.metrics.caches_synced.store(true, std::sync::atomic::Ordering::Relaxed);
    loop {
        ctx.update_gauges();
        ctx.forget_gone_jobs();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn error_policy(job: Arc<BackgroundJob>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.get_or_create(&ErrorLabel { error: error.metric_label().into() }).inc();
    warn!(namespace = %job.namespace().unwrap_or_default(), job = %job.name_any(), error = %error, "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

/// An API for the watched namespace, or all.
fn scoped<K>(client: &Client, options: &Options) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match &options.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// `now`, in whole seconds: the precision of the times in the status, so that an unchanged
/// status compares equal.
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time")
}

/// Drops managedFields before an object enters a cache: decisions never read them, and they are
/// often half of an object's size (measured: a BackgroundJob is 5.4 KB with them, 2.0 KB without).
fn lean<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A Lease as the operator keeps it: of its managedFields only when its renewTime last changed,
/// as the API server stamped it (see [`observe::renewal_stamp`]).
fn lean_lease(lease: &mut Lease) {
    let stamp = observe::renewal_stamp(lease);
    lease.metadata.managed_fields = stamp.map(|time| vec![observe::stamp_entry(time)]);
}

/// A worker pod as the operator keeps it: metadata and status. Nothing it decides reads the spec
/// (the pod view, the budget, the orphan release read labels, owners, finalizers and status),
/// and the spec is most of a worker pod (the user's containers, the agent, volumes): measured in
/// `make bench` (its memory run with 100,000 pods).
fn lean_pod(pod: &mut Pod) {
    lean(pod);
    pod.spec = None;
}
