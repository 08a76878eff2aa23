//! The faults, each aimed at this seed's own objects only (its worker pods, its operator
//! pods), but the two that hit the shared cluster (restarting the kube-apiserver or the kubelet),
//! which run only when CHAOS_FAULTS names them.
//!
//! Processes are found by scanning /proc for the environment the container was given
//! (NIGHTSHIFT_POD and NIGHTSHIFT_NAMESPACE for a worker, POD_NAME and POD_NAMESPACE for an
//! operator): it needs no crictl (not installed) and no containerd client, and the namespace in
//! it keeps another engineer's pod of the same name out of reach.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, EvictParams, ListParams},
};
use serde_json::json;

use crate::{Rng, log::EventLog, setup::Env};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Evict,
    ForceDelete,
    Freeze,
    Kill,
    LeaderDelete,
    LeaderForceDelete,
    LeaderStop,
    RestartApiserver,
    RestartKubelet,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::Evict,
        Fault::ForceDelete,
        Fault::Freeze,
        Fault::Kill,
        Fault::LeaderDelete,
        Fault::LeaderForceDelete,
        Fault::LeaderStop,
        Fault::RestartApiserver,
        Fault::RestartKubelet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Evict => "evict",
            Fault::ForceDelete => "force-delete",
            Fault::Freeze => "freeze",
            Fault::Kill => "kill",
            Fault::LeaderDelete => "leader-delete",
            Fault::LeaderForceDelete => "leader-force-delete",
            Fault::LeaderStop => "leader-stop",
            Fault::RestartApiserver => "restart-apiserver",
            Fault::RestartKubelet => "restart-kubelet",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Hits the shared cluster: only when asked for by name.
    pub fn shared(self) -> bool {
        matches!(self, Fault::RestartApiserver | Fault::RestartKubelet)
    }
}

/// Injects `fault`; Ok(what was done) or Err(why it could not be, e.g. no worker running).
/// A worker is frozen until the operator deletes it (so the next faults, a leader change among
/// them, strike meanwhile): its detection latency is read from the event log.
pub async fn inject(env: &Env, log: &Arc<EventLog>, rng: &mut Rng, fault: Fault) -> Result<String, String> {
    match fault {
        Fault::Evict | Fault::ForceDelete | Fault::Freeze | Fault::Kill => {
            // The running workers in the seed's order: the first that can take the fault gets it
            // (a pod still Running in the API may have no process left on the node).
            let mut last = "no running worker".to_string();
            for pod in running_workers(env, rng).await? {
                log.note("fault", fault.name(), json!({"pod": pod.name_any()}));
                match worker_fault(env, log, fault, &pod).await {
                    Ok(done) => return Ok(format!("{} {done}", pod.name_any())),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        Fault::LeaderDelete | Fault::LeaderForceDelete | Fault::LeaderStop => {
            let (leader, duration) = env.leader().await?;
            log.note("fault", fault.name(), json!({"pod": leader, "leaseSeconds": duration}));
            leader_fault(env, log, fault, &leader, duration).await.map(|d| format!("{leader} {d}"))
        }
        Fault::RestartApiserver | Fault::RestartKubelet => {
            let which = if fault == Fault::RestartApiserver { "apiserver" } else { "kubelet" };
            log.note("fault", fault.name(), json!({}));
            restart(which).await
        }
    }
}

async fn running_workers(env: &Env, rng: &mut Rng) -> Result<Vec<Pod>, String> {
    let list = env
        .api::<Pod>()
        .list(&ListParams::default().labels(nightshift_api::LABEL_JOB))
        .await
        .map_err(|e| e.to_string())?;
    let mut running: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    // Fisher-Yates, from the seed.
    for i in (1..running.len()).rev() {
        running.swap(i, rng.below(i as u64 + 1) as usize);
    }
    Ok(running)
}

async fn worker_fault(env: &Env, log: &Arc<EventLog>, fault: Fault, pod: &Pod) -> Result<String, String> {
    let name = pod.name_any();
    match fault {
        Fault::Evict => {
            env.api::<Pod>().evict(&name, &EvictParams::default()).await.map_err(|e| e.to_string())?;
            Ok("evicted".into())
        }
        Fault::ForceDelete => {
            let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
            env.api::<Pod>().delete(&name, &dp).await.map_err(|e| e.to_string())?;
            Ok("force-deleted".into())
        }
        Fault::Freeze => {
            let frozen = Frozen::freeze(&pod.metadata.uid.clone().unwrap_or_default())?;
            tokio::spawn(thaw_once_deleted(env.api::<Pod>(), log.clone(), name, frozen));
            Ok(format!("frozen until the operator deletes it (at most {}s)", FREEZE_MAX.as_secs()))
        }
        _ => {
            let pids = processes(&[("NIGHTSHIFT_POD", &name), ("NIGHTSHIFT_NAMESPACE", &env.ns)]);
            let top = *pids.first().ok_or("no process of it on this machine")?;
            signal(top, libc::SIGKILL)?;
            Ok(format!("SIGKILL pid {top} (of {pids:?})"))
        }
    }
}

/// How long a worker stays frozen when the operator never deletes it (a violation then).
const FREEZE_MAX: Duration = Duration::from_secs(180);

/// Thaws the frozen pod once it is being deleted or gone, or after [`FREEZE_MAX`].
async fn thaw_once_deleted(pods: Api<Pod>, log: Arc<EventLog>, name: String, frozen: Frozen) {
    let deadline = tokio::time::Instant::now() + FREEZE_MAX;
    while tokio::time::Instant::now() < deadline {
        match pods.get_opt(&name).await {
            Ok(Some(p)) if p.metadata.deletion_timestamp.is_none() => {}
            Ok(_) => break,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(frozen);
    log.note("thawed", &name, json!({}));
}

async fn leader_fault(env: &Env, log: &EventLog, fault: Fault, leader: &str, lease: u64) -> Result<String, String> {
    // Its log first: a deleted pod's log is gone with it.
    if let Ok(text) = env.api::<Pod>().logs(leader, &Default::default()).await {
        log.note("operator-log", leader, json!({"panicked": text.contains("panicked"), "lines": text.lines().count()}));
        if text.contains("panicked") {
            log.note("violation", leader, json!(text));
        }
    }
    match fault {
        Fault::LeaderDelete | Fault::LeaderForceDelete => {
            let grace = if fault == Fault::LeaderForceDelete { Some(0) } else { None };
            let dp = DeleteParams { grace_period_seconds: grace, ..Default::default() };
            env.api::<Pod>().delete(leader, &dp).await.map_err(|e| e.to_string())?;
            let next = env.wait_operators().await?;
            Ok(format!("deleted (grace {grace:?}); leader now {next}"))
        }
        _ => {
            let pids = processes(&[("POD_NAME", leader), ("POD_NAMESPACE", &env.ns)]);
            let top = *pids.first().ok_or("no process of the leader on this machine")?;
            signal(top, libc::SIGSTOP)?;
            let hold = lease + 5;
            tokio::time::sleep(Duration::from_secs(hold)).await;
            signal(top, libc::SIGCONT)?;
            Ok(format!("SIGSTOP pid {top} {hold}s, SIGCONT"))
        }
    }
}

/// `tests/cluster/cluster.sh restart apiserver|kubelet`, on the cluster whose kubeconfig we use.
async fn restart(which: &str) -> Result<String, String> {
    let kubeconfig = crate::setup::kubeconfig_path();
    let state = kubeconfig.parent().ok_or("kubeconfig without a folder")?.to_path_buf();
    let out = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/cluster.sh"))
        .args(["restart", which])
        .env("NIGHTSHIFT_CLUSTER_DIR", &state)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() { Ok(text) } else { Err(format!("cluster.sh restart {which}: {text}")) }
}

/// Pids whose environment holds every `NAME=value` of `env`, the topmost first (the one whose
/// parent is not among them: the container's main process).
fn processes(env: &[(&str, &str)]) -> Vec<i32> {
    let wanted: Vec<Vec<u8>> = env.iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect();
    let mut found: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if wanted.iter().all(|w| vars.contains(&w.as_slice())) {
            found.push((pid, parent(pid)));
        }
    }
    let pids: Vec<i32> = found.iter().map(|f| f.0).collect();
    found.sort_by_key(|(_, ppid)| pids.contains(ppid));
    found.into_iter().map(|f| f.0).collect()
}

fn parent(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) state ppid ...: comm may hold spaces, so after the last ')'.
    stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0)
}

fn signal(pid: i32, sig: i32) -> Result<(), String> {
    // SAFETY: kill(2) with a pid we just found and a valid signal number.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(format!("kill({pid}, {sig}): {}", std::io::Error::last_os_error()))
    }
}

/// A pod's cgroup (v1 freezer) frozen; thawed when dropped, also on an early return.
struct Frozen(std::path::PathBuf);

impl Frozen {
    fn freeze(uid: &str) -> Result<Self, String> {
        let root = std::path::Path::new("/sys/fs/cgroup/freezer/kubepods");
        let dir = ["", "burstable", "besteffort"]
            .iter()
            .map(|qos| root.join(qos).join(format!("pod{uid}")))
            .find(|d| d.join("freezer.state").exists())
            .ok_or_else(|| format!("no freezer cgroup for pod {uid} under {}", root.display()))?;
        std::fs::write(dir.join("freezer.state"), "FROZEN").map_err(|e| format!("freezing {}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}
