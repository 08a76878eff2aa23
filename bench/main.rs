//! `make bench`: nightshift against the built-in Job controller and the raw API server, side by
//! side on one local control plane of its own (tests/cluster/cluster.sh with
//! NIGHTSHIFT_CLUSTER_DIR), with an audit log of every mutating request.
//!
//! For each client QPS setting and each N, on a fresh control plane:
//! 1. the raw limit: the admin creates 3N bare pods, at most `BENCH_IN_FLIGHT` requests in flight;
//! 2. the Job controller: N Indexed Jobs (3 completions, parallelism 3);
//! 3. nightshift: N BackgroundJobs of 3 shards (workers.max 3), the operator started for the run.
//!
//! kwok plays the node (the cluster's NIGHTSHIFT_NODE=0 mode, tests/cluster/kwok.yaml): every
//! pod of every side is bound by kube-scheduler to the fake node `kwok-node` (node selector and
//! toleration), where kwok makes it Running, then Succeeded at once.
//! Then heartbeat runs (bench/heartbeats.rs): 1,000 and 10,000 workers renewing their Leases as
//! the agent does, a sample of them then silent. Then a memory run: 10,000 suspended
//! BackgroundJobs, the operator started twice on them, then a third time with 100,000 worker pods
//! beside them (the pod cache's memory). Then the big-job run (bench/big_job.rs): one Indexed Job
//! and one BackgroundJob of 10,000 shards (100,000 alone with `make bench BIG=100000`).
//!
//! The nightshift-bench crate of the workspace (bench/): it depends on the API and the core (to
//! build worker pods as the operator does); nothing depends on it.
//! Results: BENCHMARKS.md (rewritten after each run) and target/bench/results.json.
//!
//! Settings (environment): BENCH_N (default "100,1000"), BENCH_QPS ("0,100,20"; 0: no client
//! limit), BENCH_HEARTBEATS ("1000,10000@60": workers, @ the renewal interval if not the default
//! 10 s; 0 skips; 10,000 workers every 10 s are 1,000 renewals/s, more than the API server of a
//! 2-core machine serves beside the rest, so add `10000` on a larger one;
//! BENCH_HEARTBEAT_CONNECTIONS, 256: the generator's connections),
//! BENCH_MEMORY_JOBS (10000; 0 skips), BENCH_MEMORY_PODS (100000; 0 skips), BENCH_BIG_JOB (the
//! big-job run's shards, 10000; 0 skips), BENCH_BIG_JOB_WORKERS (1000), BENCH_RUN_TIMEOUT (seconds per wait, 1800),
//! BENCH_DEADLINE (unix seconds: no run starts after it), BENCH_IN_FLIGHT (64), BENCH_OUT
//! (BENCHMARKS.md), BENCH_COMMAND (the command line to report), NIGHTSHIFT_BIN
//! (target/release/nightshift), NIGHTSHIFT_CLUSTER_DIR (/tmp/nightshift-bench-cluster).

mod audit;
mod big_job;
mod cluster;
mod comparison_report;
mod heartbeat_report;
mod heartbeats;
mod memory;
mod memory_report;
mod progress;
mod repeats;
mod report;
mod sides;

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use audit::*;
use big_job::*;
use cluster::*;
use comparison_report::*;
use heartbeat_report::*;
use heartbeats::*;
use memory::*;
use memory_report::*;
use progress::*;
use repeats::*;
use report::*;
use sides::*;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) const JOB_USER: &str = "system:serviceaccount:kube-system:job-controller";
pub(crate) const NIGHTSHIFT_USER: &str = "system:serviceaccount:nightshift-system:nightshift";
pub(crate) const ADMIN_USER: &str = "nightshift-admin";

// ---- settings ---------------------------------------------------------------------------------

pub(crate) struct Settings {
    pub(crate) repo: PathBuf,
    pub(crate) cluster_dir: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) nightshift: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) ns: Vec<usize>,
    pub(crate) qps: Vec<u32>,
    pub(crate) heartbeats: Vec<HeartbeatPlan>,
    pub(crate) memory_jobs: usize,
    pub(crate) memory_pods: usize,
    /// The big-job run's job (0 shards: none).
    pub(crate) big_job: Shape,
    pub(crate) run_timeout: Duration,
    pub(crate) deadline: Option<u64>,
    pub(crate) in_flight: usize,
    /// More pairs at no client limit and the largest N (repeats.rs).
    pub(crate) repeats: usize,
    pub(crate) out: PathBuf,
    pub(crate) command: String,
}

pub(crate) fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

pub(crate) fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split([',', ' ']).filter(|x| !x.is_empty()).filter_map(|x| x.trim().parse().ok()).collect()
}

impl Settings {
    pub(crate) fn from_env() -> Res<Self> {
        // This crate is bench/ in the workspace.
        let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
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
            // BENCH_N=0: no comparison runs.
            ns: list(&env_or("BENCH_N", "100,1000")).into_iter().filter(|n| *n > 0).collect(),
            qps: list(&env_or("BENCH_QPS", "0,100,20")),
            heartbeats: list(&env_or("BENCH_HEARTBEATS", "1000,10000@60")),
            memory_jobs: env_or("BENCH_MEMORY_JOBS", "10000").parse()?,
            memory_pods: env_or("BENCH_MEMORY_PODS", "100000").parse()?,
            big_job: Shape {
                shards: env_or("BENCH_BIG_JOB", "10000").parse()?,
                workers: env_or("BENCH_BIG_JOB_WORKERS", "1000").parse()?,
            },
            run_timeout: Duration::from_secs(env_or("BENCH_RUN_TIMEOUT", "1800").parse()?),
            deadline: std::env::var("BENCH_DEADLINE").ok().and_then(|d| d.parse().ok()),
            in_flight: env_or("BENCH_IN_FLIGHT", "64").parse()?,
            repeats: env_or("BENCH_REPEATS", "3").parse()?,
            out: repo.join(env_or("BENCH_OUT", "BENCHMARKS.md")),
            command: env_or("BENCH_COMMAND", "make bench"),
            work,
            repo,
        })
    }

    pub(crate) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| unix_now() >= d)
    }

    pub(crate) fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.arg("--kubeconfig").arg(self.cluster_dir.join("admin.kubeconfig"));
        c
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn run_out(mut c: Command) -> Res<String> {
    let out = c.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("{c:?} failed: {}", out.status).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn run_ok(mut c: Command) -> Res<()> {
    let status = c.stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(format!("{c:?} failed: {status}").into());
    }
    Ok(())
}

pub(crate) fn run_in(mut c: Command, input: &str) -> Res<()> {
    use std::io::Write;
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(input.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("{c:?} failed: {status}").into());
    }
    Ok(())
}

// ---- runs -------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RunResult {
    pub(crate) qps: u32,
    pub(crate) n: usize,
    pub(crate) sides: Vec<SideResult>,
    pub(crate) audit_dropped: bool,
}

impl RunResult {
    pub(crate) fn side(&self, side: Side) -> Option<&SideResult> {
        self.sides.iter().find(|r| r.side == Some(side))
    }
}

pub(crate) async fn one_run(s: &Settings, qps: u32, n: usize) -> Res<RunResult> {
    run_sides(s, qps, n, Shape::SMALL, &[Side::Raw, Side::Job, Side::Nightshift], "").await
}

/// `sides` one after the other, N jobs of `shape` each, on a fresh control plane; `tag` ends the
/// run's label (its audit and operator logs' names).
pub(crate) async fn run_sides(
    s: &Settings,
    qps: u32,
    n: usize,
    shape: Shape,
    sides: &[Side],
    tag: &str,
) -> Res<RunResult> {
    let mut label = format!("qps{}-n{n}", if qps == 0 { "inf".to_string() } else { qps.to_string() });
    if shape != Shape::SMALL {
        label = format!("{label}-shards{}", shape.shards);
    }
    label.push_str(tag);
    let cluster = Cluster::up(s, qps, &label)?;
    let operator_kubeconfig = cluster.setup()?;
    let admin = client_from(&cluster.admin_kubeconfig()).await?;
    let ctx = RunCtx { s, cluster: &cluster, admin, operator_kubeconfig, qps, label: label.clone() };
    let mut result = RunResult { qps, n, ..Default::default() };
    for (i, &side) in sides.iter().enumerate() {
        result.sides.push(ctx.side(side, n, shape).await?);
        if i + 1 < sides.len() {
            clear(&ctx.admin, side, s.run_timeout).await;
        }
    }
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

// ---- main -------------------------------------------------------------------------------------

#[tokio::main]
pub(crate) async fn main() {
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
             per (QPS, N), memory run with {} jobs, big-job run with {} shards ({} at once), {} s timeout per wait.",
            s.ns,
            s.qps,
            s.memory_jobs,
            s.big_job.shards,
            s.big_job.workers,
            s.run_timeout.as_secs()
        ),
        ..Default::default()
    };
    rep.notes.push(
        "Each run starts a fresh control plane and then runs the three sides one after the other in their own \
         namespaces: the raw limit, the Job controller, nightshift; a side's namespace is emptied before the next \
         side starts, so each starts on a control plane holding the same objects. \
         Everything (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, nightshift, this harness) \
         shares the machine's CPUs."
            .into(),
    );
    rep.notes.push(
        "Identities: the Job controller runs as system:serviceaccount:kube-system:job-controller \
         (--use-service-account-credentials), nightshift as the ServiceAccount nightshift-system/nightshift \
         with the chart's ClusterRole and a TokenRequest token; a FlowSchema puts it at the same APF priority \
         level as the Job controller (workload-high). The admin (creating objects, the raw limit) and kwok \
         (playing the fake node and its pods: user kwok) are system:masters, kube-scheduler binds every side's \
         pods (client limit raised to 1,000 requests/s), the same for every side. \
         Both controllers reach the API server alike: inside the control plane's network namespace, on its \
         loopback (nightshift started there with nsenter); the harness comes in from the host through a socat \
         pair, the same for every side."
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
    ok &= repeat_runs(&s, &mut rep).await;
    for &plan in s.heartbeats.iter().filter(|p| p.workers > 0) {
        let workers = format!("{} workers renewing every {} s", plan.workers, plan.interval);
        if s.past_deadline() {
            rep.notes.push(format!("Skipped (past the deadline): the heartbeat run of {workers}."));
            ok = false;
            continue;
        }
        match heartbeat_run(&s, plan).await {
            Ok(h) => rep.heartbeats.push(h),
            Err(e) => {
                rep.notes.push(format!("The heartbeat run of {workers} failed: {e}"));
                ok = false;
            }
        }
        save(&s, &rep);
    }
    if s.big_job.shards > 0 {
        if s.past_deadline() {
            rep.notes.push("Skipped (past the deadline): the big-job run.".into());
            ok = false;
        } else {
            match big_job_run(&s, s.big_job).await {
                Ok(r) => rep.big_jobs.push(r),
                Err(e) => {
                    rep.notes.push(format!("The big-job run failed: {e}"));
                    ok = false;
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
