//! Events (events.k8s.io) are derived from status transitions, so they are emitted once per
//! transition by the one replica that writes status: never per check, never per replica.
//! [`EventRecorder`] folds an exact repeat (same object, reason and note) into an EventSeries.

use k8s_openapi::api::core::v1::ObjectReference;
use tracing::warn;

use super::budget::WriteBudget;
use super::recorder::EventRecorder;
use super::status::{self, CASCADE_PROTECTED, INVALID, MAINTENANCE, READY};
use crate::api::HealthPolicyStatus;
use crate::health::{Reason, State};

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
    let was_invalid = previous.and_then(|p| status::is_true(p, INVALID)) == Some(true);
    let old_message = previous
        .and_then(|p| status::find(p, INVALID))
        .map(|c| c.message.as_str());
    if let Some(invalid) = status::find(next, INVALID)
        && status::is_true(next, INVALID) == Some(true)
        && (!was_invalid || old_message != Some(invalid.message.as_str()))
    {
        out.push(Planned {
            warning: true,
            reason: "InvalidSpec",
            note: invalid.message.clone(),
        });
    }
    // The fix deserves a record next to the complaint it answers.
    if was_invalid && status::is_true(next, INVALID) == Some(false) {
        out.push(Planned {
            warning: false,
            reason: "SpecValid",
            note: "the spec is valid again; its checkers follow it".into(),
        });
    }
    for dep in &next.dependencies {
        let before = previous
            .and_then(|p| p.dependencies.iter().find(|d| d.name == dep.name))
            .map(|d| d.state);
        if let Some(planned) = dependency_transition(&dep.name, before, dep.state, dep.reason) {
            out.push(planned);
        }
    }
    // Protection engaging or letting go: both are news for whoever watches the fleet.
    let was_protected = previous.and_then(|p| status::is_true(p, CASCADE_PROTECTED));
    if let (Some(now), Some(is_protected)) = (
        status::find(next, CASCADE_PROTECTED),
        status::is_true(next, CASCADE_PROTECTED),
    ) && was_protected.unwrap_or(false) != is_protected
    {
        out.push(if is_protected {
            Planned {
                warning: true,
                reason: "CascadeProtectionEngaged",
                note: now.message.clone(),
            }
        } else {
            Planned {
                warning: false,
                reason: "CascadeProtectionReleased",
                note: "no critical dependency is held any more".into(),
            }
        });
    }
    let was_in_maintenance = previous.and_then(|p| status::is_true(p, MAINTENANCE));
    if let (Some(now), Some(in_maintenance)) = (
        status::find(next, MAINTENANCE),
        status::is_true(next, MAINTENANCE),
    ) && was_in_maintenance.unwrap_or(false) != in_maintenance
    {
        out.push(Planned {
            warning: false,
            reason: if in_maintenance {
                "MaintenanceStarted"
            } else {
                "MaintenanceEnded"
            },
            note: now.message.clone(),
        });
    }
    let was_ready = previous.and_then(|p| status::is_true(p, READY));
    if let (Some(ready), Some(is_ready)) = (status::find(next, READY), status::is_true(next, READY))
        && was_ready.is_some_and(|was| was != is_ready)
    {
        out.push(Planned {
            warning: !is_ready,
            reason: if is_ready { "Ready" } else { "NotReady" },
            note: ready.message.clone(),
        });
    }
    out
}

/// The Event for one dependency going from `before` (`None`: first seen) to `now`.
fn dependency_transition(
    name: &str,
    before: Option<State>,
    now: State,
    reason: Option<Reason>,
) -> Option<Planned> {
    use State::{Degraded, Down, Ok, Unknown};
    let why = reason.map_or("unknown", Reason::as_str);
    let (warning, reason, note) = match (before, now) {
        (Some(b), n) if b == n => return None,
        (_, Down) => (true, "DependencyDown", format!("{name} is down ({why})")),
        (_, Degraded) => (
            true,
            "DependencyDegraded",
            format!("{name} is degraded ({why})"),
        ),
        (Some(Down | Degraded), Ok) => {
            (false, "DependencyRecovered", format!("{name} is ok again"))
        }
        // Ok on first sight or after unknown, and unknown after anything: startup noise, not news.
        (None | Some(Ok | Unknown), Ok) | (_, Unknown) => return None,
    };
    Some(Planned {
        warning,
        reason,
        note,
    })
}

/// Publishes `planned` in order; a failure is logged and the rest still go out. Returns how
/// many were written.
pub async fn publish(
    recorder: &mut EventRecorder,
    budget: &WriteBudget,
    reference: &ObjectReference,
    planned: Vec<Planned>,
) -> u64 {
    let mut written = 0;
    for p in planned {
        match recorder.publish(budget, reference, &p).await {
            Ok(()) => written += 1,
            Err(e) => warn!(reason = p.reason, error = %e, "could not publish Event"),
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DependencyStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn status(ready: bool, invalid: Option<&str>, deps: &[(&str, State)]) -> HealthPolicyStatus {
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
                    state: *s,
                    reason: Some(Reason::Connect),
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
    fn maintenance_windows_opening_and_closing_are_events() {
        let with_window = |open: bool| {
            let mut s = status(true, None, &[("db", State::Ok)]);
            s.conditions.push(Condition {
                type_: MAINTENANCE.into(),
                status: if open { "True" } else { "False" }.into(),
                reason: "R".into(),
                message: if open {
                    "in maintenance: db until T"
                } else {
                    "none"
                }
                .into(),
                observed_generation: None,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            });
            s
        };
        let opened = transitions(Some(&with_window(false)), &with_window(true));
        assert_eq!(reasons(opened.clone()), ["MaintenanceStarted"]);
        assert_eq!(opened[0].note, "in maintenance: db until T");
        assert!(!opened[0].warning, "planned work is not a warning");
        assert_eq!(
            reasons(transitions(Some(&with_window(true)), &with_window(false))),
            ["MaintenanceEnded"]
        );
        assert!(transitions(Some(&with_window(true)), &with_window(true)).is_empty());
        // A policy created inside its window says so at once.
        assert_eq!(
            reasons(transitions(None, &with_window(true))),
            ["MaintenanceStarted"]
        );
    }

    #[test]
    fn transition_table() {
        use State::{Degraded, Down, Ok, Unknown};
        let cases: Vec<(Option<HealthPolicyStatus>, HealthPolicyStatus, Vec<&str>)> = vec![
            // First status: ok dependencies are not news; nothing flipped.
            (None, status(true, None, &[("db", Ok)]), vec![]),
            (
                None,
                status(false, None, &[("db", Down)]),
                vec!["DependencyDown"],
            ),
            (
                Some(status(true, None, &[("db", Unknown)])),
                status(true, None, &[("db", Ok)]),
                vec![],
            ),
            (
                Some(status(true, None, &[("db", Ok)])),
                status(false, None, &[("db", Down)]),
                vec!["DependencyDown", "NotReady"],
            ),
            (
                Some(status(false, None, &[("db", Down)])),
                status(true, None, &[("db", Ok)]),
                vec!["DependencyRecovered", "Ready"],
            ),
            (
                Some(status(true, None, &[("db", Ok)])),
                status(true, None, &[("db", Degraded)]),
                vec!["DependencyDegraded"],
            ),
            // The same state again is deduplicated.
            (
                Some(status(false, None, &[("db", Down)])),
                status(false, None, &[("db", Down)]),
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
