//! The `nightshift` command: the operator, its CRD, and the worker
//! agent that heartbeats for a command in a worker pod.

use std::time::Duration;

use std::sync::{Arc, atomic::Ordering};

use clap::{Args, Parser, Subcommand, ValueEnum};
use nightshift::operator;

#[derive(Parser)]
#[command(name = "nightshift", version, about = "A Kubernetes operator for long-running background jobs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level: trace, debug, info, warn or error (RUST_LOG overrides it).
    #[arg(long, global = true, env = "NIGHTSHIFT_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format: text for people, json for log pipelines.
    #[arg(long, global = true, env = "NIGHTSHIFT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `nightshift run`'s flags, by what they set.
#[derive(Args)]
struct RunFlags {
    #[command(flatten)]
    controller: ControllerFlags,
    #[command(flatten)]
    budget: BudgetFlags,
    #[command(flatten)]
    election: ElectionFlags,
    #[command(flatten)]
    api: ApiFlags,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "NIGHTSHIFT_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: std::net::SocketAddr,
}

/// What the controller watches and how it reconciles.
#[derive(Args)]
struct ControllerFlags {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "NIGHTSHIFT_NAMESPACE")]
    namespace: Option<String>,
    /// Milliseconds to gather changes to one job before reconciling it.
    #[arg(long, default_value_t = 50)]
    debounce_ms: u64,
    /// Milliseconds a job's pod changes (created, bound, running, finished) are gathered, from
    /// the first, into one wake of the job, as kube-controller-manager's Job controller does (0: each
    /// change wakes it; a minute at most).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pod_batch_ms: u64,
    /// Jobs reconciled at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u16,
    /// Image holding this binary at /nightshift, copied into the workers of jobs with
    /// spec.heartbeat.injectAgent (usually the operator's own image).
    #[arg(long, env = "NIGHTSHIFT_AGENT_IMAGE")]
    agent_image: Option<String>,
    /// Heartbeats, progress and shard successes in the middle of a job change its status at
    /// most once per this many seconds; workers turning ready alone, once per four times that.
    #[arg(long, default_value_t = nightshift_core::FOLD_SECONDS, value_parser = clap::value_parser!(i64).range(1..))]
    status_fold_seconds: i64,
}

/// The worker budget: live worker pods allowed at once.
#[derive(Args)]
struct BudgetFlags {
    /// Most worker pods running at once over all jobs; 0: no limit.
    #[arg(long, env = "NIGHTSHIFT_MAX_WORKERS", default_value_t = 0)]
    max_workers: u32,
    /// Most worker pods running at once in one namespace; 0: no limit.
    #[arg(long, env = "NIGHTSHIFT_MAX_WORKERS_PER_NAMESPACE", default_value_t = 0)]
    max_workers_per_namespace: u32,
}

/// Leader election among replicas.
#[derive(Args)]
struct ElectionFlags {
    /// Elect a leader among replicas on a Lease; only the leader reconciles.
    #[arg(long, env = "NIGHTSHIFT_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the election Lease (default: this pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the election Lease.
    #[arg(long, default_value = "nightshift-leader")]
    leader_election_lease: String,
    /// Seconds a leader's Lease lasts without renewal; a follower takes over after it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    leader_election_lease_seconds: u64,
}

/// The client-side limit on API requests.
#[derive(Args)]
struct ApiFlags {
    /// Client-side limit on API requests per second (0: none).
    #[arg(long, default_value_t = 50.0)]
    kube_api_qps: f64,
    /// Client-side burst of API requests.
    #[arg(long, default_value_t = 100)]
    kube_api_burst: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: reconcile BackgroundJobs until SIGTERM or Ctrl-C.
    Run(Box<RunFlags>),
    /// Copy this binary into DIR (the agent injection's init container runs this).
    InstallAgent {
        /// Folder to copy the binary into, as DIR/nightshift.
        dir: std::path::PathBuf,
    },
    /// Print the CustomResourceDefinitions (BackgroundJob, BackgroundJobTemplate, BackgroundJobSchedule) as YAML.
    Crd,
    /// Run a worker command and heartbeat for it: renew the shard's Lease (NIGHTSHIFT_LEASE),
    /// report the `::nightshift:: progress DONE/TOTAL [message]`, `::nightshift:: result {json}`
    /// and `::nightshift:: checkpoint TEXT` lines it prints (all its output passes through), stop it
    /// when another attempt owns the shard. Exits with its exit code (128+N if killed by signal
    /// N, 127 if it cannot be started).
    Agent {
        /// Seconds the command gets to exit after SIGTERM (when fenced) before SIGKILL; the
        /// operator passes the pod's terminationGracePeriodSeconds.
        #[arg(long, default_value_t = 30)]
        grace_seconds: u64,
        /// The command and its arguments, after `--`.
        #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    operator::init_logging(&cli.log_level, cli.log_format == LogFormat::Json);
    // The agent's exit code is its command's, not a success or failure of its own.
    if let Command::Agent { grace_seconds, command } = cli.command {
        let code = nightshift_worker::agent::run(&command, Duration::from_secs(grace_seconds)).await;
        return std::process::ExitCode::from(code);
    }
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nightshift: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Agent { .. } => unreachable!("handled in main"),
        Command::Crd => {
            use std::io::Write;
            // `nightshift crd | head` closes the pipe early: not an error.
            match std::io::stdout().write_all(nightshift_api::crd::crds_yaml().as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                written => written?,
            }
        }
        Command::InstallAgent { dir } => {
            let target = dir.join("nightshift");
            let me = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
            std::fs::copy(&me, &target)
                .map_err(|e| format!("copying {} to {}: {e}", me.display(), target.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
            println!("installed {}", target.display());
        }
        Command::Run(flags) => run_operator(*flags).await?,
    }
    Ok(())
}

/// `nightshift run`: the metrics server, then the controller, alone or under leader election.
async fn run_operator(flags: RunFlags) -> Result<(), Box<dyn std::error::Error>> {
    let RunFlags { controller, budget, election, api, metrics_address } = flags;
    let budget_of = |n: u32| (n > 0).then(|| i32::try_from(n).unwrap_or(i32::MAX));
    let config = kube::Config::infer().await.map_err(|e| format!("finding the Kubernetes API: {e}"))?;
    let client = operator::client(config, api.kube_api_qps, api.kube_api_burst)
        .map_err(|e| format!("connecting to Kubernetes: {e}"))?;
    let options = nightshift::controller::Options {
        namespace: controller.namespace,
        debounce: Duration::from_millis(controller.debounce_ms),
        pod_batch: Duration::from_millis(controller.pod_batch_ms),
        concurrency: controller.concurrency,
        agent_image: controller.agent_image,
        fold_seconds: controller.status_fold_seconds,
        budget: nightshift_core::jobs::queue::Budget {
            total: budget_of(budget.max_workers),
            per_namespace: budget_of(budget.max_workers_per_namespace),
        },
    };
    let metrics = Arc::new(operator::Metrics::default());
    let listener = operator::server::bind(metrics_address)
        .await
        .map_err(|e| format!("listening on {metrics_address} (--metrics-address): {e}"))?;
    tokio::spawn(operator::server::serve(listener, metrics.clone()));
    if !election.leader_election {
        metrics.leadership_known.store(true, Ordering::Relaxed);
        metrics.leader.set(1);
        nightshift::controller::run_with_metrics(client, options, operator::shutdown_signal(), metrics).await;
        return Ok(());
    }
    let election = operator::leader::Election {
        namespace: election.leader_election_namespace.unwrap_or_else(|| "default".into()),
        lease: election.leader_election_lease,
        identity: std::env::var("POD_NAME").unwrap_or_else(|_| operator::leader::default_identity()),
        duration: Duration::from_secs(election.leader_election_lease_seconds),
    };
    operator::leader::run_elected(client, options, metrics, election).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// A pod batch past a minute is refused by name, before the operator starts: it would hold
    /// back every reaction to a pod (and an absurd one would overflow the clock).
    #[test]
    fn a_pod_batch_past_a_minute_is_refused_naming_the_flag() {
        let batch = |ms: &str| Cli::try_parse_from(["nightshift", "run", "--pod-batch-ms", ms]);
        assert!(batch("60000").is_ok());
        let error = batch("18446744073709551615").err().expect("refused").to_string();
        assert!(error.contains("--pod-batch-ms") && error.contains("0..=60000"), "{error}");
    }
}
