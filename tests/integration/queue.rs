//! The worker budget and the queue against the real control plane: the budget is never
//! exceeded (a watcher sees every pod event), jobs start in queue order, partial admission,
//! priority changes, suspend freeing capacity, and an operator restart mid-queue.

use std::time::Duration;

use kube::{
    ResourceExt,
    api::{Patch, PatchParams},
};
use nightshift::controller::Options;
use nightshift_api::Phase;
use nightshift_core::jobs::queue::Budget;
use serde_json::json;

use crate::support::{Fixture, Operator, PodWatch, WAIT, fixture, wait_until};

fn budget(total: i32) -> Options {
    Options { budget: Budget { total: Some(total), per_namespace: None }, ..Default::default() }
}

/// Plays the node: every live pod runs and succeeds, round after round.
fn finish_everything(f: &Fixture) -> tokio::task::JoinHandle<()> {
    let pods = f.pods.clone();
    tokio::spawn(async move {
        loop {
            let list = pods.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
            for pod in list {
                let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
                if pending && pod.metadata.deletion_timestamp.is_none() {
                    let _ = crate::support::node::mark_running(&pods, &pod.name_any()).await;
                    let _ = crate::support::node::mark_finished(&pods, &pod.name_any(), 0).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

async fn wait_all_succeeded(f: &Fixture, jobs: &[String]) {
    wait_until("every job to succeed", WAIT * 3, || async {
        let mut left = Vec::new();
        for j in jobs {
            if f.status(j).await.phase != Some(Phase::Succeeded) {
                left.push(j.clone());
            }
        }
        if left.is_empty() { Ok(()) } else { Err(format!("not yet: {left:?}")) }
    })
    .await;
}

#[tokio::test]
async fn ten_jobs_share_a_budget_of_four_in_priority_order() {
    let (f, operator) = fixture("queue-ten").await;
    operator.kill().await; // jobs first, then an operator with a budget
    let watch = PodWatch::start(f.pods.clone());
    let mut names = Vec::new();
    for i in 0..10 {
        let name = format!("job-{i}");
        let priority = (i * 7) % 10; // all different, not in creation order
        f.create(&name, json!({"shards": 3, "workers": {"min": 2, "max": 3}, "priority": priority})).await;
        names.push((priority, name));
    }
    let _operator = Operator::start_with(&f.client, &f.ns.name, budget(4)).await;
    let queued = wait_until("jobs waiting in the queue", WAIT, || async {
        let s = f.status("job-0").await;
        if s.phase == Some(Phase::Queued) { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    let admitted = queued.conditions.iter().find(|c| c.type_ == "Admitted").unwrap();
    assert_eq!((admitted.status.as_str(), admitted.reason.as_str()), ("False", "WaitingForWorkers"));
    assert!(admitted.message.contains("in the queue"), "{}", admitted.message);

    let driver = finish_everything(&f);
    let all: Vec<String> = names.iter().map(|(_, n)| n.clone()).collect();
    wait_all_succeeded(&f, &all).await;
    driver.abort();
    let (max_live, first_pod_order) = (watch.max_live(), watch.first_pod_order());
    assert!(max_live <= 4, "{max_live} live worker pods at once with a budget of 4");
    assert!(max_live >= 3, "the budget was used: at most {max_live} at once");
    names.sort_by_key(|n| std::cmp::Reverse(n.0));
    let expected: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
    assert_eq!(first_pod_order, expected, "jobs start in priority order");
    for name in &all {
        assert_eq!(f.status(name).await.shards.unwrap().succeeded, 3);
    }
}

#[tokio::test]
async fn partial_admission_starts_with_what_fits_and_grows() {
    let (f, operator) = fixture("queue-partial").await;
    operator.kill().await;
    let _operator = Operator::start_with(&f.client, &f.ns.name, budget(4)).await;
    f.create("busy", json!({"shards": 2, "workers": {"max": 2}, "priority": 10})).await;
    let busy = f.wait_live("busy", 2).await;
    f.create("flexible", json!({"shards": 3, "workers": {"min": 1, "max": 3}, "priority": 5})).await;
    f.wait_live("flexible", 2).await;
    f.create("rigid", json!({"shards": 3, "workers": {"min": 3, "max": 3}})).await;
    let status = f.wait_phase("rigid", Phase::Queued).await;
    let admitted = status.conditions.iter().find(|c| c.type_ == "Admitted").unwrap();
    assert!(admitted.message.contains("needs 3 workers"), "{}", admitted.message);
    wait_until("flexible to show 2 of 3 workers", WAIT, || async {
        let w = f.status("flexible").await.workers.unwrap_or_default();
        if w.summary == "2/3" { Ok(()) } else { Err(format!("{w:?}")) }
    })
    .await;

    f.finish(&busy[0], 0).await;
    f.wait_live("flexible", 3).await;
    assert!(f.live_pods("rigid").await.is_empty(), "rigid still waits for 3 free workers");
    assert_eq!(f.status("rigid").await.phase, Some(Phase::Queued));
}

#[tokio::test]
async fn raising_a_priority_reorders_the_queue_and_suspending_frees_capacity() {
    let (f, operator) = fixture("queue-reorder").await;
    operator.kill().await;
    let _operator = Operator::start_with(&f.client, &f.ns.name, budget(3)).await;
    f.create("holder", json!({"shards": 2, "workers": {"max": 2}, "priority": 100})).await;
    f.wait_live("holder", 2).await;
    f.create("filler", json!({"shards": 1, "priority": 50})).await;
    f.wait_live("filler", 1).await;
    f.create("first", json!({"shards": 1})).await;
    f.wait_phase("first", Phase::Queued).await;
    f.create("second", json!({"shards": 1})).await;
    f.wait_phase("second", Phase::Queued).await;

    f.jobs.patch("second", &PatchParams::default(), &Patch::Merge(json!({"spec": {"priority": 5}}))).await.unwrap();
    wait_until("second to be first in the queue", WAIT, || async {
        let s = f.status("second").await;
        let message =
            s.conditions.iter().find(|c| c.type_ == "Admitted").map(|c| c.message.clone()).unwrap_or_default();
        if message.contains("number 1 in the queue") { Ok(()) } else { Err(message) }
    })
    .await;

    // One worker frees up: it goes to second, now ahead of first, and first waits on.
    f.finish("filler-0-1", 0).await;
    let started = wait_until("a queued job to get the freed worker", WAIT, || async {
        let started = (f.live_pods("second").await.len(), f.live_pods("first").await.len());
        if started != (0, 0) { Ok(started) } else { Err("no pod of second or first yet".into()) }
    })
    .await;
    assert_eq!(started, (1, 0), "(second, first) pods: second (raised) gets the one free worker");
    assert_eq!(f.status("first").await.phase, Some(Phase::Queued));

    f.jobs.patch("holder", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await.unwrap();
    f.wait_phase("holder", Phase::Suspended).await;
    f.wait_live("first", 1).await; // holder's workers freed
    f.wait_live("second", 1).await;
    assert_eq!(f.status("holder").await.succeeded_shards, None, "suspending kept holder's (empty) progress");
}

#[tokio::test]
async fn an_operator_restart_mid_queue_drains_it_within_the_budget() {
    let (f, operator) = fixture("queue-restart").await;
    operator.kill().await;
    let watch = PodWatch::start(f.pods.clone());
    let names: Vec<String> = (0..4).map(|i| format!("drain-{i}")).collect();
    for name in &names {
        f.create(name, json!({"shards": 2, "workers": {"min": 1, "max": 2}})).await;
    }
    let first = Operator::start_with(&f.client, &f.ns.name, budget(2)).await;
    let running = f.wait_live("drain-0", 2).await;
    f.finish(&running[0], 0).await;
    wait_until("the freed worker to be used", WAIT, || async {
        let live = watch.live();
        if live == 2 { Ok(()) } else { Err(format!("{live} live")) }
    })
    .await;
    first.kill().await;
    let _second = Operator::start_with(&f.client, &f.ns.name, budget(2)).await;
    let driver = finish_everything(&f);
    wait_all_succeeded(&f, &names).await;
    driver.abort();
    let max_live = watch.max_live();
    assert!(max_live <= 2, "{max_live} live worker pods at once with a budget of 2");
    for name in &names {
        assert_eq!(f.status(name).await.shards.unwrap().succeeded, 2, "{name}: exact counts");
    }
}
