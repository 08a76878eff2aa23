//! The `nightshift` command: the operator, its CRD, and the local pod simulator.

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
        Command::Crd => print!("{}", nightshift::api::crd::crd_yaml()),
        Command::Run { namespace, debounce_ms, concurrency } => {
            let client = Client::try_default().await.map_err(|e| format!("connecting to Kubernetes: {e}"))?;
            let options = nightshift::controller::Options {
                namespace,
                debounce: Duration::from_millis(debounce_ms),
                concurrency,
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
