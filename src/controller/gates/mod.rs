//! Pod readiness gates: the leader writes the `healthgate.dev/ready` condition of every pod a
//! policy's `spec.podSelector` selects and that lists the condition under `spec.readinessGates`,
//! so one healthgate gates a whole service's pods (any language, no sidecar) from one check per
//! dependency.
//!
//! One owned task: while leading, it keeps one pod watch per policy with a selector (in the
//! policy's namespace, by that selector) and recomputes every pod's gate whenever a check
//! result, a policy or a pod changes. Decisions are pure ([`decide`]); writes go through a
//! non-blocking token bucket ([`decide::Pace`]) and whatever the bucket refuses is recomputed on
//! the next pass, so a flap across many pods coalesces instead of queueing. A standby watches
//! no pods and writes nothing; a new leader compares with what each pod already says and writes
//! only differences, after the policy's first results are in.

pub mod decide;
mod metrics;
pub mod patcher;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use metrics::GateMetrics;

use self::decide::{CONDITION, Gate, Pace, PodView};
use super::Context;
use crate::engine::PolicyKey;

/// Without any event, gates are recomputed this often: the safety net for a missed wake-up and
/// what keeps the age metric moving.
const TICK: Duration = Duration::from_secs(1);
/// Passes are at least this far apart: every check result of every policy wakes the loop, and
/// a burst of them (many policies, a relist of many pods) should cost one pass, not one each.
/// Well inside the 2 s a new pod may wait for its gate.
const MIN_PASS: Duration = Duration::from_millis(100);
/// Patches in flight at once. The budget bounds the rate; this only hides round-trip latency
/// when many pods change together.
const CONCURRENCY: usize = 8;

/// How fast gates may be written.
#[derive(Clone, Copy, Debug)]
pub struct GateSettings {
    pub qps: f64,
    pub burst: u32,
}

/// A pod watch for one policy's selector.
struct PodWatch {
    selector: Selector,
    store: Store<Pod>,
    stop: CancellationToken,
}

pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    mut leader: watch::Receiver<bool>,
    settings: GateSettings,
    cancel: CancellationToken,
) {
    let metrics = ctx.metrics.gates.clone();
    let watch_tasks = TaskTracker::new();
    let wake = Arc::new(Notify::new());
    let mut reconciled = ctx.observed.subscribe();
    let mut results = ctx.engine.changes();
    let mut watches: BTreeMap<PolicyKey, PodWatch> = BTreeMap::new();
    // Our writes by pod uid, until the pod cache shows them (see `decide::current`).
    let mut written: HashMap<String, (PodCondition, Instant)> = HashMap::new();
    let mut pace = Pace::new(settings.qps, settings.burst, Instant::now());
    let mut next = TICK;
    let mut last_pass = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            // A closed channel disables its branch for this round instead of spinning.
            Ok(()) = leader.changed() => {}
            Ok(()) = reconciled.changed() => {}
            Ok(()) = results.changed() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
        next = TICK;
        let since = last_pass.elapsed();
        if since < MIN_PASS {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(MIN_PASS - since) => {}
            }
        }
        last_pass = Instant::now();
        if !*leader.borrow_and_update() {
            if !watches.is_empty() {
                info!(
                    policies = watches.len(),
                    "not leading: pod gates left as they are"
                );
                for (_, watch) in std::mem::take(&mut watches) {
                    watch.stop.cancel();
                }
                metrics.gated_pods.set(0);
                metrics.pending.set(0);
            }
            written.clear();
            continue;
        }
        let selectors: BTreeMap<PolicyKey, Selector> = reconciled
            .borrow_and_update()
            .iter()
            .filter_map(|(key, observed)| {
                let selector = observed.applied.as_ref()?.pod_selector.clone()?;
                Some((key.clone(), selector))
            })
            .collect();
        sync_watches(&client, &mut watches, selectors, &watch_tasks, &wake);

        let now = Instant::now();
        let pods = gated_pods(&ctx, &watches, &written, now);
        let present: HashSet<&str> = pods.iter().map(|(p, _)| p.uid.as_str()).collect();
        written.retain(|uid, (_, at)| {
            present.contains(uid.as_str()) && now.duration_since(*at) < decide::OWN_WRITE_MEMORY
        });
        metrics
            .gated_pods
            .set(pods.iter().filter(|(p, _)| p.gated).count() as i64);
        let planned = decide::plan(&pods, k8s_openapi::jiff::Timestamp::now());
        let mut batch = Vec::new();
        for write in &planned {
            if !pace.take(now) {
                break;
            }
            batch.push(write.clone());
        }
        metrics.pending.set((planned.len() - batch.len()) as i64);
        if batch.len() < planned.len() {
            // The budget refused some: come back when it allows the next write.
            next = pace.wait(Instant::now()).max(Duration::from_millis(10));
            debug!(
                waiting = planned.len() - batch.len(),
                "pod gate writes paced"
            );
        }
        let outcomes: Vec<_> = futures::stream::iter(batch)
            .map(|write| {
                let client = client.clone();
                async move {
                    let result = patcher::patch(&client, &write).await;
                    (write, result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let (mut opened, mut closed) = (0usize, 0usize);
        for (write, result) in outcomes {
            match result {
                Ok(()) => {
                    metrics.written(true);
                    if write.condition.status == "True" {
                        opened += 1;
                    } else {
                        closed += 1;
                    }
                    debug!(pod = %write.name, namespace = %write.namespace, status = %write.condition.status, "pod gate written");
                    written.insert(write.uid.clone(), (write.condition, Instant::now()));
                }
                Err(e) if patcher::is_gone(&e) => {}
                Err(e) => {
                    metrics.written(false);
                    warn!(pod = %write.name, namespace = %write.namespace, error = %e, "could not write the pod gate; will retry");
                }
            }
        }
        if opened + closed > 0 {
            // One line per pass, not per pod: a flip of a thousand pods is one story.
            info!(
                ready = opened,
                not_ready = closed,
                pending = planned.len().saturating_sub(opened + closed),
                "pod gates written"
            );
        }
        metrics.refresh_age();
    }
    for (_, watch) in watches {
        watch.stop.cancel();
    }
    watch_tasks.close();
    watch_tasks.wait().await;
}

/// Starts a pod watch for each policy with a selector, restarts one whose selector changed and
/// stops those of policies that have none any more (their pods keep their last gate).
fn sync_watches(
    client: &Client,
    watches: &mut BTreeMap<PolicyKey, PodWatch>,
    selectors: BTreeMap<PolicyKey, Selector>,
    tasks: &TaskTracker,
    wake: &Arc<Notify>,
) {
    watches.retain(|key, watch| {
        let keep = selectors.get(key) == Some(&watch.selector);
        if !keep {
            watch.stop.cancel();
        }
        keep
    });
    for (key, selector) in selectors {
        if watches.contains_key(&key) {
            continue;
        }
        info!(policy = %key, selector = %selector, "gating pods");
        let stop = CancellationToken::new();
        let store = spawn_watch(client, &key, &selector, tasks, wake.clone(), stop.clone());
        watches.insert(
            key,
            PodWatch {
                selector,
                store,
                stop,
            },
        );
    }
}

/// A reflector of the pods `selector` selects in the policy's namespace, owned by `tasks`,
/// stopped by `stop`; every event wakes the gate loop, so a new pod is gated at once.
fn spawn_watch(
    client: &Client,
    key: &PolicyKey,
    selector: &Selector,
    tasks: &TaskTracker,
    wake: Arc<Notify>,
    stop: CancellationToken,
) -> Store<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&selector.to_string());
    let stream = reflector::reflector(
        writer,
        // What the gate never reads, and what makes a pod object large.
        watcher(api, config).modify(|pod| {
            pod.metadata.managed_fields = None;
            pod.metadata.annotations = None;
        }),
    )
    .backoff(super::backoff::WatchBackoff::default());
    let key = key.clone();
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                event = stream.next() => match event {
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(e)) => warn!(
                        policy = %key,
                        error = %e,
                        "watching pods for spec.podSelector (needs the pod-gates RBAC component, manifests/pod-gates)"
                    ),
                    None => break,
                },
            }
        }
    });
    store
}

/// Every pod some policy selects, with the gate its policies ask for together.
fn gated_pods(
    ctx: &Context,
    watches: &BTreeMap<PolicyKey, PodWatch>,
    written: &HashMap<String, (PodCondition, Instant)>,
    now: Instant,
) -> Vec<(PodView, Option<Gate>)> {
    let mut by_uid: BTreeMap<String, (PodView, Vec<Option<Gate>>)> = BTreeMap::new();
    for (key, watch) in watches {
        let gate = ctx
            .engine
            .snapshot(key)
            .and_then(|snapshot| decide::for_policy(&key.to_string(), &snapshot));
        for pod in watch.store.state() {
            // The watch selects by label already; a pod relabelled out of the selector may
            // linger in the cache until its event arrives.
            if !watch.selector.matches(pod.labels()) {
                continue;
            }
            let uid = pod.uid().unwrap_or_default();
            let entry = by_uid.entry(uid.clone()).or_insert_with(|| {
                let cached = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == CONDITION));
                let current = decide::current(cached, written.get(&uid), now).cloned();
                let view = PodView {
                    namespace: pod.namespace().unwrap_or_default(),
                    name: pod.name_any(),
                    uid: uid.clone(),
                    gated: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.readiness_gates.as_ref())
                        .is_some_and(|g| g.iter().any(|g| g.condition_type == CONDITION)),
                    deleting: pod.metadata.deletion_timestamp.is_some(),
                    current,
                };
                (view, Vec::new())
            });
            entry.1.push(gate.clone());
        }
    }
    by_uid
        .into_values()
        .map(|(view, gates)| {
            let gate = decide::combine(gates.iter().map(Option::as_ref));
            (view, gate)
        })
        .collect()
}
