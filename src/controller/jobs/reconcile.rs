//! One reconcile of one job: observe → decide → act → record.
//!
//! - observe: the job (with the status this process last wrote), its pods and Leases from the
//!   caches, and what the operator remembers of them (`observe.rs`, `context.rs`);
//! - decide: [`nightshift_core::decide`], pure, given the worker budget's grant for this job;
//! - act: create pods (`act.rs`); a create the API server refuses ends the reconcile here, and
//!   the refusal is observed by the next one, which decides again;
//! - record: write the status, then delete the pods it stops, release finalizers, publish
//!   events, delete a job whose TTL passed (`record.rs`).
//!
//! Each reconcile runs in a span naming the job, so its log lines need not.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::{ResourceExt, runtime::controller::Action};

use super::{act, chains, context::Context, observe, record, templates};
use crate::controller::{Error, lean::WorkerPod, watches::object_key};
use nightshift_api::BackgroundJob;
use nightshift_core::{
    Decision, LeaseView, Observed, PodView, Refusal,
    build::pod::pod_name,
    jobs::{chain::Chain, queue},
    whole,
};

#[tracing::instrument(name = "reconcile", skip_all, fields(namespace = job.namespace().unwrap_or_default(), job = job.name_any()))]
pub async fn reconcile(job: Arc<BackgroundJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time_reconcile();
    if job.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes the pods; the orphan queue releases their finalizers.
        return Ok(Action::await_change());
    }
    // The controller waits for the job cache alone: deciding before the pod and Lease caches
    // are filled would take a running attempt's pod for a missing one and create it again,
    // re-pointing its Lease and clearing the result it reported (a new leader did, in a fault
    // run). Every cache has its first LIST once; from then on this returns at once.
    ctx.filled.wait().await;
    // Judged at its whole second (the status's precision), but heartbeats to the instant.
    let at = Timestamp::now();
    let now = whole(at);
    let seen = observe(&ctx, job);
    let d = decide(&ctx, &seen, at);
    let _creating = Creating::new(&ctx, &seen.job, &d);
    if let Some(refusal) = act::act(&ctx, &seen.job, &d, now).await? {
        return Ok(refused(&ctx, &seen.job, refusal));
    }
    if d.resolve.is_some() {
        // The job's spec changed: its new version wakes it, and that step writes the status
        // (this one's status write would be fenced off by that very change).
        return Ok(Action::await_change());
    }
    record::record(&ctx, &seen.job, &seen.pods, d, now).await
}

/// What a reconcile saw of one job.
pub struct Seen {
    /// The job, with the status this process last wrote if the cache is behind.
    pub job: Arc<BackgroundJob>,
    pub pods: Vec<Arc<WorkerPod>>,
    views: Vec<PodView>,
    leases: Vec<LeaseView>,
    last_fold: Option<Timestamp>,
    refusal: Option<Refusal>,
    chain: Option<Chain>,
    /// The generation of the template of a job not resolved yet, when it exists.
    template_generation: Option<i64>,
}

fn observe(ctx: &Context, job: Arc<BackgroundJob>) -> Seen {
    let job = ctx.with_latest_status(job);
    let (ns, uid) = (job.namespace().unwrap_or_default(), job.uid().unwrap_or_default());
    let pods = ctx.pods.owned_by(&ns, &uid);
    let leases = ctx.leases.owned_by(&ns, &uid);
    let mut memory = ctx.memory();
    if !memory.creating.is_empty() {
        for pod in &pods {
            memory.creating.forget(&object_key(&ns, &pod.name_any()));
        }
    }
    let running = &memory.running_since;
    let views =
        pods.iter().filter_map(|p| observe::pod_view(p, p.uid().and_then(|u| running.get(&u).copied()))).collect();
    let name = job.name_any();
    let leases = leases
        .iter()
        .filter_map(|l| observe::lease_view(&name, l, memory.leases.get(&object_key(&ns, &l.name_any()))))
        .collect();
    let job_memory = memory.jobs.get(&uid);
    let (last_fold, refusal) = (job_memory.and_then(|m| m.last_fold), job_memory.and_then(|m| m.refusal.clone()));
    drop(memory);
    let chain = chains::chain_of(&ctx.jobs, &job);
    let template_generation = match nightshift_core::jobs::template::unresolved(&job) {
        true => templates::template_of(&ctx.templates, &job).map(|t| t.metadata.generation.unwrap_or(1)),
        false => None,
    };
    Seen { job, pods, views, leases, last_fold, refusal, chain, template_generation }
}

/// Decides, and reserves the pods to create. Under a worker budget, the job's share is
/// computed and its pods reserved in one turn of the lock, so concurrent reconciles never hand
/// out the same free worker twice. Pods already being created, or created and not yet seen,
/// are not created again.
fn decide(ctx: &Context, seen: &Seen, at: Timestamp) -> Decision {
    let observed = Observed::new(&seen.job, &seen.views)
        .leases(&seen.leases)
        .last_fold(seen.last_fold)
        .fold_seconds(ctx.options.fold_seconds)
        .agent_image(ctx.options.agent_image.is_some())
        .refusal(seen.refusal.as_ref())
        .chain(seen.chain.as_ref())
        .template_generation(seen.template_generation);
    let (ns, name) = (seen.job.namespace().unwrap_or_default(), seen.job.name_any());
    let budget = ctx.options.budget;
    let (mut d, mut memory) = if budget.is_unlimited() {
        (nightshift_core::decide(&observed, at), ctx.memory())
    } else {
        let mut memory = ctx.memory();
        let grants = queue::plan(budget, &ctx.claims(&mut memory));
        let grant = grants.get(&(ns.clone(), name.clone())).cloned().unwrap_or_default();
        (nightshift_core::decide(&observed.grant(Some(&grant)), at), memory)
    };
    let clock = Instant::now();
    d.create.retain(|&(shard, attempt)| {
        !memory.creating.expects(&object_key(&ns, &pod_name(&name, shard, attempt)), clock)
    });
    for key in creating_keys(&seen.job, &d) {
        memory.creating.sending(key, seen.job.uid().unwrap_or_default());
    }
    d
}

/// The API server refused a worker pod: the decision is not recorded (it counted on that pod),
/// and the job is decided again at once, with the refusal observed.
fn refused(ctx: &Context, job: &BackgroundJob, refusal: Refusal) -> Action {
    let mut memory = ctx.memory();
    memory.jobs.entry(job.uid().unwrap_or_default()).or_default().refusal = Some(refusal);
    Action::requeue(Duration::ZERO)
}

/// Pods this reconcile creates: when it ends, those whose create never returned (an error
/// before it, or the reconcile dropped) stop counting against the budget.
struct Creating<'a> {
    ctx: &'a Context,
    keys: Vec<String>,
}

impl<'a> Creating<'a> {
    fn new(ctx: &'a Context, job: &BackgroundJob, d: &Decision) -> Self {
        Self { ctx, keys: creating_keys(job, d) }
    }
}

/// The keys in `Memory::creating` of the pods `d` creates.
fn creating_keys(job: &BackgroundJob, d: &Decision) -> Vec<String> {
    let (ns, name) = (job.namespace().unwrap_or_default(), job.name_any());
    d.create.iter().map(|&(shard, attempt)| object_key(&ns, &pod_name(&name, shard, attempt))).collect()
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        let mut memory = self.ctx.memory();
        for key in &self.keys {
            memory.creating.forget_unsent(key);
        }
    }
}
