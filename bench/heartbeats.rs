//! The heartbeat run: BackgroundJobs of 10 workers each, their pods kept Running on kwok's fake
//! node, every worker renewing its shard's Lease with progress exactly as the agent does: this
//! load generator starts the agent's own renew loop (`nightshift_worker::Heartbeat`) for each
//! running worker pod, from the pod's NIGHTSHIFT_* environment. A steady window of several status
//! folds is measured; then a sample of the workers goes silent, and the time from each one's last
//! renewal until the operator has failed its attempt is measured.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use nightshift_api::BackgroundJob;
use nightshift_worker::{Heartbeat, WorkerEnv};
use serde_json::{Value, json};

use crate::*;

/// Connections the load generator renews on (BENCH_HEARTBEAT_CONNECTIONS). Real agents hold one
/// each; here every connection to the local API server is two socat processes (the way into its
/// network namespace), and 10,000 of them would bury the machine (measured: load 30, 5,000 socat
/// processes). Whether the generator kept up is measured: the age of the live workers' Leases.
const CONNECTIONS: &str = "256";

/// Workers (shards) per job.
pub(crate) const PER_JOB: usize = 10;
/// The measured window, in status folds (the operator's default fold: 15 s).
pub(crate) const WINDOW_FOLDS: u64 = 4;
pub(crate) const FOLD_SECS: u64 = nightshift_core::FOLD_SECONDS as u64;
/// The default heartbeat (spec.heartbeat: {}); a run may set a longer interval, with the
/// timeout 4 intervals, as the defaults are.
pub(crate) const INTERVAL_SECS: u64 = 10;
/// How long a run waits for every worker to heartbeat before it measures what it has.
const READY_WAIT: Duration = Duration::from_secs(600);

/// A heartbeat run: how many workers, renewing how often ("10000" or "10000@60").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeartbeatPlan {
    pub(crate) workers: usize,
    pub(crate) interval: u64,
}

impl std::str::FromStr for HeartbeatPlan {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (w, i) = s.split_once('@').unwrap_or((s, "10"));
        let workers = w.parse().map_err(|_| format!("{s}: workers must be a number"))?;
        let interval = i.parse().ok().filter(|i| *i > 0).ok_or(format!("{s}: the interval must be seconds"))?;
        Ok(Self { workers, interval })
    }
}

/// The silence each HeartbeatTimeout was decided after, from the operator's log lines
/// "... failed (HeartbeatTimeout: no heartbeat for 240s (spec.heartbeat...", sorted.
fn decisions(log: &str) -> Vec<f64> {
    const MARK: &str = "HeartbeatTimeout: no heartbeat for ";
    let mut secs: Vec<f64> =
        log.lines().filter_map(|line| line.split_once(MARK)?.1.split_once('s')?.0.parse().ok()).collect();
    secs.sort_by(f64::total_cmp);
    secs
}

fn job(i: usize, interval: u64) -> Value {
    let heartbeat = if interval == INTERVAL_SECS {
        json!({})
    } else {
        json!({"intervalSeconds": interval, "timeoutSeconds": 4 * interval})
    };
    json!({"apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJob", "metadata": {"name": format!("h-{i:05}")},
        "spec": {"shards": PER_JOB, "workers": {"min": PER_JOB, "max": PER_JOB}, "heartbeat": heartbeat,
                 "template": {"metadata": {"annotations": {"kwok.nightshift.dev/keep-running": "true"}},
                              "spec": container()}}})
}

/// The NIGHTSHIFT_* environment of a worker pod, as the agent reads it in the pod.
fn worker_env(pod: &Pod) -> Option<WorkerEnv> {
    let containers = &pod.spec.as_ref()?.containers;
    let env =
        containers.iter().find_map(|c| c.env.as_ref().filter(|e| e.iter().any(|v| v.name == "NIGHTSHIFT_LEASE")))?;
    WorkerEnv::from_lookup(|name| env.iter().find(|v| v.name == name).and_then(|v| v.value.clone()).map(OsString::from))
        .ok()
        .flatten()
}

struct Worker {
    heartbeat: Heartbeat,
    job: String,
}

/// The load generator: a heartbeat for every running worker pod, but the silenced ones.
#[derive(Default)]
struct Fleet {
    live: HashMap<String, Worker>,
    /// Pod -> (job, Lease).
    silenced: HashMap<String, (String, String)>,
    /// Pods whose heartbeat ever started.
    started: HashSet<String>,
    /// Silenced pod -> when the bench saw its attempt leave status.active.
    detected: HashMap<String, SystemTime>,
}

fn run_fleet(client: Client, ns: &str, fleet: Arc<Mutex<Fleet>>, interval: u64) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let f = fleet.clone();
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    let name = p.name_any();
                    let mut f = f.lock().unwrap();
                    if !running || p.metadata.deletion_timestamp.is_some() || f.started.contains(&name) {
                        continue;
                    }
                    let Some(env) = worker_env(&p) else { continue };
                    let heartbeat = Heartbeat::start(client.clone(), &env);
                    let job = p.labels().get(nightshift_api::LABEL_JOB).cloned().unwrap_or_default();
                    f.started.insert(name.clone());
                    f.live.insert(name, Worker { heartbeat, job });
                }
                Ok(watcher::Event::Delete(p)) => {
                    fleet_remove(&f, &p.name_any());
                }
                _ => {}
            }
        }
    });
    // Progress, as a worker reports it: one more unit done per interval.
    let t0 = Instant::now();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(interval));
        loop {
            tick.tick().await;
            let done = t0.elapsed().as_secs() / interval;
            for w in fleet.lock().unwrap().live.values() {
                w.heartbeat.progress(done, 1_000_000, "");
            }
        }
    });
}

/// The admin's client with at most BENCH_HEARTBEAT_CONNECTIONS requests (and so connections) at once.
async fn workers_client(kubeconfig: &std::path::Path) -> Res<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let limit = tower::limit::ConcurrencyLimitLayer::new(env_or("BENCH_HEARTBEAT_CONNECTIONS", CONNECTIONS).parse()?);
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&limit).build())
}

fn fleet_remove(fleet: &Arc<Mutex<Fleet>>, pod: &str) {
    // Dropped outside the lock: the loop ends on its own (a last renewal, refused or not).
    let gone = fleet.lock().unwrap().live.remove(pod);
    drop(gone);
}

fn watch_detection(client: Client, ns: &str, fleet: Arc<Mutex<Fleet>>) {
    let jobs: Api<BackgroundJob> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut stream = watcher(jobs, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) = ev else { continue };
            let now = SystemTime::now();
            let name = j.name_any();
            let active: HashSet<&str> = j.status.iter().flat_map(|s| s.active.iter()).map(|a| a.pod.as_str()).collect();
            let mut f = fleet.lock().unwrap();
            let gone: Vec<String> = f
                .silenced
                .iter()
                .filter(|(pod, (job, _))| *job == name && !active.contains(pod.as_str()))
                .map(|(pod, _)| pod.clone())
                .collect();
            for pod in gone {
                f.detected.entry(pod).or_insert(now);
            }
        }
    });
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Silences one worker in each of `count` jobs spread over all of them, one after the other over
/// `over` (workers fail on their own, not all in the same instant: a burst of a hundred failures
/// at once measures the burst). Returns the pods silenced.
async fn silence(fleet: &Arc<Mutex<Fleet>>, jobs: usize, count: usize, over: Duration) -> Vec<String> {
    let chosen: Vec<(String, String)> = {
        let f = fleet.lock().unwrap();
        let wanted: HashSet<String> = (0..count).map(|k| format!("h-{:05}", k * jobs / count)).collect();
        let mut taken = HashSet::new();
        f.live
            .iter()
            .filter(|(_, w)| wanted.contains(&w.job) && taken.insert(w.job.clone()))
            .map(|(pod, w)| (pod.clone(), w.job.clone()))
            .collect()
    };
    let gap = over / chosen.len().max(1) as u32;
    for (pod, job) in &chosen {
        let gone = {
            let mut f = fleet.lock().unwrap();
            let gone = f.live.remove(pod);
            if let Some(w) = &gone {
                f.silenced.insert(pod.clone(), (job.clone(), w.heartbeat.lease().to_string()));
            }
            gone
        };
        // Dropped outside the lock: its loop ends with one last renewal.
        drop(gone);
        tokio::time::sleep(gap).await;
    }
    chosen.into_iter().map(|(pod, _)| pod).collect()
}

/// The steady window: the operator's, the API server's and etcd's CPU, the operator's RSS, and
/// the mutating requests of the operator and of the workers (their renewals), from the audit log.
async fn measure_window(cluster: &Cluster<'_>, pid: u32, r: &mut HeartbeatResult) -> Res<()> {
    let (apiserver, etcd) = (cluster.pid("kube-apiserver")?, cluster.pid("etcd")?);
    let mark = read_audit(&cluster.audit_log)?.len();
    let (cpu0, api0, etcd0, w0) = (cpu_seconds(pid), cpu_seconds(apiserver), cpu_seconds(etcd), Instant::now());
    tokio::time::sleep(Duration::from_secs(WINDOW_FOLDS * FOLD_SECS)).await;
    r.window_secs = w0.elapsed().as_secs_f64();
    r.operator_cores = (cpu_seconds(pid) - cpu0) / r.window_secs;
    r.apiserver_cores = (cpu_seconds(apiserver) - api0) / r.window_secs;
    r.etcd_cores = (cpu_seconds(etcd) - etcd0) / r.window_secs;
    r.operator_rss_mib = status_mib(pid, "VmRSS");
    // The audit log is written in batches of at most 1 s: both marks lag alike.
    for l in read_audit(&cluster.audit_log)?.iter().skip(mark) {
        if l.user == NIGHTSHIFT_USER {
            *r.operator_requests.entry(l.key.clone()).or_default() += 1;
        } else if l.user == ADMIN_USER && l.key == "patch leases" {
            r.renewals += 1;
            r.renewal_errors += u64::from(!(200..300).contains(&l.code));
        }
    }
    Ok(())
}

/// How long ago each live worker's Lease was renewed (one list of the namespace's Leases).
async fn lease_ages(client: &Client, ns: &str, fleet: &Arc<Mutex<Fleet>>) -> Vec<f64> {
    let live: HashSet<String> = fleet.lock().unwrap().live.values().map(|w| w.heartbeat.lease().to_string()).collect();
    let now = unix_secs(SystemTime::now());
    let list = match Api::<Lease>::namespaced(client.clone(), ns).list(&Default::default()).await {
        Ok(list) => list,
        Err(e) => {
            eprintln!("bench: listing the workers' Leases for their age: {e} (not reported)");
            return vec![];
        }
    };
    let mut ages: Vec<f64> = list
        .items
        .into_iter()
        .filter(|l| live.contains(&l.name_any()))
        .filter_map(|l| Some(now - l.spec?.renew_time?.0.as_microsecond() as f64 / 1e6))
        .collect();
    ages.sort_by(f64::total_cmp);
    ages
}

pub(crate) async fn heartbeat_run(s: &Settings, plan: HeartbeatPlan) -> Res<HeartbeatResult> {
    let HeartbeatPlan { workers, interval } = plan;
    let jobs = workers.div_ceil(PER_JOB);
    let label = format!("heartbeats-{workers}-every-{interval}s");
    let cluster = Cluster::up(s, 0, &label)?;
    let operator_kubeconfig = cluster.setup()?;
    let admin = client_from(&cluster.admin_kubeconfig()).await?;
    let ns = Side::Nightshift.namespace();
    let ctx = RunCtx { s, cluster: &cluster, admin: admin.clone(), operator_kubeconfig, qps: 0, label: label.clone() };
    let timeout = 4 * interval;
    let mut r = HeartbeatResult {
        workers: jobs * PER_JOB,
        jobs,
        interval_secs: interval,
        timeout_secs: timeout,
        ..Default::default()
    };

    let fleet = Arc::new(Mutex::new(Fleet::default()));
    // The workers' own client: the generator's requests are not the operator's, nor the admin's creates.
    run_fleet(workers_client(&cluster.admin_kubeconfig()).await?, ns, fleet.clone(), interval);
    watch_detection(admin.clone(), ns, fleet.clone());
    let op = ctx.start_operator(&format!("operator-{label}.log"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let t0 = Instant::now();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(admin.clone(), ns, &bgj_resource());
    let failures = create_all(api, (0..jobs).map(|i| job(i, interval)).collect(), s.in_flight).await;
    eprintln!("bench: [{label}] created {jobs} jobs of {PER_JOB} workers ({failures} failed)");
    let all = r.workers;
    if wait_until("every worker heartbeating", READY_WAIT, || fleet.lock().unwrap().live.len() >= all).await {
        r.ready_secs = Some(t0.elapsed().as_secs_f64());
    }
    eprintln!("bench: [{label}] {} workers heartbeating after {:?}s", fleet.lock().unwrap().live.len(), r.ready_secs);
    // Every worker renews at least once, and every job folds once, before the window opens.
    tokio::time::sleep(Duration::from_secs(interval + FOLD_SECS)).await;
    r.heartbeating = fleet.lock().unwrap().live.len();

    measure_window(&cluster, op.pid(), &mut r).await?;
    let ages = lease_ages(&admin, ns, &fleet).await;
    (r.lease_age_p99, r.lease_age_max) = (quantile(&ages, 0.99), ages.last().copied());

    let over = Duration::from_secs(interval);
    let silenced = silence(&fleet, jobs, jobs.min((workers / 20).max(100)), over).await;
    r.silenced = silenced.len();
    eprintln!("bench: [{label}] silenced {} workers", r.silenced);
    // Their heartbeats end with one last renewal: read when it landed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let mut last = HashMap::new();
    let targets: Vec<(String, String)> =
        fleet.lock().unwrap().silenced.iter().map(|(pod, (_, lease))| (pod.clone(), lease.clone())).collect();
    for (pod, lease) in targets {
        if let Some(t) = leases.get(&lease).await.ok().and_then(|l| l.spec?.renew_time) {
            last.insert(pod, t.0.as_microsecond() as f64 / 1e6);
        }
    }
    let wait = Duration::from_secs(timeout + 60);
    wait_until("every silent worker's attempt failed", wait, || fleet.lock().unwrap().detected.len() >= silenced.len())
        .await;
    r.detection_secs = {
        let f = fleet.lock().unwrap();
        f.detected.iter().filter_map(|(pod, at)| Some(unix_secs(*at) - last.get(pod)?)).collect()
    };
    r.detection_secs.sort_by(f64::total_cmp);
    r.decision_secs = decisions(&std::fs::read_to_string(ctx.s.work.join(format!("operator-{label}.log")))?);
    r.other_failures = retried(&admin, ns).await.saturating_sub(r.silenced);
    r.operator_peak_mib = status_mib(op.pid(), "VmHWM");
    eprintln!(
        "bench: [{label}] detection p50 {:?} p99 {:?} (decided p50 {:?} p99 {:?}); operator {:.2} cores, {:.1} MiB peak",
        r.detection(0.5),
        r.detection(0.99),
        r.decision(0.5),
        r.decision(0.99),
        r.operator_cores,
        r.operator_peak_mib
    );
    drop(op);
    Ok(r)
}

/// Shards on a later attempt than their first, or waiting for one.
async fn retried(client: &Client, ns: &str) -> usize {
    let jobs: Api<BackgroundJob> = Api::namespaced(client.clone(), ns);
    let Ok(list) = jobs.list(&Default::default()).await else { return 0 };
    list.items
        .iter()
        .filter_map(|j| j.status.as_ref())
        .map(|s| {
            s.active.iter().filter(|a| a.attempt > 1).count()
                + s.retrying.len()
                + s.retrying_groups.iter().map(|g| g.count as usize).sum::<usize>()
        })
        .sum()
}
