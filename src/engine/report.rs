//! The /ready body: overall status plus one entry per check, built from cached records only.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{CheckRecord, PolicyKey};
use crate::health::{Overall, State};
use crate::policy::StatusCodes;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(rename = "status")]
    pub overall: Overall,
    pub checks: BTreeMap<String, CheckView>,
    #[serde(skip)]
    pub codes: StatusCodes,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckView {
    #[serde(rename = "status")]
    pub state: State,
    pub critical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Down, but down on every replica: counted as non-critical (readiness-cascade protection).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cascade_protected: bool,
}

impl CheckView {
    pub fn new(state: State, critical: bool, record: Option<&CheckRecord>) -> Self {
        Self {
            state,
            critical,
            // Rounded to microseconds: more digits are noise, fewer hide a loopback ping.
            latency_ms: record.map(|r| (r.latency.as_secs_f64() * 1e6).round() / 1e3),
            checked_at: record.map(|r| {
                r.checked_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }),
            reason: record.map(|r| r.reason.as_str()),
            detail: record.and_then(|r| r.detail.clone()),
            error: record.and_then(|r| r.error.clone()),
            cascade_protected: false,
        }
    }
}

impl Report {
    pub fn new(overall: Overall, codes: StatusCodes, checks: BTreeMap<String, CheckView>) -> Self {
        Self {
            checks,
            overall,
            codes,
        }
    }

    /// Nothing to check is ready: an instance serving no policy has no dependency to fail.
    pub fn empty() -> Self {
        Self::new(Overall::Ok, StatusCodes::default(), BTreeMap::new())
    }

    /// Combines several policies; the worst one decides the status and its codes are used.
    pub fn merge(reports: Vec<(&PolicyKey, Report)>) -> Self {
        let worst = reports
            .iter()
            .map(|(_, r)| r.overall)
            .max()
            .unwrap_or(Overall::Ok);
        let codes = reports
            .iter()
            .find(|(_, r)| r.overall == worst)
            .map(|(_, r)| r.codes)
            .unwrap_or_default();
        let checks = reports
            .into_iter()
            .flat_map(|(key, report)| {
                let prefix = format!("{}/{}", key.namespace, key.name);
                report
                    .checks
                    .into_iter()
                    .map(move |(name, view)| (format!("{prefix}/{name}"), view))
            })
            .collect();
        Self::new(worst, codes, checks)
    }

    pub fn status_code(&self) -> u16 {
        match self.overall {
            Overall::Ok => self.codes.ok,
            Overall::Degraded => self.codes.degraded,
            Overall::Down => self.codes.down,
        }
    }
}
