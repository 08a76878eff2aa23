//! The watches both controllers run on, and how they are wired: one watch per kind (jobs,
//! their pods and Leases, templates, schedules) feeding the caches, and what each change wakes.
//! `run_with_metrics` starts them all with the two controllers and runs until shutdown.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, Stream, StreamExt, channel::mpsc::UnboundedSender, future};
use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{debug, info, warn};

use super::{
    Options, error_policy,
    events::Recorder,
    jobs::{
        chains,
        context::{Context, occupies_worker},
        orphans, reconcile, templates,
    },
    lean::{WorkerPod, lean, lean_lease, lean_pod},
    owners::Cached,
    schedules,
    triggers::{self, Fanout},
};
use crate::operator::Metrics;
use nightshift_api::{BackgroundJob, BackgroundJobSchedule, BackgroundJobTemplate};

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_with_metrics(client, options, shutdown, Arc::new(Metrics::default())).await
}

/// A wake-up channel of one controller: keys of the objects to reconcile.
type Wake<K> = UnboundedSender<ObjectRef<K>>;

/// [`run`], reporting to `metrics`.
pub async fn run_with_metrics(
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    metrics: Arc<Metrics>,
) {
    // What wakes a reconcile: keys sent by the watches below (see triggers.rs for why not
    // kube-runtime's shared streams), and the operator's own wake-ups (templates, chains, the
    // worker budget).
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    let (wake_schedule, wake_schedule_rx) = futures::channel::mpsc::unbounded();
    let (pod_store, pod_watch) = Cached::watch(scoped(&client, &options), selected(), lean_pod);
    // Leases are cached but do not trigger reconciles: renewals are folded in on a timer.
    let (lease_store, lease_watch) = Cached::watch(scoped::<Lease>(&client, &options), selected(), lean_lease);
    let (template_store, template_writer) = reflector::store();
    let template_watch = watcher(scoped::<BackgroundJobTemplate>(&client, &options), watcher::Config::default())
        .default_backoff()
        .modify(lean)
        .reflect(template_writer);
    let (job_store, job_writer) = reflector::store();
    let job_watch = job_watch(&client, &options, job_writer, wake_tx.clone(), wake_schedule);
    let (schedule_store, schedule_writer) = reflector::store();
    let schedule_watch = watcher(scoped::<BackgroundJobSchedule>(&client, &options), watcher::Config::default())
        .default_backoff()
        .modify(lean)
        .reflect(schedule_writer)
        .applied_objects()
        .inspect(|event| warn_failed("BackgroundJobSchedules", event));

    let (orphan_tx, orphan_rx) = futures::channel::mpsc::unbounded();
    let (filled_tx, filled) = Filled::new();
    metrics.worker_budget.set(options.budget.total.map_or(-1, i64::from));
    let stores = (job_store.clone(), pod_store.clone(), lease_store, template_store);
    let ctx = job_context(&client, &options, stores, metrics, wake_tx, filled.clone());
    let schedule_ctx = Arc::new(schedules::ScheduleContext::new(
        client.clone(),
        ctx.recorder.clone(),
        job_store.clone(),
        schedule_store.clone(),
        ctx.metrics.clone(),
        filled,
    ));
    let (pod_batch, pod_wakes) = triggers::batched(options.pod_batch, ctx.wake.clone());
    let pods_wake = Fanout::new((*pod_store).clone(), triggers::controller_of::<WorkerPod, BackgroundJob>, pod_batch);
    let shutdown = shutdown.shared();
    let schedule_reconciler = Controller::for_stream(schedule_watch, schedule_store)
        .with_config(kube::runtime::controller::Config::default().debounce(options.debounce))
        .reconcile_on(wake_schedule_rx)
        .graceful_shutdown_on(shutdown.clone())
        .run(schedules::reconcile, error_policy, schedule_ctx)
        .for_each(|result| {
            if let Err(e) = result {
                debug!(error = %e, "reconcile of a schedule failed");
            }
            future::ready(())
        });
    let reconciler = job_controller(ctx.clone(), job_store, wake_rx, shutdown);
    info!(namespace = options.namespace.as_deref().unwrap_or("(all)"), "controller started");
    tokio::select! {
        _ = future::join(pods(&ctx, pod_watch, pods_wake, &orphan_tx), pod_wakes) => {},
        _ = heartbeats(&ctx, lease_watch) => {},
        _ = templates_appear(&ctx, template_watch) => {},
        _ = gauges(&ctx, filled_tx) => {},
        _ = orphans::release_orphans(ctx.clone(), orphan_rx) => {},
        _ = job_watch => {},
        _ = future::join(reconciler, schedule_reconciler) => {},
    }
    info!("controller stopped");
}

/// The job controller's context: the client, the caches, the event recorder, the memory.
fn job_context(
    client: &Client,
    options: &Options,
    (jobs, pods, leases, templates): (
        Store<BackgroundJob>,
        Cached<WorkerPod>,
        Cached<Lease>,
        Store<BackgroundJobTemplate>,
    ),
    metrics: Arc<Metrics>,
    wake: Wake<BackgroundJob>,
    filled: Filled,
) -> Arc<Context> {
    Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), std::env::var("POD_NAME").ok()),
        jobs,
        pods,
        leases,
        templates,
        options: options.clone(),
        memory: Default::default(),
        metrics,
        wake,
        filled,
    })
}

/// The job controller: its triggers are all keys (reconcile_on); it reads jobs from the store.
fn job_controller(
    ctx: Arc<Context>,
    jobs: Store<BackgroundJob>,
    wake: futures::channel::mpsc::UnboundedReceiver<ObjectRef<BackgroundJob>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let options = &ctx.options;
    Controller::for_shared_stream(futures::stream::pending(), jobs)
        .with_config(
            kube::runtime::controller::Config::default().debounce(options.debounce).concurrency(options.concurrency),
        )
        .reconcile_on(wake)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = result {
                debug!(error = %e, "reconcile failed");
            }
            future::ready(())
        })
}

/// Only our pods and Leases, by label: the operator never caches the rest of the cluster.
fn selected() -> watcher::Config {
    watcher::Config::default().labels(nightshift_api::LABEL_JOB)
}

/// One watch of BackgroundJobs for both controllers: a change wakes the job and the schedule
/// that controls it; a change of phase, or a deletion, wakes the jobs whose spec.after waits
/// for it.
fn job_watch(
    client: &Client,
    options: &Options,
    writer: reflector::store::Writer<BackgroundJob>,
    wake: Wake<BackgroundJob>,
    wake_schedule: Wake<BackgroundJobSchedule>,
) -> impl Future<Output = ()> + use<> {
    let jobs_wake = Fanout::new(writer.as_reader(), triggers::itself, wake.clone()).changes_only();
    let schedules_wake =
        Fanout::new(writer.as_reader(), triggers::controller_of::<BackgroundJob, BackgroundJobSchedule>, wake_schedule);
    let mut dependents = chains::Dependents::default();
    watcher(scoped::<BackgroundJob>(client, options), watcher::Config::default())
        .default_backoff()
        .modify(lean)
        .reflect(writer)
        .for_each(move |event| {
            warn_failed("BackgroundJobs", &event);
            if let Ok(event) = event {
                jobs_wake.send(&event);
                schedules_wake.send(&event);
                for job in dependents.observe(&event) {
                    let _ = wake.unbounded_send(job);
                }
            }
            future::ready(())
        })
}

/// The pod watch only notes what decisions need, on the operator's clock; it also wakes jobs
/// waiting for workers and queues possible orphans. It never waits for the API.
async fn pods(
    ctx: &Context,
    watch: impl Stream<Item = Result<watcher::Event<WorkerPod>, watcher::Error>>,
    wake: Fanout<WorkerPod, BackgroundJob>,
    orphans: &UnboundedSender<WorkerPod>,
) {
    watch
        .for_each(|event| {
            warn_failed("Pods", &event);
            if let Ok(event) = &event {
                wake.send(event);
            }
            on_pod(ctx, orphans, event);
            future::ready(())
        })
        .await
}

/// The Lease watch notes renewals as they happen (see [`on_lease`]); it never waits for the API.
async fn heartbeats(ctx: &Context, watch: impl Stream<Item = Result<watcher::Event<Lease>, watcher::Error>>) {
    watch
        .for_each(|event| {
            warn_failed("Leases", &event);
            on_lease(ctx, event);
            future::ready(())
        })
        .await
}

/// A template that appears (or changes) wakes the jobs waiting for it.
async fn templates_appear(
    ctx: &Context,
    watch: impl Stream<Item = Result<watcher::Event<BackgroundJobTemplate>, watcher::Error>>,
) {
    watch
        .applied_objects()
        .for_each(|template| {
            warn_failed("BackgroundJobTemplates", &template);
            if let Ok(template) = template {
                for job in templates::waiting_for(&ctx.jobs, &template) {
                    let _ = ctx.wake.unbounded_send(job);
                }
            }
            future::ready(())
        })
        .await
}

/// Whether every cache has had its first LIST, for any number of waiters. kube-runtime 5.0.0's
/// `Store::wait_until_ready` wakes only the last task that polled it (a oneshot receiver keeps
/// one waker): two reconciles waiting on it, or a reconcile and the controller, and the others
/// wait for ever. So one task waits for the stores (`gauges`) and says so here.
#[derive(Clone)]
pub struct Filled(tokio::sync::watch::Receiver<bool>);

impl Filled {
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Self(rx))
    }

    /// Returns once every cache is filled (at once after that).
    pub async fn wait(&self) {
        let _ = self.0.clone().wait_for(|filled| *filled).await;
    }
}

/// How the operator's memory names a namespaced object: "namespace/name".
pub fn object_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The watcher retries a failed watch with backoff; say so, or a watch refused for good (RBAC, a
/// CRD not installed) would look like an idle operator.
fn warn_failed<T>(watch: &str, event: &Result<T, watcher::Error>) {
    if let Err(e) = event {
        warn!(watch, error = %e, "watch failed; retrying with backoff");
    }
}

fn on_pod(
    ctx: &Context,
    orphans: &UnboundedSender<WorkerPod>,
    event: Result<watcher::Event<WorkerPod>, watcher::Error>,
) {
    match event {
        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                ctx.memory().running_since.entry(pod.uid().unwrap_or_default()).or_insert_with(Timestamp::now);
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
            ctx.memory().leases.entry(key).or_default().observe(&lease, Timestamp::now());
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

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{reflector, watcher::Event};

    use super::{super::triggers::tests::poll_pending, Filled};

    /// Why the operator waits on [`Filled`]: in kube-runtime 5.0.0 two tasks waiting for one store
    /// (a reconcile and the controller, two reconciles) and only the last to poll is woken when
    /// the first LIST arrives; the other waits for ever. (When this fails, kube-runtime fixed it.)
    #[test]
    fn a_store_of_kube_runtime_5_wakes_only_its_last_waiter() {
        let (reader, mut writer) = reflector::store::<Pod>();
        let (first, second) = (reader.clone(), reader.clone());
        let mut first = pin!(first.wait_until_ready());
        let mut second = pin!(second.wait_until_ready());
        let (woken_first, woken_second) = (poll_pending(first.as_mut()), poll_pending(second.as_mut()));
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        assert!(woken_second.woken());
        assert!(!woken_first.woken(), "the first waiter was woken too");
    }

    #[test]
    fn filled_wakes_every_waiter() {
        let (tx, filled) = Filled::new();
        let (a, b) = (filled.clone(), filled.clone());
        let mut first = pin!(a.wait());
        let mut second = pin!(b.wait());
        let (woken_first, woken_second) = (poll_pending(first.as_mut()), poll_pending(second.as_mut()));
        tx.send(true).unwrap();
        assert!(woken_first.woken() && woken_second.woken());
    }
}
