//! The worker side of the heartbeat protocol: what runs inside a worker pod, as a Rust API
//! ([`Heartbeat`]) and as the `nightshift agent` wrapper around any command ([`agent`]).
//!
//! Each shard has a `coordination.k8s.io/v1` Lease whose `spec.holderIdentity` the controller
//! sets to the pod of the shard's current attempt. The worker renews it every interval with one
//! JSON patch that first tests the holder, so the renewal, its progress and its result land
//! only while this attempt still owns the shard. A 422 (the test failed: another attempt holds
//! the Lease) or a 404 (the Lease is gone with its job) means the worker is *fenced* and must
//! stop; any other failure is retried at the next tick.
//!
//! The workspace (README, "Development"): `nightshift-api` ← `nightshift-core` ← `nightshift`
//! (the operator, the root package); `nightshift-worker` and `nightshift-plugin` depend on the
//! API crate only; `nightshift-bench` on the API and the core.

pub mod agent;
mod directive;
mod lines;

use std::{
    ffi::OsString,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle, time::MissedTickBehavior};
use tracing::{debug, info, warn};

pub use directive::{Directive, PREFIX, parse_line};

use nightshift_api::{ShardProgress, env};

/// Longest progress message sent, in bytes; longer ones are cut on a character boundary.
pub const MAX_MESSAGE_BYTES: usize = 256;

/// Longest wait for one renewal. A hung request must not hold back the next tick forever, nor
/// keep a stopping worker from exiting.
const MIN_RENEW_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong on the worker side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `NIGHTSHIFT_*` variable is missing or malformed.
    #[error("{var} {problem}")]
    Env { var: &'static str, problem: String },
    /// [`Heartbeat::result`] was given something other than a JSON object.
    #[error("a result must be a JSON object, not {0}")]
    ResultNotObject(&'static str),
    /// [`Heartbeat::result`] was given an object larger than [`nightshift_api::MAX_RESULT_BYTES`].
    #[error("a result may be at most {max} bytes of JSON; this one is {size}")]
    ResultTooLarge { size: usize, max: usize },
    /// [`Heartbeat::checkpoint`] was given more than [`nightshift_api::MAX_CHECKPOINT_BYTES`].
    #[error("a checkpoint may be at most {max} bytes; this one is {size} (the previous checkpoint stays)")]
    CheckpointTooLarge { size: usize, max: usize },
}

/// Where and how often to heartbeat, as the controller tells a worker pod in its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEnv {
    /// The shard's Lease (`NIGHTSHIFT_LEASE`).
    pub lease: String,
    /// Its namespace (`NIGHTSHIFT_NAMESPACE`).
    pub namespace: String,
    /// This pod, the holder the controller wrote into the Lease (`NIGHTSHIFT_POD`).
    pub pod: String,
    /// Time between renewals (`NIGHTSHIFT_HEARTBEAT_INTERVAL_SECONDS`).
    pub interval: Duration,
    /// The checkpoint the shard's last attempt saved (`NIGHTSHIFT_CHECKPOINT`): where to resume.
    pub checkpoint: Option<String>,
}

impl WorkerEnv {
    /// Reads the process environment. `Ok(None)` when `NIGHTSHIFT_LEASE` is unset or empty: the
    /// job asks for no heartbeats. With it set, the other three are required.
    pub fn from_env() -> Result<Option<Self>, Error> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// [`WorkerEnv::from_env`] over any source of variables (tests cannot safely change the
    /// process environment: it is shared by every thread).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Option<Self>, Error> {
        let get = |var: &'static str| -> Result<Option<String>, Error> {
            match lookup(var) {
                None => Ok(None),
                Some(value) => match value.into_string() {
                    Ok(value) if value.trim().is_empty() => Ok(None),
                    Ok(value) => Ok(Some(value.trim().to_string())),
                    Err(value) => Err(Error::Env { var, problem: format!("is not valid UTF-8: {value:?}") }),
                },
            }
        };
        let Some(lease) = get(env::LEASE)? else {
            return Ok(None);
        };
        let required = |var: &'static str| -> Result<String, Error> {
            get(var)?.ok_or_else(|| Error::Env { var, problem: format!("is not set (required with {})", env::LEASE) })
        };
        let namespace = required(env::NAMESPACE)?;
        let pod = required(env::POD)?;
        let raw_interval = required(env::HEARTBEAT_INTERVAL_SECONDS)?;
        let interval = match raw_interval.parse::<u64>() {
            Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
            _ => {
                return Err(Error::Env {
                    var: env::HEARTBEAT_INTERVAL_SECONDS,
                    problem: format!("must be a whole number of seconds, at least 1; got {raw_interval:?}"),
                });
            }
        };
        // As written: a checkpoint is opaque, its whitespace included.
        let checkpoint = match lookup(env::CHECKPOINT).map(OsString::into_string) {
            None => None,
            Some(Ok(text)) => Some(text).filter(|text| !text.is_empty()),
            Some(Err(text)) => {
                return Err(Error::Env { var: env::CHECKPOINT, problem: format!("is not valid UTF-8: {text:?}") });
            }
        };
        Ok(Some(Self { lease, namespace, pod, interval, checkpoint }))
    }
}

/// What a worker has reported so far; every renewal carries all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub progress: Option<ShardProgress>,
    /// The result as compact JSON (an object, at most [`nightshift_api::MAX_RESULT_BYTES`]).
    pub result: Option<String>,
    /// The latest checkpoint saved by this attempt (None: none yet, the Lease keeps the one
    /// before).
    pub checkpoint: Option<Checkpoint>,
}

/// A checkpoint: where the next attempt of the shard resumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Opaque to nightshift, at most [`nightshift_api::MAX_CHECKPOINT_BYTES`].
    pub text: String,
    /// The progress reported when it was saved: the next attempt's progress starts from it.
    pub progress: Option<ShardProgress>,
}

/// The one JSON patch of a renewal: fenced by a test of the holder, so that it applies entirely
/// or not at all; then the renew time and the annotations for what was reported so far.
pub fn renewal_patch(pod: &str, now: Timestamp, report: &Report) -> json_patch::Patch {
    let renew_time = serde_json::to_value(MicroTime(now)).expect("a MicroTime serializes");
    let mut ops = vec![
        json!({"op": "test", "path": "/spec/holderIdentity", "value": pod}),
        json!({"op": "add", "path": "/spec/renewTime", "value": renew_time}),
    ];
    // "add" replaces an existing member, and /metadata/annotations always exists: the
    // controller creates the Lease with the shard annotation.
    let mut annotate = |key: &str, value: &str| {
        ops.push(json!({"op": "add", "path": annotation_path(key), "value": value}));
    };
    if let Some(progress) = &report.progress {
        annotate(nightshift_api::ANNOTATION_PROGRESS, &format!("{}/{}", progress.done, progress.total));
        annotate(nightshift_api::ANNOTATION_PROGRESS_MESSAGE, &progress.message);
    }
    if let Some(result) = &report.result {
        annotate(nightshift_api::ANNOTATION_RESULT, result);
    }
    if let Some(checkpoint) = &report.checkpoint {
        annotate(nightshift_api::ANNOTATION_CHECKPOINT, &checkpoint.text);
        let progress = checkpoint.progress.as_ref().map(|p| format!("{}/{}", p.done, p.total));
        annotate(nightshift_api::ANNOTATION_CHECKPOINT_PROGRESS, progress.as_deref().unwrap_or_default());
    }
    serde_json::from_value(Value::Array(ops)).expect("a valid JSON patch")
}

/// The JSON pointer (RFC 6901) to an annotation: `~` and `/` in the key are escaped.
fn annotation_path(key: &str) -> String {
    format!("/metadata/annotations/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// `value` as the result annotation: compact JSON of an object, within the size limit.
pub fn encode_result(value: &Value) -> Result<String, Error> {
    let kind = match value {
        Value::Object(_) => None,
        Value::Null => Some("null"),
        Value::Bool(_) => Some("a boolean"),
        Value::Number(_) => Some("a number"),
        Value::String(_) => Some("a string"),
        Value::Array(_) => Some("an array"),
    };
    if let Some(kind) = kind {
        return Err(Error::ResultNotObject(kind));
    }
    let encoded = value.to_string();
    if encoded.len() > nightshift_api::MAX_RESULT_BYTES {
        return Err(Error::ResultTooLarge { size: encoded.len(), max: nightshift_api::MAX_RESULT_BYTES });
    }
    Ok(encoded)
}

/// A running heartbeat: renews the shard's Lease every interval and carries the progress and
/// result reported so far. Clones share one renew loop. Dropping every clone without
/// [`Heartbeat::stop`] also ends it (with a final flush), but only `stop` waits for that flush.
#[derive(Clone)]
pub struct Heartbeat {
    shared: Arc<Shared>,
    control: Arc<Control>,
}

/// What the loop and the handles both see.
struct Shared {
    report: Mutex<Report>,
    fenced: watch::Sender<bool>,
}

/// Held by the handles only, so that the loop notices when the last one is gone.
struct Control {
    lease: String,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Heartbeat {
    /// Starts renewing `env.lease` at once, then every `env.interval`. Needs a Tokio runtime.
    pub fn start(client: Client, env: &WorkerEnv) -> Heartbeat {
        let shared = Arc::new(Shared { report: Mutex::default(), fenced: watch::Sender::new(false) });
        let (stop, stopped) = watch::channel(false);
        let renewer = Renewer {
            api: Api::namespaced(client, &env.namespace),
            lease: env.lease.clone(),
            pod: env.pod.clone(),
            timeout: env.interval.max(MIN_RENEW_TIMEOUT),
            shared: shared.clone(),
        };
        let task = tokio::spawn(renewer.run(env.interval, stopped));
        let control = Arc::new(Control { lease: env.lease.clone(), stop, task: Mutex::new(Some(task)) });
        Heartbeat { shared, control }
    }

    /// The Lease this heartbeat renews.
    pub fn lease(&self) -> &str {
        &self.control.lease
    }

    /// Reports progress: sent with the next renewal. `done` is capped at `total`, and `message`
    /// cut to [`MAX_MESSAGE_BYTES`]; an empty message clears the previous one.
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let message = nightshift_api::truncate(message, MAX_MESSAGE_BYTES).into();
        let progress = ShardProgress { done: count(done.min(total)), total: count(total), message };
        self.shared.report.lock().expect("the report lock is never poisoned").progress = Some(progress);
    }

    /// Reports the result summary, sent with the next renewal: a JSON object of at most
    /// [`nightshift_api::MAX_RESULT_BYTES`] as compact JSON. Anything else is refused, and the previous
    /// result (if any) stays.
    pub fn result(&self, value: Value) -> Result<(), Error> {
        let encoded = encode_result(&value)?;
        self.shared.report.lock().expect("the report lock is never poisoned").result = Some(encoded);
        Ok(())
    }

    /// Saves a checkpoint, sent with the next renewal (and the final one when the worker stops):
    /// the shard's next attempt, if there is one, receives `text` in `NIGHTSHIFT_CHECKPOINT` and
    /// starts its progress from the progress reported before this call. Report progress first,
    /// then checkpoint. At most [`nightshift_api::MAX_CHECKPOINT_BYTES`]; a longer one is refused and the
    /// previous checkpoint stays. An empty text clears the checkpoint.
    pub fn checkpoint(&self, text: &str) -> Result<(), Error> {
        if text.len() > nightshift_api::MAX_CHECKPOINT_BYTES {
            return Err(Error::CheckpointTooLarge { size: text.len(), max: nightshift_api::MAX_CHECKPOINT_BYTES });
        }
        let mut report = self.shared.report.lock().expect("the report lock is never poisoned");
        report.checkpoint = Some(Checkpoint { text: text.into(), progress: report.progress.clone() });
        Ok(())
    }

    /// What will be sent with the next renewal.
    pub fn report(&self) -> Report {
        self.shared.report.lock().expect("the report lock is never poisoned").clone()
    }

    /// Resolves once this worker is fenced: another attempt holds the Lease, or it is gone.
    /// Never resolves for a heartbeat that stops without being fenced.
    pub async fn fenced(&self) {
        let mut fenced = self.shared.fenced.subscribe();
        // The sender lives in `shared`, which `self` keeps alive: this cannot fail.
        let _ = fenced.wait_for(|fenced| *fenced).await;
    }

    /// Whether this worker is fenced. Once fenced, nothing more is written to the Lease.
    pub fn is_fenced(&self) -> bool {
        *self.shared.fenced.borrow()
    }

    /// Stops renewing: waits for a renewal in flight, sends a last one with everything reported
    /// (unless fenced), and returns when it is done. Other clones then renew nothing more.
    pub async fn stop(self) {
        self.control.stop.send_replace(true);
        let task = self.control.task.lock().expect("the task lock is never poisoned").take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            warn!(lease = %self.control.lease, error = %e, "the heartbeat loop ended abnormally");
        }
    }
}

/// The renew loop's side.
struct Renewer {
    api: Api<Lease>,
    lease: String,
    pod: String,
    timeout: Duration,
    shared: Arc<Shared>,
}

#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    Renewed,
    Fenced,
    Failed,
}

impl Renewer {
    async fn run(self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        // After a slow renewal, keep the interval between renewals rather than catching up in
        // a burst.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // Stop asked for, or every handle dropped (the sender is gone).
                _ = stop.wait_for(|stop| *stop) => break,
                _ = ticker.tick() => {}
            }
            if self.renew().await == Renewal::Fenced {
                return;
            }
        }
        // The final flush, so that the last progress and result land even when they changed
        // since the last tick.
        if self.renew().await == Renewal::Renewed {
            debug!(lease = %self.lease, "final heartbeat sent");
        }
    }

    async fn renew(&self) -> Renewal {
        let report = self.shared.report.lock().expect("the report lock is never poisoned").clone();
        let patch = renewal_patch(&self.pod, Timestamp::now(), &report);
        let (params, patch) = (PatchParams::default(), Patch::<()>::Json(patch));
        let request = self.api.patch(&self.lease, &params, &patch);
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(_)) => {
                debug!(lease = %self.lease, "lease renewed");
                Renewal::Renewed
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 422 || status.code == 404 => {
                let why = if status.code == 404 { "is gone" } else { "is held by another attempt" };
                info!(lease = %self.lease, pod = %self.pod, reason = %status.message, "lease {} {why}: this worker is fenced", self.lease);
                self.shared.fenced.send_replace(true);
                Renewal::Fenced
            }
            Ok(Err(e)) => {
                warn!(lease = %self.lease, error = %e, "renewing the lease failed; retrying at the next tick");
                Renewal::Failed
            }
            Err(_) => {
                warn!(lease = %self.lease, timeout = ?self.timeout, "renewing the lease timed out; retrying at the next tick");
                Renewal::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests;
