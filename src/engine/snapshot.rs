//! The engine's one typed view of a policy: what every output (the /ready body, the CRD status,
//! cascade protection, `healthgate check`) renders. Built in one pass, one slot lock per
//! dependency; the texts inside records are shared (`Arc<str>`), so a snapshot copies no string
//! but the dependency names.

use jiff::Timestamp;

use super::CheckRecord;
use crate::health::{Overall, Reason, State};
use crate::policy::StatusCodes;

/// One dependency as the engine sees it at the snapshot's `now`.
#[derive(Clone, Debug)]
pub struct DependencyView {
    pub name: String,
    pub critical: bool,
    /// After staleness: a result older than maxStaleness reads as [`State::Unknown`].
    pub state: State,
    /// Down, but down on every replica: cascade protection counts it as non-critical.
    pub protected: bool,
    /// Until when a maintenance window covering this dependency is open, if one is.
    pub maintenance_until: Option<Timestamp>,
    /// Down, reported degraded because a maintenance window is open.
    pub held_for_maintenance: bool,
    /// The latest published result; `None` until the first check finishes.
    pub last: Option<CheckRecord>,
}

impl DependencyView {
    /// Whether this dependency decides readiness as a critical one right now.
    pub fn counts_as_critical(&self) -> bool {
        self.critical && !self.protected
    }

    pub fn never_checked(&self) -> bool {
        self.last.is_none()
    }

    /// Why the dependency is in its state: the latest check's reason, or `maintenance` when an
    /// open window turned a down into a degraded.
    pub fn reason(&self) -> Option<Reason> {
        if self.held_for_maintenance {
            return Some(Reason::Maintenance);
        }
        self.last.as_ref().map(|r| r.reason)
    }
}

/// A policy as the engine sees it: the aggregate and every dependency, sorted by name.
#[derive(Clone, Debug)]
pub struct PolicySnapshot {
    pub overall: Overall,
    pub codes: StatusCodes,
    /// Whether the policy has cascade protection enabled.
    pub cascade_protection: bool,
    /// Whether the policy declares maintenance windows.
    pub maintenance: bool,
    pub dependencies: Vec<DependencyView>,
}

impl PolicySnapshot {
    pub fn status_code(&self) -> u16 {
        self.codes.for_overall(self.overall)
    }

    /// The dependencies cascade protection holds right now.
    pub fn protected(&self) -> impl Iterator<Item = &DependencyView> {
        self.dependencies.iter().filter(|d| d.protected)
    }

    pub fn dependency(&self, name: &str) -> Option<&DependencyView> {
        self.dependencies.iter().find(|d| d.name == name)
    }

    pub fn all_checked(&self) -> bool {
        self.dependencies.iter().all(|d| !d.never_checked())
    }

    pub fn count(&self, state: State) -> usize {
        self.dependencies
            .iter()
            .filter(|d| d.state == state)
            .count()
    }
}
