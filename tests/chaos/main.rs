//! The fault matrix (issue 22, part 7): real jobs on the real node, faults injected at moments a
//! seed chooses, invariants checked from a recorded event log (target/chaos/seed-*.jsonl).
//!
//! Runs only when NIGHTSHIFT_CHAOS is set (`make chaos`); a bare `cargo test` runs only the
//! invariants' self-test on made-up logs. Settings:
//!
//!   CHAOS_SEEDS=1,2,3        the seeds (or SEED=7); one namespace and chart release each
//!   CHAOS_DURATION=0         0: the short form, one bulk-import job meeting CHAOS_FAULTS_PER_JOB
//!                            faults (default 3); N seconds: the long form, jobs one after another
//!                            for N s under faults, and a schedule firing every minute beside them
//!   CHAOS_FAULTS=evict,...   the faults to choose from; by default all but restart-apiserver and
//!                            restart-kubelet, which hit the shared cluster and run only when named
//!
//! Prints a table seed × faults × violations and exits non-zero on any violation.

mod check;
mod faults;
mod log;
mod scenario;
mod setup;

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::LogParams};

use crate::{faults::Fault, setup::Env};

pub struct Config {
    pub seeds: Vec<u64>,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    pub faults_per_job: usize,
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let seeds = var("CHAOS_SEEDS").or_else(|| var("SEED")).unwrap_or_else(|| "1".into());
        let seeds = seeds
            .split(',')
            .map(|s| s.trim().parse().map_err(|_| format!("bad seed {s:?}")))
            .collect::<Result<_, _>>()?;
        let duration = var("CHAOS_DURATION").or_else(|| var("DURATION")).unwrap_or_else(|| "0".into());
        let duration = Duration::from_secs(duration.parse().map_err(|_| format!("bad duration {duration:?}"))?);
        let faults = match var("CHAOS_FAULTS") {
            Some(list) => list
                .split(',')
                .map(|f| Fault::parse(f.trim()).ok_or(format!("unknown fault {f:?}")))
                .collect::<Result<_, _>>()?,
            None => Fault::ALL.into_iter().filter(|f| !f.shared()).collect(),
        };
        let faults_per_job = var("CHAOS_FAULTS_PER_JOB")
            .unwrap_or_else(|| "3".into())
            .parse()
            .map_err(|e| format!("CHAOS_FAULTS_PER_JOB: {e}"))?;
        Ok(Self { seeds, duration, faults, faults_per_job })
    }

    pub fn long(&self) -> bool {
        !self.duration.is_zero()
    }
}

/// splitmix64: the seed alone decides every choice.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x6e69_6768_7473_6869)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

pub struct Outcome {
    pub seed: u64,
    pub faults: Vec<Fault>,
    pub skipped: usize,
    pub violations: Vec<String>,
    pub detections: Vec<check::Detection>,
    pub log: PathBuf,
}

fn main() -> ExitCode {
    if let Err(e) = check::self_test() {
        eprintln!("chaos: the invariants' self-test failed: {e}");
        return ExitCode::FAILURE;
    }
    if std::env::var_os("NIGHTSHIFT_CHAOS").is_none() {
        eprintln!(
            "chaos: invariants' self-test passed; the fault matrix itself runs with `make chaos SEED=… DURATION=…`"
        );
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcomes = rt.block_on(async {
        let mut outcomes = Vec::new();
        for &seed in &cfg.seeds {
            outcomes.push(run_seed(&cfg, seed).await);
        }
        outcomes
    });
    print_table(&cfg, &outcomes);
    if outcomes.iter().all(|o| o.violations.is_empty()) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn run_seed(cfg: &Config, seed: u64) -> Outcome {
    let log = log::EventLog::create(&format!("seed-{seed}-{}", std::process::id()));
    let mut out = Outcome {
        seed,
        faults: Vec::new(),
        skipped: 0,
        violations: Vec::new(),
        detections: Vec::new(),
        log: log.path.clone(),
    };
    eprintln!("chaos: seed {seed}: event log {}", out.log.display());
    let env = match setup::client().await {
        Ok(client) => Env::install(client, seed).await,
        Err(e) => Err(e),
    };
    let env = match env {
        Ok(env) => env,
        Err(e) => {
            out.violations.push(format!("setup: {e}"));
            return out;
        }
    };
    log.note("note", &env.ns, serde_json::json!({"release": env.release}));
    let watches = log.watch(&env.client, &env.ns);
    if let Err(e) = scenario::run(&env, &log, cfg, &mut out).await {
        log.note("violation", "harness", serde_json::json!(e));
    }
    out.violations.extend(operator_health(&env, &log, &out.faults).await);
    let recs = log.records();
    out.violations.extend(check::single_attempt(&recs));
    out.violations.extend(check::noted(&recs));
    out.violations.extend(check::crd_skew(&recs));
    let (detections, late) = check::detections(&recs, scenario::HEARTBEAT_TIMEOUT as f64);
    out.detections = detections;
    out.violations.extend(late);
    for w in watches {
        w.abort();
    }
    env.teardown().await;
    out
}

/// No panic in the operator pods' logs (this container's and the previous one's); restarts no
/// more than the faults explain (a SIGSTOP may cost the liveness probe's restart, an API server
/// restart one per pod); no crash loop.
async fn operator_health(env: &Env, log: &log::EventLog, faults: &[Fault]) -> Vec<String> {
    let count = |f: Fault| faults.iter().filter(|x| **x == f).count() as i32;
    let allowed = count(Fault::LeaderStop) + 2 * count(Fault::RestartApiserver);
    let mut out = Vec::new();
    let pods = match env.operators().await {
        Ok(p) => p,
        Err(e) => return vec![format!("listing the operator pods: {e}")],
    };
    let api: Api<Pod> = env.api();
    let mut restarts = 0;
    for pod in &pods {
        let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
        for c in &statuses {
            restarts += c.restart_count;
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone());
            if waiting.as_deref() == Some("CrashLoopBackOff") {
                out.push(format!("operator {}: CrashLoopBackOff", pod.name_any()));
            }
        }
        let previous = statuses.iter().any(|c| c.restart_count > 0);
        for prev in [false, true].into_iter().filter(|p| !p || previous) {
            let lp = LogParams { previous: prev, ..Default::default() };
            let text = api.logs(&pod.name_any(), &lp).await.unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
                out.push(format!("operator {} (previous: {prev}) panicked: {line}", pod.name_any()));
            }
        }
    }
    log.note("note", "operators", serde_json::json!({"restarts": restarts, "allowed": allowed}));
    if restarts > allowed {
        out.push(format!("operator pods restarted {restarts} times; the faults explain {allowed}"));
    }
    out
}

fn print_table(cfg: &Config, outcomes: &[Outcome]) {
    let form = if cfg.long() { format!("long, {}s", cfg.duration.as_secs()) } else { "short".into() };
    println!("\nchaos ({form}; faults from: {})", cfg.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","));
    println!("{:>6}  {:<60}  {:>7}  {:>10}", "SEED", "FAULTS INJECTED", "SKIPPED", "VIOLATIONS");
    for o in outcomes {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &o.faults {
            *counts.entry(f.name()).or_default() += 1;
        }
        let faults = counts.iter().map(|(f, n)| format!("{f}×{n}")).collect::<Vec<_>>().join(" ");
        println!("{:>6}  {:<60}  {:>7}  {:>10}", o.seed, faults, o.skipped, o.violations.len());
    }
    println!(
        "\nfrozen workers (heartbeat timeout {}s, interval {}s): seconds from the freeze to the pod's deletion, leader changes in between",
        scenario::HEARTBEAT_TIMEOUT,
        scenario::HEARTBEAT_INTERVAL
    );
    for o in outcomes {
        for d in &o.detections {
            let latency = d.latency.map_or("never".to_string(), |l| format!("{l:.1}s"));
            println!("seed {}: {} detected after {latency}, {} leader changes", o.seed, d.pod, d.takeovers);
        }
    }
    for o in outcomes {
        for v in &o.violations {
            println!("seed {}: VIOLATION {v}", o.seed);
        }
        println!("seed {}: event log {}", o.seed, o.log.display());
    }
}
