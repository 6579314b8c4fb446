//! Pure: the status a policy should have, from the engine's snapshot, the reconcile outcome and the
//! previous status. `lastTransitionTime` moves only when a condition's status (or a dependency's
//! state) flips, as the Kubernetes API conventions ask; latency is the only field that changes
//! on every check, so [`differs`] ignores it and the writer refreshes it on a slow timer.

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{DependencyStatus, HealthPolicyStatus};
use crate::engine::PolicySnapshot;
use crate::health::{Overall, State};
use crate::policy::FieldError;

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
pub const INVALID: &str = "Invalid";
pub const CASCADE_PROTECTED: &str = "CascadeProtected";
pub const MAINTENANCE: &str = "Maintenance";

/// Longer messages are cut: a condition message is for humans, and etcd objects have a size cap.
const MAX_MESSAGE: usize = 1024;

/// What is known about a policy right now.
pub struct Inputs<'a> {
    pub generation: Option<i64>,
    /// The running policy as the engine sees it; `None` when no valid spec has ever been applied.
    pub snapshot: Option<&'a PolicySnapshot>,
    /// Problems with the current spec.
    pub invalid: Option<&'a [FieldError]>,
    pub now: DateTime<Utc>,
}

pub fn desired(inputs: &Inputs, previous: Option<&HealthPolicyStatus>) -> HealthPolicyStatus {
    let now = inputs.now;
    let generation = inputs.generation;
    let mut conditions = Vec::with_capacity(3);
    let (ready, ready_reason, ready_message) = ready(inputs);
    conditions.push(condition(READY, ready, ready_reason, ready_message));
    let (degraded, degraded_reason, degraded_message) = degraded(inputs);
    conditions.push(condition(
        DEGRADED,
        degraded,
        degraded_reason,
        degraded_message,
    ));
    let (invalid, invalid_reason, invalid_message) = match inputs.invalid {
        Some(errors) => (
            true,
            "InvalidSpec",
            truncate(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        ),
        None => (false, "Valid", "spec is valid".to_string()),
    };
    conditions.push(condition(INVALID, invalid, invalid_reason, invalid_message));
    if let Some(snapshot) = inputs.snapshot.filter(|s| s.cascade_protection) {
        let held: Vec<&str> = snapshot.protected().map(|d| d.name.as_str()).collect();
        conditions.push(if held.is_empty() {
            condition(
                CASCADE_PROTECTED,
                false,
                "NotEngaged",
                "no critical dependency is held".into(),
            )
        } else {
            condition(
                CASCADE_PROTECTED,
                true,
                "SharedOutage",
                truncate(format!(
                    "down on enough replicas, counted as non-critical until spec.cascadeProtection.maxDuration: {}",
                    held.join(", ")
                )),
            )
        });
    }
    if let Some(snapshot) = inputs.snapshot.filter(|s| s.maintenance) {
        conditions.push(maintenance(snapshot));
    }
    for c in &mut conditions {
        c.observed_generation = generation;
        c.last_transition_time = previous
            .and_then(|p| p.conditions.iter().find(|old| old.type_ == c.type_))
            .filter(|old| old.status == c.status)
            .map(|old| old.last_transition_time.clone())
            .unwrap_or_else(|| time(now));
    }

    let dependencies: Vec<DependencyStatus> = inputs
        .snapshot
        .map(|snapshot| {
            snapshot
                .dependencies
                .iter()
                .map(|dep| {
                    let since = previous
                        .and_then(|p| p.dependencies.iter().find(|d| d.name == dep.name))
                        .filter(|old| old.state == dep.state)
                        .and_then(|old| old.last_transition_time.clone())
                        .unwrap_or_else(|| now.to_rfc3339_opts(SecondsFormat::Secs, true));
                    let last = dep.last.as_ref();
                    DependencyStatus {
                        name: dep.name.clone(),
                        state: dep.state,
                        reason: dep.reason(),
                        // Rounded to microseconds, as on /ready.
                        latency_ms: last.map(|r| (r.latency.as_secs_f64() * 1e6).round() / 1e3),
                        last_transition_time: Some(since),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let summary = inputs.snapshot.map(|snapshot| {
        format!(
            "{}/{} ok",
            snapshot.count(State::Ok),
            snapshot.dependencies.len()
        )
    });
    HealthPolicyStatus {
        observed_generation: generation,
        conditions,
        summary,
        dependencies,
    }
}

/// Whether `desired` says something `current` does not, ignoring latencies.
pub fn differs(desired: &HealthPolicyStatus, current: Option<&HealthPolicyStatus>) -> bool {
    let Some(current) = current else {
        return true;
    };
    let strip = |s: &HealthPolicyStatus| {
        let mut s = s.clone();
        for d in &mut s.dependencies {
            d.latency_ms = None;
        }
        s
    };
    strip(desired) != strip(current)
}

fn ready(inputs: &Inputs) -> (bool, &'static str, String) {
    let Some(snapshot) = inputs.snapshot else {
        return match inputs.invalid {
            Some(_) => (
                false,
                "InvalidSpec",
                "no valid spec has been applied yet".into(),
            ),
            None => (false, "Pending", "not reconciled yet".into()),
        };
    };
    let probe_passes = (200..400).contains(&snapshot.status_code());
    match snapshot.overall {
        Overall::Ok => (
            true,
            "AllDependenciesOk",
            format!("{} dependencies ok", snapshot.dependencies.len()),
        ),
        Overall::Degraded => (
            probe_passes,
            "Degraded",
            truncate(format!("degraded: {}", not_ok(snapshot, |_, _| true))),
        ),
        Overall::Down => {
            let unknown_only = snapshot
                .dependencies
                .iter()
                .filter(|d| d.critical)
                .all(|d| d.state != State::Down);
            let reason = if unknown_only {
                "DependencyUnknown"
            } else {
                "CriticalDependencyDown"
            };
            (
                false,
                reason,
                truncate(format!(
                    "critical: {}",
                    not_ok(snapshot, |critical, state| critical
                        && matches!(state, State::Down | State::Unknown))
                )),
            )
        }
    }
}

fn degraded(inputs: &Inputs) -> (bool, &'static str, String) {
    match inputs.snapshot.map(|s| (s, s.overall)) {
        Some((snapshot, Overall::Degraded)) => (
            true,
            "DependencyDegraded",
            truncate(not_ok(snapshot, |_, _| true)),
        ),
        Some((_, Overall::Down)) => (false, "Down", "the policy is down, not degraded".into()),
        Some((_, Overall::Ok)) => (
            false,
            "AllDependenciesOk",
            "no dependency is degraded".into(),
        ),
        None => (false, "Pending", "no checks are running".into()),
    }
}

/// Which dependencies an open maintenance window covers, and until when.
fn maintenance(snapshot: &PolicySnapshot) -> Condition {
    let covered: Vec<String> = snapshot
        .dependencies
        .iter()
        .filter_map(|d| Some(format!("{} until {}", d.name, d.maintenance_until?)))
        .collect();
    if covered.is_empty() {
        return condition(
            MAINTENANCE,
            false,
            "NoWindowOpen",
            "no maintenance window is open".into(),
        );
    }
    condition(
        MAINTENANCE,
        true,
        "WindowOpen",
        truncate(format!(
            "in maintenance (a failing dependency reports degraded, reason maintenance): {}",
            covered.join(", ")
        )),
    )
}

/// `name is down (connect), other is degraded (slow)` for the dependencies that match.
fn not_ok(snapshot: &PolicySnapshot, filter: impl Fn(bool, State) -> bool) -> String {
    snapshot
        .dependencies
        .iter()
        .filter(|d| d.state != State::Ok && filter(d.critical, d.state))
        .map(|d| match d.reason() {
            Some(reason) => format!("{} is {} ({})", d.name, d.state.as_str(), reason.as_str()),
            None => format!("{} is {}", d.name, d.state.as_str()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: condition_status(status).to_string(),
        reason: reason.to_string(),
        // Condition messages become Events too; they pass the one redaction routine.
        message: crate::secret::redact(&message).into_owned(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Condition times have second precision on the wire; matching that keeps comparisons exact.
fn time(at: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(at.timestamp()).expect("a chrono time is in jiff's range"))
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// The condition of `type_`, if present.
pub fn find<'a>(status: &'a HealthPolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status True. The API conventions' string
/// status is read here and written by [`condition`], nowhere else.
pub fn is_true(status: &HealthPolicyStatus, type_: &str) -> Option<bool> {
    find(status, type_).map(|c| c.status == condition_status(true))
}

fn condition_status(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

#[cfg(test)]
mod tests;
