//! Leader election on a coordination.k8s.io Lease (kube-lease-manager). Only the leader writes
//! status and Events; every replica runs its checkers regardless, so losing or gaining the lease
//! never touches /ready.
//!
//! The leader also annotates the Lease with what its deployment serves: a deployment that elects
//! on the same Lease while serving other policies (two shards by `--selector` with one
//! `--lease-name`) would otherwise never write status and never know why.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::shard::{self, SERVES_ANNOTATION};
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
    let serves = shard::serves(&settings.scope, settings.selector.as_deref());
    tasks.spawn(async move {
        let mut seen = lease_changes(client.clone(), &namespace, &name);
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
                    if is_leader {
                        announce(&client, &namespace, &name, &serves).await;
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => break false,
                    changed = leading.changed() => if changed.is_err() { break false },
                    Some(lease) = seen.next() => {
                        report_clash(&lease, &identity, &serves, &name, &metrics);
                        // A standby otherwise sleeps until the lease it last saw expires.
                        if lease.holder.as_deref().is_none_or(str::is_empty) && !is_leader {
                            break true;
                        }
                    }
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

/// What a replica needs to know of the Lease as it changes.
struct Seen {
    holder: Option<String>,
    serves: Option<String>,
}

/// Every change of the Lease. A leader that stops gracefully releases it (no holder), and a
/// standby that sees that takes over at once instead of after the lease would have expired.
fn lease_changes(client: Client, namespace: &str, name: &str) -> BoxStream<'static, Seen> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .backoff(super::backoff::WatchBackoff::default())
    .applied_objects()
    .filter_map(|lease| {
        let seen = lease.ok().map(|mut lease| Seen {
            serves: lease
                .metadata
                .annotations
                .as_mut()
                .and_then(|a| a.remove(SERVES_ANNOTATION)),
            holder: lease.spec.and_then(|s| s.holder_identity),
        });
        futures::future::ready(seen)
    })
    .boxed()
}

/// Says on the Lease what this leader's deployment serves. A failure only costs the clash
/// warning for others, so it is logged, not retried.
async fn announce(client: &Client, namespace: &str, name: &str, serves: &str) {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {"annotations": {SERVES_ANNOTATION: serves}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    if let Err(e) = api.patch(name, &params, &Patch::Merge(&patch)).await {
        warn!(lease = %name, error = %e, "could not annotate the Lease with what this deployment serves");
    }
}

/// Sets `healthgate_lease_clash` from the Lease as last seen; logs when a clash begins.
fn report_clash(
    lease: &Seen,
    identity: &str,
    serves: &str,
    name: &str,
    metrics: &ControllerMetrics,
) {
    let clash = shard::clash(
        lease.holder.as_deref(),
        lease.serves.as_deref(),
        identity,
        serves,
    );
    let was = metrics.lease_clash.get() == 1;
    metrics.lease_clash.set(i64::from(clash.is_some()));
    if let Some(theirs) = clash
        && !was
    {
        error!(
            lease = %name,
            holder = lease.holder.as_deref().unwrap_or_default(),
            theirs,
            ours = serves,
            "the leader Lease is held by a deployment serving other policies, so no status is written for this deployment's policies; give each deployment its own --lease-name, or use --shard"
        );
    }
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
