//! Kubernetes mode: watch HealthPolicies (and the Secrets they reference) and keep the engine's
//! checkers in step with them; the leader also writes status and Events.
//!
//! Every replica reconciles every policy in scope into its own engine, so each pod's /ready
//! reflects its own view of its dependencies. Only the holder of the Lease writes status and
//! Events, so N replicas do not fight over one status. Reconcile never blocks on a check: it
//! validates, diffs and returns; status is computed from the engine's cache by a separate task.

mod cascade;
mod events;
mod leader;
mod reconcile;
mod secrets;
pub mod status;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::HealthPolicy;
use crate::cli::KubeArgs;
use crate::engine::{Engine, PolicyKey};
use crate::metrics::Metrics;
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
/// How often a reconcile waiting for the first Secret list looks again.
const SYNC_POLL: Duration = Duration::from_millis(20);

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
}

impl Error {
    /// A bounded label for `healthgate_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::SecretsNotSynced(_) => "secrets_not_synced",
            Error::NoNamespace(_) => "no_namespace",
            Error::Config(_) => "config",
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
    /// Label selector on HealthPolicies, e.g. `team=payments`.
    pub selector: Option<String>,
    /// This replica's identity: Lease holder and Event `reportingInstance`.
    pub identity: String,
    /// Namespace of the leader Lease (the pod's own).
    pub lease_namespace: String,
    pub lease_name: String,
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

pub struct Context {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub secrets: Store<Secret>,
    pub observed: Mutex<HashMap<PolicyKey, Observed>>,
    /// Wakes the status writer after a reconcile, so a new generation shows up at once.
    pub changed: Notify,
}

/// The ServiceAccount token mount also says which namespace the pod runs in.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Builds the client (in-cluster config or KUBECONFIG) and resolves the flags into [`Settings`].
pub async fn connect(args: KubeArgs) -> Result<(Client, Settings)> {
    let KubeArgs {
        namespace,
        all_namespaces,
        policy_name,
        selector,
        pod_name,
        pod_namespace,
        lease_name,
    } = args;
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
    let client = Client::try_from(config)?;
    Ok((
        client,
        Settings {
            scope,
            selector,
            identity,
            lease_namespace: own_namespace,
            lease_name,
        },
    ))
}

/// Runs the controller, the leader election and the status writer until `cancel` fires.
///
/// `synced` is set once every policy of the first list has been reconciled; until then /ready
/// answers 503 rather than "ready with nothing to check".
pub async fn run(
    client: Client,
    engine: Engine,
    settings: Settings,
    synced: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let (policies, secrets_api) = apis(&client, &settings.scope);
    let mut policy_watch = watcher::Config::default();
    if let Some(selector) = &settings.selector {
        policy_watch = policy_watch.labels(selector);
    }
    if let Scope::Policy { name, .. } = &settings.scope {
        policy_watch = policy_watch.fields(&format!("metadata.name={name}"));
    }

    let (secret_store, secret_writer) = reflector::store();
    let secret_stream = reflector::reflector(
        secret_writer,
        watcher(secrets_api, watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();

    let ctx = Arc::new(Context {
        metrics: engine.metrics().clone(),
        engine,
        secrets: secret_store,
        observed: Mutex::default(),
        changed: Notify::new(),
    });
    let controller = Controller::new(policies, policy_watch);
    let policy_store = controller.store();

    let (leader, lease_task) = leader::spawn(
        client.clone(),
        &settings,
        ctx.metrics.clone(),
        cancel.clone(),
    );
    let writer_task = tokio::spawn(writer::run(
        client.clone(),
        ctx.clone(),
        policy_store.clone(),
        leader,
        settings.identity.clone(),
        cancel.clone(),
    ));
    let cascade_task = tokio::spawn(cascade::run(
        client.clone(),
        ctx.clone(),
        settings.clone(),
        cancel.clone(),
    ));
    let sweeper_task = tokio::spawn(sweep(
        ctx.clone(),
        policy_store.clone(),
        synced,
        cancel.clone(),
    ));

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
                // A requeued reconcile for an object that has left the cache since. (A delete
                // itself triggers no reconcile; `sweep` handles it.)
                Err(controller::Error::ObjectNotFound(gone)) => {
                    forget(
                        &ctx,
                        &PolicyKey::new(
                            gone.namespace.clone().unwrap_or_default(),
                            gone.name.clone(),
                        ),
                    );
                }
                // Already counted and logged by `error_policy`.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "controller error"),
            }
            futures::future::ready(())
        })
        .await;
    let _ = tokio::join!(lease_task, writer_task, cascade_task, sweeper_task);
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

/// Stops the checkers of a policy that is gone and forgets its status bookkeeping.
fn forget(ctx: &Context, key: &PolicyKey) {
    ctx.observed.lock().expect("observed lock").remove(key);
    if ctx.engine.remove(key) {
        info!(policy = %key, "policy gone; checkers stopped");
    }
}

/// How often running policies are compared with the cache. The Controller reconciles only
/// objects that exist (a delete triggers nothing), so this is how a deleted policy, or one that no
/// longer matches the selector, loses its checkers; it also covers deletes missed in a watch gap.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

async fn sweep(
    ctx: Arc<Context>,
    store: Store<HealthPolicy>,
    synced: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    loop {
        let period = if synced.load(Ordering::Acquire) {
            SWEEP_PERIOD
        } else {
            SYNC_POLL
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        // Before the first list, an empty cache would mean "everything was deleted".
        if !is_synced(&store) {
            continue;
        }
        let cached = store.state();
        if !synced.load(Ordering::Acquire) {
            let observed = ctx.observed.lock().expect("observed lock");
            let all_reconciled = cached.iter().all(|policy| {
                let key = PolicyKey::new(policy.namespace().unwrap_or_default(), policy.name_any());
                observed.contains_key(&key)
            });
            if all_reconciled {
                info!(
                    policies = cached.len(),
                    "initial policies loaded; /ready now reports them"
                );
                synced.store(true, Ordering::Release);
            }
        }
        let mut known = ctx.engine.policies();
        known.extend(ctx.observed.lock().expect("observed lock").keys().cloned());
        for key in known {
            let reference = ObjectRef::new(&key.name).within(&key.namespace);
            if store.get(&reference).is_none() {
                forget(&ctx, &key);
            }
        }
    }
}

/// Whether a reflector cache has had its first complete list.
///
/// Checked by polling rather than by awaiting `Store::wait_until_ready`: a waiter registered
/// before the first list was seen never waking in this setup (kube-runtime 5.0).
fn is_synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// Waits up to `timeout` for [`is_synced`].
async fn synced<K>(store: &Store<K>, timeout: Duration) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !is_synced(store) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(SYNC_POLL).await;
    }
    true
}
