//! The /ready body (also what `healthgate check` prints): a rendering of [`PolicySnapshot`]s.
//! Presentation only; nothing in the engine or the controller reads it back.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::{PolicyKey, PolicySnapshot};
use crate::health::{Overall, Reason, State};
use crate::policy::StatusCodes;

// Fields are declared in alphabetical order of their JSON names: the cached /ready body is
// serialised straight from these structs, and the other bodies through `serde_json::Value`
// (which sorts keys), and both must come out byte for byte the same.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub checks: BTreeMap<String, CheckView>,
    #[serde(rename = "status")]
    pub overall: Overall,
    #[serde(skip)]
    pub codes: StatusCodes,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    pub critical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// A maintenance window covering this dependency is open until then (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_until: Option<String>,
    /// Down, but held by cascade protection (down on enough replicas): counted as non-critical.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(rename = "status")]
    pub state: State,
}

impl Report {
    /// One policy: checks keyed by dependency name.
    pub fn render(snapshot: &PolicySnapshot) -> Self {
        let checks = snapshot
            .dependencies
            .iter()
            .map(|d| {
                let last = d.last.as_ref();
                let view = CheckView {
                    state: d.state,
                    critical: d.critical,
                    // Rounded to microseconds: more digits are noise, fewer hide a loopback ping.
                    latency_ms: last.map(|r| (r.latency.as_secs_f64() * 1e6).round() / 1e3),
                    checked_at: last.map(|r| {
                        r.checked_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    }),
                    reason: d.reason(),
                    detail: last.and_then(|r| r.detail.clone()),
                    error: last.and_then(|r| r.error.clone()),
                    protected: d.protected,
                    maintenance_until: d.maintenance_until.map(|t| t.to_string()),
                };
                (d.name.clone(), view)
            })
            .collect();
        Self {
            overall: snapshot.overall,
            checks,
            codes: snapshot.codes,
        }
    }

    /// Everything an instance serves. With one policy, checks are keyed by dependency name; with
    /// several, by `namespace/policy/dependency` so names cannot collide, and the worst policy
    /// decides the status and its codes are used. Nothing to check is ready.
    pub fn render_all(snapshots: &[(PolicyKey, PolicySnapshot)]) -> Self {
        match snapshots {
            [] => Self {
                overall: Overall::Ok,
                checks: BTreeMap::new(),
                codes: StatusCodes::default(),
            },
            [(_, only)] => Self::render(only),
            many => {
                let overall = many.iter().map(|(_, s)| s.overall).max();
                let worst = many
                    .iter()
                    .map(|(_, s)| s)
                    .find(|s| Some(s.overall) == overall)
                    .expect("at least two snapshots");
                let checks = many
                    .iter()
                    .flat_map(|(key, snapshot)| {
                        let prefix = format!("{}/{}", key.namespace, key.name);
                        Self::render(snapshot)
                            .checks
                            .into_iter()
                            .map(move |(name, view)| (format!("{prefix}/{name}"), view))
                    })
                    .collect();
                Self {
                    overall: worst.overall,
                    checks,
                    codes: worst.codes,
                }
            }
        }
    }

    pub fn status_code(&self) -> u16 {
        self.codes.for_overall(self.overall)
    }

    /// The JSON body for `view`.
    pub fn to_json(&self, view: View) -> serde_json::Value {
        match view {
            View::Full => serde_json::to_value(self),
            View::StatusOnly => serde_json::to_value(StatusOnly::from(self)),
        }
        .expect("a report serialises")
    }

    /// [`Report::to_json`]'s bytes, without building the intermediate tree: at 10,000 checks
    /// that tree is most of the render's cost.
    pub fn to_bytes(&self, view: View) -> Vec<u8> {
        match view {
            View::Full => serde_json::to_vec(self),
            View::StatusOnly => serde_json::to_vec(&StatusOnly::from(self)),
        }
        .expect("a report serialises")
    }
}

/// How much of a report a caller sees (`--details`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Full,
    StatusOnly,
}

/// Serialised form of [`View::StatusOnly`]: `critical` is left out too, so the body is exactly
/// the overall status and per-check status (plus `protected` when cascade protection holds it).
#[derive(Serialize)]
struct StatusOnly<'a> {
    checks: BTreeMap<&'a str, CheckStatus>,
    status: Overall,
}

#[derive(Serialize)]
struct CheckStatus {
    /// Readiness semantics like `protected`: why a failing dependency is not down.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    maintenance: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    protected: bool,
    status: State,
}

impl<'a> From<&'a Report> for StatusOnly<'a> {
    fn from(report: &'a Report) -> Self {
        Self {
            status: report.overall,
            checks: report
                .checks
                .iter()
                .map(|(name, view)| {
                    let status = CheckStatus {
                        status: view.state,
                        protected: view.protected,
                        maintenance: view.reason == Some(Reason::Maintenance),
                    };
                    (name.as_str(), status)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_bytes_match_the_sorted_json_tree_for_every_view() {
        let full = CheckView {
            checked_at: Some("2026-12-03T10:00:00.000Z".into()),
            critical: true,
            detail: Some(Arc::from("connected")),
            error: Some(Arc::from("refused")),
            latency_ms: Some(1.5),
            maintenance_until: Some("2026-12-03T11:00:00Z".into()),
            protected: true,
            reason: Some(Reason::Maintenance),
            state: State::Degraded,
        };
        let bare = CheckView {
            checked_at: None,
            critical: false,
            detail: None,
            error: None,
            latency_ms: None,
            maintenance_until: None,
            protected: false,
            reason: None,
            state: State::Unknown,
        };
        let report = Report {
            checks: BTreeMap::from([("a".into(), full), ("b".into(), bare)]),
            overall: Overall::Degraded,
            codes: StatusCodes::default(),
        };
        for view in [View::Full, View::StatusOnly] {
            let via_tree = serde_json::to_vec(&report.to_json(view)).unwrap();
            assert_eq!(
                String::from_utf8(report.to_bytes(view)).unwrap(),
                String::from_utf8(via_tree).unwrap(),
                "{view:?}"
            );
        }
    }
}
