//! The `nightshift` command: the operator, its CRD, the local pod simulator, and the worker
//! agent that heartbeats for a command in a worker pod.

use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::Client;

#[derive(Parser)]
#[command(name = "nightshift", version, about = "A Kubernetes operator for long-running background jobs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: reconcile BackgroundJobs until SIGTERM or Ctrl-C.
    Run {
        /// Watch only this namespace (default: all).
        #[arg(long, env = "NIGHTSHIFT_NAMESPACE")]
        namespace: Option<String>,
        /// Milliseconds to gather changes to one job before reconciling it.
        #[arg(long, default_value_t = 50)]
        debounce_ms: u64,
        /// Jobs reconciled at once.
        #[arg(long, default_value_t = 16)]
        concurrency: u16,
        /// Image holding this binary at /nightshift, copied into the workers of jobs with
        /// spec.heartbeat.injectAgent (usually the operator's own image).
        #[arg(long, env = "NIGHTSHIFT_AGENT_IMAGE")]
        agent_image: Option<String>,
        /// Most worker pods running at once over all jobs; 0: no limit.
        #[arg(long, env = "NIGHTSHIFT_MAX_WORKERS", default_value_t = 0)]
        max_workers: u32,
        /// Most worker pods running at once in one namespace; 0: no limit.
        #[arg(long, env = "NIGHTSHIFT_MAX_WORKERS_PER_NAMESPACE", default_value_t = 0)]
        max_workers_per_namespace: u32,
        /// Heartbeats and progress alone change a job's status at most once per this many seconds.
        #[arg(long, default_value_t = nightshift::decision::FOLD_SECONDS, value_parser = clap::value_parser!(i64).range(1..))]
        status_fold_seconds: i64,
    },
    /// Copy this binary into DIR (the agent injection's init container runs this).
    InstallAgent {
        /// Folder to copy the binary into, as DIR/nightshift.
        dir: std::path::PathBuf,
    },
    /// Print the BackgroundJob CustomResourceDefinition as YAML.
    Crd,
    /// Play the node on a cluster without kubelets: move worker pods to Running, then to
    /// Succeeded (or Failed, as their sim.nightshift.dev/* annotations ask).
    Simulate {
        /// Only pods in this namespace (default: all).
        #[arg(long)]
        namespace: Option<String>,
        /// Seconds a pod runs before it exits.
        #[arg(long, default_value_t = 3)]
        run_seconds: u64,
    },
    /// Run a worker command and heartbeat for it: renew the shard's Lease (NIGHTSHIFT_LEASE),
    /// report the `::nightshift:: progress DONE/TOTAL [message]` and
    /// `::nightshift:: result {json}` lines it prints (all its output passes through), stop it
    /// when another attempt owns the shard. Exits with its exit code (128+N if killed by signal
    /// N, 127 if it cannot be started).
    Agent {
        /// Seconds the command gets to exit after SIGTERM (when fenced) before SIGKILL.
        #[arg(long, default_value_t = 10)]
        grace_seconds: u64,
        /// The command and its arguments, after `--`.
        #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The agent's exit code is its command's, not a success or failure of its own.
    if let Command::Agent { grace_seconds, command } = cli.command {
        let code = nightshift::worker::agent::run(&command, Duration::from_secs(grace_seconds)).await;
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
        Command::Crd => print!("{}", nightshift::api::crd::crd_yaml()),
        Command::InstallAgent { dir } => {
            let target = dir.join("nightshift");
            let me = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
            std::fs::copy(&me, &target)
                .map_err(|e| format!("copying {} to {}: {e}", me.display(), target.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
            println!("installed {}", target.display());
        }
        Command::Run {
            namespace,
            debounce_ms,
            concurrency,
            agent_image,
            status_fold_seconds,
            max_workers,
            max_workers_per_namespace,
        } => {
            let cap = |n: u32| (n > 0).then(|| i32::try_from(n).unwrap_or(i32::MAX));
            let client = Client::try_default().await.map_err(|e| format!("connecting to Kubernetes: {e}"))?;
            let options = nightshift::controller::Options {
                namespace,
                debounce: Duration::from_millis(debounce_ms),
                concurrency,
                agent_image,
                fold_seconds: status_fold_seconds,
                budget: nightshift::decision::queue::Budget {
                    total: cap(max_workers),
                    per_namespace: cap(max_workers_per_namespace),
                },
            };
            nightshift::controller::run(client, options, shutdown_signal()).await;
        }
        Command::Simulate { namespace, run_seconds } => {
            let client = Client::try_default().await.map_err(|e| format!("connecting to Kubernetes: {e}"))?;
            tokio::select! {
                _ = nightshift::sim::simulate(client, namespace, Duration::from_secs(run_seconds)) => {},
                _ = shutdown_signal() => {},
            }
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
