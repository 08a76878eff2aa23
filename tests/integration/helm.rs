//! The Helm chart (charts/nightshift) against the real control plane, with `helm` on PATH
//! (tests/run-integration.sh puts it there): lint and the values schema, an install into a
//! namespace enforcing the `restricted` Pod Security level, upgrade, uninstall, the aggregated
//! view/edit/admin roles, and the operator binary running with the chart's args on nothing but
//! the rights the chart grants it.

use std::process::Output;

use k8s_openapi::{
    api::{
        admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
        apps::v1::{Deployment, ReplicaSet},
        coordination::v1::Lease,
        core::v1::{Event, Namespace, Pod, Service, ServiceAccount},
        events::v1::Event as EventV1,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use nightshift_api::{BackgroundJob, BackgroundJobTemplate, Phase};
use serde_json::json;

use crate::support::{
    TempFile, TestNamespace, WAIT, api_error, client, client_with_token, fixture, free_port, get, install_crd,
    job_fixture, kubeconfig_path, kubectl, plugin, token, token_kubeconfig, wait_default_service_account, wait_until,
};

pub(crate) const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/nightshift");
const CRD: &str = "backgroundjobs.nightshift.dev";
/// Operator pods with this node selector are never scheduled (no node has the label).
const PARKED: &[&str] = &["--set-string", "nodeSelector.nightshift\\.dev/parked=true"];

/// Runs `program --kubeconfig <the harness kubeconfig> args...` from PATH.
async fn run(program: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {program}: {e}. Is it on PATH? tests/run-integration.sh puts it there"))
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `helm args...`, which must succeed; returns its output.
pub(crate) async fn helm(args: &[&str]) -> String {
    let output = run("helm", args).await;
    assert!(output.status.success(), "helm {} failed: {}", args.join(" "), text(&output));
    text(&output)
}

/// `helm args...`, which must fail; returns its output.
async fn helm_fails(args: &[&str]) -> String {
    let output = run("helm", args).await;
    assert!(!output.status.success(), "helm {} should have failed, but said: {}", args.join(" "), text(&output));
    text(&output)
}

/// A release of the chart, uninstalled when dropped (also when the test panics) so that no
/// cluster-wide role of a failed run lingers.
pub(crate) struct Release {
    pub(crate) name: String,
    namespace: String,
    uninstalled: bool,
}

impl Release {
    /// `helm install` with `--wait=false` and the operator pods parked: created (so Pod Security
    /// admission judges them) but never scheduled, so that an operator of all namespaces never
    /// runs beside the tests' own operators.
    pub(crate) async fn install(ns: &TestNamespace, extra: &[&str]) -> Self {
        let mut args = PARKED.to_vec();
        args.extend_from_slice(extra);
        Self::install_running(ns, &args).await
    }

    /// `helm install` with `--wait=false`: the node runs the operator pods.
    pub(crate) async fn install_running(ns: &TestNamespace, extra: &[&str]) -> Self {
        let name = format!("rel-{}", &ns.name[ns.name.len() - 8..]);
        let mut args = vec!["install", &name, CHART, "--namespace", &ns.name, "--wait=false"];
        args.extend_from_slice(extra);
        helm(&args).await;
        Self { name, namespace: ns.name.clone(), uninstalled: false }
    }

    /// The chart's object names: RELEASE-nightshift.
    pub(crate) fn fullname(&self) -> String {
        format!("{}-nightshift", self.name)
    }

    fn selector(&self) -> String {
        format!("app.kubernetes.io/instance={}", self.name)
    }

    async fn uninstall(&mut self) {
        helm(&["uninstall", &self.name, "--namespace", &self.namespace, "--wait", "--timeout", "60s"]).await;
        self.uninstalled = true;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = std::process::Command::new("helm")
                .arg("--kubeconfig")
                .arg(kubeconfig_path())
                .args(["uninstall", &self.name, "--namespace", &self.namespace])
                .output();
        }
    }
}

/// A ServiceAccount `name` in `ns` bound (RoleBinding) to the ClusterRole `role`.
pub(crate) async fn account_bound_to(ns: &TestNamespace, name: &str, role: &str) {
    let pp = PostParams::default();
    ns.api::<ServiceAccount>()
        .create(&pp, &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
        .await
        .unwrap();
    let binding = json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns.name}]
    });
    ns.api::<RoleBinding>().create(&pp, &serde_json::from_value(binding).unwrap()).await.unwrap();
}

fn minimal_job(name: &str) -> BackgroundJob {
    job_fixture::job(name, json!({"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}})).build()
}

/// A test namespace enforcing the `restricted` Pod Security level, with its default account.
async fn restricted_namespace(client: &Client, prefix: &str) -> TestNamespace {
    install_crd(client).await;
    let ns = TestNamespace::new(client, prefix).await;
    restrict(&ns).await;
    wait_default_service_account(&ns).await;
    ns
}

/// Makes the namespace enforce the `restricted` Pod Security level.
async fn restrict(ns: &TestNamespace) {
    let restricted = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
    }}});
    Api::<Namespace>::all(ns.client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&restricted))
        .await
        .unwrap();
}

/// KIND/NAME of the objects `selector` finds.
async fn names<K>(api: Api<K>, selector: &ListParams) -> Result<Vec<String>, String>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(selector).await.map_err(|e| e.to_string())?;
    Ok(list.iter().map(|o| format!("{}/{}", K::kind(&()), o.name_any())).collect())
}

/// The operator binary with `args` and a ServiceAccount token, as its pod would run it (POD_NAME
/// operator-0); killed when the test ends.
struct OperatorProcess {
    exited: tokio::sync::watch::Receiver<Option<String>>,
    log: TempFile,
    _kubeconfig: TempFile,
}

impl OperatorProcess {
    fn start(args: &[String], token: &str, namespace: &str) -> Self {
        let kubeconfig = token_kubeconfig(token, &format!("{namespace}.kubeconfig"));
        let log = TempFile::new(&format!("{namespace}-operator.log"), "");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig.0)
            .env("POD_NAME", "operator-0")
            .env("POD_NAMESPACE", namespace)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log.0).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the operator binary");
        let (tx, exited) = tokio::sync::watch::channel(None);
        // The task owns the child: the runtime drops it at the end of the test, which kills it.
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Some(format!("{status:?}")));
        });
        Self { exited, log, _kubeconfig: kubeconfig }
    }

    /// Fails the test at once, with the operator's log, when it has exited.
    fn assert_running(&self) {
        if let Some(status) = self.exited.borrow().as_ref() {
            let log = std::fs::read_to_string(&self.log.0).unwrap_or_default();
            panic!("the operator exited ({status}):\n{log}");
        }
    }
}

fn container_args(deployment: &Deployment) -> Vec<String> {
    let spec = deployment.spec.template.spec.as_ref().expect("a pod template");
    spec.containers[0].args.clone().unwrap_or_default()
}

#[tokio::test]
async fn lint_passes_and_bad_values_are_refused_naming_the_value() {
    helm(&["lint", "--strict", CHART]).await;

    // The values schema: each bad value is refused by lint, template and install alike, and the
    // message names it.
    for (set, named) in [
        ("replicas=0", "/replicas"),
        ("logFormat=xml", "/logFormat"),
        ("logLevel=loud", "/logLevel"),
        ("workerBudget=-1", "/workerBudget"),
        ("metrics.port=70000", "/metrics/port"),
        ("replica=2", "'replica' not allowed"),
        ("image.tagg=1.0", "'tagg' not allowed"),
        ("leaderElection.enabled=maybe", "/leaderElection/enabled"),
        ("watchNamespaces={a,b}", "/watchNamespaces"),
        ("admissionPolicy.enabled=maybe", "/admissionPolicy/enabled"),
    ] {
        let lint = helm_fails(&["lint", "--strict", CHART, "--set", set]).await;
        assert!(lint.contains(named), "helm lint --set {set} should name {named}: {lint}");
        let template = helm_fails(&["template", "bad", CHART, "--set", set]).await;
        assert!(template.contains(named), "helm template --set {set} should name {named}: {template}");
    }
    // What the schema cannot say: several replicas without leader election.
    let message = helm_fails(&["template", "bad", CHART, "--set", "replicas=2,leaderElection.enabled=false"]).await;
    assert!(message.contains("leaderElection.enabled is false"), "{message}");
    helm(&["template", "ok", CHART, "--set", "replicas=1,leaderElection.enabled=false"]).await;

    // The admission policies: on by default, bound everywhere or to the watched namespace, off
    // with admissionPolicy.enabled=false.
    let kinds = |rendered: &str| -> Vec<String> {
        rendered.lines().filter(|l| l.starts_with("kind: ValidatingAdmissionPolicy")).map(str::to_string).collect()
    };
    let all = helm(&["template", "ok", CHART]).await;
    assert_eq!(kinds(&all).len(), 6, "3 policies and their bindings: {:?}", kinds(&all));
    assert!(!all.contains("namespaceSelector"), "all namespaces by default");
    let one = helm(&["template", "ok", CHART, "--set", "watchNamespaces={shop}"]).await;
    assert!(one.contains(r#"values: ["shop"]"#), "bound to the watched namespace:\n{one}");
    let off = helm(&["template", "ok", CHART, "--set", "admissionPolicy.enabled=false"]).await;
    assert!(kinds(&off).is_empty(), "{:?}", kinds(&off));
}

#[tokio::test]
async fn install_into_a_restricted_namespace_then_upgrade_and_uninstall() {
    let client = client().await;
    let ns = restricted_namespace(&client, "helm-install").await;

    // Pod Security admission does enforce here: a pod without the restricted settings is refused.
    let mut bare = crate::support::node::template(json!({"containers": [{"name": "c", "image": "c"}]}));
    bare["metadata"]["name"] = json!("bare");
    let bare: Pod = serde_json::from_value(bare).unwrap();
    let refused = ns.api::<Pod>().create(&PostParams::default(), &bare).await.map(|_| ());
    match api_error(&refused) {
        Some((403, message)) if message.contains("violates PodSecurity") => {}
        _ => panic!("a bare pod in a restricted namespace should be refused by Pod Security admission: {refused:?}"),
    }

    let mut release = Release::install(&ns, &[]).await;
    let name = release.fullname();
    let selector = ListParams::default().labels(&release.selector());

    // What the release made, namespaced and cluster-wide.
    let deployment = ns.api::<Deployment>().get(&name).await.unwrap();
    assert_eq!(deployment.spec.replicas, Some(2));
    let args = container_args(&deployment);
    for want in [
        "run".to_string(),
        "--leader-election=true".into(),
        format!("--leader-election-namespace={}", ns.name),
        "--leader-election-lease=nightshift-leader".into(),
        "--metrics-address=0.0.0.0:8080".into(),
        "--max-workers=0".into(),
        "--max-workers-per-namespace=0".into(),
        "--log-level=info".into(),
        "--log-format=text".into(),
        "--agent-image=nightshift:0.1.0".into(),
    ] {
        assert!(args.contains(&want), "the operator's args {args:?} lack {want}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--namespace")), "all namespaces by default: {args:?}");
    let pod_spec = deployment.spec.template.spec.clone().unwrap();
    let container = &pod_spec.containers[0];
    assert_eq!(container.image.as_deref(), Some("nightshift:0.1.0"));
    let env: Vec<&str> = container.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"), "{env:?}");
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/readyz"));
    let security = container.security_context.as_ref().expect("a container securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(pod_spec.service_account_name.as_deref(), Some(name.as_str()));

    ns.api::<ServiceAccount>().get(&name).await.expect("the operator's ServiceAccount");
    let service = ns.api::<Service>().get(&format!("{name}-metrics")).await.expect("the metrics Service");
    let ports = service.spec.unwrap().ports.unwrap_or_default();
    assert!(ports.iter().any(|p| p.name.as_deref() == Some("metrics") && p.port == 8080), "{ports:?}");
    assert_eq!(
        service.metadata.annotations.unwrap_or_default().get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    let pdb = ns.api::<PodDisruptionBudget>().get(&name).await.expect("the PodDisruptionBudget");
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let role = ns.api::<Role>().get(&format!("{name}-leader-election")).await.expect("the leader-election Role");
    let rules = role.rules.unwrap_or_default();
    assert!(
        rules.iter().any(|r| r.resource_names.as_deref() == Some(&["nightshift-leader".to_string()][..])),
        "the election Role is restricted to its Lease: {rules:?}"
    );
    ns.api::<RoleBinding>().get(&format!("{name}-leader-election")).await.expect("the leader-election RoleBinding");
    let cluster_roles: Vec<String> =
        Api::<ClusterRole>::all(client.clone()).list(&selector).await.unwrap().iter().map(|r| r.name_any()).collect();
    for want in [name.clone(), format!("{name}-view"), format!("{name}-edit")] {
        assert!(cluster_roles.contains(&want), "ClusterRole {want} missing from {cluster_roles:?}");
    }
    for policy in ["pod-templates", "worker-leases", "admitted-jobs"] {
        let policy = format!("{name}-{policy}");
        Api::<ValidatingAdmissionPolicy>::all(client.clone()).get(&policy).await.expect("the admission policy");
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()).get(&policy).await.expect("its binding");
    }
    let binding = Api::<ClusterRoleBinding>::all(client.clone()).get(&name).await.expect("the ClusterRoleBinding");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!((subject.name.as_str(), subject.namespace.as_deref()), (name.as_str(), Some(ns.name.as_str())));

    // The Deployment and ReplicaSet controllers create the operator pods, and Pod Security
    // admission lets them in (parked: they stay Pending; the test below runs them).
    let pods: Api<Pod> = ns.api();
    wait_until("the ReplicaSet to create 2 operator pods", WAIT, || async {
        let found = pods.list(&selector).await.map_err(|e| e.to_string())?.items.len();
        let events = ns.api::<Event>().list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let refused: Vec<String> = events
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
            .filter_map(|e| e.message)
            .collect();
        if let Some(message) = refused.iter().find(|m| m.contains("violates PodSecurity")) {
            panic!("Pod Security admission refused the operator pods: {message}");
        }
        if found == 2 { Ok(()) } else { Err(format!("{found} pods; FailedCreate events {refused:?}")) }
    })
    .await;
    for rs in ns.api::<ReplicaSet>().list(&selector).await.unwrap() {
        let conditions = rs.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(!conditions.iter().any(|c| c.type_.as_deref() == Some("ReplicaFailure")), "{conditions:?}");
    }

    // Upgrade with other values.
    let chart = CHART;
    helm(&[
        "upgrade",
        &release.name,
        chart,
        "--namespace",
        &ns.name,
        "--wait=false",
        "--set",
        "replicas=3,logFormat=json",
        PARKED[0],
        PARKED[1],
    ])
    .await;
    let deployment = ns.api::<Deployment>().get(&name).await.unwrap();
    assert_eq!(deployment.spec.replicas, Some(3));
    let args = container_args(&deployment);
    assert!(args.contains(&"--log-format=json".to_string()), "{args:?}");
    assert!(!args.contains(&"--log-format=text".to_string()), "{args:?}");
    wait_until("the upgraded operator pods", WAIT, || async {
        let pods = pods.list(&selector).await.map_err(|e| e.to_string())?;
        let upgraded = pods
            .iter()
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| s.containers[0].args.iter().flatten().any(|a| a == "--log-format=json"))
            })
            .count();
        if upgraded >= 1 { Ok(()) } else { Err(format!("{} pods, none with --log-format=json", pods.items.len())) }
    })
    .await;

    // Uninstall: nothing of the release is left, but the CRD (and with it every job) is.
    release.uninstall().await;
    let leftovers = || async {
        let cluster = client.clone();
        let left = [
            names(ns.api::<Deployment>(), &selector).await?,
            names(ns.api::<ServiceAccount>(), &selector).await?,
            names(ns.api::<Service>(), &selector).await?,
            names(ns.api::<PodDisruptionBudget>(), &selector).await?,
            names(ns.api::<Role>(), &selector).await?,
            names(ns.api::<RoleBinding>(), &selector).await?,
            names(Api::<ClusterRole>::all(cluster.clone()), &selector).await?,
            names(Api::<ClusterRoleBinding>::all(cluster.clone()), &selector).await?,
            names(Api::<ValidatingAdmissionPolicy>::all(cluster.clone()), &selector).await?,
            names(Api::<ValidatingAdmissionPolicyBinding>::all(cluster), &selector).await?,
        ]
        .concat();
        if left.is_empty() { Ok(()) } else { Err(format!("left behind: {left:?}")) }
    };
    wait_until("nothing of the release to be left", WAIT, leftovers).await;
    let releases = helm(&["list", "--namespace", &ns.name, "--short"]).await;
    assert!(!releases.contains(&release.name), "helm still lists the release: {releases}");
    Api::<CustomResourceDefinition>::all(client.clone()).get(CRD).await.expect("the CRD stays after helm uninstall");
}

#[tokio::test]
async fn the_aggregated_roles_let_view_read_and_edit_and_admin_write_backgroundjobs() {
    let client = client().await;
    install_crd(&client).await;
    let ops = TestNamespace::new(&client, "helm-agg").await;
    let _release = Release::install(&ops, &["--set", "replicas=1"]).await;

    let ns = TestNamespace::new(&client, "helm-users").await;
    account_bound_to(&ns, "viewer", "view").await;
    account_bound_to(&ns, "editor", "edit").await;
    account_bound_to(&ns, "administrator", "admin").await;
    let pp = PostParams::default();

    // view: read, not write. The aggregation controller folds the chart's roles in shortly.
    let as_viewer: Api<BackgroundJob> =
        Api::namespaced(client_with_token(&token(&client, &ns.name, "viewer").await).await, &ns.name);
    wait_until("view to allow listing backgroundjobs", WAIT, || async {
        as_viewer.list(&ListParams::default()).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    let refused = as_viewer.create(&pp, &minimal_job("by-viewer")).await.map(|_| ());
    match api_error(&refused) {
        Some((403, message)) => assert!(message.contains("backgroundjobs"), "{message}"),
        _ => panic!("view must not create backgroundjobs: {refused:?}"),
    }

    // edit: create.
    let as_editor: Api<BackgroundJob> =
        Api::namespaced(client_with_token(&token(&client, &ns.name, "editor").await).await, &ns.name);
    wait_until("edit to allow creating a backgroundjob", WAIT, || async {
        as_editor.create(&pp, &minimal_job("by-editor")).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    // The viewer sees it.
    let listed = as_viewer.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.iter().map(|j| j.name_any()).collect::<Vec<_>>(), vec!["by-editor".to_string()]);
    // So does `kubectl nightshift` on the viewer's kubeconfig; a change is refused, naming the verb.
    let viewer = token_kubeconfig(&token(&client, &ns.name, "viewer").await, &format!("{}-viewer.kubeconfig", ns.name));
    let (code, out, err) = plugin(&viewer.0, &ns.name, &["status", "by-editor"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("Job:        {}/by-editor", ns.name)), "{out}");
    let (code, _, err) = plugin(&viewer.0, &ns.name, &["suspend", "by-editor"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("forbidden") && err.contains("cannot patch resource \"backgroundjobs\""), "{err}");

    // admin: delete.
    let as_admin: Api<BackgroundJob> =
        Api::namespaced(client_with_token(&token(&client, &ns.name, "administrator").await).await, &ns.name);
    wait_until("admin to allow deleting a backgroundjob", WAIT, || async {
        as_admin.delete("by-editor", &Default::default()).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
}

#[tokio::test]
async fn the_operator_runs_a_job_on_the_rights_the_chart_gives_it_in_one_namespace() {
    let client = client().await;
    install_crd(&client).await;
    let ops = TestNamespace::new(&client, "helm-ops").await;
    let watched = TestNamespace::new(&client, "helm-watched").await;
    wait_default_service_account(&watched).await;
    let release = Release::install(&ops, &["--set", &format!("replicas=1,watchNamespaces={{{}}}", watched.name)]).await;
    let name = release.fullname();
    let selector = ListParams::default().labels(&release.selector());

    // One namespace: a Role and RoleBinding there, no cluster-wide binding, --namespace, and no
    // PodDisruptionBudget for a single replica.
    watched.api::<Role>().get(&name).await.expect("the operator's Role in the watched namespace");
    watched.api::<RoleBinding>().get(&name).await.expect("the operator's RoleBinding in the watched namespace");
    let bindings = Api::<ClusterRoleBinding>::all(client.clone()).list(&selector).await.unwrap();
    assert!(bindings.items.is_empty(), "no ClusterRoleBinding when watching one namespace: {:?}", bindings.items);
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt(&name).await.unwrap().is_none());
    assert!(ops.api::<PodDisruptionBudget>().get_opt(&name).await.unwrap().is_none(), "no PDB for one replica");
    let args = container_args(&ops.api::<Deployment>().get(&name).await.unwrap());
    assert!(args.contains(&format!("--namespace={}", watched.name)), "{args:?}");

    // The operator's own token, as its pods would have it: nothing outside the watched namespace
    // but the election Lease.
    let operator_token = token(&client, &ops.name, &name).await;
    let operator_client = client_with_token(&operator_token).await;
    let other = Api::<Lease>::namespaced(operator_client.clone(), &ops.name).get("other").await.map(|_| ());
    assert_eq!(api_error(&other).map(|(code, _)| code), Some(403), "only the election Lease: {other:?}");
    let unwatched =
        Api::<BackgroundJob>::namespaced(operator_client.clone(), &ops.name).list(&ListParams::default()).await;
    assert_eq!(api_error(&unwatched).map(|(code, _)| code), Some(403), "{unwatched:?}");

    // The operator binary with the chart's args (the metrics address moved to a free local port)
    // and that token, as its pod would run it: it wins the election, gets ready, admits a job
    // with heartbeats (a worker account, Role and binding, a Lease per shard), runs its pods,
    // writes the status, removes the tracking finalizers, publishes events, and deletes the job
    // after its TTL.
    let port = free_port();
    let args: Vec<String> = args
        .into_iter()
        .map(|a| if a.starts_with("--metrics-address=") { format!("--metrics-address=127.0.0.1:{port}") } else { a })
        .collect();
    let operator = OperatorProcess::start(&args, &operator_token, &ops.name);
    wait_until("the operator to be ready and lead", WAIT, || async {
        operator.assert_running();
        match (get(port, "/readyz").await, get(port, "/metrics").await) {
            (Ok((200, _)), Ok((200, metrics))) if metrics.lines().any(|l| l == "nightshift_leader 1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let election = Api::<Lease>::namespaced(client.clone(), &ops.name).get("nightshift-leader").await.unwrap();
    assert_eq!(election.spec.and_then(|s| s.holder_identity).as_deref(), Some("operator-0"));

    // The node: the test plays the pods (and their workers' heartbeats) with the admin's client.
    let _node = crate::support::node::play_all(client.clone(), &watched.name, std::time::Duration::from_secs(1));
    let jobs: Api<BackgroundJob> = watched.api();
    let spec = json!({
        "shards": 2,
        "heartbeat": {"timeoutSeconds": 30},
        "ttlSecondsAfterFinished": 3,
        // For the test's node above, not the real one.
        "template": crate::support::node::template(json!({"containers": [{"name": "w", "image": "w"}]}))
    });
    let job: BackgroundJob = job_fixture::job("chart-rbac", spec).build();
    jobs.create(&PostParams::default(), &job).await.unwrap();

    wait_until("the worker account, Role and RoleBinding", WAIT, || async {
        operator.assert_running();
        let e = |e: kube::Error| e.to_string();
        let sa = watched.api::<ServiceAccount>().get_opt("chart-rbac-worker").await.map_err(e)?;
        let role = watched.api::<Role>().get_opt("chart-rbac-worker").await.map_err(e)?;
        let binding = watched.api::<RoleBinding>().get_opt("chart-rbac-worker").await.map_err(e)?;
        match (sa, role, binding) {
            (Some(_), Some(_), Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_until("the job to succeed", WAIT, || async {
        operator.assert_running();
        let job = jobs.get_opt("chart-rbac").await.map_err(|e| e.to_string())?;
        match job.as_ref().and_then(|j| j.status.as_ref()).and_then(|s| s.phase) {
            Some(Phase::Succeeded) => Ok(()),
            other => Err(format!("phase {other:?}")),
        }
    })
    .await;
    let shard_leases = watched.api::<Lease>().list(&ListParams::default()).await.unwrap();
    assert!(
        shard_leases.items.iter().any(|l| l.name_any() == "chart-rbac-0"),
        "a Lease per shard: {:?}",
        shard_leases.items.iter().map(|l| l.name_any()).collect::<Vec<_>>()
    );
    wait_until("the tracking finalizers to be removed", WAIT, || async {
        operator.assert_running();
        let pods = watched.api::<Pod>().list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let tracked: Vec<String> = pods.iter().filter(|p| !p.finalizers().is_empty()).map(|p| p.name_any()).collect();
        if tracked.is_empty() { Ok(()) } else { Err(format!("still tracked: {tracked:?}")) }
    })
    .await;
    wait_until("the operator to delete the job after its TTL", WAIT, || async {
        operator.assert_running();
        match jobs.get_opt("chart-rbac").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await;
    let events = watched.api::<EventV1>().list(&ListParams::default()).await.unwrap();
    let reasons: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("chart-rbac"))
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(reasons.iter().any(|r| r == "Succeeded"), "the operator's events on the job: {reasons:?}");
}

/// The path a user takes, on the real node: `helm install` into a namespace enforcing the
/// `restricted` Pod Security level runs the operator pods (Running, Ready, one leader, /metrics
/// through the chart's Service); a job applied with kubectl runs on real pods, with the agent
/// injected, through a crash of the leader (its pod force-deleted: the follower takes over) and
/// finishes exactly; `helm uninstall` leaves only the CRD.
#[tokio::test]
async fn on_the_node_the_chart_runs_a_job_through_a_leader_crash() {
    let client = client().await;
    let ns = restricted_namespace(&client, "helm-node").await;
    // Only this namespace: the tests' own operators run in the others.
    let scope = format!("watchNamespaces={{{}}}", ns.name);
    let mut release = Release::install_running(&ns, &["--set", &scope, "--set", "statusFoldSeconds=2"]).await;
    let name = release.fullname();
    let selector = ListParams::default().labels(&release.selector());
    let pods: Api<Pod> = ns.api();
    let leases: Api<Lease> = ns.api();

    let ready = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let ready_pods = || async {
        let list = pods.list(&selector).await.map_err(|e| e.to_string())?;
        let names: Vec<String> = list.iter().filter(|p| ready(p)).map(|p| p.name_any()).collect();
        if names.len() == 2 {
            Ok(names)
        } else {
            Err(format!(
                "ready {names:?} of {:?}",
                list.iter().map(|p| (p.name_any(), p.status.clone())).collect::<Vec<_>>()
            ))
        }
    };
    let operators = wait_until("2 operator pods Running and Ready on the node", WAIT * 2, ready_pods).await;
    let leader = || async {
        let lease = leases.get_opt("nightshift-leader").await.map_err(|e| e.to_string())?.ok_or("no Lease yet")?;
        lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty()).ok_or_else(|| "no holder".to_string())
    };
    let first = wait_until("a leader", WAIT, leader).await;
    assert!(operators.contains(&first), "the leader {first} is one of the operator pods {operators:?}");

    // /metrics through the chart's Service (the API server's service proxy reaches it).
    let path = format!("/api/v1/namespaces/{}/services/{name}-metrics:metrics/proxy/metrics", ns.name);
    let metrics = wait_until("/metrics through the Service", WAIT, || async {
        let output = run("kubectl", &["get", "--raw", &path]).await;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(text(&output))
        }
    })
    .await;
    assert!(metrics.contains("nightshift_leader"), "{metrics}");

    // A job, applied with kubectl, on real pods that pass the restricted level.
    let spec = json!({
        "shards": 4, "workers": {"min": 1, "max": 2},
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 30, "injectAgent": true},
        "template": {"spec": {"containers": [{
            "name": "importer", "image": format!("nightshift-example:{}", env!("CARGO_PKG_VERSION")),
            "command": ["/bulk-import.sh"],
            "env": [{"name": "BATCH_SIZE", "value": "250"}, {"name": "BATCH_SECONDS", "value": "1"}],
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true, "runAsUser": 65532,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
        }]}}
    });
    let manifest = job_fixture::job("import", spec).namespace(&ns.name).manifest();
    let file = TempFile::new(&format!("{}-job.json", ns.name), &manifest.to_string());
    let applied = run("kubectl", &["apply", "-f", file.0.to_str().unwrap()]).await;
    assert!(applied.status.success(), "kubectl apply: {}", text(&applied));
    let jobs: Api<BackgroundJob> = ns.api();
    let status = || async {
        Ok::<_, String>(jobs.get_status("import").await.map_err(|e| e.to_string())?.status.unwrap_or_default())
    };
    wait_until("a worker of the job running", WAIT, || async {
        let s = status().await?;
        if s.workers.as_ref().is_some_and(|w| w.ready > 0) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;

    // The leader crashes: its pod is force-deleted, it never hands its Lease over.
    let first_pod = Api::<Pod>::namespaced(client.clone(), &ns.name);
    first_pod
        .delete(&first, &kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .unwrap();
    let second = wait_until("another leader", WAIT, || async {
        let holder = leader().await?;
        if holder != first { Ok(holder) } else { Err(format!("still {holder}")) }
    })
    .await;
    let done = wait_until("the job to succeed", WAIT * 2, || async {
        let s = status().await?;
        if s.phase == Some(Phase::Succeeded) { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    let shards = done.shards.expect("shard counts");
    assert_eq!((shards.succeeded, shards.failed), (4, 0), "{shards:?}");
    assert_eq!(done.result.as_ref().map(|r| r["imported"].clone()), Some(json!(7000)), "{:?}", done.result);
    let workers = pods.list(&ListParams::default().labels("nightshift.dev/job=import")).await.unwrap();
    assert_eq!(
        workers.items.len(),
        4,
        "one attempt per shard, none repeated: {:?}",
        workers.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    assert!(operators.contains(&second) || second.starts_with(&name), "{second}");

    // Uninstall: only the CRD (and the job) stay.
    release.uninstall().await;
    wait_until("the operator pods to be gone", WAIT, || async {
        let left = names(ns.api::<Pod>(), &selector).await?;
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;
    Api::<CustomResourceDefinition>::all(client.clone()).get(CRD).await.expect("the CRD stays after helm uninstall");
    jobs.get("import").await.expect("the job stays after helm uninstall");
}

/// The server and CA of the harness kubeconfig: what a pod reads from its ServiceAccount mount.
fn server_and_ca() -> (String, TempFile) {
    let text = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let config: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let cluster = &config["clusters"][0]["cluster"];
    let encoded = TempFile::new(
        &format!("ca-{}.b64", std::process::id()),
        cluster["certificate-authority-data"].as_str().expect("the kubeconfig holds its CA"),
    );
    let decoded = std::process::Command::new("base64").arg("-d").arg(&encoded.0).output().expect("coreutils' base64");
    let server = cluster["server"].as_str().unwrap().to_string();
    (server, TempFile::new(&format!("ca-{}.crt", std::process::id()), &String::from_utf8(decoded.stdout).unwrap()))
}

#[tokio::test]
async fn the_app_examples_start_a_job_with_curl_and_python_as_a_service_account_bound_to_the_charts_edit_role() {
    let (f, _operator) = fixture("app-curl").await;
    let ops = TestNamespace::new(&f.client, "app-curl-ops").await;
    let release = Release::install(&ops, &["--set", "replicas=1"]).await;
    // examples/app/rbac.yaml, bound to this release's edit role.
    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app/rbac.yaml")).unwrap();
    let rbac = rbac.replace("name: nightshift-edit", &format!("name: {}-edit", release.fullname()));
    let (code, out, err) = kubectl(&f.ns.name, &["apply", "-f", "-"], &rbac).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut template: BackgroundJobTemplate = serde_yaml_ng::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/templates/bulk-import-template.yaml"))
            .unwrap(),
    )
    .unwrap();
    let mut pod = serde_json::to_value(template.spec.template.get()).unwrap();
    crate::support::node::place(&mut pod);
    template.spec.template = serde_json::from_value::<k8s_openapi::api::core::v1::PodTemplateSpec>(pod).unwrap().into();
    template.spec.heartbeat = None; // the test plays the node: no agent heartbeats
    f.ns.api::<BackgroundJobTemplate>().create(&PostParams::default(), &template).await.unwrap();

    let (server, ca) = server_and_ca();
    let token = token(&f.client, &f.ns.name, "shop-web").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app/start-import.sh");
    let run = |args: Vec<String>| {
        let (server, ca, token, ns) = (server.clone(), ca.0.clone(), token.clone(), f.ns.name.clone());
        async move {
            let output = tokio::process::Command::new("sh")
                .arg(script)
                .args(&args)
                .env("API_SERVER", server)
                .env("CACERT", ca)
                .env("TOKEN", token)
                .env("NAMESPACE", ns)
                .output()
                .await
                .unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (output.status.success(), text(&output.stdout), text(&output.stderr))
        }
    };
    // The aggregation of the chart's role takes a moment: the first create may be refused.
    let name = wait_until("start-import.sh to create a job as shop-web", WAIT, || async {
        match run(vec!["42".into()]).await {
            (true, out, _) if out.trim().starts_with("import-") => Ok(out.trim().to_string()),
            (_, out, err) => Err(format!("{out}{err}")),
        }
    })
    .await;
    let job = f.jobs.get(&name).await.unwrap();
    assert_eq!(job.spec.template_ref.as_ref().unwrap().name, "bulk-import");
    assert_eq!(job.spec.parameters["UPLOAD_ID"], "42");
    f.run_to_success(&name).await;
    let (ok, out, err) = run(vec!["--status".into(), name.clone()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("phase=Succeeded percent=100"), "{out}");
    // The Python example, as the same account, with Debian's official client (python3-kubernetes).
    let kubeconfig = token_kubeconfig(&token, &format!("{}-shop-web.kubeconfig", f.ns.name));
    let python = |code: String| {
        let kubeconfig = kubeconfig.0.clone();
        async move {
            let output = tokio::process::Command::new("/usr/bin/python3")
                .args(["-c", &code])
                .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app"))
                .env("KUBECONFIG", kubeconfig)
                .output()
                .await
                .expect("/usr/bin/python3 (tests/cluster/setup.sh installs python3-kubernetes)");
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            assert!(output.status.success(), "python: {}", text(&output.stderr));
            text(&output.stdout).trim().to_string()
        }
    };
    let setup = "from kubernetes import client, config; import start_import as app; config.load_kube_config(); api = client.CustomObjectsApi()";
    let ns = &f.ns.name;
    let name = python(format!("{setup}; print(app.start_import(api, '{ns}', '7'))")).await;
    assert!(name.starts_with("import-"), "{name}");
    assert_eq!(f.jobs.get(&name).await.unwrap().spec.parameters["UPLOAD_ID"], "7");
    f.run_to_success(&name).await;
    let status =
        python(format!("{setup}; import json; print(json.dumps(app.import_status(api, '{ns}', '{name}')))")).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!((status["phase"].as_str(), status["percent"].as_i64()), (Some("Succeeded"), Some(100)), "{status}");

    // shop-web reads no pods, and cannot run one through a job either: the chart's policy refuses
    // it an inline pod template (examples/app/rbac.yaml says so).
    let as_app: Api<Pod> = Api::namespaced(client_with_token(&token).await, &f.ns.name);
    let refused = as_app.list(&ListParams::default()).await.map(|_| ());
    assert_eq!(api_error(&refused).map(|e| e.0), Some(403));
    let as_app = crate::admission::dynamic::<BackgroundJob>(client_with_token(&token).await, &f.ns.name);
    let inline = serde_json::to_value(minimal_job("inline")).unwrap();
    crate::admission::refused_with(&as_app, &inline, "requires permission to create pods").await;
}

#[tokio::test]
async fn the_example_hook_chart_starts_exactly_one_job_per_revision() {
    let (f, _operator) = fixture("helm-hook").await;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hook-chart");
    let release = "shop";
    // Its pods on the test's node, through the chart's values.
    let placed = crate::support::node::template(json!({}));
    let values = [
        format!("worker.podAnnotations={}", placed["metadata"]["annotations"]),
        format!("worker.nodeSelector={}", placed["spec"]["nodeSelector"]),
        format!("worker.tolerations={}", placed["spec"]["tolerations"]),
    ];
    let on_node = values.iter().flat_map(|v| ["--set-json", v.as_str()]);
    let ns = f.ns.name.as_str();
    let install: Vec<&str> =
        ["install", release, chart, "--namespace", ns].into_iter().chain(on_node.clone()).collect();
    helm(&install).await;
    for _ in 0..2 {
        let upgrade: Vec<&str> =
            ["upgrade", release, chart, "--namespace", ns].into_iter().chain(on_node.clone()).collect();
        helm(&upgrade).await;
    }
    let mut names: Vec<String> =
        f.jobs.list(&ListParams::default()).await.unwrap().items.iter().map(|j| j.name_any()).collect();
    names.sort();
    assert_eq!(names, ["shop-load-catalog-1", "shop-load-catalog-2", "shop-load-catalog-3"]);
    for (revision, name) in names.iter().enumerate() {
        let status = wait_until(&format!("{name} to read its template"), WAIT, || async {
            let s = f.status(name).await;
            if s.resolved_template.is_some() { Ok(s) } else { Err(format!("{s:?}")) }
        })
        .await;
        assert_eq!(status.resolved_template.unwrap().name, "shop-load-catalog");
        let job = f.jobs.get(name).await.unwrap();
        assert_eq!(job.spec.parameters["REVISION"], (revision + 1).to_string());
        assert_eq!(job.spec.shards, 2, "from the template");
    }
    f.run_to_success("shop-load-catalog-3").await;
    helm(&["uninstall", release, "--namespace", ns]).await;
}
