//! The ground a seed runs on: a client for the local cluster, a namespace of its own with the
//! chart installed into it (a release of its own, watching only that namespace), bounded waits,
//! and the operator pods and their leader.

use std::{future::Future, path::PathBuf, process::Command, time::Duration};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/nightshift");

/// The harness kubeconfig: `NIGHTSHIFT_TEST_KUBECONFIG`, else the one `make cluster-up` wrote.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("NIGHTSHIFT_TEST_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cluster/admin.kubeconfig"))
}

pub async fn client() -> Result<Client, String> {
    let path = kubeconfig_path();
    let kc = Kubeconfig::read_from(&path).map_err(|e| format!("no cluster at {}: {e}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Polls `check` every 500 ms until it returns Ok, for at most `timeout`; Err says what it
/// waited for and what it saw last.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}; last seen: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `program --kubeconfig K args...` from PATH: Ok(stdout) when it succeeds.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e} (is it on PATH? make chaos puts it there)"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(format!("{program} {}: {text}", args.join(" "))) }
}

/// Server-side applies the chart's CRDs (those of this tree, which the node's operator image
/// is built from). Integration tests of older trees apply theirs meanwhile: the schema is atomic,
/// so an older one drops status fields the operator writes and its status writes all fail.
pub fn apply_crds() -> Result<(), String> {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/nightshift/crds/nightshift.yaml");
    let args = ["apply", "--server-side", "--force-conflicts", "--field-manager=nightshift-chaos", "-f", crds];
    run("kubectl", &args).map(|_| ())
}

/// A namespace and a release of the chart in it, for one seed.
pub struct Env {
    pub client: Client,
    pub ns: String,
    pub release: String,
}

impl Env {
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates `chaos-SEED-XXXX` and installs the chart as `chaos-XXXX`, its operator watching
    /// only this namespace; returns once both operator pods are Ready and one leads.
    pub async fn install(client: Client, seed: u64) -> Result<Self, String> {
        let suffix = format!("{:04x}", std::process::id() as u64 ^ (seed.wrapping_mul(0x9e37) & 0xffff));
        let env = Self { client, ns: format!("chaos-{seed}-{suffix}"), release: format!("chaos-{suffix}") };
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": env.ns, "labels": {"nightshift.dev/test": "true", "nightshift.dev/chaos": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(env.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| e.to_string())?;
        apply_crds()?;
        let scope = format!("watchNamespaces={{{}}}", env.ns);
        run(
            "helm",
            &["install", &env.release, CHART, "-n", &env.ns, "--set", &scope, "--set", "statusFoldSeconds=2", "--wait"],
        )?;
        env.wait_operators().await?;
        Ok(env)
    }

    pub fn operator_selector(&self) -> ListParams {
        ListParams::default().labels(&format!("app.kubernetes.io/instance={}", self.release))
    }

    /// The operator pods (not being deleted).
    pub async fn operators(&self) -> Result<Vec<Pod>, String> {
        let list = self.api::<Pod>().list(&self.operator_selector()).await.map_err(|e| e.to_string())?;
        Ok(list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
    }

    /// Two operator pods Ready and a leader among them.
    pub async fn wait_operators(&self) -> Result<String, String> {
        wait_until("2 operator pods Ready and a leader", Duration::from_secs(180), || async {
            let pods = self.operators().await?;
            let ready: Vec<String> = pods.iter().filter(|p| ready(p)).map(|p| p.name_any()).collect();
            let leader = self.leader().await?;
            if ready.len() == 2 && ready.contains(&leader.0) {
                Ok(leader.0)
            } else {
                Err(format!("ready {ready:?}, leader {leader:?}"))
            }
        })
        .await
    }

    /// The leader's pod name and the election Lease's duration in seconds.
    pub async fn leader(&self) -> Result<(String, u64), String> {
        let lease = self.api::<Lease>().get_opt("nightshift-leader").await.map_err(|e| e.to_string())?;
        let spec = lease.and_then(|l| l.spec).ok_or("no leader Lease yet")?;
        let holder = spec.holder_identity.filter(|h| !h.is_empty()).ok_or("no holder")?;
        Ok((holder, spec.lease_duration_seconds.unwrap_or(15).max(1) as u64))
    }

    /// `helm uninstall`, then the namespace deleted (finalizers of worker pods released first).
    pub async fn teardown(&self) {
        let _ = run("helm", &["uninstall", &self.release, "-n", &self.ns, "--wait", "--timeout", "60s"]);
        let pods = self.api::<Pod>();
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in list.items.iter().filter(|p| !p.finalizers().is_empty()) {
                let patch = json!({"metadata": {"finalizers": null}});
                let _ = pods.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
            }
        }
        let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.ns, &DeleteParams::background()).await;
    }
}

pub fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
