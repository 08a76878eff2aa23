//! The operator binary as it runs in production: two replicas with leader election, a crash of
//! the leader, /metrics, /healthz and /readyz, and a graceful exit on SIGTERM.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;

use crate::support::{PodWatch, WAIT, fixture, free_port, get, kubeconfig_path, wait_until};

const LEASE_SECONDS: u64 = 4;

struct Replica {
    name: String,
    port: u16,
    child: tokio::process::Child,
}

fn start_replica(name: &str, namespace: &str) -> Replica {
    let port = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["run", "--leader-election=true", "--namespace", namespace])
        .args(["--leader-election-namespace", namespace, "--leader-election-lease-seconds", &LEASE_SECONDS.to_string()])
        .args(["--metrics-address", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", kubeconfig_path())
        .env("POD_NAME", name)
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Replica { name: name.into(), port, child }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("nightshift-leader").await.ok().flatten().and_then(|l| l.spec?.holder_identity)
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let (f, operator) = fixture("leader").await;
    operator.kill().await; // only the two binaries act here
    // Every pod event: no shard may ever have two live attempts.
    let watch = PodWatch::start(f.pods.clone());

    let a = start_replica("replica-a", &f.ns.name);
    let b = start_replica("replica-b", &f.ns.name);
    let leases: Api<Lease> = f.ns.api();
    let leader =
        wait_until("a leader", WAIT, || async { holder(&leases).await.ok_or_else(|| "no holder".to_string()) }).await;
    let (mut leader, mut follower) = if leader == a.name { (a, b) } else { (b, a) };

    // Both answer health; both are ready (the follower knows it follows).
    for r in [&leader, &follower] {
        wait_until(&format!("{} to be ready", r.name), WAIT, || async {
            match get(r.port, "/readyz").await? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code}: {body}")),
            }
        })
        .await;
        assert_eq!(get(r.port, "/healthz").await.unwrap().0, 200);
    }

    f.create("elected", json!({"shards": 6, "workers": {"max": 3}})).await;
    let first = f.wait_live("elected", 3).await;
    let metrics = |port| async move { get(port, "/metrics").await.map(|(_, body)| body).unwrap_or_default() };
    let leader_metrics = wait_until("the leader to count 3 attempts started", WAIT, || async {
        let body = metrics(leader.port).await;
        if body.contains("nightshift_attempts_started_total 3") { Ok(body) } else { Err(body) }
    })
    .await;
    assert!(leader_metrics.contains("nightshift_leader 1"), "{leader_metrics}");
    assert!(leader_metrics.contains("nightshift_reconcile_duration_seconds_count"), "{leader_metrics}");
    let follower_metrics = metrics(follower.port).await;
    assert!(follower_metrics.contains("nightshift_leader 0"), "{follower_metrics}");
    assert!(follower_metrics.contains("nightshift_attempts_started_total 0"), "the follower acts on nothing");

    // The leader crashes (SIGKILL: no handover); the follower takes over after the Lease lapses.
    leader.child.start_kill().unwrap();
    leader.child.wait().await.unwrap();
    let killed = Instant::now();
    wait_until("the follower to take the Lease over", WAIT, || async {
        match holder(&leases).await {
            Some(h) if h == follower.name => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover {:.1}s after the leader died (lease {LEASE_SECONDS}s)", takeover.as_secs_f64());
    assert!(takeover < Duration::from_secs(LEASE_SECONDS + 5), "takeover took {takeover:?}");

    // The new leader carries on: every shard finishes, once.
    for pod in &first {
        f.finish(pod, 0).await;
    }
    f.run_to_success("elected").await;
    assert_eq!(f.status("elected").await.shards.unwrap().succeeded, 6);
    assert_eq!(f.all_pods("elected").await.len(), 6, "no attempt ran twice");
    let new_leader_metrics = metrics(follower.port).await;
    assert!(new_leader_metrics.contains("nightshift_leader 1"), "{new_leader_metrics}");
    let doubled = watch.doubled();
    assert!(doubled.is_empty(), "two live attempts of a shard: {doubled:?}");

    // SIGTERM: a graceful exit, and the Lease handed over (released) rather than left to lapse.
    let pid = follower.child.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let exit =
        tokio::time::timeout(Duration::from_secs(15), follower.child.wait()).await.expect("exits on SIGTERM").unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");
    wait_until("the Lease to be released", WAIT, || async {
        match holder(&leases).await {
            Some(h) if h == follower.name => Err(format!("still held by {h}")),
            _ => Ok(()),
        }
    })
    .await;
}
