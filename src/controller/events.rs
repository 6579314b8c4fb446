//! Events (events.k8s.io) are derived from status transitions, so they are emitted once per
//! transition by the one replica that writes status: never per check, never per replica. The
//! recorder also folds repeats of the same event into an EventSeries.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use super::status::{self, INVALID, READY};
use crate::api::HealthPolicyStatus;

/// An Event to publish, as plain values (what the tests compare).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Events for the transitions from `previous` to `next`.
pub fn transitions(
    previous: Option<&HealthPolicyStatus>,
    next: &HealthPolicyStatus,
) -> Vec<Planned> {
    let mut out = Vec::new();
    let old_invalid = previous.and_then(|p| status::find(p, INVALID));
    if let Some(invalid) = status::find(next, INVALID)
        && invalid.status == "True"
        && old_invalid.is_none_or(|old| old.status != "True" || old.message != invalid.message)
    {
        out.push(Planned {
            warning: true,
            reason: "InvalidSpec",
            note: invalid.message.clone(),
        });
    }
    // The fix deserves a record next to the complaint it answers.
    if old_invalid.is_some_and(|old| old.status == "True")
        && status::find(next, INVALID).is_some_and(|now| now.status != "True")
    {
        out.push(Planned {
            warning: false,
            reason: "SpecValid",
            note: "the spec is valid again; its checkers follow it".into(),
        });
    }
    for dep in &next.dependencies {
        let before = previous
            .and_then(|p| p.dependencies.iter().find(|d| d.name == dep.name))
            .map(|d| d.state.as_str());
        let why = dep.reason.as_deref().unwrap_or("unknown");
        let planned = match (before, dep.state.as_str()) {
            (Some(b), now) if b == now => None,
            (_, "down") => Some((
                true,
                "DependencyDown",
                format!("{} is down ({why})", dep.name),
            )),
            (_, "degraded") => Some((
                true,
                "DependencyDegraded",
                format!("{} is degraded ({why})", dep.name),
            )),
            (Some("down" | "degraded"), "ok") => Some((
                false,
                "DependencyRecovered",
                format!("{} is ok again", dep.name),
            )),
            // unknown ← anything, or ok on first sight: startup noise, not news.
            _ => None,
        };
        if let Some((warning, reason, note)) = planned {
            out.push(Planned {
                warning,
                reason,
                note,
            });
        }
    }
    let was_ready = previous
        .and_then(|p| status::find(p, READY))
        .map(|c| c.status == "True");
    if let Some(ready) = status::find(next, READY) {
        let is_ready = ready.status == "True";
        if was_ready.is_some_and(|was| was != is_ready) {
            out.push(Planned {
                warning: !is_ready,
                reason: if is_ready { "Ready" } else { "NotReady" },
                note: ready.message.clone(),
            });
        }
    }
    out
}

pub async fn publish(recorder: &Recorder, reference: &ObjectReference, planned: Vec<Planned>) {
    for p in planned {
        let event = Event {
            type_: if p.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: p.reason.to_string(),
            note: Some(p.note),
            action: "Check".to_string(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, reference).await {
            warn!(reason = p.reason, error = %e, "could not publish Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DependencyStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn status(ready: bool, invalid: Option<&str>, deps: &[(&str, &str)]) -> HealthPolicyStatus {
        let cond = |t: &str, s: bool, m: &str| Condition {
            type_: t.into(),
            status: if s { "True" } else { "False" }.into(),
            reason: "R".into(),
            message: m.into(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        };
        HealthPolicyStatus {
            conditions: vec![
                cond(READY, ready, "msg"),
                cond(INVALID, invalid.is_some(), invalid.unwrap_or("")),
            ],
            dependencies: deps
                .iter()
                .map(|(n, s)| DependencyStatus {
                    name: n.to_string(),
                    state: s.to_string(),
                    reason: Some("connect".into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn reasons(planned: Vec<Planned>) -> Vec<&'static str> {
        planned.into_iter().map(|p| p.reason).collect()
    }

    #[test]
    fn transition_table() {
        let cases: Vec<(Option<HealthPolicyStatus>, HealthPolicyStatus, Vec<&str>)> = vec![
            // First status: ok dependencies are not news; nothing flipped.
            (None, status(true, None, &[("db", "ok")]), vec![]),
            (
                None,
                status(false, None, &[("db", "down")]),
                vec!["DependencyDown"],
            ),
            (
                Some(status(true, None, &[("db", "unknown")])),
                status(true, None, &[("db", "ok")]),
                vec![],
            ),
            (
                Some(status(true, None, &[("db", "ok")])),
                status(false, None, &[("db", "down")]),
                vec!["DependencyDown", "NotReady"],
            ),
            (
                Some(status(false, None, &[("db", "down")])),
                status(true, None, &[("db", "ok")]),
                vec!["DependencyRecovered", "Ready"],
            ),
            (
                Some(status(true, None, &[("db", "ok")])),
                status(true, None, &[("db", "degraded")]),
                vec!["DependencyDegraded"],
            ),
            // The same state again is deduplicated.
            (
                Some(status(false, None, &[("db", "down")])),
                status(false, None, &[("db", "down")]),
                vec![],
            ),
            (
                Some(status(true, None, &[])),
                status(true, Some("spec.x: bad"), &[]),
                vec!["InvalidSpec"],
            ),
            (
                Some(status(true, Some("spec.x: bad"), &[])),
                status(true, Some("spec.x: bad"), &[]),
                vec![],
            ),
            (
                Some(status(true, Some("spec.x: bad"), &[])),
                status(true, Some("spec.y: bad"), &[]),
                vec!["InvalidSpec"],
            ),
            (
                Some(status(true, Some("spec.x: bad"), &[])),
                status(true, None, &[]),
                vec!["SpecValid"],
            ),
        ];
        for (previous, next, expected) in cases {
            assert_eq!(
                reasons(transitions(previous.as_ref(), &next)),
                expected,
                "{previous:?} -> {next:?}"
            );
        }
    }
}
