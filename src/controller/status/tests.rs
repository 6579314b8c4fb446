use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};

use super::*;
use crate::engine::{CheckRecord, DependencyView};
use crate::health::{Reason, aggregate};
use crate::policy::StatusCodes;

fn snapshot(checks: &[(&str, bool, State)]) -> PolicySnapshot {
    let dependencies = checks
        .iter()
        .map(|(name, critical, state)| DependencyView {
            name: name.to_string(),
            critical: *critical,
            state: *state,
            protected: false,
            maintenance_until: None,
            held_for_maintenance: false,
            last: Some(CheckRecord {
                state: *state,
                reason: match state {
                    State::Down => Reason::Connect,
                    State::Degraded => Reason::Slow,
                    _ => Reason::Ok,
                },
                latency: Duration::from_micros(1500),
                checked_at: Utc::now(),
                checked_instant: Instant::now(),
                detail: None,
                error: None,
                since: Utc::now(),
            }),
        })
        .collect();
    PolicySnapshot {
        overall: aggregate(checks.iter().map(|(_, c, s)| (*c, *s))),
        codes: StatusCodes::default(),
        cascade_protection: false,
        maintenance: false,
        dependencies,
    }
}

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
}

fn cond<'a>(status: &'a HealthPolicyStatus, type_: &str) -> (&'a str, &'a str, i64) {
    let c = find(status, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (
        c.status.as_str(),
        c.reason.as_str(),
        c.last_transition_time.0.as_second() - 1_800_000_000,
    )
}

#[test]
fn conditions_follow_the_snapshot() {
    use State::*;
    let bad = [FieldError {
        path: "spec.dependencies[0].redis.urlFrom.secretKeyRef".into(),
        message: "Secret \"creds\" not found".into(),
    }];
    // (checks, invalid, Ready, Degraded, Invalid)
    type Row<'a> = (
        Option<&'a [(&'a str, bool, State)]>,
        bool,
        (&'a str, &'a str),
        (&'a str, &'a str),
        (&'a str, &'a str),
    );
    let table: &[Row] = &[
        (
            Some(&[("db", true, Ok), ("cache", true, Ok)]),
            false,
            ("True", "AllDependenciesOk"),
            ("False", "AllDependenciesOk"),
            ("False", "Valid"),
        ),
        (
            Some(&[("db", true, Ok), ("cache", false, Down)]),
            false,
            ("True", "Degraded"),
            ("True", "DependencyDegraded"),
            ("False", "Valid"),
        ),
        (
            Some(&[("db", true, Degraded)]),
            false,
            ("True", "Degraded"),
            ("True", "DependencyDegraded"),
            ("False", "Valid"),
        ),
        (
            Some(&[("db", true, Down), ("cache", true, Ok)]),
            false,
            ("False", "CriticalDependencyDown"),
            ("False", "Down"),
            ("False", "Valid"),
        ),
        (
            Some(&[("db", true, Unknown)]),
            false,
            ("False", "DependencyUnknown"),
            ("False", "Down"),
            ("False", "Valid"),
        ),
        // Invalid edit of a running policy: the old checkers still decide Ready.
        (
            Some(&[("db", true, Ok)]),
            true,
            ("True", "AllDependenciesOk"),
            ("False", "AllDependenciesOk"),
            ("True", "InvalidSpec"),
        ),
        // Never valid: nothing runs.
        (
            None,
            true,
            ("False", "InvalidSpec"),
            ("False", "Pending"),
            ("True", "InvalidSpec"),
        ),
        (
            Some(&[]),
            false,
            ("True", "AllDependenciesOk"),
            ("False", "AllDependenciesOk"),
            ("False", "Valid"),
        ),
    ];
    for (checks, invalid, ready, degraded, inv) in table {
        let report = checks.map(snapshot);
        let status = desired(
            &Inputs {
                generation: Some(3),
                snapshot: report.as_ref(),
                invalid: invalid.then_some(&bad[..]),
                now: at(0),
            },
            None,
        );
        let row = format!("{checks:?} invalid={invalid}");
        assert_eq!(
            (cond(&status, READY).0, cond(&status, READY).1),
            *ready,
            "Ready for {row}"
        );
        assert_eq!(
            (cond(&status, DEGRADED).0, cond(&status, DEGRADED).1),
            *degraded,
            "Degraded for {row}"
        );
        assert_eq!(
            (cond(&status, INVALID).0, cond(&status, INVALID).1),
            *inv,
            "Invalid for {row}"
        );
        assert_eq!(status.observed_generation, Some(3));
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(status.dependencies.len(), checks.map_or(0, |c| c.len()));
    }
}

#[test]
fn invalid_message_carries_the_field_path() {
    let bad = [FieldError {
        path: "spec.dependencies[1].postgres.urlFrom.secretKeyRef".into(),
        message: "Secret \"db\" has no key \"url\"".into(),
    }];
    let status = desired(
        &Inputs {
            generation: Some(2),
            snapshot: None,
            invalid: Some(&bad),
            now: at(0),
        },
        None,
    );
    let message = &find(&status, INVALID).unwrap().message;
    assert!(
        message.starts_with("spec.dependencies[1].postgres.urlFrom.secretKeyRef: "),
        "{message}"
    );
}

#[test]
fn transition_times_move_only_when_status_flips() {
    use State::*;
    let inputs = |checks: &[(&str, bool, State)], now| (snapshot(checks), now);
    let build = |(report, now): (PolicySnapshot, DateTime<Utc>),
                 previous: Option<&HealthPolicyStatus>| {
        desired(
            &Inputs {
                generation: Some(1),
                snapshot: Some(&report),
                invalid: None,
                now,
            },
            previous,
        )
    };
    let first = build(inputs(&[("db", true, Ok)], at(0)), None);
    assert_eq!(cond(&first, READY), ("True", "AllDependenciesOk", 0));
    assert_eq!(
        first.dependencies[0].last_transition_time.as_deref(),
        Some("2027-01-15T08:00:00Z")
    );

    // Same state later: times stay.
    let same = build(inputs(&[("db", true, Ok)], at(30)), Some(&first));
    assert_eq!(cond(&same, READY).2, 0);
    assert_eq!(
        same.dependencies[0].last_transition_time,
        first.dependencies[0].last_transition_time
    );
    assert!(!differs(&same, Some(&first)), "nothing but time changed");

    // Down: Ready flips (new time), Invalid does not (old time).
    let down = build(inputs(&[("db", true, Down)], at(60)), Some(&same));
    assert_eq!(cond(&down, READY), ("False", "CriticalDependencyDown", 60));
    assert_eq!(cond(&down, INVALID).2, 0);
    assert_eq!(cond(&down, DEGRADED), ("False", "Down", 0));
    assert_eq!(down.dependencies[0].state, Down);
    assert_eq!(down.dependencies[0].reason, Some(Reason::Connect));
    assert_eq!(
        down.dependencies[0].last_transition_time.as_deref(),
        Some("2027-01-15T08:01:00Z")
    );
    assert!(differs(&down, Some(&same)));
    assert_eq!(down.summary.as_deref(), Some("0/1 ok"));
}

#[test]
fn latency_alone_is_not_a_transition() {
    let mut a = snapshot(&[("db", true, State::Ok)]);
    let first = desired(
        &Inputs {
            generation: Some(1),
            snapshot: Some(&a),
            invalid: None,
            now: at(0),
        },
        None,
    );
    a.dependencies[0].last.as_mut().unwrap().latency = Duration::from_millis(99);
    let second = desired(
        &Inputs {
            generation: Some(1),
            snapshot: Some(&a),
            invalid: None,
            now: at(5),
        },
        Some(&first),
    );
    assert_ne!(first, second);
    assert!(!differs(&second, Some(&first)));
    // A new generation is.
    let third = desired(
        &Inputs {
            generation: Some(2),
            snapshot: Some(&a),
            invalid: None,
            now: at(5),
        },
        Some(&first),
    );
    assert!(differs(&third, Some(&first)));
}

#[test]
fn long_messages_are_cut_on_a_char_boundary() {
    let long = "é".repeat(2000);
    let cut = truncate(long);
    assert!(cut.len() <= MAX_MESSAGE && cut.ends_with("..."));
}

#[test]
fn cascade_protected_names_the_held_dependencies() {
    let mut held = snapshot(&[("db", true, State::Down), ("cache", true, State::Ok)]);
    let inputs = |s: &PolicySnapshot| {
        desired(
            &Inputs {
                generation: Some(1),
                snapshot: Some(s),
                invalid: None,
                now: at(0),
            },
            None,
        )
    };
    // Without protection enabled there is no such condition.
    assert!(find(&inputs(&held), CASCADE_PROTECTED).is_none());
    held.cascade_protection = true;
    assert_eq!(cond(&inputs(&held), CASCADE_PROTECTED).0, "False");
    held.dependencies[0].protected = true;
    let status = inputs(&held);
    let condition = find(&status, CASCADE_PROTECTED).unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "SharedOutage")
    );
    assert!(condition.message.ends_with(": db"), "{}", condition.message);
}

#[test]
fn an_open_maintenance_window_is_a_condition_and_the_reason() {
    let mut snap = snapshot(&[("db", true, State::Degraded), ("cache", true, State::Ok)]);
    snap.maintenance = true;
    let until: jiff::Timestamp = "2026-12-06T03:00:00Z".parse().unwrap();
    snap.dependencies[0].maintenance_until = Some(until);
    snap.dependencies[0].held_for_maintenance = true;
    fn inputs(snapshot: &PolicySnapshot) -> Inputs<'_> {
        Inputs {
            generation: Some(1),
            snapshot: Some(snapshot),
            invalid: None,
            now: at(0),
        }
    }
    let status = desired(&inputs(&snap), None);
    let maintenance = find(&status, MAINTENANCE).expect("a Maintenance condition");
    assert_eq!(
        (maintenance.status.as_str(), maintenance.reason.as_str()),
        ("True", "WindowOpen")
    );
    assert!(
        maintenance
            .message
            .contains("db until 2026-12-06T03:00:00Z"),
        "{}",
        maintenance.message
    );
    let db = status.dependencies.iter().find(|d| d.name == "db").unwrap();
    assert_eq!(db.reason, Some(Reason::Maintenance));
    assert_eq!(cond(&status, READY).0, "True", "degraded keeps the pods");

    snap.dependencies[0].maintenance_until = None;
    snap.dependencies[0].held_for_maintenance = false;
    let closed = desired(&inputs(&snap), Some(&status));
    assert_eq!(cond(&closed, MAINTENANCE).0, "False");
    // Without windows in the policy there is no such condition at all.
    snap.maintenance = false;
    assert!(find(&desired(&inputs(&snap), None), MAINTENANCE).is_none());
}
