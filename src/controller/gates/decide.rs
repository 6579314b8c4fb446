//! Pure pod-gate decisions: what `healthgate.dev/ready` should say for a policy, for a pod that
//! several policies select, and whether a pod's current condition already says it. No I/O;
//! `now` is passed in.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::engine::PolicySnapshot;
use crate::health::{Overall, State};

/// The pod condition type healthgate owns. Pods opt in by listing it under
/// `spec.readinessGates`; the kubelet then keeps them not Ready until it is True.
pub const CONDITION: &str = "healthgate.dev/ready";
/// A condition message is read in `kubectl describe`; a long list of names helps nobody there.
const MAX_NAMED: usize = 3;
/// How long our own write outranks a pod cache that has not caught up with it yet. The watch
/// normally delivers within milliseconds; after this the cache is the truth again (someone else
/// may have changed the condition since).
pub const OWN_WRITE_MEMORY: Duration = Duration::from_secs(30);

/// The condition one policy asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    pub ready: bool,
    /// CamelCase, from a closed set: `PolicyOk`, `PolicyDegraded`, `CascadeProtected`,
    /// `Maintenance`, `DependencyDown`.
    pub reason: &'static str,
    /// Names the policy and the dependencies behind the answer, with their bounded check
    /// reasons (`connect`, `timeout`, ...): never a URL, an error text or a credential.
    pub message: String,
}

/// The gate `snapshot` asks for, or `None` while any dependency has never been checked: a
/// gate written before the first results would flip healthy pods (a new leader, a restart).
pub fn for_policy(policy: &str, snapshot: &PolicySnapshot) -> Option<Gate> {
    if !snapshot.all_checked() {
        return None;
    }
    let gate = match snapshot.overall {
        Overall::Ok => Gate {
            ready: true,
            reason: "PolicyOk",
            message: format!("HealthPolicy {policy} is ok"),
        },
        Overall::Degraded => {
            let protected = names(snapshot.protected().map(|d| (d.name.as_str(), None)));
            let held = names(
                snapshot
                    .dependencies
                    .iter()
                    .filter(|d| d.held_for_maintenance)
                    .map(|d| (d.name.as_str(), None)),
            );
            if !protected.is_empty() {
                Gate {
                    ready: true,
                    reason: "CascadeProtected",
                    message: format!(
                        "HealthPolicy {policy} is degraded: {protected} down on every healthgate replica, held by cascade protection"
                    ),
                }
            } else if !held.is_empty() {
                Gate {
                    ready: true,
                    reason: "Maintenance",
                    message: format!("HealthPolicy {policy} is degraded: {held} in maintenance"),
                }
            } else {
                let degraded = names(
                    snapshot
                        .dependencies
                        .iter()
                        .filter(|d| d.state != State::Ok)
                        .map(|d| (d.name.as_str(), d.reason().map(|r| r.as_str()))),
                );
                Gate {
                    ready: true,
                    reason: "PolicyDegraded",
                    message: format!("HealthPolicy {policy} is degraded: {degraded}"),
                }
            }
        }
        Overall::Down => {
            let failing = names(
                snapshot
                    .dependencies
                    .iter()
                    .filter(|d| {
                        d.counts_as_critical() && matches!(d.state, State::Down | State::Unknown)
                    })
                    .map(|d| {
                        let why = match d.state {
                            State::Unknown => Some("stale"),
                            _ => d.reason().map(|r| r.as_str()),
                        };
                        (d.name.as_str(), why)
                    }),
            );
            Gate {
                ready: false,
                reason: "DependencyDown",
                message: format!("HealthPolicy {policy} is down: critical {failing}"),
            }
        }
    };
    Some(gate)
}

/// "a (connect), b (timeout) and 2 more": at most [`MAX_NAMED`] names.
fn names<'a>(deps: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let all: Vec<String> = deps
        .map(|(name, why)| match why {
            Some(why) => format!("{name} ({why})"),
            None => name.to_string(),
        })
        .collect();
    let mut text = all
        .iter()
        .take(MAX_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > MAX_NAMED {
        text.push_str(&format!(" and {} more", all.len() - MAX_NAMED));
    }
    text
}

/// A pod selected by several policies is ready only if every one of them says so; the first
/// policy (by name) that says not ready explains why. `None` while any of them is undecided
/// and none says not ready: waiting is safer than a True that a later result takes back.
pub fn combine<'a>(gates: impl IntoIterator<Item = Option<&'a Gate>>) -> Option<Gate> {
    let mut undecided = false;
    let mut ready: Vec<&Gate> = Vec::new();
    for gate in gates {
        match gate {
            Some(gate) if !gate.ready => return Some(gate.clone()),
            Some(gate) => ready.push(gate),
            None => undecided = true,
        }
    }
    match (undecided, ready.as_slice()) {
        (true, _) | (false, []) => None,
        (false, [one]) => Some((*one).clone()),
        // Several agreeing policies: the least healthy reason wins (PolicyOk only if all ok).
        (false, many) => many
            .iter()
            .find(|g| g.reason != "PolicyOk")
            .or(many.first())
            .map(|g| (*g).clone()),
    }
}

/// The condition to write when `current` does not already say `desired`, else `None`: a gate
/// is rewritten only when its status, reason or message changes. lastTransitionTime moves only
/// when the status does, as Kubernetes conditions expect.
pub fn change(
    current: Option<&PodCondition>,
    desired: &Gate,
    now: Timestamp,
) -> Option<PodCondition> {
    let status = if desired.ready { "True" } else { "False" };
    if let Some(current) = current
        && current.status == status
        && current.reason.as_deref() == Some(desired.reason)
        && current.message.as_deref() == Some(desired.message.as_str())
    {
        return None;
    }
    let transition = match current {
        Some(current) if current.status == status => {
            current.last_transition_time.clone().unwrap_or(Time(now))
        }
        _ => Time(now),
    };
    Some(PodCondition {
        type_: CONDITION.to_string(),
        status: status.to_string(),
        reason: Some(desired.reason.to_string()),
        message: Some(desired.message.clone()),
        last_transition_time: Some(transition),
        last_probe_time: Some(Time(now)),
        observed_generation: None,
    })
}

/// What a pod says now: our own recent write while the pod cache has not caught up with it
/// (the watch lags the write), else the cache. Without this, every pass until the watch
/// delivers would write the same condition again.
pub fn current<'a>(
    cached: Option<&'a PodCondition>,
    written: Option<&'a (PodCondition, Instant)>,
    now: Instant,
) -> Option<&'a PodCondition> {
    match written {
        Some((ours, at)) if now.duration_since(*at) < OWN_WRITE_MEMORY && !same(cached, ours) => {
            Some(ours)
        }
        _ => cached,
    }
}

fn same(cached: Option<&PodCondition>, ours: &PodCondition) -> bool {
    cached.is_some_and(|c| {
        c.status == ours.status && c.reason == ours.reason && c.message == ours.message
    })
}

/// One pod as the planner needs it.
#[derive(Clone, Debug)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Lists [`CONDITION`] under `spec.readinessGates`: only such pods are written.
    pub gated: bool,
    /// Has a deletionTimestamp: it is leaving, its endpoints are going anyway.
    pub deleting: bool,
    /// What it says now (see [`current`]).
    pub current: Option<PodCondition>,
}

/// A planned write.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub condition: PodCondition,
}

/// Every write needed so that each pod says what its policies ask for, pods that have never
/// had the condition first (they are the ones kept out of rotation meanwhile: a new replica, a
/// scale-up). Recomputed from scratch on every pass, which is what coalesces: a pod whose
/// desired gate flapped and came back before its turn is simply not in the plan any more.
pub fn plan(pods: &[(PodView, Option<Gate>)], now: Timestamp) -> Vec<Write> {
    let mut writes: Vec<(bool, Write)> = pods
        .iter()
        .filter(|(pod, _)| pod.gated && !pod.deleting)
        .filter_map(|(pod, desired)| {
            let desired = desired.as_ref()?;
            let condition = change(pod.current.as_ref(), desired, now)?;
            Some((
                pod.current.is_some(),
                Write {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                    condition,
                },
            ))
        })
        .collect();
    writes.sort_by(|(a_set, a), (b_set, b)| {
        (a_set, &a.namespace, &a.name).cmp(&(b_set, &b.namespace, &b.name))
    });
    writes.into_iter().map(|(_, w)| w).collect()
}

/// A token bucket with `now` passed in: at most `burst` writes at once, then `qps` per second.
/// Non-blocking on purpose: a pass writes what the bucket allows and leaves the rest to a later
/// pass, which recomputes them (see [`plan`]) instead of sending what was true back then.
#[derive(Clone, Debug)]
pub struct Pace {
    qps: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl Pace {
    pub fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: qps.max(0.01),
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.refilled = now;
    }

    /// Spends one write if the bucket has one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next write is allowed (zero if one is now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.qps)
        }
    }
}

#[cfg(test)]
mod tests;
