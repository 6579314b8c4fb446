//! The leader's status writer: an owned task that turns engine reports into `.status` (server-side
//! apply, one field manager) and status transitions into Events. Transitions are written within
//! one tick; latency-only changes at most every [`LATENCY_REFRESH`]; nothing else is written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::status::{self, Inputs};
use super::{Context, FIELD_MANAGER, REPORTING_CONTROLLER, events};
use crate::api::{HealthPolicy, HealthPolicyStatus};
use crate::engine::PolicyKey;

/// How often reports are compared with the written status: the delay of a transition reaching
/// status, and the cost is one in-memory report per policy.
const TICK: Duration = Duration::from_millis(500);
/// Latency moves on every check; refreshing it more often would write once per check.
const LATENCY_REFRESH: Duration = Duration::from_secs(10);
/// After a failed write (API server away) the policy is left alone this long.
const WRITE_BACKOFF: Duration = Duration::from_secs(2);
/// A dependency that has never been checked would show as unknown and flip Ready to False, e.g.
/// right after a new leader starts; its status waits for the first result up to this long.
const FIRST_RESULT_GRACE: Duration = Duration::from_secs(15);

struct Written {
    status: HealthPolicyStatus,
    at: Instant,
}

pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    store: Store<HealthPolicy>,
    mut leader: watch::Receiver<bool>,
    identity: String,
    cancel: CancellationToken,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTING_CONTROLLER.into(),
            instance: Some(identity),
        },
    );
    // What this leader wrote last: the watch cache may lag a write by a tick, and the previous
    // status decides lastTransitionTime and Events, so our own writes are the better source.
    let mut written: HashMap<PolicyKey, Written> = HashMap::new();
    let mut backoff: HashMap<PolicyKey, Instant> = HashMap::new();
    let mut first_seen: HashMap<PolicyKey, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = leader.changed() => {}
            _ = ctx.changed.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        if !*leader.borrow() {
            // A later term starts from what the API server has, not from a stale memory.
            written.clear();
            continue;
        }
        let observed: Vec<_> = ctx
            .observed
            .lock()
            .expect("observed lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        written.retain(|key, _| observed.iter().any(|(k, _)| k == key));
        first_seen.retain(|key, _| observed.iter().any(|(k, _)| k == key));
        for (key, obs) in observed {
            if backoff
                .get(&key)
                .is_some_and(|until| Instant::now() < *until)
            {
                continue;
            }
            let Some(object) = store.get(&ObjectRef::new(&key.name).within(&key.namespace)) else {
                continue;
            };
            let report = ctx.engine.report(&key);
            let unchecked = report
                .as_ref()
                .is_some_and(|r| r.checks.values().any(|c| c.checked_at.is_none()));
            let seen = *first_seen.entry(key.clone()).or_insert_with(Instant::now);
            if unchecked && obs.invalid.is_none() && seen.elapsed() < FIRST_RESULT_GRACE {
                continue;
            }
            let previous = written
                .get(&key)
                .map(|w| w.status.clone())
                .or_else(|| object.status.clone());
            let desired = status::desired(
                &Inputs {
                    generation: obs.generation,
                    report: report.as_ref(),
                    invalid: obs.invalid.as_deref(),
                    now: Utc::now(),
                },
                previous.as_ref(),
            );
            let transition = status::differs(&desired, previous.as_ref());
            let refresh = previous.as_ref() != Some(&desired)
                && written
                    .get(&key)
                    .is_none_or(|w| w.at.elapsed() >= LATENCY_REFRESH);
            if !transition && !refresh {
                continue;
            }
            let api: Api<HealthPolicy> = Api::namespaced(client.clone(), &key.namespace);
            let patch = json!({
                "apiVersion": "healthgate.dev/v1alpha1",
                "kind": "HealthPolicy",
                "status": desired,
            });
            match api
                .patch_status(
                    &key.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => {
                    ctx.metrics.status_writes.inc();
                    debug!(policy = %key, transition, "status written");
                    backoff.remove(&key);
                    let planned = events::transitions(previous.as_ref(), &desired);
                    written.insert(
                        key.clone(),
                        Written {
                            status: desired,
                            at: Instant::now(),
                        },
                    );
                    events::publish(&recorder, &obs.reference, planned).await;
                }
                Err(e) => {
                    warn!(policy = %key, error = %e, "could not write status; will retry");
                    backoff.insert(key, Instant::now() + WRITE_BACKOFF);
                }
            }
        }
    }
}
