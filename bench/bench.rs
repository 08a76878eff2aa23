//! `make bench`: nightshift against the built-in Job controller and the raw API server, side by
//! side on one local control plane of its own (tests/cluster/cluster.sh with
//! NIGHTSHIFT_CLUSTER_DIR), with an audit log of every mutating request.
//!
//! For each client QPS setting and each N, on a fresh control plane:
//! 1. the raw limit: the admin creates 3N bare pods, at most `BENCH_IN_FLIGHT` requests in flight;
//! 2. the Job controller: N Indexed Jobs (3 completions, parallelism 3);
//! 3. nightshift: N BackgroundJobs of 3 shards (workers.max 3), the operator started for the run.
//!
//! One `nightshift simulate` per side plays the node (Running, then Succeeded at once): every
//! pod template of every side names the simulator's scheduler (`schedulerName:
//! nightshift-simulator`), so no kube-scheduler or kubelet of the cluster touches them.
//! Then a memory run: 10,000 suspended BackgroundJobs, the operator started twice on them, then
//! a third time with 100,000 worker pods beside them (the pod cache's memory).
//! Results: BENCHMARKS.md (rewritten after each run) and target/bench/results.json.
//!
//! Settings (environment): BENCH_N (default "100,1000"), BENCH_QPS ("0,100,20"; 0: no client
//! limit), BENCH_MEMORY_JOBS (10000; 0 skips), BENCH_MEMORY_PODS (100000; 0 skips), BENCH_RUN_TIMEOUT (seconds per wait, 1800),
//! BENCH_DEADLINE (unix seconds: no run starts after it), BENCH_IN_FLIGHT (64), BENCH_OUT
//! (BENCHMARKS.md), BENCH_COMMAND (the command line to report), NIGHTSHIFT_BIN
//! (target/release/nightshift), NIGHTSHIFT_CLUSTER_DIR (/tmp/nightshift-bench-cluster).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const JOB_USER: &str = "system:serviceaccount:kube-system:job-controller";
const NIGHTSHIFT_USER: &str = "system:serviceaccount:nightshift-system:nightshift";
const ADMIN_USER: &str = "nightshift-admin";
const SIM_USER: &str = "bench-simulator";

// ---- settings ---------------------------------------------------------------------------------

struct Settings {
    repo: PathBuf,
    cluster_dir: PathBuf,
    bin: PathBuf,
    nightshift: PathBuf,
    work: PathBuf,
    ns: Vec<usize>,
    qps: Vec<u32>,
    memory_jobs: usize,
    memory_pods: usize,
    run_timeout: Duration,
    deadline: Option<u64>,
    in_flight: usize,
    out: PathBuf,
    command: String,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split([',', ' ']).filter(|x| !x.is_empty()).filter_map(|x| x.trim().parse().ok()).collect()
}

impl Settings {
    fn from_env() -> Res<Self> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let bin = run_out(Command::new(repo.join("tests/cluster/build-binaries.sh")))?.trim().to_string();
        let work = repo.join("target/bench");
        fs::create_dir_all(&work)?;
        Ok(Self {
            cluster_dir: PathBuf::from(env_or("NIGHTSHIFT_CLUSTER_DIR", "/tmp/nightshift-bench-cluster")),
            bin: PathBuf::from(bin),
            nightshift: PathBuf::from(env_or(
                "NIGHTSHIFT_BIN",
                &repo.join("target/release/nightshift").to_string_lossy(),
            )),
            ns: list(&env_or("BENCH_N", "100,1000")),
            qps: list(&env_or("BENCH_QPS", "0,100,20")),
            memory_jobs: env_or("BENCH_MEMORY_JOBS", "10000").parse()?,
            memory_pods: env_or("BENCH_MEMORY_PODS", "100000").parse()?,
            run_timeout: Duration::from_secs(env_or("BENCH_RUN_TIMEOUT", "1800").parse()?),
            deadline: std::env::var("BENCH_DEADLINE").ok().and_then(|d| d.parse().ok()),
            in_flight: env_or("BENCH_IN_FLIGHT", "64").parse()?,
            out: repo.join(env_or("BENCH_OUT", "BENCHMARKS.md")),
            command: env_or("BENCH_COMMAND", "make bench"),
            work,
            repo,
        })
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| unix_now() >= d)
    }

    fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.arg("--kubeconfig").arg(self.cluster_dir.join("admin.kubeconfig"));
        c
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn run_out(mut c: Command) -> Res<String> {
    let out = c.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("{c:?} failed: {}", out.status).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_ok(mut c: Command) -> Res<()> {
    let status = c.stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(format!("{c:?} failed: {status}").into());
    }
    Ok(())
}

fn run_in(mut c: Command, input: &str) -> Res<()> {
    use std::io::Write;
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(input.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("{c:?} failed: {status}").into());
    }
    Ok(())
}

// ---- processes --------------------------------------------------------------------------------

/// A process this bench started: stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
struct Proc {
    child: Child,
    /// Where the operator serves /metrics.
    metrics_port: Option<u16>,
}

impl Proc {
    fn spawn(mut c: Command, log: &Path) -> Res<Self> {
        let out = fs::File::create(log)?;
        let child = c.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
        Ok(Self { child, metrics_port: None })
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (field(11) + field(12)) / ticks
}

/// A line of /proc/PID/status in MiB (VmHWM, VmRSS).
fn status_mib(pid: u32, key: &str) -> f64 {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { return f64::NAN };
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn pid_file(path: &Path) -> Res<u32> {
    Ok(fs::read_to_string(path)?.trim().parse()?)
}

// ---- the control plane ------------------------------------------------------------------------

/// Our own control plane, down when dropped.
struct Cluster<'a> {
    s: &'a Settings,
    audit_log: PathBuf,
}

fn qps_label(qps: u32) -> String {
    if qps == 0 { "no limit".into() } else { qps.to_string() }
}

/// kube-controller-manager's and nightshift's (--kube-api-qps, --kube-api-burst).
fn client_limits(qps: u32) -> ((u32, u32), (u32, u32)) {
    if qps == 0 { ((100_000, 100_000), (0, 0)) } else { ((qps, qps * 3 / 2), (qps, qps * 3 / 2)) }
}

impl<'a> Cluster<'a> {
    fn up(s: &'a Settings, qps: u32, label: &str) -> Res<Self> {
        Self::down_raw(s);
        let audit_log = s.work.join(format!("audit-{label}.log"));
        let _ = fs::remove_file(&audit_log);
        let ((kq, kb), _) = client_limits(qps);
        let apiserver = format!(
            "--audit-policy-file={} --audit-log-path={} --audit-log-format=json --audit-log-mode=batch \
             --audit-log-batch-buffer-size=500000 --audit-log-batch-max-size=1000 --audit-log-batch-max-wait=1s \
             --audit-log-maxsize=100000 --audit-log-maxbackup=0",
            s.repo.join("bench/audit-policy.yaml").display(),
            audit_log.display()
        );
        let kcm = format!("--kube-api-qps={kq} --kube-api-burst={kb}");
        let mut c = Command::new(s.repo.join("tests/cluster/cluster.sh"));
        c.arg("up")
            .env("NIGHTSHIFT_CLUSTER_DIR", &s.cluster_dir)
            .env("NIGHTSHIFT_APISERVER_FLAGS", apiserver)
            .env("NIGHTSHIFT_CONTROLLER_MANAGER_FLAGS", kcm);
        run_ok(c)?;
        Ok(Self { s, audit_log })
    }

    fn down_raw(s: &Settings) {
        let mut c = Command::new(s.repo.join("tests/cluster/cluster.sh"));
        c.arg("down").env("NIGHTSHIFT_CLUSTER_DIR", &s.cluster_dir);
        let _ = run_ok(c);
    }

    fn pid(&self, component: &str) -> Res<u32> {
        pid_file(&self.s.cluster_dir.join(format!("{component}.pid")))
    }

    fn admin_kubeconfig(&self) -> PathBuf {
        self.s.cluster_dir.join("admin.kubeconfig")
    }

    /// Namespaces, the FlowSchema, the CRD, the operator's account (from the chart), its token
    /// kubeconfig, and a kubeconfig for the simulators (system:masters, like the admin, but its
    /// own user name in the audit log).
    fn setup(&self) -> Res<(PathBuf, PathBuf)> {
        let s = self.s;
        let mut c = s.kubectl();
        c.args(["apply", "-f"]).arg(s.repo.join("bench/setup.yaml"));
        run_ok(c)?;
        let mut c = s.kubectl();
        c.args(["apply", "-f"]).arg(s.repo.join("crds/nightshift.yaml"));
        run_ok(c)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut c = s.kubectl();
            c.args(["get", "crd", "backgroundjobs.nightshift.dev", "-o"])
                .arg("jsonpath={.status.conditions[?(@.type==\"Established\")].status}");
            if run_out(c).is_ok_and(|o| o.trim() == "True") {
                break;
            }
            if Instant::now() > deadline {
                return Err("the CRD is not Established after 60s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut c = Command::new(s.bin.join("helm"));
        c.args(["template", "nightshift"])
            .arg(s.repo.join("charts/nightshift"))
            .args(["--namespace", "nightshift-system", "--show-only", "templates/rbac.yaml"])
            .args(["--show-only", "templates/serviceaccount.yaml"]);
        let rbac = run_out(c)?;
        let mut c = s.kubectl();
        c.args(["apply", "-f", "-"]);
        run_in(c, &rbac)?;
        for ns in ["nightshift-system", "bench-job", "bench-nightshift", "bench-raw"] {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut c = s.kubectl();
                c.args(["-n", ns, "get", "serviceaccount", "default"]).stderr(Stdio::null());
                if run_ok(c).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("no default ServiceAccount in {ns} after 60s").into());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let mut c = s.kubectl();
        c.args(["-n", "nightshift-system", "create", "token", "nightshift", "--duration=24h"]);
        let token = run_out(c)?.trim().to_string();
        let admin: Value = serde_yaml_ng::from_str(&fs::read_to_string(self.admin_kubeconfig())?)?;
        let server = admin["clusters"][0]["cluster"]["server"].as_str().ok_or("no server")?;
        let ca = admin["clusters"][0]["cluster"]["certificate-authority-data"].as_str().ok_or("no CA")?;
        let operator = s.work.join("nightshift.kubeconfig");
        fs::write(&operator, kubeconfig(server, ca, "nightshift", &format!("token: {token}")))?;

        let pki = s.cluster_dir.join("pki");
        let key = s.work.join("sim.key");
        let csr = s.work.join("sim.csr");
        let crt = s.work.join("sim.crt");
        let mut c = Command::new("openssl");
        c.args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
            .arg(format!("/O=system:masters/CN={SIM_USER}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .stderr(Stdio::null());
        run_ok(c)?;
        let ext = s.work.join("sim.ext");
        fs::write(&ext, "extendedKeyUsage=clientAuth\n")?;
        let mut c = Command::new("openssl");
        c.args(["x509", "-req", "-days", "30", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(pki.join("ca.crt"))
            .arg("-CAkey")
            .arg(pki.join("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&crt)
            .stderr(Stdio::null());
        run_ok(c)?;
        let b64 = |p: &Path| -> Res<String> {
            let mut c = Command::new("base64");
            c.arg("-w0").arg(p);
            run_out(c)
        };
        let sim = s.work.join("sim.kubeconfig");
        let user = format!("client-certificate-data: {}\n    client-key-data: {}", b64(&crt)?, b64(&key)?);
        fs::write(&sim, kubeconfig(server, ca, SIM_USER, &user))?;
        Ok((operator, sim))
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        Self::down_raw(self.s);
    }
}

fn kubeconfig(server: &str, ca: &str, user: &str, auth: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    {auth}\ncontexts:\n- name: bench\n  \
         context: {{cluster: bench, user: {user}}}\ncurrent-context: bench\n"
    )
}

async fn client_from(path: &Path) -> Res<Client> {
    let kc = Kubeconfig::read_from(path)?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.read_timeout = Some(Duration::from_secs(300));
    Ok(Client::try_from(config)?)
}

// ---- objects ----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Side {
    Raw,
    Job,
    Nightshift,
}

impl Side {
    fn namespace(self) -> &'static str {
        match self {
            Side::Raw => "bench-raw",
            Side::Job => "bench-job",
            Side::Nightshift => "bench-nightshift",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Side::Raw => "raw pod creation (the limit)",
            Side::Job => "Job controller",
            Side::Nightshift => "nightshift",
        }
    }
    fn user(self) -> &'static str {
        match self {
            Side::Raw => ADMIN_USER,
            Side::Job => JOB_USER,
            Side::Nightshift => NIGHTSHIFT_USER,
        }
    }
}

fn bgj_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nightshift.dev", "v1alpha1", "BackgroundJob"),
        "backgroundjobs",
    )
}

fn job_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("batch", "v1", "Job"), "jobs")
}

fn pod_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods")
}

/// The pod spec of every side: the raw pods', the Jobs' and the BackgroundJobs' templates. Its
/// scheduler name keeps the pods off any real node: the simulator plays them (the raw pods
/// stay Pending, as no simulator watches their namespace).
fn container() -> Value {
    json!({"restartPolicy": "Never", "schedulerName": nightshift::sim::SCHEDULER_NAME,
           "containers": [{"name": "w", "image": "w"}]})
}

fn object(side: Side, i: usize, suspend: bool) -> Value {
    match side {
        Side::Raw => {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p-{i:06}")}, "spec": container()})
        }
        Side::Job => json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": format!("j-{i:06}")},
            "spec": {"completionMode": "Indexed", "completions": 3, "parallelism": 3, "template": {"spec": container()}}}),
        Side::Nightshift => json!({"apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJob",
            "metadata": {"name": format!("b-{i:06}")},
            "spec": {"shards": 3, "workers": {"min": 1, "max": 3}, "suspend": suspend, "template": {"spec": container()}}}),
    }
}

/// Creates `objects` with at most `in_flight` requests at once; a failed create is retried
/// (up to 10 times). Returns the failures left.
async fn create_all(api: Api<DynamicObject>, objects: Vec<Value>, in_flight: usize) -> usize {
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

// ---- watching progress ------------------------------------------------------------------------

#[derive(Default)]
struct Marks {
    /// Pod name -> done (Succeeded and no finalizers).
    pods: HashMap<String, bool>,
    /// Job name -> finished (Some(true) succeeded, Some(false) failed).
    jobs: HashMap<String, Option<bool>>,
    all_pods: Option<Instant>,
    all_finished: Option<Instant>,
    settled: Option<Instant>,
    pods_ready: bool,
    jobs_ready: bool,
}

fn finished(side: Side, obj: &DynamicObject) -> Option<bool> {
    let status = obj.data.get("status")?;
    match side {
        Side::Nightshift => match status.get("phase")?.as_str()? {
            "Succeeded" => Some(true),
            "Failed" => Some(false),
            _ => None,
        },
        _ => status.get("conditions")?.as_array()?.iter().find_map(|c| {
            (c["status"] == "True").then_some(())?;
            match c["type"].as_str()? {
                "Complete" => Some(true),
                "Failed" => Some(false),
                _ => None,
            }
        }),
    }
}

fn watch(client: Client, side: Side, pods_wanted: usize, jobs_wanted: usize) -> Arc<Mutex<Marks>> {
    let marks = Arc::new(Mutex::new(Marks::default()));
    let ns = side.namespace();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let m = marks.clone();
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let mut m = m.lock().unwrap();
            match ev {
                Ok(watcher::Event::InitDone) => m.pods_ready = true,
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let done = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                        && p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty());
                    m.pods.insert(p.metadata.name.unwrap_or_default(), done);
                }
                _ => continue,
            }
            if m.all_pods.is_none() && m.pods.len() >= pods_wanted && pods_wanted > 0 {
                m.all_pods = Some(Instant::now());
            }
            if m.settled.is_none() && m.pods.len() >= pods_wanted && m.pods.values().all(|d| *d) {
                m.settled = Some(Instant::now());
            }
        }
    });
    if jobs_wanted > 0 {
        let ar = if side == Side::Job { job_resource() } else { bgj_resource() };
        let jobs: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
        let m = marks.clone();
        tokio::spawn(async move {
            let mut stream = watcher(jobs, watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let mut m = m.lock().unwrap();
                match ev {
                    Ok(watcher::Event::InitDone) => m.jobs_ready = true,
                    Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => {
                        let f = finished(side, &j);
                        m.jobs.insert(j.metadata.name.clone().unwrap_or_default(), f);
                    }
                    _ => continue,
                }
                if m.all_finished.is_none()
                    && m.jobs.len() >= jobs_wanted
                    && m.jobs.values().filter(|f| f.is_some()).count() >= jobs_wanted
                {
                    m.all_finished = Some(Instant::now());
                }
            }
        });
    } else {
        marks.lock().unwrap().jobs_ready = true;
    }
    marks
}

/// The operator's nightshift_events_pending, from its /metrics.
async fn events_pending(port: u16) -> Option<i64> {
    metric(port, "nightshift_events_pending").await
}

/// A metric without labels (a gauge or counter), from the operator's /metrics.
async fn metric(port: u16, name: &str) -> Option<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await.ok()?;
    let prefix = format!("{name} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// Empties a side's namespace once it is measured, so that each side starts on a control plane
/// holding the same objects (the sides run one after the other on one etcd).
async fn clear(client: &Client, side: Side, timeout: Duration) {
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
    for api in apis.iter().rev() {
        if let Err(e) = api.delete_collection(&dp, &lp).await {
            eprintln!("bench: emptying {ns}: {e}");
        }
    }
    while t0.elapsed() < timeout {
        let mut left = 0;
        for api in &apis {
            left += api.list(&kube::api::ListParams::default().limit(1)).await.map_or(1, |l| l.items.len());
        }
        if left == 0 {
            eprintln!("bench: emptied {ns} in {:.1}s", t0.elapsed().as_secs_f64());
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("bench: {ns} still not empty after {}s", timeout.as_secs());
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
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
struct SideResult {
    side: Option<Side>,
    n: usize,
    create_secs: f64,
    create_failures: usize,
    all_pods_secs: Option<f64>,
    all_finished_secs: Option<f64>,
    settled_secs: Option<f64>,
    /// nightshift: until its last event was sent (its metric nightshift_events_pending is 0).
    #[serde(default)]
    events_sent_secs: Option<f64>,
    failed_jobs: usize,
    controller_cpu: f64,
    controller_hwm_mib: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    /// /proc/loadavg (1 min) at the end of the side: other work on the machine shows here.
    load: f64,
    audit: Option<SideAudit>,
}

struct RunCtx<'a> {
    s: &'a Settings,
    cluster: &'a Cluster<'a>,
    admin: Client,
    operator_kubeconfig: PathBuf,
    qps: u32,
    label: String,
}

impl RunCtx<'_> {
    fn start_operator(&self, log: &str) -> Res<Proc> {
        let (_, (q, b)) = client_limits(self.qps);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut c = Command::new(&self.s.nightshift);
        c.arg("run")
            .args(["--metrics-address", &format!("127.0.0.1:{port}")])
            .args(["--kube-api-qps", &q.to_string(), "--kube-api-burst", &b.to_string()])
            .args(["--max-workers", "0", "--leader-election=false"])
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env("RUST_LOG", "warn");
        let mut p = Proc::spawn(c, &self.s.work.join(log))?;
        p.metrics_port = Some(port);
        Ok(p)
    }

    async fn side(&self, side: Side, n: usize) -> Res<SideResult> {
        let s = self.s;
        eprintln!("bench: [{}] {} with N={n}", self.label, side.title());
        let pods_wanted = 3 * n;
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
        let objects: Vec<Value> = (0..count).map(|i| object(side, i, false)).collect();
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
            if let Some(port) = operator.as_ref().and_then(|p| p.metrics_port) {
                let deadline = Instant::now() + timeout.saturating_sub(t0.elapsed());
                while Instant::now() < deadline && events_pending(port).await.is_none_or(|n| n > 0) {
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

// ---- the audit log ----------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SideAudit {
    /// The controller's mutating requests, by "verb resource[/subresource]".
    controller: BTreeMap<String, u64>,
    /// The controller's requests answered with an error, by "code verb resource[/subresource]".
    controller_errors: BTreeMap<String, u64>,
    /// Every client's mutating requests in the side's namespace, by user.
    by_user: BTreeMap<String, u64>,
}

impl SideAudit {
    fn sum(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.controller.iter().filter(|(k, _)| pred(k)).map(|(_, v)| v).sum()
    }
    fn is_event(key: &str) -> bool {
        key.split(' ').nth(1).is_some_and(|r| r == "events" || r.starts_with("events."))
    }
    fn mutating(&self) -> u64 {
        self.sum(|k| !Self::is_event(k))
    }
    fn events(&self) -> u64 {
        self.sum(Self::is_event)
    }
    fn status_writes(&self) -> u64 {
        self.sum(|k| k.ends_with("jobs/status") || k.ends_with("backgroundjobs/status"))
    }
}

struct AuditLine {
    user: String,
    key: String,
    namespace: String,
    code: i64,
}

fn read_audit(path: &Path) -> Res<Vec<AuditLine>> {
    let text = fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v["stage"] != "ResponseComplete" {
            continue;
        }
        let r = &v["objectRef"];
        let group = r["apiGroup"].as_str().unwrap_or("");
        let mut resource = r["resource"].as_str().unwrap_or("?").to_string();
        if !group.is_empty() && resource == "events" {
            resource = format!("events.{group}");
        }
        if let Some(sub) = r["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        out.push(AuditLine {
            user: v["user"]["username"].as_str().unwrap_or("?").to_string(),
            key: format!("{} {resource}", v["verb"].as_str().unwrap_or("?")),
            namespace: r["namespace"].as_str().unwrap_or("").to_string(),
            code: v["responseStatus"]["code"].as_i64().unwrap_or(0),
        });
    }
    Ok(out)
}

fn side_audit(lines: &[AuditLine], side: Side) -> SideAudit {
    let mut a = SideAudit::default();
    for l in lines {
        let in_ns = l.namespace == side.namespace();
        let mine = l.user == side.user() && (side != Side::Raw || in_ns);
        if mine {
            *a.controller.entry(l.key.clone()).or_default() += 1;
            if !(200..300).contains(&l.code) {
                *a.controller_errors.entry(format!("{} {}", l.code, l.key)).or_default() += 1;
            }
        }
        if in_ns {
            *a.by_user.entry(l.user.clone()).or_default() += 1;
        }
    }
    a
}

// ---- runs -------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RunResult {
    qps: u32,
    n: usize,
    sides: Vec<SideResult>,
    audit_dropped: bool,
}

impl RunResult {
    fn side(&self, side: Side) -> Option<&SideResult> {
        self.sides.iter().find(|r| r.side == Some(side))
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MemoryResult {
    jobs: usize,
    create_secs: f64,
    /// First start: every job new to the operator (it writes their Suspended status).
    first_settle_secs: Option<f64>,
    first_peak_mib: f64,
    first_steady_mib: f64,
    first_writes: BTreeMap<String, u64>,
    /// Second start: every job at rest (suspended, status already written).
    second_list_secs: Option<f64>,
    second_peak_mib: f64,
    second_steady_mib: f64,
    second_writes: BTreeMap<String, u64>,
    second_cpu: f64,
    /// Third start: the same jobs and this many worker pods.
    pods: Option<PodMemory>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PodMemory {
    pods: usize,
    create_secs: f64,
    /// One pod as the API server serves it (JSON, managedFields included).
    served_bytes: usize,
    /// Until the operator's nightshift_workers gauge counted them all.
    cached_secs: Option<f64>,
    peak_mib: f64,
    steady_mib: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Report {
    started: String,
    command: String,
    machine: String,
    versions: String,
    settings: String,
    runs: Vec<RunResult>,
    memory: Option<MemoryResult>,
    notes: Vec<String>,
    finished: bool,
}

async fn one_run(s: &Settings, qps: u32, n: usize) -> Res<RunResult> {
    let label = format!("qps{}-n{n}", if qps == 0 { "inf".to_string() } else { qps.to_string() });
    let cluster = Cluster::up(s, qps, &label)?;
    let (operator_kubeconfig, sim_kubeconfig) = cluster.setup()?;
    let admin = client_from(&cluster.admin_kubeconfig()).await?;
    let mut sims = Vec::new();
    // Label selectors per side; `simulate` itself also selects spec.schedulerName, which
    // container() sets for every side.
    for (ns, selector) in [("bench-job", "batch.kubernetes.io/job-name"), ("bench-nightshift", "nightshift.dev/job")] {
        let mut c = Command::new(&s.nightshift);
        c.args(["simulate", "--namespace", ns, "--selector", selector, "--run-seconds", "0"])
            .env("KUBECONFIG", &sim_kubeconfig)
            .env("RUST_LOG", "warn");
        sims.push(Proc::spawn(c, &s.work.join(format!("sim-{label}-{ns}.log")))?);
    }
    let ctx = RunCtx { s, cluster: &cluster, admin, operator_kubeconfig, qps, label: label.clone() };
    let mut result = RunResult { qps, n, ..Default::default() };
    for side in [Side::Raw, Side::Job, Side::Nightshift] {
        result.sides.push(ctx.side(side, n).await?);
        if side != Side::Nightshift {
            clear(&ctx.admin, side, s.run_timeout).await;
        }
    }
    drop(sims);
    // The audit log is written in batches of at most 1 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = read_audit(&cluster.audit_log)?;
    for r in &mut result.sides {
        r.audit = Some(side_audit(&lines, r.side.unwrap_or(Side::Raw)));
    }
    let apiserver_log = fs::read_to_string(s.cluster_dir.join("kube-apiserver.log")).unwrap_or_default();
    result.audit_dropped = apiserver_log.contains("audit buffer queue blocked");
    Ok(result)
}

/// Third start of the memory run: `pods` worker pods beside the jobs, each as the operator makes
/// it for examples/bulk-import.yaml (the agent injected, its env and volumes), but owned by no
/// job (the operator only caches them) and never scheduled. The operator's RSS once its cache
/// holds them all, against the second start's (the same jobs, no pods).
async fn pod_memory(ctx: &RunCtx<'_>, pods: usize) -> Res<PodMemory> {
    let ns = Side::Nightshift.namespace();
    let text = fs::read_to_string(ctx.s.repo.join("examples/bulk-import.yaml"))?;
    let mut job: nightshift::api::BackgroundJob = serde_yaml_ng::from_str(&text)?;
    job.metadata.namespace = Some(ns.into());
    let image = format!("nightshift:{}", env!("CARGO_PKG_VERSION"));
    let worker = |i: usize| {
        let pod = nightshift::decision::pod::worker_pod(&job, i as i32, 1, Some(&image), None);
        let mut v = serde_json::to_value(pod).expect("a pod serializes");
        v["metadata"]["ownerReferences"] = Value::Null;
        v["spec"]["schedulerName"] = json!(nightshift::sim::SCHEDULER_NAME);
        v
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.admin.clone(), ns, &pod_resource());
    let t0 = Instant::now();
    let failures = create_all(api.clone(), (0..pods).map(worker).collect(), ctx.s.in_flight).await;
    let mut m = PodMemory { pods, create_secs: t0.elapsed().as_secs_f64(), ..Default::default() };
    eprintln!("bench: [memory] created {pods} worker pods in {:.1}s ({failures} failed)", m.create_secs);
    let one = api.list(&kube::api::ListParams::default().limit(1)).await?;
    m.served_bytes = one.items.first().map_or(0, |p| serde_json::to_vec(p).map_or(0, |v| v.len()));

    let op = ctx.start_operator("operator-memory-3.log")?;
    let port = op.metrics_port.ok_or("the operator has no metrics port")?;
    let t1 = Instant::now();
    while t1.elapsed() < ctx.s.run_timeout {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if metric(port, "nightshift_workers").await.is_some_and(|n| n >= pods as i64) {
            m.cached_secs = Some(t1.elapsed().as_secs_f64());
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    m.peak_mib = status_mib(op.pid(), "VmHWM");
    m.steady_mib = status_mib(op.pid(), "VmRSS");
    Ok(m)
}

async fn memory_run(s: &Settings, jobs: usize) -> Res<MemoryResult> {
    let label = "memory";
    let cluster = Cluster::up(s, 0, label)?;
    let (operator_kubeconfig, _) = cluster.setup()?;
    let admin = client_from(&cluster.admin_kubeconfig()).await?;
    let ns = Side::Nightshift.namespace();
    let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &bgj_resource());
    let t0 = Instant::now();
    let failures =
        create_all(api.clone(), (0..jobs).map(|i| object(Side::Nightshift, i, true)).collect(), s.in_flight).await;
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

// ---- the report -------------------------------------------------------------------------------

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']));
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{nproc} CPUs ({}), {:.1} GiB memory", model.unwrap_or("unknown"), mem_kib / 1024.0 / 1024.0)
}

fn versions(s: &Settings) -> String {
    let nightshift = run_out({
        let mut c = Command::new(&s.nightshift);
        c.arg("--version");
        c
    })
    .unwrap_or_default();
    let k8s = run_out({
        let mut c = Command::new(s.bin.join("kube-apiserver"));
        c.arg("--version");
        c
    })
    .unwrap_or_default();
    let etcd = run_out({
        let mut c = Command::new(s.bin.join("etcd"));
        c.arg("--version");
        c
    })
    .unwrap_or_default();
    let commit = run_out({
        let mut c = Command::new("git");
        c.args(["-C", &s.repo.to_string_lossy(), "describe", "--always", "--dirty"]);
        c
    })
    .unwrap_or_default();
    format!(
        "{} (commit {}), {} (kube-apiserver and kube-controller-manager), etcd {}",
        nightshift.trim(),
        commit.trim(),
        k8s.trim(),
        etcd.lines().next().unwrap_or("").trim_start_matches("etcd Version: ")
    )
}

fn f(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.1}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn r2(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}"))
}

fn per_job(v: u64, n: usize) -> f64 {
    v as f64 / n.max(1) as f64
}

fn render(rep: &Report) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "nightshift against the built-in Job controller and against the raw API server, on one local control \
         plane, in one run. Generated by `make bench` ([bench/bench.rs](bench/bench.rs)); this file is replaced on \
         each run.\n"
    );
    if !rep.finished {
        let _ = writeln!(w, "**This run did not finish: the tables hold the runs completed so far.**\n");
    }
    let _ = writeln!(w, "- Command: `{}`", rep.command);
    let _ = writeln!(w, "- Date: {}", rep.started);
    let _ = writeln!(w, "- Machine: {}", rep.machine);
    let _ = writeln!(w, "- Versions: {}", rep.versions);
    let _ = writeln!(w, "- {}\n", rep.settings);

    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "Measured, not asserted.\n");
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---|---|");
    for line in targets(rep) {
        let _ = writeln!(w, "{line}");
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## Time and cost per side\n");
    let _ = writeln!(
        w,
        "Times are seconds from the first create of the N objects (the controller already running). *Create* is \
         the admin creating the N objects (3N pods for the limit), 64 requests in flight. *Pods* is until all 3N \
         pods exist (seen by a watch), *finished* until all N jobs are finished (Job: condition Complete; \
         BackgroundJob: phase Succeeded), *settled* until every pod is Succeeded without finalizers (for \
         nightshift, in brackets: until its last event was sent; it sends events behind its other requests). Requests are \
         the controller's own mutating requests per job from the audit log (events excluded, then events alone). \
         CPU is the controller process's utime+stime during the side (kube-controller-manager: all its \
         controllers); RSS is its peak (VmHWM; kube-controller-manager's since it started, nightshift's for this \
         side alone). The API server's CPU during the side is shown for scale.\n"
    );
    let _ = writeln!(
        w,
        "| N | client QPS | side | create | pods | finished | settled | requests/job (no events) | events/job | \
         status writes/job | controller CPU s | peak RSS MiB | apiserver CPU s | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in &rep.runs {
        for r in &run.sides {
            let side = r.side.unwrap_or(Side::Raw);
            let a = r.audit.clone().unwrap_or_default();
            let (req, ev, st, cpu, rss) = if side == Side::Raw {
                ("—".into(), "—".into(), "—".into(), "—".into(), "—".into())
            } else {
                (
                    format!("{:.2}", per_job(a.mutating(), r.n)),
                    format!("{:.2}", per_job(a.events(), r.n)),
                    format!("{:.2}", per_job(a.status_writes(), r.n)),
                    format!("{:.1}", r.controller_cpu),
                    format!("{:.0}", r.controller_hwm_mib),
                )
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.1}{} | {} | {} | {} | {req} | {ev} | {st} | {cpu} | {rss} | {:.1} | {:.1} |",
                r.n,
                qps_label(run.qps),
                side.title(),
                r.create_secs,
                if r.create_failures > 0 { format!(" ({} failed)", r.create_failures) } else { String::new() },
                f(r.all_pods_secs),
                f(r.all_finished_secs),
                match r.events_sent_secs {
                    Some(e) => format!("{} (events {e:.1})", f(r.settled_secs)),
                    None => f(r.settled_secs),
                },
                r.apiserver_cpu,
                r.load
            );
        }
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## Ratios\n");
    let _ = writeln!(
        w,
        "nightshift / Job controller at the same QPS, and nightshift / the limit (3N raw pod creates in the same \
         run). Below 1 is better for nightshift.\n"
    );
    let _ = writeln!(
        w,
        "| N | client QPS | requests/job (no events) | events/job | status writes/job | pods | finished | controller CPU | \
         pods / limit | finished / limit | Job finished / limit |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in &rep.runs {
        let (Some(j), Some(nsr), Some(raw)) = (run.side(Side::Job), run.side(Side::Nightshift), run.side(Side::Raw))
        else {
            continue;
        };
        let (ja, na) = (j.audit.clone().unwrap_or_default(), nsr.audit.clone().unwrap_or_default());
        let rq = |a: u64, b: u64| ratio(Some(a as f64), Some(b as f64));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.n,
            qps_label(run.qps),
            r2(rq(na.mutating(), ja.mutating())),
            r2(rq(na.events(), ja.events())),
            r2(rq(na.status_writes(), ja.status_writes())),
            r2(ratio(nsr.all_pods_secs, j.all_pods_secs)),
            r2(ratio(nsr.all_finished_secs, j.all_finished_secs)),
            r2(ratio(Some(nsr.controller_cpu), Some(j.controller_cpu))),
            r2(ratio(nsr.all_pods_secs, raw.all_pods_secs)),
            r2(ratio(nsr.all_finished_secs, raw.all_pods_secs)),
            r2(ratio(j.all_finished_secs, raw.all_pods_secs)),
        );
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## Requests by resource\n");
    let _ = writeln!(
        w,
        "Each controller's mutating requests per job, by verb and resource/subresource (from the audit log), \
         and its requests answered with an error. Events are listed but not in the headline count.\n"
    );
    for run in &rep.runs {
        let _ = writeln!(w, "### N = {}, client QPS {}\n", run.n, qps_label(run.qps));
        let mut keys: Vec<String> = Vec::new();
        for side in [Side::Job, Side::Nightshift] {
            if let Some(a) = run.side(side).and_then(|r| r.audit.as_ref()) {
                for k in a.controller.keys() {
                    if !keys.contains(k) {
                        keys.push(k.clone());
                    }
                }
            }
        }
        keys.sort();
        let _ = writeln!(w, "| request | Job controller | nightshift |\n|---|---|---|");
        for k in &keys {
            let cell = |side: Side| {
                run.side(side)
                    .and_then(|r| Some(per_job(*r.audit.as_ref()?.controller.get(k)?, r.n)))
                    .map_or("—".into(), |v| format!("{v:.2}"))
            };
            let _ = writeln!(w, "| `{k}` | {} | {} |", cell(Side::Job), cell(Side::Nightshift));
        }
        let errors = |side: Side| {
            run.side(side)
                .and_then(|r| r.audit.as_ref())
                .map(|a| a.controller_errors.iter().map(|(k, v)| format!("{v}× `{k}`")).collect::<Vec<_>>().join(", "))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "none".into())
        };
        let _ = writeln!(w, "| errors (total) | {} | {} |", errors(Side::Job), errors(Side::Nightshift));
        let others = |side: Side| {
            run.side(side)
                .and_then(|r| {
                    Some(
                        r.audit
                            .as_ref()?
                            .by_user
                            .iter()
                            .map(|(u, v)| format!("{u} {:.2}", per_job(*v, r.n)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                })
                .unwrap_or_default()
        };
        let _ = writeln!(
            w,
            "| all clients in the namespace, per job | {} | {} |\n",
            others(Side::Job),
            others(Side::Nightshift)
        );
        if run.audit_dropped {
            let _ = writeln!(w, "**The API server dropped audit events in this run: counts are low.**\n");
        }
    }

    if let Some(m) = &rep.memory {
        let _ = writeln!(w, "## Memory: {} BackgroundJobs at rest\n", m.jobs);
        let _ = writeln!(
            w,
            "{} suspended BackgroundJobs (created by the admin in {:.1}s, no operator running). The operator is \
             started twice, with no client limit: first it meets every job for the first time (it writes each \
             one's Suspended status), then, restarted, it finds them all at rest: nothing to write. Peak is \
             VmHWM, steady is VmRSS 15 s (first start) or 30 s (second start) after the jobs settled.\n",
            m.jobs, m.create_secs
        );
        let _ = writeln!(
            w,
            "| start | time until settled s (first start: all jobs listed as Suspended, polled every 2 s; second: RSS flat for 3 s) | peak RSS MiB | steady RSS MiB | its mutating requests |\n|---|---|---|---|---|"
        );
        let writes = |w: &BTreeMap<String, u64>| {
            if w.is_empty() {
                "none".to_string()
            } else {
                w.iter().map(|(k, v)| format!("{v}× `{k}`")).collect::<Vec<_>>().join(", ")
            }
        };
        let _ = writeln!(
            w,
            "| first (new jobs) | {} | {:.1} | {:.1} | {} |",
            f(m.first_settle_secs),
            m.first_peak_mib,
            m.first_steady_mib,
            writes(&m.first_writes)
        );
        let _ = writeln!(
            w,
            "| second (at rest) | {} (initial list) | {:.1} | {:.1} | {} |\n",
            f(m.second_list_secs),
            m.second_peak_mib,
            m.second_steady_mib,
            writes(&m.second_writes)
        );
        let _ = writeln!(w, "CPU of the second start over its 30+ s: {:.1} s.\n", m.second_cpu);
        if let Some(p) = &m.pods {
            let per_pod = (p.steady_mib - m.second_steady_mib) * 1024.0 * 1024.0 / p.pods as f64;
            let _ = writeln!(
                w,
                "### And {} worker pods\n\n{} worker pods beside the same jobs, each as the operator makes it for \
                 `examples/bulk-import.yaml` (the agent injected; {} bytes of JSON as the API server serves one), owned by \
                 no job and never scheduled, created by the admin in {:.1}s. The operator started a third time: its \
                 pod cache held them all (its `nightshift_workers` gauge) after {} s; RSS peak {:.1} MiB, steady {:.1} MiB \
                 30 s later: **{:.0} bytes per cached pod** over the second start's steady RSS (the operator keeps a \
                 pod's metadata and status, not its spec).\n",
                p.pods,
                p.pods,
                p.served_bytes,
                p.create_secs,
                f(p.cached_secs),
                p.peak_mib,
                p.steady_mib,
                per_pod
            );
        }
    }

    if !rep.notes.is_empty() {
        let _ = writeln!(w, "## Notes\n");
        for n in &rep.notes {
            let _ = writeln!(w, "- {n}");
        }
        let _ = writeln!(w);
    }
    o
}

fn targets(rep: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let verdict = |ok: bool| if ok { "met".to_string() } else { "**MISSED**".to_string() };
    for run in &rep.runs {
        let (Some(j), Some(nsr)) = (run.side(Side::Job), run.side(Side::Nightshift)) else { continue };
        let (ja, na) = (j.audit.clone().unwrap_or_default(), nsr.audit.clone().unwrap_or_default());
        if let Some(r) = ratio(Some(na.mutating() as f64), Some(ja.mutating() as f64)) {
            out.push(format!(
                "| requests per 3-shard job (no events) ≤ 0.7× the Job controller's (N={}, QPS {}) | {:.2} vs {:.2} = {r:.2}× | {} |",
                run.n,
                qps_label(run.qps),
                per_job(na.mutating(), nsr.n),
                per_job(ja.mutating(), j.n),
                verdict(r <= 0.7)
            ));
        }
    }
    for run in rep.runs.iter().filter(|r| r.n == 1000) {
        let (Some(j), Some(nsr), Some(raw)) = (run.side(Side::Job), run.side(Side::Nightshift), run.side(Side::Raw))
        else {
            continue;
        };
        match ratio(nsr.all_finished_secs, j.all_finished_secs) {
            Some(r) => out.push(format!(
                "| time to all 1,000 jobs finished ≤ 0.7× the Job controller's (QPS {}) | {} s vs {} s = {r:.2}× | {} |",
                qps_label(run.qps),
                f(nsr.all_finished_secs),
                f(j.all_finished_secs),
                verdict(r <= 0.7)
            )),
            None => out.push(format!(
                "| time to all 1,000 jobs finished ≤ 0.7× the Job controller's (QPS {}) | a side did not finish | **MISSED** |",
                qps_label(run.qps)
            )),
        }
        if run.qps == 0 {
            let r = ratio(nsr.all_finished_secs, raw.all_pods_secs);
            out.push(format!(
                "| no client limit: 1,000 jobs finished within 2× the raw creation of their 3,000 pods | {} s vs {} s = {}× | {} |",
                f(nsr.all_finished_secs),
                f(raw.all_pods_secs),
                r2(r),
                verdict(r.is_some_and(|r| r <= 2.0))
            ));
        }
    }
    if let Some(m) = &rep.memory {
        out.push(format!(
            "| operator RSS with {} jobs < 64 MiB steady | {:.1} MiB (at rest), {:.1} MiB (after the first start) | {} |",
            m.jobs,
            m.second_steady_mib,
            m.first_steady_mib,
            verdict(m.second_steady_mib < 64.0 && m.first_steady_mib < 64.0)
        ));
        out.push(format!(
            "| operator RSS with {} jobs < 128 MiB at the initial list | {:.1} MiB (at rest), {:.1} MiB (first start, writing every status) | {} |",
            m.jobs,
            m.second_peak_mib,
            m.first_peak_mib,
            verdict(m.second_peak_mib < 128.0 && m.first_peak_mib < 128.0)
        ));
    }
    if out.is_empty() {
        out.push("| (no run completed) | | |".into());
    }
    out
}

fn save(s: &Settings, rep: &Report) {
    let _ = fs::write(s.work.join("results.json"), serde_json::to_string_pretty(rep).unwrap_or_default());
    if let Err(e) = fs::write(&s.out, render(rep)) {
        eprintln!("bench: writing {}: {e}", s.out.display());
    }
}

// ---- main -------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; a re-render of a saved run: `-- --render`.
    let args: Vec<String> = std::env::args().collect();
    let s = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    if args.iter().any(|a| a == "--render") {
        let rep: Report = serde_json::from_str(&fs::read_to_string(s.work.join("results.json")).unwrap_or_default())
            .expect("target/bench/results.json");
        save(&s, &rep);
        return;
    }
    if !s.nightshift.exists() {
        eprintln!("bench: {} not found: cargo build --release", s.nightshift.display());
        std::process::exit(1);
    }
    let started = run_out({
        let mut c = Command::new("date");
        c.args(["-u", "+%Y-%m-%d %H:%M UTC"]);
        c
    })
    .unwrap_or_default();
    let mut rep = Report {
        started: started.trim().into(),
        command: s.command.clone(),
        machine: machine(),
        versions: versions(&s),
        settings: format!(
            "Settings: N = {:?}, client QPS = {:?} (0: no limit; burst 1.5× QPS; kube-controller-manager's \
             --kube-api-qps/--kube-api-burst, 100000/100000 for no limit, and nightshift's, 0 for no limit), \
             nightshift with its defaults (`--concurrency 64 --debounce-ms 50`) and `--max-workers 0 --leader-election=false`, \
             kube-controller-manager defaults otherwise (`--concurrent-job-syncs 5`), a fresh control plane \
             per (QPS, N), memory run with {} jobs, {} s timeout per wait.",
            s.ns,
            s.qps,
            s.memory_jobs,
            s.run_timeout.as_secs()
        ),
        ..Default::default()
    };
    rep.notes.push(
        "Each run starts a fresh control plane and then runs the three sides one after the other in their own \
         namespaces: the raw limit, the Job controller, nightshift; a side's namespace is emptied before the next \
         side starts, so each starts on a control plane holding the same objects. \
         Everything (etcd, kube-apiserver, kube-controller-manager, nightshift, two simulators, this harness) \
         shares the machine's CPUs."
            .into(),
    );
    rep.notes.push(
        "Identities: the Job controller runs as system:serviceaccount:kube-system:job-controller \
         (--use-service-account-credentials), nightshift as the ServiceAccount nightshift-system/nightshift \
         with the chart's ClusterRole and a TokenRequest token; a FlowSchema puts it at the same APF priority \
         level as the Job controller (workload-high). The admin (creating objects, the raw limit) and the \
         simulators (bench-simulator) are system:masters, the same for every side."
            .into(),
    );
    rep.notes.push(
        "Events: the Job controller hands its events to client-go's broadcaster, which sends them in the \
         background and drops them when its queue is full (hence fewer than 4 per job at N = 1000); nightshift \
         sends its events (events.k8s.io) in the background too, and behind its other requests in its client \
         rate limit; the harness waits until it has sent them all (its metric nightshift_events_pending) before \
         it stops it, so they are all counted. kube-controller-manager's peak RSS covers all its controllers and \
         the objects of every side so far."
            .into(),
    );
    let mut ok = true;
    'outer: for &qps in &s.qps {
        for &n in &s.ns {
            if s.past_deadline() {
                rep.notes.push(format!("Skipped (past the deadline): N = {n} at client QPS {}.", qps_label(qps)));
                ok = false;
                continue;
            }
            match one_run(&s, qps, n).await {
                Ok(r) => rep.runs.push(r),
                Err(e) => {
                    eprintln!("bench: run N={n} QPS={qps}: {e}");
                    rep.notes.push(format!("The run N = {n} at client QPS {} failed: {e}", qps_label(qps)));
                    ok = false;
                    if e.to_string().contains("cluster.sh") {
                        break 'outer;
                    }
                }
            }
            save(&s, &rep);
        }
    }
    if s.memory_jobs > 0 {
        if s.past_deadline() {
            rep.notes.push("Skipped (past the deadline): the memory run.".into());
            ok = false;
        } else {
            match memory_run(&s, s.memory_jobs).await {
                Ok(m) => rep.memory = Some(m),
                Err(e) => {
                    rep.notes.push(format!("The memory run failed: {e}"));
                    ok = false;
                }
            }
        }
    }
    rep.finished = ok;
    save(&s, &rep);
    eprintln!("bench: wrote {}", s.out.display());
}
