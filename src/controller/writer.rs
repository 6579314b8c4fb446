//! The leader's status writer: an owned task that turns engine reports into `.status` (server-side
//! apply, one field manager) and status transitions into Events. Transitions are written within
//! one tick while the write budget allows, oldest first; latency-only changes at most every
//! [`LATENCY_REFRESH`], and only from budget to spare; nothing else is written.
//!
//! A pass never waits for budget: what does not fit is left for a later pass, which writes the
//! status as it is then (a flap in between coalesces into one write). With a thousand policies
//! the latency refreshes alone would ask for 100 writes per second; they must not hold back news.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::budget::WriteBudget;
use super::recorder::EventRecorder;
use super::status::{self, Inputs};
use super::{Context, FIELD_MANAGER, REPORTING_CONTROLLER, events};
use crate::api::{HealthPolicy, HealthPolicyStatus};
use crate::engine::PolicyKey;
use crate::policy::FieldError;

/// How often reports are compared with the written status: the delay of a transition reaching
/// status, and the cost is one in-memory report per policy.
const TICK: Duration = Duration::from_millis(500);
/// Latency moves on every check; refreshing it more often would write once per check.
const LATENCY_REFRESH: Duration = Duration::from_secs(10);
/// Passes are at least this far apart: a thousand reconciles at start-up (each wakes the
/// writer) cost a few passes over all policies, not a thousand.
const MIN_PASS_GAP: Duration = Duration::from_millis(100);
/// After a failed write (API server away) the policy is left alone this long.
const WRITE_BACKOFF: Duration = Duration::from_secs(2);
/// A dependency that has never been checked would show as unknown and flip Ready to False, e.g.
/// right after a new leader starts; its status waits for the first result up to this long.
const FIRST_RESULT_GRACE: Duration = Duration::from_secs(15);

/// What the writer knows about one policy it writes for.
struct Tracked {
    /// When this leader first saw the policy (for [`FIRST_RESULT_GRACE`]).
    first_seen: Instant,
    /// What this leader wrote last, and when: the watch cache may lag a write by a tick, and the
    /// previous status decides lastTransitionTime and Events, so our own writes are the better
    /// source.
    written: Option<(HealthPolicyStatus, Instant)>,
    /// After a failed write, the policy is left alone until then.
    retry_at: Option<Instant>,
    /// Since when a transition has waited for budget (the oldest goes first).
    pending_since: Option<Instant>,
}

impl Tracked {
    fn new() -> Self {
        Self {
            first_seen: Instant::now(),
            written: None,
            retry_at: None,
            pending_since: None,
        }
    }
}

/// What a pass needs of one reconciled policy: key, generation, reference and problems.
type Reconciled = (
    PolicyKey,
    Option<i64>,
    ObjectReference,
    Option<Vec<FieldError>>,
);

/// A status that differs from the written one, found by a pass.
struct Due {
    key: PolicyKey,
    reference: ObjectReference,
    previous: Option<HealthPolicyStatus>,
    desired: HealthPolicyStatus,
    /// News (a state, condition or generation changed, or no status yet) rather than latency.
    transition: bool,
    /// The queue order: for news, since when it waits; for refreshes, when last written.
    since: Option<Instant>,
    /// The version this replica watched, which matched its selector (see the patch below).
    resource_version: Option<String>,
}

/// Who writes, and how fast it may.
pub struct Budget {
    /// The Events' `reportingInstance`.
    pub identity: String,
    pub writes: WriteBudget,
}

pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    store: Store<HealthPolicy>,
    mut leader: watch::Receiver<bool>,
    budget: Budget,
    cancel: CancellationToken,
) {
    let Budget { identity, writes } = budget;
    let mut recorder = EventRecorder::new(client.clone(), REPORTING_CONTROLLER, &identity);
    let mut reconciled = ctx.observed.subscribe();
    let mut tracked: HashMap<PolicyKey, Tracked> = HashMap::new();
    let mut last_pass: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = leader.changed() => {}
            // A reconcile (new generation, new problems) shows up at once, not a tick later.
            _ = reconciled.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        if !*leader.borrow() {
            // A later term starts from what the API server has, not from a stale memory.
            tracked.clear();
            continue;
        }
        let gap = last_pass.map_or(Duration::ZERO, |at| {
            MIN_PASS_GAP.saturating_sub(at.elapsed())
        });
        if !gap.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(gap) => {}
            }
        }
        last_pass = Some(Instant::now());
        // Not the applied policies: only what the status needs, so a pass copies little.
        let observed: Vec<Reconciled> = {
            let observed = reconciled.borrow_and_update();
            tracked.retain(|key, _| observed.contains_key(key));
            observed
                .iter()
                .map(|(k, o)| {
                    let invalid = o.invalid.clone();
                    (k.clone(), o.generation, o.reference.clone(), invalid)
                })
                .collect()
        };
        let mut due = Vec::new();
        for (key, generation, reference, invalid) in observed {
            let entry = tracked.entry(key.clone()).or_insert_with(Tracked::new);
            if entry.retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let Some(object) = store.get(&ObjectRef::new(&key.name).within(&key.namespace)) else {
                continue;
            };
            let snapshot = ctx.engine.snapshot(&key);
            let unchecked = snapshot.as_ref().is_some_and(|s| !s.all_checked());
            if unchecked && invalid.is_none() && entry.first_seen.elapsed() < FIRST_RESULT_GRACE {
                continue;
            }
            let previous = entry
                .written
                .as_ref()
                .map(|(status, _)| status.clone())
                .or_else(|| object.status.clone());
            let desired = status::desired(
                &Inputs {
                    generation,
                    snapshot: snapshot.as_ref(),
                    invalid: invalid.as_deref(),
                    now: Utc::now(),
                },
                previous.as_ref(),
            );
            let transition = status::differs(&desired, previous.as_ref());
            let refresh = previous.as_ref() != Some(&desired)
                && entry
                    .written
                    .as_ref()
                    .is_none_or(|(_, at)| at.elapsed() >= LATENCY_REFRESH);
            if !transition {
                entry.pending_since = None;
            }
            if !transition && !refresh {
                continue;
            }
            let since = if transition {
                Some(*entry.pending_since.get_or_insert_with(Instant::now))
            } else {
                entry.written.as_ref().map(|(_, at)| *at)
            };
            due.push(Due {
                key,
                reference,
                previous,
                desired,
                transition,
                since,
                resource_version: object.metadata.resource_version.clone(),
            });
        }
        // News first, the longest waiting first; then refreshes, the stalest first.
        due.sort_by_key(|d| (!d.transition, d.since));
        for Due {
            key,
            reference,
            previous,
            desired,
            transition,
            resource_version,
            ..
        } in due
        {
            // Refreshes leave half the burst for news; what does not fit waits for a later pass.
            let keep = if transition { 0.0 } else { writes.reserve() };
            if !writes.try_acquire(keep) {
                break;
            }
            let api: Api<HealthPolicy> = Api::namespaced(client.clone(), &key.namespace);
            // The resourceVersion makes the write conditional on the object being the version
            // this replica watched, which matched its selector: a policy relabelled to another
            // shard a moment ago is refused (409), not overwritten with this shard's view.
            let patch = json!({
                "apiVersion": "healthgate.dev/v1alpha1",
                "kind": "HealthPolicy",
                "metadata": {"resourceVersion": resource_version},
                "status": desired,
            });
            let result = api
                .patch_status(
                    &key.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await;
            let Some(entry) = tracked.get_mut(&key) else {
                continue;
            };
            match result {
                Ok(_) => {
                    ctx.metrics.status_writes.inc();
                    debug!(policy = %key, transition, "status written");
                    entry.retry_at = None;
                    entry.pending_since = None;
                    let planned = events::transitions(previous.as_ref(), &desired);
                    entry.written = Some((desired, Instant::now()));
                    let published =
                        events::publish(&mut recorder, &writes, &reference, planned).await;
                    ctx.metrics.events.inc_by(published);
                }
                // The object changed since the watch delivered it (an edit, a relabel, our own
                // last write not yet seen): the next tick recomputes from the newer version.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    debug!(policy = %key, "policy changed meanwhile; status recomputed next tick");
                }
                Err(e) => {
                    warn!(policy = %key, error = %e, "could not write status; will retry");
                    entry.retry_at = Some(Instant::now() + WRITE_BACKOFF);
                }
            }
        }
    }
}
