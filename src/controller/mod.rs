//! Kubernetes mode: watch HealthPolicies (and the Secrets they reference) and keep the engine's
//! checkers in step with them; the leader also writes status and Events.
//!
//! Every replica reconciles every policy in scope into its own engine, so each pod's /ready
//! reflects its own view of its dependencies. Only the holder of the Lease writes status and
//! Events, so N replicas do not fight over one status. Reconcile never blocks on a check: it
//! validates, diffs and returns; status is computed from the engine's cache by a separate task.

mod backoff;
mod budget;
mod cascade;
mod events;
pub mod gates;
mod leader;
mod lifecycle;
mod metrics;
mod reconcile;
mod recorder;
mod secrets;
pub mod shard;
pub mod status;
mod writer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use metrics::ControllerMetrics;

use crate::api::HealthPolicy;
use crate::cli::KubeArgs;
use crate::engine::{Engine, PolicyKey};
use crate::first_sync;
use crate::policy::{FieldError, Policy};

/// The one field manager for everything this controller writes with server-side apply.
pub const FIELD_MANAGER: &str = "healthgate";
/// The `reportingController` of Events (a qualified name, as events.k8s.io asks for).
pub const REPORTING_CONTROLLER: &str = "healthgate.dev/controller";
/// Level-triggered safety net: even without any watch event, every policy is re-checked this
/// often (a missed Secret event, a resolver error that went away).
const RESYNC: Duration = Duration::from_secs(300);
/// A reconcile that failed is retried after this; errors are API or cache problems that a
/// short wait usually fixes, and the checkers keep running meanwhile.
const RETRY: Duration = Duration::from_secs(2);
/// Policies are not reconciled before the Secret cache has its first list, or every policy
/// with a secretKeyRef would flap to Invalid at startup.
const SECRETS_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Secret cache has not synced within {0:?}")]
    SecretsNotSynced(Duration),
    #[error("HealthPolicy {0} has no namespace")]
    NoNamespace(String),
    #[error("no Kubernetes configuration (in-cluster or KUBECONFIG): {0}")]
    Config(String),
    #[error(transparent)]
    Shard(#[from] shard::ShardError),
}

impl Error {
    /// A bounded label for `healthgate_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::SecretsNotSynced(_) => "secrets_not_synced",
            Error::NoNamespace(_) => "no_namespace",
            Error::Config(_) | Error::Shard(_) => "config",
        }
    }
}

/// Which HealthPolicies this instance serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    AllNamespaces,
    /// One named policy (e.g. a sidecar gating its own pod).
    Policy {
        namespace: String,
        name: String,
    },
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub scope: Scope,
    /// Label selector on HealthPolicies: `--selector` ANDed with the shard rule (`shard.rs`).
    pub selector: Option<String>,
    /// This replica's identity: Lease holder and Event `reportingInstance`.
    pub identity: String,
    /// Namespace of the leader Lease (the pod's own).
    pub lease_namespace: String,
    pub lease_name: String,
    /// The write budget: status writes and Events per second, and the burst before it applies.
    pub write_qps: f64,
    pub write_burst: u32,
    /// The pod-gate write budget, separate from the status budget: a thousand pods must not
    /// starve status writes, nor status writes the gates.
    pub gates: gates::GateSettings,
}

/// What reconcile learned about a policy, for the status writer.
#[derive(Clone, Debug)]
pub struct Observed {
    pub generation: Option<i64>,
    pub reference: ObjectReference,
    /// The policy the engine runs for it (the last valid spec), if any.
    pub applied: Option<Policy>,
    /// Problems with the current spec; the previous good policy keeps running meanwhile.
    pub invalid: Option<Vec<FieldError>>,
}

impl Observed {
    /// Equal for everything but the object's resourceVersion, which every status write moves.
    pub fn same_as(&self, other: &Self) -> bool {
        let id = |r: &ObjectReference| (r.uid.clone(), r.namespace.clone(), r.name.clone());
        self.generation == other.generation
            && self.applied == other.applied
            && self.invalid == other.invalid
            && id(&self.reference) == id(&other.reference)
    }
}

/// What reconcile has learned, by policy. Reconcile writes it; the status writer, cascade
/// protection and the first-sync gate subscribe to its changes instead of polling.
pub type ObservedMap = BTreeMap<PolicyKey, Observed>;

pub struct Context {
    pub engine: Engine,
    pub metrics: ControllerMetrics,
    pub secrets: Store<Secret>,
    /// True once the Secret cache has had its first complete list.
    pub secrets_synced: watch::Receiver<bool>,
    pub observed: watch::Sender<ObservedMap>,
}

impl Context {
    /// Stops the checkers of a policy that is gone and forgets what reconcile knew about it.
    pub fn forget(&self, key: &PolicyKey) {
        let known = self
            .observed
            .send_if_modified(|observed| observed.remove(key).is_some());
        if self.engine.remove(key) || known {
            info!(policy = %key, "policy gone; checkers stopped");
        }
    }

    /// Every policy this replica runs or has an opinion about.
    pub fn known(&self) -> Vec<PolicyKey> {
        let mut known = self.engine.policies();
        known.extend(self.observed.borrow().keys().cloned());
        known.sort();
        known.dedup();
        known
    }
}

/// The ServiceAccount token mount also says which namespace the pod runs in.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Builds the client (in-cluster config or KUBECONFIG) and resolves the flags into [`Settings`].
/// Also returns the API server's addresses, which the target guard denies to checks.
pub async fn connect(args: KubeArgs) -> Result<(Client, Settings, Vec<SocketAddr>)> {
    let KubeArgs {
        namespace,
        all_namespaces,
        policy_name,
        selector,
        shard,
        pod_name,
        pod_namespace,
        lease_name,
        api_write_qps,
        api_write_burst,
        pod_gate_qps,
        pod_gate_burst,
    } = args;
    // Bad flags fail before any connection is tried.
    let shard::Sharding {
        selector,
        lease_name,
    } = shard::resolve(
        shard.as_deref(),
        selector.as_deref(),
        lease_name.as_deref(),
        policy_name.is_some(),
    )?;
    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let own_namespace = pod_namespace
        .or_else(|| {
            std::fs::read_to_string(NAMESPACE_FILE)
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| config.default_namespace.clone());
    let watched = namespace.unwrap_or_else(|| own_namespace.clone());
    let scope = match (all_namespaces, policy_name) {
        (true, _) => Scope::AllNamespaces,
        (false, Some(name)) => Scope::Policy {
            namespace: watched,
            name,
        },
        (false, None) => Scope::Namespace(watched),
    };
    // Two replicas with one identity would both believe they hold the lease.
    let identity = pod_name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("healthgate-{:08x}", rand::random::<u32>()));
    let api_server = api_server_addresses(&config.cluster_url).await?;
    let client = Client::try_from(config)?;
    Ok((
        client,
        Settings {
            scope,
            selector,
            identity,
            lease_namespace: own_namespace,
            lease_name,
            write_qps: api_write_qps,
            write_burst: api_write_burst,
            gates: gates::GateSettings {
                qps: pod_gate_qps,
                burst: pod_gate_burst,
            },
        },
        api_server,
    ))
}

/// Where the cluster URL points, resolved once at start. In a pod that is the `kubernetes`
/// Service's ClusterIP; the addresses behind it are not known here (see README, "Target guard").
/// A name that does not resolve fails the start: the guard would otherwise miss it.
async fn api_server_addresses(url: &hyper::Uri) -> Result<Vec<SocketAddr>> {
    let host = url
        .host()
        .ok_or_else(|| Error::Config(format!("the cluster URL {url} has no host")))?;
    let port = url.port_u16().unwrap_or(match url.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| Error::Config(format!("resolving the API server {host}: {e}")))?
        .collect();
    Ok(addresses)
}

/// Runs the controller, the leader election, cascade protection and the status writer until
/// `cancel` fires. `first_sync` opens once every policy of the first list has been reconciled.
pub async fn run(
    client: Client,
    engine: Engine,
    metrics: ControllerMetrics,
    settings: Settings,
    first_sync: first_sync::Opener,
    cancel: CancellationToken,
) {
    // Every task below stops when `run` returns or is dropped.
    let cancel = cancel.child_token();
    let _stop_tasks = cancel.clone().drop_guard();
    let tasks = TaskTracker::new();

    let (policies, secrets_api) = apis(&client, &settings.scope);
    let mut policy_watch = watcher::Config::default();
    if let Some(selector) = &settings.selector {
        policy_watch = policy_watch.labels(selector);
    }
    if let Scope::Policy { name, .. } = &settings.scope {
        policy_watch = policy_watch.fields(&format!("metadata.name={name}"));
    }

    let (secret_store, secret_writer) = reflector::store();
    let (secrets_listed, secrets_synced) = watch::channel(false);
    let secret_stream = reflector::reflector(
        secret_writer,
        watcher(secrets_api, watcher::Config::default()),
    )
    .inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            secrets_listed.send_replace(true);
        }
    })
    .touched_objects();

    let ctx = Arc::new(Context {
        engine,
        metrics,
        secrets: secret_store,
        secrets_synced,
        observed: watch::Sender::new(ObservedMap::new()),
    });

    let (policy_store, policy_writer) = reflector::store();
    let (mut lifecycle, first_list) = lifecycle::Lifecycle::new(ctx.clone());
    let policy_stream = reflector::reflector(policy_writer, watcher(policies, policy_watch))
        .inspect(move |event| {
            if let Ok(event) = event {
                lifecycle.on_event(event);
            }
        })
        .applied_objects();
    // Both trigger streams (policies and Secrets) retry with the controller's backoff.
    let controller = Controller::for_stream(policy_stream, policy_store.clone())
        .trigger_backoff(backoff::WatchBackoff::default());

    let leader = leader::spawn(
        &tasks,
        client.clone(),
        &settings,
        ctx.metrics.clone(),
        cancel.clone(),
    );
    tasks.spawn(lifecycle::open_after_first_list(
        ctx.clone(),
        first_list,
        policy_store.clone(),
        first_sync,
        cancel.clone(),
    ));
    tasks.spawn(gates::run(
        client.clone(),
        ctx.clone(),
        leader.clone(),
        settings.gates,
        cancel.clone(),
    ));
    tasks.spawn(writer::run(
        client.clone(),
        ctx.clone(),
        policy_store.clone(),
        leader,
        writer::Budget {
            identity: settings.identity.clone(),
            writes: budget::WriteBudget::new(settings.write_qps, settings.write_burst),
        },
        cancel.clone(),
    ));
    tasks.spawn(cascade::run(
        client.clone(),
        ctx.clone(),
        settings.clone(),
        cancel.clone(),
    ));
    tasks.close();

    info!(scope = ?settings.scope, selector = ?settings.selector, identity = %settings.identity, "watching HealthPolicies");
    let by_secret = policy_store.clone();
    controller
        .watches_stream(secret_stream, move |secret| {
            secrets::policies_referencing(&by_secret, &secret)
        })
        .graceful_shutdown_on(cancel.clone().cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| {
            match result {
                Ok(_) => {}
                // A requeued reconcile for a policy that has left the cache since; its delete
                // event has normally forgotten it already.
                Err(controller::Error::ObjectNotFound(gone)) => ctx.forget(&PolicyKey::new(
                    gone.namespace.clone().unwrap_or_default(),
                    gone.name.clone(),
                )),
                // Already counted and logged by `error_policy`.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "controller error"),
            }
            futures::future::ready(())
        })
        .await;
    cancel.cancel();
    tasks.wait().await;
    info!("controller stopped");
}

fn apis(client: &Client, scope: &Scope) -> (Api<HealthPolicy>, Api<Secret>) {
    match scope {
        Scope::AllNamespaces => (Api::all(client.clone()), Api::all(client.clone())),
        Scope::Namespace(ns) | Scope::Policy { namespace: ns, .. } => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
    }
}

#[cfg(test)]
mod tests;
