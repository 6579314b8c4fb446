//! `spec.maintenance`: each window's times, schedule, zone and dependency names.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::Errors;
use crate::api::MaintenanceWindow;
use crate::health::maintenance::{Cron, When};
use crate::policy::{Maintenance, duration};

/// A recurring window open longer than a week is not maintenance, it is a second mode of the
/// service; `duration: 999h` is a typo.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn windows(
    windows: &[MaintenanceWindow],
    dependencies: &BTreeSet<&str>,
    errors: &mut Errors,
) -> Vec<Maintenance> {
    windows
        .iter()
        .enumerate()
        .filter_map(|(index, window)| {
            let path = format!("spec.maintenance[{index}]");
            let when = when(window, &path, errors);
            let names = window.dependencies.as_ref().map(|names| {
                for (i, name) in names.iter().enumerate() {
                    if !dependencies.contains(name.as_str()) {
                        errors.push(
                            format!("{path}.dependencies[{i}]"),
                            format!("no dependency is named {name:?}"),
                        );
                    }
                }
                names.iter().cloned().collect::<BTreeSet<String>>()
            });
            Some(Maintenance {
                when: when?,
                dependencies: names,
            })
        })
        .collect()
}

fn when(window: &MaintenanceWindow, path: &str, errors: &mut Errors) -> Option<When> {
    let timestamp = |field: &str, text: &str, errors: &mut Errors| {
        text.parse::<Timestamp>()
            .map_err(|_| {
                errors.push(
                    format!("{path}.{field}"),
                    format!("{text:?} is not an RFC 3339 time like 2026-12-06T02:00:00Z"),
                )
            })
            .ok()
    };
    match window {
        MaintenanceWindow {
            start: Some(start),
            end: Some(end),
            schedule: None,
            duration: None,
            time_zone,
            ..
        } => {
            if time_zone.is_some() {
                errors.push(
                    format!("{path}.timeZone"),
                    "only for a schedule: start and end carry their own offset",
                );
            }
            let start = timestamp("start", start, errors);
            let end = timestamp("end", end, errors);
            let (start, end) = (start?, end?);
            if end <= start {
                errors.push(format!("{path}.end"), "must be after start");
                return None;
            }
            Some(When::Once { start, end })
        }
        MaintenanceWindow {
            start: None,
            end: None,
            schedule: Some(schedule),
            duration: Some(length),
            time_zone,
            ..
        } => {
            let schedule = schedule
                .parse::<Cron>()
                .map_err(|e| errors.push(format!("{path}.schedule"), e))
                .ok();
            let length = match duration::parse(length) {
                Ok(d) if d.is_zero() || d > MAX_DURATION => {
                    errors.push(
                        format!("{path}.duration"),
                        format!(
                            "must be above 0 and at most {}",
                            duration::format(MAX_DURATION)
                        ),
                    );
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(format!("{path}.duration"), e);
                    None
                }
            };
            let zone = match time_zone.as_deref() {
                None => Some(TimeZone::UTC),
                // Only the characters of IANA names: a name becomes a path in the system
                // database, and `../` must not walk out of it.
                Some(name) if !plausible_zone_name(name) => {
                    errors.push(
                        format!("{path}.timeZone"),
                        format!("{name:?} is not an IANA time zone like Europe/Berlin"),
                    );
                    None
                }
                Some(name) => TimeZone::get(name)
                    .map_err(|_| {
                        errors.push(
                            format!("{path}.timeZone"),
                            format!("{name:?} is not an IANA time zone like Europe/Berlin"),
                        )
                    })
                    .ok(),
            };
            Some(When::Every {
                schedule: schedule?,
                duration: length?,
                zone: zone?,
            })
        }
        _ => {
            errors.push(path, "set start and end, or schedule and duration");
            None
        }
    }
}

fn plausible_zone_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}
