//! Leader election on a Lease (kube-lease-manager): only the leader reconciles, and it stops at
//! once when it loses the Lease.

use std::time::Duration;

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
