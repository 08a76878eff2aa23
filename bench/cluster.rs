//! The bench's own control plane (tests/cluster/cluster.sh with NIGHTSHIFT_CLUSTER_DIR) and the
//! processes it starts: stopped when dropped, their CPU time and memory read from /proc.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;

use crate::*;

// ---- processes --------------------------------------------------------------------------------

/// A process this bench started: stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
    /// Where the operator serves /metrics.
    pub(crate) metrics: Option<MetricsAt>,
}

/// The operator's /metrics: `port` on the loopback of the network namespace `netns`, the
/// control plane's, where the operator runs.
#[derive(Clone)]
pub(crate) struct MetricsAt {
    pub(crate) netns: PathBuf,
    pub(crate) port: u16,
}

impl Proc {
    pub(crate) fn spawn(mut c: Command, log: &Path) -> Res<Self> {
        use std::os::unix::process::CommandExt;
        let out = fs::File::create(log)?;
        // Stopped with the bench however it ends (an interrupted bench skips the drops): a
        // leftover operator would spend a CPU retrying against a control plane that is gone.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            })
        };
        let child = c.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
        Ok(Self { child, metrics: None })
    }
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (field(11) + field(12)) / ticks
}

/// A line of /proc/PID/status in MiB (VmHWM, VmRSS).
pub(crate) fn status_mib(pid: u32, key: &str) -> f64 {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { return f64::NAN };
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

pub(crate) fn pid_file(path: &Path) -> Res<u32> {
    Ok(fs::read_to_string(path)?.trim().parse()?)
}

// ---- the control plane ------------------------------------------------------------------------

/// Our own control plane, down when dropped.
pub(crate) struct Cluster<'a> {
    pub(crate) s: &'a Settings,
    pub(crate) audit_log: PathBuf,
}

pub(crate) fn qps_label(qps: u32) -> String {
    if qps == 0 { "no limit".into() } else { qps.to_string() }
}

/// kube-controller-manager's and nightshift's (--kube-api-qps, --kube-api-burst).
pub(crate) fn client_limits(qps: u32) -> ((u32, u32), (u32, u32)) {
    if qps == 0 { ((100_000, 100_000), (0, 0)) } else { ((qps, qps * 3 / 2), (qps, qps * 3 / 2)) }
}

impl<'a> Cluster<'a> {
    pub(crate) fn up(s: &'a Settings, qps: u32, label: &str) -> Res<Self> {
        Self::down_raw(s);
        let audit_log = s.work.join(format!("audit-{label}.log"));
        let _ = fs::remove_file(&audit_log);
        let ((kq, kb), _) = client_limits(qps);
        let apiserver = format!(
            "--audit-policy-file={} --audit-log-path={} --audit-log-format=json --audit-log-mode=batch \
             --audit-log-batch-buffer-size=500000 --audit-log-batch-max-size=1000 --audit-log-batch-max-wait=1s \
             --audit-log-maxsize=100000 --audit-log-maxbackup=0",
            s.repo.join("bench/audit-policy.yaml").display(),
            audit_log.display()
        );
        let kcm = format!("--kube-api-qps={kq} --kube-api-burst={kb}");
        let mut c = Command::new(s.repo.join("tests/cluster/cluster.sh"));
        c.arg("up")
            .env("NIGHTSHIFT_CLUSTER_DIR", &s.cluster_dir)
            .env("NIGHTSHIFT_APISERVER_FLAGS", apiserver)
            .env("NIGHTSHIFT_CONTROLLER_MANAGER_FLAGS", kcm);
        run_ok(c)?;
        Ok(Self { s, audit_log })
    }

    pub(crate) fn down_raw(s: &Settings) {
        let mut c = Command::new(s.repo.join("tests/cluster/cluster.sh"));
        c.arg("down").env("NIGHTSHIFT_CLUSTER_DIR", &s.cluster_dir);
        let _ = run_ok(c);
    }

    pub(crate) fn pid(&self, component: &str) -> Res<u32> {
        pid_file(&self.s.cluster_dir.join(format!("{component}.pid")))
    }

    /// The control plane's network namespace. The operator runs in it, as kube-controller-manager
    /// does, and reaches the API server on its loopback (127.0.0.1:6443): not through the host's
    /// way in (a socat pair per connection, whose copying would be charged to its side).
    pub(crate) fn netns(&self) -> Res<PathBuf> {
        let mut c = Command::new(self.s.repo.join("tests/cluster/cluster.sh"));
        c.arg("netns").env("NIGHTSHIFT_CLUSTER_DIR", &self.s.cluster_dir);
        Ok(PathBuf::from(run_out(c)?.trim()))
    }

    pub(crate) fn admin_kubeconfig(&self) -> PathBuf {
        self.s.cluster_dir.join("admin.kubeconfig")
    }

    /// Namespaces, the FlowSchema, the CRD, the operator's account and admission policies (from
    /// the chart), and its token kubeconfig.
    pub(crate) fn setup(&self) -> Res<PathBuf> {
        let s = self.s;
        let mut c = s.kubectl();
        c.args(["apply", "-f"]).arg(s.repo.join("bench/setup.yaml"));
        run_ok(c)?;
        let mut c = s.kubectl();
        c.args(["apply", "-f"]).arg(s.repo.join("crds/nightshift.yaml"));
        run_ok(c)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut c = s.kubectl();
            c.args(["get", "crd", "backgroundjobs.nightshift.dev", "-o"])
                .arg("jsonpath={.status.conditions[?(@.type==\"Established\")].status}");
            if run_out(c).is_ok_and(|o| o.trim() == "True") {
                break;
            }
            if Instant::now() > deadline {
                return Err("the CRD is not Established after 60s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut c = Command::new(s.bin.join("helm"));
        c.args(["template", "nightshift"])
            .arg(s.repo.join("charts/nightshift"))
            .args(["--namespace", "nightshift-system", "--show-only", "templates/rbac.yaml"])
            .args(["--show-only", "templates/serviceaccount.yaml"])
            .args(["--show-only", "templates/admission-policy.yaml"]);
        let rbac = run_out(c)?;
        let mut c = s.kubectl();
        c.args(["apply", "-f", "-"]);
        run_in(c, &rbac)?;
        for ns in ["nightshift-system", "bench-job", "bench-nightshift", "bench-raw"] {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut c = s.kubectl();
                c.args(["-n", ns, "get", "serviceaccount", "default"]).stderr(Stdio::null());
                if run_ok(c).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("no default ServiceAccount in {ns} after 60s").into());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let mut c = s.kubectl();
        c.args(["-n", "nightshift-system", "create", "token", "nightshift", "--duration=24h"]);
        let token = run_out(c)?.trim().to_string();
        let admin: Value = serde_yaml_ng::from_str(&fs::read_to_string(self.admin_kubeconfig())?)?;
        // The API server as seen inside the control plane's network namespace, where the
        // operator runs (`netns`), like kube-controller-manager's kubeconfig.
        let server = "https://127.0.0.1:6443";
        let ca = admin["clusters"][0]["cluster"]["certificate-authority-data"].as_str().ok_or("no CA")?;
        // In the cluster's folder, with its admin.kubeconfig: a second bench (another cluster folder)
        // never points this run's operator at its control plane.
        let operator = s.cluster_dir.join("nightshift.kubeconfig");
        fs::write(&operator, kubeconfig(server, ca, "nightshift", &format!("token: {token}")))?;

        Ok(operator)
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        Self::down_raw(self.s);
    }
}

pub(crate) fn kubeconfig(server: &str, ca: &str, user: &str, auth: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    {auth}\ncontexts:\n- name: bench\n  \
         context: {{cluster: bench, user: {user}}}\ncurrent-context: bench\n"
    )
}

pub(crate) async fn client_from(path: &Path) -> Res<Client> {
    let kc = Kubeconfig::read_from(path)?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.read_timeout = Some(Duration::from_secs(300));
    Ok(Client::try_from(config)?)
}
