//! Leader election on a coordination.k8s.io Lease (kube-lease-manager). Only the leader writes
//! status and Events; every replica runs its checkers regardless, so losing or gaining the lease
//! never touches /ready.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{ControllerMetrics, FIELD_MANAGER, Settings};

/// A dead leader's lease expires after this; a standby takes over within about this plus
/// [`LEASE_GRACE`] (the issue asks for ~15 s).
const LEASE_DURATION_SECONDS: u64 = 10;
/// The holder renews this long before expiry, so one slow API call does not lose the lease.
const LEASE_GRACE_SECONDS: u64 = 3;
/// Between attempts to set up the lease manager while the API server is unreachable.
const SETUP_RETRY: Duration = Duration::from_secs(2);

/// Starts the election on `tasks`; the receiver says whether this replica leads right now. On
/// cancel the lease is released, so a rolling update hands over at once instead of after expiry.
pub fn spawn(
    tasks: &TaskTracker,
    client: Client,
    settings: &Settings,
    metrics: ControllerMetrics,
    cancel: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let (name, namespace, identity) = (
        settings.lease_name.clone(),
        settings.lease_namespace.clone(),
        settings.identity.clone(),
    );
    tasks.spawn(async move {
        let mut released = released(client.clone(), &namespace, &name);
        loop {
            let Some(manager) = build(client.clone(), &name, &namespace, &identity, &cancel).await
            else {
                break;
            };
            let (mut leading, lease_task) = manager.watch().await;
            let look_again = loop {
                let is_leader = *leading.borrow_and_update();
                if *tx.borrow() != is_leader {
                    info!(lease = %name, identity = %identity, leader = is_leader, "leadership changed");
                    metrics.leader.set(i64::from(is_leader));
                    let _ = tx.send(is_leader);
                }
                tokio::select! {
                    _ = cancel.cancelled() => break false,
                    changed = leading.changed() => if changed.is_err() { break false },
                    // A standby otherwise sleeps until the lease it last saw expires.
                    Some(()) = released.next(), if !is_leader => break true,
                }
            };
            // Dropping the receiver makes the manager release the lease (if held) and return.
            drop(leading);
            match lease_task.await {
                Ok(Ok(_)) if !look_again => info!(lease = %name, "lease released"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(lease = %name, error = %e, "could not release the lease"),
                Err(e) => warn!(lease = %name, error = %e, "lease task failed"),
            }
            if !look_again {
                break;
            }
            debug!(lease = %name, "lease released by its holder; trying to take it now");
        }
        let _ = tx.send(false);
        metrics.leader.set(0);
    });
    rx
}

/// Fires whenever the Lease has no holder: a leader that stops gracefully releases it, and a
/// standby that sees that takes over at once instead of after the lease would have expired.
fn released(client: Client, namespace: &str, name: &str) -> BoxStream<'static, ()> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .backoff(super::backoff::WatchBackoff::default())
    .applied_objects()
    .filter_map(|lease| {
        let free = lease.ok().is_some_and(|lease| {
            lease
                .spec
                .and_then(|s| s.holder_identity)
                .is_none_or(|holder| holder.is_empty())
        });
        futures::future::ready(free.then_some(()))
    })
    .boxed()
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
