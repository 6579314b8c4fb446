//! Leader election on a coordination.k8s.io Lease (kube-lease-manager). Only the leader writes
//! status and Events; every replica runs its checkers regardless, so losing or gaining the lease
//! never touches /ready.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{FIELD_MANAGER, Settings};
use crate::metrics::Metrics;

/// A dead leader's lease expires after this; a standby takes over within about this plus
/// [`LEASE_GRACE`] (the issue asks for ~15 s).
const LEASE_DURATION_SECONDS: u64 = 10;
/// The holder renews this long before expiry, so one slow API call does not lose the lease.
const LEASE_GRACE_SECONDS: u64 = 3;
/// Between attempts to set up the lease manager while the API server is unreachable.
const SETUP_RETRY: Duration = Duration::from_secs(2);

/// Starts the election; the receiver says whether this replica leads right now. On cancel the
/// lease is released, so a rolling update hands over at once instead of after expiry.
pub fn spawn(
    client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let (name, namespace, identity) = (
        settings.lease_name.clone(),
        settings.lease_namespace.clone(),
        settings.identity.clone(),
    );
    let task = tokio::spawn(async move {
        let Some(manager) = build(client, &name, &namespace, &identity, &cancel).await else {
            return;
        };
        let (mut leading, lease_task) = manager.watch().await;
        loop {
            let is_leader = *leading.borrow_and_update();
            if *tx.borrow() != is_leader {
                info!(lease = %name, identity = %identity, leader = is_leader, "leadership changed");
                metrics.leader.set(i64::from(is_leader));
                let _ = tx.send(is_leader);
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = leading.changed() => if changed.is_err() { break },
            }
        }
        let _ = tx.send(false);
        metrics.leader.set(0);
        // Dropping the receiver makes the manager release the lease and return.
        drop(leading);
        match lease_task.await {
            Ok(Ok(_)) => info!(lease = %name, "lease released"),
            Ok(Err(e)) => warn!(lease = %name, error = %e, "could not release the lease"),
            Err(e) => warn!(lease = %name, error = %e, "lease task failed"),
        }
    });
    (rx, task)
}

async fn build(
    client: Client,
    name: &str,
    namespace: &str,
    identity: &str,
    cancel: &CancellationToken,
) -> Option<LeaseManager> {
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .with_field_manager(FIELD_MANAGER)
            .build()
            .await;
        match built {
            Ok(manager) => return Some(manager),
            Err(e) => warn!(lease = %name, error = %e, "leader election not set up yet; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(SETUP_RETRY) => {}
        }
    }
}
