//! `kubectl nightshift`: watch, inspect and steer BackgroundJobs as a person would, with the
//! user's own kubeconfig and RBAC (nothing new runs in the cluster). The binary
//! `kubectl-nightshift` is this crate's [`main`]; on PATH, kubectl runs it as `kubectl nightshift`.
//!
//! Exit codes, for scripts: 0 done (and, for `watch`/`submit --wait`, every job succeeded); 1 a
//! job ended otherwise (failed or deleted); 2 bad usage or input; 3 the cluster said no or could
//! not be reached (not found, forbidden, unreachable).
//!
//! The workspace (README, "Development"): `nightshift-api` ← `nightshift-core` ← `nightshift`
//! (the operator, the root package); `nightshift-worker` and `nightshift-plugin` depend on the
//! API crate only; `nightshift-bench` on the API and the core.

mod connect;
pub mod dashboard;
pub mod describe;
mod logs;
mod report;
mod steer;
mod watch;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kube::{Api, Resource};

pub use connect::Target;
use nightshift_api::BackgroundJob;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl nightshift",
    bin_name = "kubectl nightshift",
    version,
    about = "Watch, inspect and steer nightshift BackgroundJobs",
    after_help = "Examples:
  kubectl nightshift watch                       # every unfinished job of the namespace, until they end
  kubectl nightshift watch import-customers --shards
  kubectl nightshift logs import-customers -f    # every worker's log, prefixed with shard/attempt
  kubectl nightshift status import-customers
  kubectl nightshift submit examples/bulk-import.yaml --generate-name --wait
  kubectl nightshift dashboard -A                # prints http://127.0.0.1:PORT/?token=... to open

Exit codes: 0 done (watch: every job succeeded), 1 a job failed, 2 bad usage or input,
3 the cluster refused or could not be reached."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl's own flags.
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// The namespace (default: the context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (watch, dashboard).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Live progress bars until the jobs end; exits 0 if all succeeded, 1 otherwise.
    #[command(after_help = "Without JOB: every job of the namespace (-A: of all) not finished yet, and those created \
                            while watching.\nWhen stdout is not a terminal, prints a line per change instead of bars.")]
    Watch {
        /// Jobs to watch (default: every unfinished one).
        jobs: Vec<String>,
        /// A bar for each running shard too.
        #[arg(long)]
        shards: bool,
    },
    /// The workers' logs, merged, each line prefixed with [shard/attempt].
    Logs {
        job: String,
        /// Follow: stream new lines and new attempts' logs until the job ends.
        #[arg(short, long)]
        follow: bool,
        /// Only this shard.
        #[arg(long)]
        shard: Option<i32>,
        /// Only this attempt.
        #[arg(long)]
        attempt: Option<i32>,
    },
    /// What a job is doing, plainly: shards by state, failures, retries, queue, events.
    Status {
        job: String,
        /// Print the status as data instead.
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
    /// Suspend a job: its workers get SIGTERM, its progress is kept.
    Suspend { job: String },
    /// Resume a suspended job: its unfinished shards run again, from their checkpoints.
    Resume { job: String },
    /// Cancel a job: stop its workers and end it Failed (reason Cancelled), keeping its record.
    Cancel { job: String },
    /// Run an ended job again as a new job (labelled nightshift.dev/rerun-of=JOB); prints its name.
    Rerun {
        job: String,
        /// Only the shards that did not succeed (failed, or stopped when the job ended).
        #[arg(long)]
        failed: bool,
        /// Watch the new job until it ends; exit 0 if it succeeded, 1 if not.
        #[arg(long)]
        wait: bool,
    },
    /// A read-only web page of the jobs (progress, shards, events, logs), live, on 127.0.0.1.
    #[command(after_help = "It uses your kubeconfig's credentials and listens on 127.0.0.1 only; Ctrl-C stops it.
It prints the address to open: http://127.0.0.1:PORT/?token=... The token is new each run and every
request needs it (the page keeps it in a cookie), so that no other web page or local user can read
your jobs and logs through it; requests naming another host than 127.0.0.1 or localhost are refused.")]
    Dashboard {
        /// The port to listen on (default: a free one; the address is printed either way).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Create a job from a manifest and print its name at once (--wait: then watch it to its end).
    #[command(after_help = "Examples:
  kubectl nightshift submit job.yaml
  kubectl nightshift submit job.yaml --generate-name --set spec.shards=20 --set spec.workers.max=5 --wait")]
    Submit {
        /// A BackgroundJob manifest (YAML or JSON); - for stdin.
        file: String,
        /// Its name (instead of the manifest's).
        #[arg(long, conflicts_with = "generate_name")]
        name: Option<String>,
        /// A new name each time: the manifest's name (or generateName) followed by random letters.
        #[arg(long)]
        generate_name: bool,
        /// Set a field of the manifest: a dotted path (list items by index) and a value, read as
        /// JSON when it is (numbers, true/false, objects), else as a string.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Watch it until it ends; exit 0 if it succeeded, 1 if not.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
}

/// What can go wrong, each with the exit code it gives.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use the kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("backgroundjob {name:?} not found in namespace {namespace:?}")]
    NotFound { name: String, namespace: String },
    /// The API server's message names the user, the verb and the resource.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("cannot reach the cluster at {server}: {message}")]
    Unreachable { server: String, message: String },
    #[error("the API server refused: {0}")]
    Api(String),
    #[error("{0}")]
    Input(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) => 2,
            _ => 3,
        }
    }

    /// A kube error, in words: a refusal by the API server, or no answer at all.
    pub fn from_kube(e: kube::Error, target: &Target) -> Self {
        match e {
            kube::Error::Api(status) if status.code == 403 => Error::Forbidden(status.message),
            kube::Error::Api(status) => Error::Api(status.message),
            kube::Error::SerdeError(e) => Error::Api(format!("an answer that is not a BackgroundJob: {e}")),
            other => Error::Unreachable { server: target.server.clone(), message: other.to_string() },
        }
    }
}

/// How a command ended, when it did not fail.
pub enum Outcome {
    Done,
    /// A watched job ended other than Succeeded.
    JobFailed,
}

/// The entry point of `kubectl-nightshift`.
pub async fn main() -> ExitCode {
    // Like other command-line tools: a closed pipe (`| head`) ends the process quietly, not in
    // a panic about a failed print.
    // SAFETY: signal(2) only sets how the process takes SIGPIPE; it touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::JobFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<Outcome, Error> {
    let target = connect::connect(&cli.global).await?;
    match cli.command {
        Command::Watch { jobs, shards } => watch::watch(&target, &jobs, shards).await,
        Command::Logs { job, follow, shard, attempt } => {
            logs::logs(&target, &job, logs::Filter { follow, shard, attempt }).await
        }
        Command::Status { job, output } => report::status(&target, &job, output).await,
        Command::Suspend { job } => steer::suspend(&target, &job, true).await,
        Command::Resume { job } => steer::suspend(&target, &job, false).await,
        Command::Cancel { job } => steer::cancel(&target, &job).await,
        Command::Rerun { job, failed, wait } => steer::rerun(&target, &job, failed, wait).await,
        Command::Dashboard { port } => dashboard::dashboard(&target, port).await,
        Command::Submit { file, name, generate_name, set, wait } => {
            steer::submit(&target, steer::Submit { file, name, generate_name, set, wait }).await
        }
    }
}

impl Target {
    /// The jobs of the target namespace (or of all, with -A).
    pub fn jobs(&self) -> Api<BackgroundJob> {
        if self.all_namespaces {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.namespace)
        }
    }

    /// The jobs of the target namespace.
    pub fn namespaced<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A job by name, or NotFound naming the namespace looked in.
    pub async fn job(&self, name: &str) -> Result<BackgroundJob, Error> {
        match self.namespaced::<BackgroundJob>().get_opt(name).await {
            Ok(Some(job)) => Ok(job),
            Ok(None) => Err(Error::NotFound { name: name.into(), namespace: self.namespace.clone() }),
            Err(e) => Err(Error::from_kube(e, self)),
        }
    }
}
