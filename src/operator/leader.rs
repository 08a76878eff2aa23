//! Leader election on a Lease (kube-lease-manager): only the leader reconciles, and it stops at
//! once when it loses the Lease.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Where and how long the election Lease is held.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
    pub duration: Duration,
}

/// Joins the election. The receiver says whether this replica leads now; the task keeps
/// renewing or trying until the receiver is dropped, then releases the Lease.
pub async fn join(
    client: Client,
    election: &Election,
) -> Result<(watch::Receiver<bool>, tokio::task::JoinHandle<()>), LeaseManagerError> {
    let secs = election.duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .build()
        .await?;
    let (rx, task) = manager.watch().await;
    let handle = tokio::spawn(async move {
        if let Ok(Ok(manager)) = task.await {
            // Hand over at once rather than after the Lease expires.
            let _ = manager.release().await;
        }
    });
    Ok((rx, handle))
}

/// Runs the controller while this process holds the leader Lease; until then, and after losing
/// it, waits as a follower. Returns on SIGTERM or Ctrl-C.
pub async fn run_elected(
    client: Client,
    options: crate::controller::Options,
    metrics: Arc<super::Metrics>,
    election: Election,
) -> Result<(), Box<dyn std::error::Error>> {
    let (mut leading, election_task) = join(client.clone(), &election)
        .await
        .map_err(|e| format!("joining the leader election on Lease {}/{}: {e}", election.namespace, election.lease))?;
    metrics.leadership_known.store(true, Ordering::Relaxed);
    // A follower runs no controller: it has no caches to sync, and is ready as it is.
    metrics.caches_synced.store(true, Ordering::Relaxed);
    tracing::info!(identity = %election.identity, lease = %election.lease, "waiting to lead");
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        tracing::info!(identity = %election.identity, "leading: reconciling");
        metrics.leader.set(1);
        metrics.caches_synced.store(false, Ordering::Relaxed);
        let mut lost = leading.clone();
        let controller = crate::controller::run_with_metrics(
            client.clone(),
            options.clone(),
            std::future::pending(),
            metrics.clone(),
        );
        let lost_lease = tokio::select! {
            _ = controller => false,
            _ = lost.wait_for(|l| !*l) => true,
            _ = &mut shutdown => false,
        };
        metrics.leader.set(0);
        if lost_lease {
            // Stop at once; whatever was in flight is safe to redo (level-triggered).
            tracing::warn!(identity = %election.identity, "lost the leader Lease: stopped reconciling");
            metrics.caches_synced.store(true, Ordering::Relaxed);
            continue;
        }
        break;
    }
    drop(leading);
    let _ = tokio::time::timeout(Duration::from_secs(5), election_task).await;
    Ok(())
}

/// This replica's identity in the election when POD_NAME is not set: host name and pid.
pub fn default_identity() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "nightshift".into())
}
