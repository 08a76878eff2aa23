//! The memory run: suspended BackgroundJobs, the operator started on them twice, then a third time
//! with worker pods beside them (the pod cache's memory).

use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::*;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct MemoryResult {
    pub(crate) jobs: usize,
    pub(crate) create_secs: f64,
    /// First start: every job new to the operator (it writes their Suspended status).
    pub(crate) first_settle_secs: Option<f64>,
    pub(crate) first_peak_mib: f64,
    pub(crate) first_steady_mib: f64,
    pub(crate) first_writes: BTreeMap<String, u64>,
    /// Second start: every job at rest (suspended, status already written).
    pub(crate) second_list_secs: Option<f64>,
    pub(crate) second_peak_mib: f64,
    pub(crate) second_steady_mib: f64,
    pub(crate) second_writes: BTreeMap<String, u64>,
    pub(crate) second_cpu: f64,
    /// Third start: the same jobs and this many worker pods.
    pub(crate) pods: Option<PodMemory>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PodMemory {
    pub(crate) pods: usize,
    pub(crate) create_secs: f64,
    /// One pod as the API server serves it (JSON, managedFields included).
    pub(crate) served_bytes: usize,
    /// Until the operator's nightshift_workers gauge counted them all.
    pub(crate) cached_secs: Option<f64>,
    pub(crate) peak_mib: f64,
    pub(crate) steady_mib: f64,
}

/// Third start of the memory run: `pods` worker pods beside the jobs, each as the operator makes
/// it for examples/bulk-import.yaml (the agent injected, its env and volumes), but owned by no
/// job (the operator only caches them) and never scheduled. The operator's RSS once its cache
/// holds them all, against the second start's (the same jobs, no pods).
pub(crate) async fn pod_memory(ctx: &RunCtx<'_>, pods: usize) -> Res<PodMemory> {
    let ns = Side::Nightshift.namespace();
    let text = fs::read_to_string(ctx.s.repo.join("examples/bulk-import.yaml"))?;
    let mut job: nightshift_api::BackgroundJob = serde_yaml_ng::from_str(&text)?;
    job.metadata.namespace = Some(ns.into());
    let image = format!("nightshift:{}", env!("CARGO_PKG_VERSION"));
    let worker = |i: usize| {
        let pod = nightshift_core::build::pod::worker_pod(&job, i as i32, 1, Some(&image), None);
        let mut v = serde_json::to_value(pod).expect("a pod serializes");
        v["metadata"]["ownerReferences"] = Value::Null;
        // No scheduler of this name runs: kube-scheduler leaves them Pending, kwok never sees them.
        v["spec"]["schedulerName"] = json!("nightshift-bench-unscheduled");
        v
    };
    // The pods name the job's worker ServiceAccount: the API server admits them only once it exists.
    let account = nightshift_core::build::access::worker_account(&job.name_any());
    let accounts: Api<DynamicObject> =
        Api::namespaced_with(ctx.admin.clone(), ns, &ApiResource::erase::<ServiceAccount>(&()));
    create_all(accounts, vec![json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})], 1)
        .await;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.admin.clone(), ns, &pod_resource());
    let t0 = Instant::now();
    let failures = create_all(api.clone(), (0..pods).map(worker).collect(), ctx.s.in_flight).await;
    let mut m = PodMemory { pods, create_secs: t0.elapsed().as_secs_f64(), ..Default::default() };
    eprintln!("bench: [memory] created {pods} worker pods in {:.1}s ({failures} failed)", m.create_secs);
    let one = api.list(&kube::api::ListParams::default().limit(1)).await?;
    m.served_bytes = one.items.first().map_or(0, |p| serde_json::to_vec(p).map_or(0, |v| v.len()));

    let op = ctx.start_operator("operator-memory-3.log")?;
    let at = op.metrics.clone().ok_or("the operator has no metrics port")?;
    let t1 = Instant::now();
    while t1.elapsed() < ctx.s.run_timeout {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if metric(&at, "nightshift_workers").await.is_some_and(|n| n >= pods as i64) {
            m.cached_secs = Some(t1.elapsed().as_secs_f64());
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    m.peak_mib = status_mib(op.pid(), "VmHWM");
    m.steady_mib = status_mib(op.pid(), "VmRSS");
    Ok(m)
}

pub(crate) async fn memory_run(s: &Settings, jobs: usize) -> Res<MemoryResult> {
    let label = "memory";
    let cluster = Cluster::up(s, 0, label)?;
    let operator_kubeconfig = cluster.setup()?;
    let admin = client_from(&cluster.admin_kubeconfig()).await?;
    let ns = Side::Nightshift.namespace();
    let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &bgj_resource());
    let t0 = Instant::now();
    let failures = create_all(
        api.clone(),
        (0..jobs).map(|i| object(Side::Nightshift, i, true, Shape::SMALL)).collect(),
        s.in_flight,
    )
    .await;
    let create_secs = t0.elapsed().as_secs_f64();
    eprintln!("bench: [memory] created {jobs} suspended BackgroundJobs in {create_secs:.1}s ({failures} failed)");
    let ctx = RunCtx { s, cluster: &cluster, admin: admin.clone(), operator_kubeconfig, qps: 0, label: label.into() };
    let mut m = MemoryResult { jobs, create_secs, ..Default::default() };

    let suspended = |api: Api<DynamicObject>| async move {
        let mut n = 0;
        let mut cont: Option<String> = None;
        loop {
            let mut lp = kube::api::ListParams::default().limit(2000);
            if let Some(c) = &cont {
                lp = lp.continue_token(c);
            }
            let Ok(page) = api.list(&lp).await else { return 0 };
            n += page.items.iter().filter(|o| o.data["status"]["phase"] == "Suspended").count();
            cont = page.metadata.continue_.filter(|c| !c.is_empty());
            if cont.is_none() {
                return n;
            }
        }
    };

    // First start: the operator sees every job for the first time.
    let audit_mark = read_audit(&cluster.audit_log).map(|l| l.len()).unwrap_or(0);
    let op = ctx.start_operator("operator-memory-1.log")?;
    let t1 = Instant::now();
    let deadline = t1 + s.run_timeout;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if suspended(api.clone()).await >= jobs {
            m.first_settle_secs = Some(t1.elapsed().as_secs_f64());
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    m.first_peak_mib = status_mib(op.pid(), "VmHWM");
    m.first_steady_mib = status_mib(op.pid(), "VmRSS");
    drop(op);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = read_audit(&cluster.audit_log)?;
    for l in lines.iter().skip(audit_mark).filter(|l| l.user == NIGHTSHIFT_USER) {
        *m.first_writes.entry(l.key.clone()).or_default() += 1;
    }
    let audit_mark = lines.len();

    // Second start: everything at rest.
    let op = ctx.start_operator("operator-memory-2.log")?;
    let cpu0 = cpu_seconds(op.pid());
    let t2 = Instant::now();
    // The initial list is done when RSS stops growing for 3 s.
    let (mut last, mut since) = (0.0f64, Instant::now());
    while t2.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = status_mib(op.pid(), "VmRSS");
        if rss > last + 0.5 {
            last = rss;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_secs(3) {
            m.second_list_secs = Some(since.duration_since(t2).as_secs_f64());
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    m.second_peak_mib = status_mib(op.pid(), "VmHWM");
    m.second_steady_mib = status_mib(op.pid(), "VmRSS");
    m.second_cpu = cpu_seconds(op.pid()) - cpu0;
    drop(op);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = read_audit(&cluster.audit_log)?;
    for l in lines.iter().skip(audit_mark).filter(|l| l.user == NIGHTSHIFT_USER) {
        *m.second_writes.entry(l.key.clone()).or_default() += 1;
    }
    if s.memory_pods > 0 {
        m.pods = Some(pod_memory(&ctx, s.memory_pods).await?);
    }
    Ok(m)
}
