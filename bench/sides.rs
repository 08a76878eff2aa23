//! The three sides of a run (the raw limit, the Job controller, nightshift): their objects, how
//! their progress is watched, and one side's run on a control plane.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::*;

// ---- objects ----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Side {
    Raw,
    Job,
    Nightshift,
}

impl Side {
    pub(crate) fn namespace(self) -> &'static str {
        match self {
            Side::Raw => "bench-raw",
            Side::Job => "bench-job",
            Side::Nightshift => "bench-nightshift",
        }
    }
    pub(crate) fn title(self) -> &'static str {
        match self {
            Side::Raw => "raw pod creation (the limit)",
            Side::Job => "Job controller",
            Side::Nightshift => "nightshift",
        }
    }
    pub(crate) fn user(self) -> &'static str {
        match self {
            Side::Raw => ADMIN_USER,
            Side::Job => JOB_USER,
            Side::Nightshift => NIGHTSHIFT_USER,
        }
    }
}

pub(crate) fn bgj_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nightshift.dev", "v1alpha1", "BackgroundJob"),
        "backgroundjobs",
    )
}

pub(crate) fn job_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("batch", "v1", "Job"), "jobs")
}

pub(crate) fn pod_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods")
}

/// The pod spec of every side: the raw pods', the Jobs' and the BackgroundJobs' templates. The
/// node selector and toleration send the pods to the fake node `kwok-node`, through
/// kube-scheduler; kwok runs them there (Running, then Succeeded at once).
pub(crate) fn container() -> Value {
    json!({"restartPolicy": "Never", "nodeSelector": {"type": "kwok"},
           "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
           "containers": [{"name": "w", "image": "w"}]})
}

/// A job's size: its shards, and how many of them run at once (the Job's parallelism, the
/// BackgroundJob's workers.max).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Shape {
    pub(crate) shards: usize,
    pub(crate) workers: usize,
}

impl Shape {
    /// The comparison runs' jobs: 3 shards, all at once.
    pub(crate) const SMALL: Shape = Shape { shards: 3, workers: 3 };
}

impl Default for Shape {
    fn default() -> Self {
        Self::SMALL
    }
}

pub(crate) fn object(side: Side, i: usize, suspend: bool, shape: Shape) -> Value {
    let Shape { shards, workers } = shape;
    match side {
        Side::Raw => {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p-{i:06}")}, "spec": container()})
        }
        Side::Job => json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": format!("j-{i:06}")},
            "spec": {"completionMode": "Indexed", "completions": shards, "parallelism": workers, "template": {"spec": container()}}}),
        Side::Nightshift => json!({"apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJob",
            "metadata": {"name": format!("b-{i:06}")},
            "spec": {"shards": shards, "workers": {"min": 1, "max": workers}, "suspend": suspend, "template": {"spec": container()}}}),
    }
}

/// Creates `objects` with at most `in_flight` requests at once; a failed create is retried
/// (up to 10 times). Returns the failures left.
pub(crate) async fn create_all(api: Api<DynamicObject>, objects: Vec<Value>, in_flight: usize) -> usize {
    futures::stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(o).expect("a valid object");
                for attempt in 0..10 {
                    match api.create(&PostParams::default(), &obj).await {
                        Ok(_) => return 0,
                        Err(kube::Error::Api(e)) if e.code == 409 => return 0,
                        Err(e) => {
                            if attempt == 9 {
                                eprintln!("bench: creating {}: {e}", obj.metadata.name.as_deref().unwrap_or("?"));
                            }
                            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                        }
                    }
                }
                1
            }
        })
        .buffer_unordered(in_flight)
        .fold(0, |acc, x| async move { acc + x })
        .await
}

/// The operator's nightshift_events_pending, from its /metrics.
pub(crate) async fn events_pending(at: &MetricsAt) -> Option<i64> {
    metric(at, "nightshift_events_pending").await
}

/// A metric without labels (a gauge or counter), from the operator's /metrics.
pub(crate) async fn metric(at: &MetricsAt, name: &str) -> Option<i64> {
    let (at, (tx, rx)) = (at.clone(), tokio::sync::oneshot::channel());
    std::thread::spawn(move || tx.send(scrape(&at)));
    let body = rx.await.ok()??;
    let prefix = format!("{name} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// GET /metrics from a thread of its own that enters the operator's network namespace (as
/// `nsenter` does; a socket stays in the namespace it was made in). Only this thread enters it.
fn scrape(at: &MetricsAt) -> Option<String> {
    use std::{
        io::{Read, Write},
        os::fd::AsRawFd,
    };
    let netns = fs::File::open(&at.netns).ok()?;
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", at.port)).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Empties a side's namespace once it is measured, so that each side starts on a control plane
/// holding the same objects (the sides run one after the other on one etcd).
pub(crate) async fn clear(client: &Client, side: Side, timeout: Duration) {
    let ns = side.namespace();
    let dp = kube::api::DeleteParams { grace_period_seconds: Some(0), ..kube::api::DeleteParams::background() };
    let lp = kube::api::ListParams::default();
    let mut apis: Vec<Api<DynamicObject>> = vec![Api::namespaced_with(client.clone(), ns, &pod_resource())];
    match side {
        Side::Raw => {}
        Side::Job => apis.push(Api::namespaced_with(client.clone(), ns, &job_resource())),
        Side::Nightshift => apis.push(Api::namespaced_with(client.clone(), ns, &bgj_resource())),
    }
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        // Again each round: one collection delete of thousands of pods can outlast the API
        // server's request timeout and end early, with part of them left.
        for api in apis.iter().rev() {
            if let Err(e) = api.delete_collection(&dp, &lp).await {
                eprintln!("bench: emptying {ns}: {e}");
            }
        }
        let mut left = 0;
        for api in &apis {
            left += api.list(&kube::api::ListParams::default().limit(1)).await.map_or(1, |l| l.items.len());
        }
        if left == 0 {
            eprintln!("bench: emptied {ns} in {:.1}s", t0.elapsed().as_secs_f64());
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("bench: {ns} still not empty after {}s", timeout.as_secs());
}

pub(crate) async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            eprintln!("bench: timed out after {}s waiting for {what}", timeout.as_secs());
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

// ---- one side ---------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SideResult {
    pub(crate) side: Option<Side>,
    pub(crate) n: usize,
    #[serde(default)]
    pub(crate) shape: Shape,
    pub(crate) create_secs: f64,
    pub(crate) create_failures: usize,
    pub(crate) all_pods_secs: Option<f64>,
    pub(crate) all_finished_secs: Option<f64>,
    pub(crate) settled_secs: Option<f64>,
    /// nightshift: until its last event was sent (its metric nightshift_events_pending is 0).
    #[serde(default)]
    pub(crate) events_sent_secs: Option<f64>,
    pub(crate) failed_jobs: usize,
    pub(crate) controller_cpu: f64,
    pub(crate) controller_hwm_mib: f64,
    pub(crate) apiserver_cpu: f64,
    pub(crate) etcd_cpu: f64,
    /// /proc/loadavg (1 min) at the end of the side: other work on the machine shows here.
    pub(crate) load: f64,
    pub(crate) audit: Option<SideAudit>,
    /// The largest job seen during the side, as JSON (managedFields included), and its status.
    #[serde(default)]
    pub(crate) max_object_bytes: usize,
    #[serde(default)]
    pub(crate) max_status_bytes: usize,
}

pub(crate) struct RunCtx<'a> {
    pub(crate) s: &'a Settings,
    pub(crate) cluster: &'a Cluster<'a>,
    pub(crate) admin: Client,
    pub(crate) operator_kubeconfig: PathBuf,
    pub(crate) qps: u32,
    pub(crate) label: String,
}

impl RunCtx<'_> {
    pub(crate) fn start_operator(&self, log: &str) -> Res<Proc> {
        let (_, (q, b)) = client_limits(self.qps);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let netns = self.cluster.netns()?;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(&self.s.nightshift)
            .arg("run")
            .args(["--metrics-address", &format!("127.0.0.1:{port}")])
            .args(["--kube-api-qps", &q.to_string(), "--kube-api-burst", &b.to_string()])
            .args(["--max-workers", "0", "--leader-election=false"])
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env("RUST_LOG", env_or("BENCH_OPERATOR_LOG", "warn"));
        let mut p = Proc::spawn(c, &self.s.work.join(log))?;
        p.metrics = Some(MetricsAt { netns, port });
        Ok(p)
    }

    pub(crate) async fn side(&self, side: Side, n: usize, shape: Shape) -> Res<SideResult> {
        let s = self.s;
        eprintln!("bench: [{}] {} with N={n} of {} shards", self.label, side.title(), shape.shards);
        let pods_wanted = shape.shards * n;
        let jobs_wanted = if side == Side::Raw { 0 } else { n };
        let marks = watch(self.admin.clone(), side, pods_wanted, jobs_wanted);
        wait_until("the watches to start", Duration::from_secs(60), || {
            let m = marks.lock().unwrap();
            m.pods_ready && m.jobs_ready
        })
        .await;
        let operator = if side == Side::Nightshift {
            let p = self.start_operator(&format!("operator-{}-{n}.log", self.label))?;
            // Let it list and watch (an empty namespace) before the clock starts.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Some(p)
        } else {
            None
        };
        let controller_pid = match &operator {
            Some(p) => p.pid(),
            None => self.cluster.pid("kube-controller-manager")?,
        };
        let apiserver = self.cluster.pid("kube-apiserver")?;
        let etcd = self.cluster.pid("etcd")?;
        let (cpu0, api0, etcd0) = (cpu_seconds(controller_pid), cpu_seconds(apiserver), cpu_seconds(etcd));

        let mut events_sent = None;
        let t0 = Instant::now();
        let (ar, count) = match side {
            Side::Raw => (pod_resource(), pods_wanted),
            Side::Job => (job_resource(), n),
            Side::Nightshift => (bgj_resource(), n),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.admin.clone(), side.namespace(), &ar);
        let objects: Vec<Value> = (0..count).map(|i| object(side, i, false, shape)).collect();
        let create_failures = create_all(api, objects, s.in_flight).await;
        let create_secs = t0.elapsed().as_secs_f64();
        eprintln!("bench: [{}] created {count} objects in {create_secs:.2}s", self.label);

        let timeout = s.run_timeout;
        wait_until("all pods", timeout, || marks.lock().unwrap().all_pods.is_some()).await;
        if side != Side::Raw {
            let remaining = timeout.saturating_sub(t0.elapsed());
            wait_until("all jobs finished", remaining, || marks.lock().unwrap().all_finished.is_some()).await;
            let remaining = Duration::from_secs(120).min(timeout.saturating_sub(t0.elapsed()));
            wait_until("all pods Succeeded without finalizers", remaining, || marks.lock().unwrap().settled.is_some())
                .await;
            // nightshift sends events behind its other requests: let them all go out (and count).
            if let Some(at) = operator.as_ref().and_then(|p| p.metrics.as_ref()) {
                let deadline = Instant::now() + timeout.saturating_sub(t0.elapsed());
                while Instant::now() < deadline && events_pending(at).await.is_none_or(|n| n > 0) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                events_sent = Some(t0.elapsed().as_secs_f64());
            }
            // Stragglers (late events, status writes) land in the audit log too.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let controller_cpu = cpu_seconds(controller_pid) - cpu0;
        let controller_hwm_mib = status_mib(controller_pid, "VmHWM");
        let apiserver_cpu = cpu_seconds(apiserver) - api0;
        let etcd_cpu = cpu_seconds(etcd) - etcd0;
        drop(operator);
        let m = marks.lock().unwrap();
        let secs = |t: Option<Instant>| t.map(|t| t.duration_since(t0).as_secs_f64());
        let r = SideResult {
            side: Some(side),
            n,
            shape,
            create_secs,
            create_failures,
            all_pods_secs: secs(m.all_pods),
            all_finished_secs: if side == Side::Raw { None } else { secs(m.all_finished) },
            settled_secs: if side == Side::Raw { None } else { secs(m.settled) },
            events_sent_secs: events_sent,
            failed_jobs: m.jobs.values().filter(|f| **f == Some(false)).count(),
            controller_cpu,
            controller_hwm_mib,
            apiserver_cpu,
            etcd_cpu,
            load: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or(f64::NAN),
            audit: None,
            max_object_bytes: m.max_object_bytes,
            max_status_bytes: m.max_status_bytes,
        };
        eprintln!(
            "bench: [{}] {}: pods {:?}s, finished {:?}s, cpu {:.1}s, hwm {:.1} MiB",
            self.label,
            side.title(),
            r.all_pods_secs,
            r.all_finished_secs,
            r.controller_cpu,
            r.controller_hwm_mib
        );
        Ok(r)
    }
}
