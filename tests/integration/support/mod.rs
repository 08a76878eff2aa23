//! Test support: everything the integration tests share, so that each test file holds only its
//! tests and what is particular to them.
//!
//! - here: a client for the local cluster, a namespace per test, bounded waits ([`WAIT`]), the
//!   BackgroundJob CRD, API errors, temporary files;
//! - [`fixture`]: a namespace with an operator of its own ([`Fixture`], [`Operator`]);
//! - [`auth`]: tokens and clients of ServiceAccounts, the namespace's default ServiceAccount;
//! - [`http`]: a free local port and a plain HTTP GET (metrics and probes);
//! - [`watch`]: a watch that sees every event of a namespace's worker pods ([`PodWatch`]).

pub mod auth;
pub mod fixture;
pub mod http;
pub mod node;
/// The one builder of BackgroundJobs, shared with the unit tests (nightshift-api's `fixtures`).
pub use nightshift_api::job_fixture;
pub mod watch;

use std::{future::Future, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

pub use self::{
    auth::{client_with_token, token, token_kubeconfig, wait_default_service_account},
    fixture::{Fixture, Operator, fixture, fixture_with},
    http::{free_port, get},
    watch::PodWatch,
};

/// How long a test waits for the cluster or the operator to do something. A wait that
/// legitimately takes longer says so: `WAIT * 2`.
pub const WAIT: Duration = Duration::from_secs(60);

/// The harness kubeconfig: `NIGHTSHIFT_TEST_KUBECONFIG`, else the one `make cluster-up` wrote.
/// Never the user's `KUBECONFIG`: tests create and delete things.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("NIGHTSHIFT_TEST_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cluster/admin.kubeconfig"))
}

/// Client configuration for the test control plane, as its admin.
pub async fn admin_config() -> Config {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no test control plane at {}: {e}. Run `make cluster-up` first (or `make test`, which starts one)",
            path.display()
        )
    });
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the harness kubeconfig is valid")
}

pub async fn client() -> Client {
    capture_logs();
    Client::try_from(admin_config().await).expect("a client for the test control plane")
}

/// The logs of the operators a test runs in-process go to that test's captured output, which
/// the harness prints when it fails: `nightshift=debug` unless RUST_LOG says otherwise.
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,nightshift=debug"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// A namespace of its own for one test, deleted when the guard drops (also when the test panics).
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let suffix: u32 = rand_suffix();
        let name = format!("{prefix}-{suffix:08x}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "nightshift.dev/test": "true" } }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        Self { name, client: client.clone() }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; delete from a runtime of our own on a plain thread.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = client().await;
                // Worker pods keep their tracking finalizer once the test's operator is gone;
                // release them, or the namespace would stay Terminating for ever.
                let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &name);
                if let Ok(list) = pods.list(&Default::default()).await {
                    for pod in
                        list.items.iter().filter(|p| p.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()))
                    {
                        let patch = serde_json::json!({"metadata": {"finalizers": null}});
                        let pod_name = pod.metadata.name.clone().unwrap_or_default();
                        let _ = pods.patch(&pod_name, &Default::default(), &kube::api::Patch::Merge(&patch)).await;
                    }
                }
                let _ = Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish() as u32
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`. On timeout, fails
/// the test saying what it waited for and the last thing `check` reported.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The HTTP code and message of an API error, None for success or another kind of error.
pub fn api_error<T>(result: &Result<T, kube::Error>) -> Option<(u16, String)> {
    match result {
        Err(kube::Error::Api(status)) => Some((status.code, status.message.clone())),
        _ => None,
    }
}

/// Installs (server-side applies) the CRDs and waits until they are served.
/// Safe to call from every test: the apply is idempotent.
pub async fn install_crd(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in nightshift_api::crd::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("nightshift-tests").force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("installing the CRD {name}: {e}"));
        wait_until(&format!("the CRD {name} to be established"), WAIT, || async {
            let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                Ok(())
            } else {
                Err(format!("conditions {conditions:?}"))
            }
        })
        .await;
    }
    let templates: Api<nightshift_api::BackgroundJobTemplate> = Api::default_namespaced(client.clone());
    wait_until("BackgroundJobTemplates to be served", WAIT, || async {
        templates.list(&Default::default()).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    let schedules: Api<nightshift_api::BackgroundJobSchedule> = Api::default_namespaced(client.clone());
    wait_until("BackgroundJobSchedules to be served", WAIT, || async {
        schedules.list(&Default::default()).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    // Established can precede the resource being served by a moment.
    let jobs: Api<nightshift_api::BackgroundJob> = Api::default_namespaced(client.clone());
    wait_until("BackgroundJobs to be served", WAIT, || async {
        jobs.list(&Default::default()).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
}

/// A file in the temp folder, removed when dropped (also when the test panics).
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, content: &str) -> Self {
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The plugin as built, `target/<profile>/kubectl-nightshift` beside this test binary: it is the
/// nightshift-plugin crate's binary, which `cargo test` of this package does not build, so
/// tests/run-integration.sh builds it first (`cargo build -p nightshift-plugin`).
pub fn plugin_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/integration-HASH
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>").join("kubectl-nightshift");
    assert!(bin.is_file(), "{} is not built: cargo build -p nightshift-plugin", bin.display());
    bin
}

/// `kubectl-nightshift --kubeconfig KUBECONFIG -n NAMESPACE ARGS...` (the plugin as built, stdout
/// not a terminal): its exit code, stdout and stderr. Bounded by `WAIT * 2`.
pub async fn plugin(kubeconfig: &std::path::Path, namespace: &str, args: &[&str]) -> (i32, String, String) {
    let run = tokio::process::Command::new(plugin_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", namespace])
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT * 2, run)
        .await
        .unwrap_or_else(|_| panic!("kubectl nightshift {} still running after {:?}", args.join(" "), WAIT * 2))
        .expect("kubectl-nightshift runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// The harness's kubectl: `build-binaries.sh` prints the folder that holds it (at once, when the
/// control plane has been built, which running these tests requires anyway).
pub async fn kubectl_path() -> std::path::PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = tokio::process::Command::new("bash")
        .arg(format!("{root}/tests/cluster/build-binaries.sh"))
        .current_dir(root)
        .output()
        .await
        .expect("running tests/cluster/build-binaries.sh");
    assert!(output.status.success(), "build-binaries.sh: {}", String::from_utf8_lossy(&output.stderr));
    let dir = String::from_utf8(output.stdout).unwrap();
    std::path::PathBuf::from(dir.trim()).join("kubectl")
}

/// `kubectl --kubeconfig <the admin's> -n NAMESPACE ARGS...` with `stdin`: its exit code, stdout
/// and stderr.
pub async fn kubectl(namespace: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(kubectl_path().await)
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(["-n", namespace])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {} still running after {WAIT:?}", args.join(" ")))
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}
