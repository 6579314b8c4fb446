//! Runs policies: one background checker per dependency, results in a shared cache read without
//! any I/O. `apply` is idempotent and level-triggered: it diffs the new policy against the running
//! one and only starts, stops or restarts the checkers that changed. What the engine knows is read
//! as a typed [`PolicySnapshot`]; every output (the /ready body, the CRD status, `check`) renders
//! one, and cascade protection asks [`Engine::critical_down`].

mod checker;
mod flight;
mod metrics;
mod ready_cache;
mod report;
mod schedule;
mod snapshot;
mod upstream;
pub use upstream::cycle_error;

use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use checker::CheckRecord;
use checker::{Checker, Slot};
use flight::{FlightKey, Flights};
pub use metrics::CheckMetrics;
use ready_cache::ReadyCache;
pub use ready_cache::Rendered;
pub use report::{CheckView, Report, View};
use schedule::Clock;
pub use snapshot::{DependencyView, PolicySnapshot};

use crate::checks::{Connections, Probe, TargetGuard, Upstreams};
use crate::health::{State, aggregate, effective_state};
use crate::policy::{DependencySpec, FieldError, Maintenance, Policy};

/// Identifies a policy: its namespace (empty in standalone mode) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub namespace: String,
    pub name: String,
}

impl PolicyKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// What an `apply` changed, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
}

struct RunningCheck {
    /// Shared with the checker: at 10,000 checks every copy of a spec is megabytes.
    spec: Arc<DependencySpec>,
    slot: Slot,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

struct RunningPolicy {
    policy: Policy,
    checks: BTreeMap<String, RunningCheck>,
    /// Dependencies down on every replica (cascade protection); set by the controller.
    shared_outage: BTreeSet<String>,
}

impl RunningPolicy {
    fn state_of(&self, check: &RunningCheck, now: Instant) -> State {
        self.effective(check.slot.lock().expect("check slot lock").as_ref(), now)
    }

    fn effective(&self, record: Option<&CheckRecord>, now: Instant) -> State {
        match record {
            Some(r) => effective_state(
                r.state,
                Some(r.checked_instant),
                now,
                self.policy.max_staleness,
            ),
            None => State::Unknown,
        }
    }

    /// One pass over the checks, one slot lock each.
    fn snapshot(&self, now: Instant) -> PolicySnapshot {
        let open = self.open_windows(Timestamp::now());
        let dependencies: Vec<DependencyView> = self
            .checks
            .iter()
            .map(|(name, check)| {
                let last = check.slot.lock().expect("check slot lock").clone();
                let mut state = self.effective(last.as_ref(), now);
                let protected = self.policy.cascade_protection.is_some()
                    && check.spec.critical
                    && state == State::Down
                    && self.shared_outage.contains(name);
                let maintenance_until = open
                    .iter()
                    .filter(|(window, _)| window.covers(name))
                    .map(|(_, until)| *until)
                    .max();
                let held_for_maintenance = maintenance_until.is_some() && state == State::Down;
                if held_for_maintenance {
                    state = State::Degraded;
                }
                DependencyView {
                    name: name.clone(),
                    critical: check.spec.critical,
                    state,
                    protected,
                    maintenance_until,
                    held_for_maintenance,
                    last,
                }
            })
            .collect();
        PolicySnapshot {
            overall: aggregate(
                dependencies
                    .iter()
                    .map(|d| (d.counts_as_critical(), d.state)),
            ),
            codes: self.policy.status_codes,
            cascade_protection: self.policy.cascade_protection.is_some(),
            maintenance: !self.policy.maintenance.is_empty(),
            dependencies,
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    policies: RwLock<BTreeMap<PolicyKey, RunningPolicy>>,
    ready: ReadyCache,
    connections: Connections,
    flights: Flights,
    clock: Arc<Clock>,
    metrics: CheckMetrics,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl RunningPolicy {
    /// The maintenance windows open at `now`, with when each closes.
    fn open_windows(&self, now: Timestamp) -> Vec<(&Maintenance, Timestamp)> {
        self.policy
            .maintenance
            .iter()
            .filter_map(|m| m.when.open_at(now).map(|o| (m, o.end)))
            .collect()
    }

    /// When a maintenance window of this policy next opens or closes.
    fn next_maintenance_change(&self, now: Timestamp) -> Option<Timestamp> {
        self.policy
            .maintenance
            .iter()
            .filter_map(|m| m.when.next_change(now))
            .min()
    }
}

impl Engine {
    pub fn new(metrics: CheckMetrics) -> Self {
        Self::with_guard(metrics, None)
    }

    /// An engine whose every check asks `guard` before it connects.
    pub fn with_guard(metrics: CheckMetrics, guard: Option<TargetGuard>) -> Self {
        Self {
            inner: Arc::new(Inner {
                policies: RwLock::default(),
                ready: ReadyCache::default(),
                connections: Connections::new(guard),
                flights: Flights::default(),
                clock: Arc::default(),
                metrics,
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Starts, restarts or stops checkers so that `key` runs exactly `policy`.
    pub fn apply(&self, key: &PolicyKey, policy: Policy) -> Changes {
        let mut policies = self.inner.policies.write().expect("engine lock");
        self.apply_locked(&mut policies, key, policy)
    }

    /// [`Engine::apply`], unless `policy` would close a cycle of `type: policy` dependencies
    /// with the policies running now: then nothing changes and the error says where. Checked
    /// under the same lock as the apply, so two policies reconciled at once cannot both pass.
    pub fn apply_acyclic(&self, key: &PolicyKey, policy: Policy) -> Result<Changes, FieldError> {
        let mut policies = self.inner.policies.write().expect("engine lock");
        if let Some(error) = upstream::cycle_error(key, &policy, |k| {
            policies.get(k).map(|running| &running.policy)
        }) {
            return Err(error);
        }
        Ok(self.apply_locked(&mut policies, key, policy))
    }

    fn apply_locked(
        &self,
        policies: &mut BTreeMap<PolicyKey, RunningPolicy>,
        key: &PolicyKey,
        policy: Policy,
    ) -> Changes {
        // One critical section for the whole diff: a concurrent /ready sees the old policy or the
        // new one, never a moment without it. Nothing in here waits on I/O.
        let mut changes = Changes::default();
        let (mut previous, shared_outage) = policies
            .remove(key)
            .map(|running| (running.checks, running.shared_outage))
            .unwrap_or_default();
        let mut checks = BTreeMap::new();
        for spec in &policy.dependencies {
            let check = match previous.remove(&spec.name) {
                Some(running) if *running.spec == *spec => {
                    changes.unchanged.push(spec.name.clone());
                    running
                }
                Some(running) => {
                    changes.restarted.push(spec.name.clone());
                    running.cancel.cancel();
                    // Same target, new schedule: keep serving the last result until the new
                    // checker's first, so editing an interval never drops the pod from rotation.
                    let carried = if running.spec.target == spec.target {
                        running.slot.lock().expect("check slot lock").clone()
                    } else {
                        None
                    };
                    self.start(key, spec, carried, Some(running.task))
                }
                None => {
                    changes.started.push(spec.name.clone());
                    self.start(key, spec, None, None)
                }
            };
            checks.insert(spec.name.clone(), check);
        }
        for (name, running) in previous {
            running.cancel.cancel();
            changes.stopped.push(name);
        }
        policies.insert(
            key.clone(),
            RunningPolicy {
                policy,
                checks,
                shared_outage,
            },
        );
        self.inner
            .connections
            .retain(policies.values().map(|p| &p.policy));
        self.inner.ready.invalidate();
        info!(policy = %key, started = ?changes.started, restarted = ?changes.restarted, stopped = ?changes.stopped, "policy applied");
        changes
    }

    /// Records which dependencies of `key` cascade protection holds (down on enough replicas):
    /// while they are down here too, they stop counting as critical. True if that changed.
    pub fn set_shared_outage(&self, key: &PolicyKey, dependencies: BTreeSet<String>) -> bool {
        let mut policies = self.inner.policies.write().expect("engine lock");
        match policies.get_mut(key) {
            Some(running) if running.shared_outage != dependencies => {
                running.shared_outage = dependencies;
                self.inner.ready.invalidate();
                true
            }
            _ => false,
        }
    }

    /// Stops every checker of a policy; its metric series go with them.
    pub fn remove(&self, key: &PolicyKey) -> bool {
        let mut policies = self.inner.policies.write().expect("engine lock");
        let Some(running) = policies.remove(key) else {
            return false;
        };
        self.inner.ready.invalidate();
        for check in running.checks.values() {
            check.cancel.cancel();
        }
        self.inner.metrics.remove_policy(key);
        self.inner
            .connections
            .retain(policies.values().map(|p| &p.policy));
        info!(policy = %key, "policy removed");
        true
    }

    pub fn policies(&self) -> Vec<PolicyKey> {
        self.inner
            .policies
            .read()
            .expect("engine lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The typed view of one policy, or `None` if it is not running.
    pub fn snapshot(&self, key: &PolicyKey) -> Option<PolicySnapshot> {
        self.snapshot_at(key, Instant::now())
    }

    /// [`Engine::snapshot`] as it will be at `now`; lets tests see staleness without waiting.
    pub fn snapshot_at(&self, key: &PolicyKey, now: Instant) -> Option<PolicySnapshot> {
        let policies = self.inner.policies.read().expect("engine lock");
        policies.get(key).map(|running| running.snapshot(now))
    }

    /// The critical dependencies of `key` that are down right now (what cascade protection
    /// shares with peers); `None` if the policy is not running. Reads states only.
    pub fn critical_down(&self, key: &PolicyKey) -> Option<BTreeSet<String>> {
        let now = Instant::now();
        let policies = self.inner.policies.read().expect("engine lock");
        let running = policies.get(key)?;
        Some(
            running
                .checks
                .iter()
                .filter(|(_, check)| check.spec.critical)
                .filter(|(_, check)| running.state_of(check, now) == State::Down)
                .map(|(name, _)| name.clone())
                .collect(),
        )
    }

    /// The /ready body of everything this instance serves, as `view` shows it, served from a
    /// cache that is redone only when a checker publishes, a policy changes or a result turns
    /// stale.
    pub fn render_all(&self, view: View) -> Rendered {
        let now = Instant::now();
        self.inner.ready.get_or_render(view, now, || {
            let policies = self.inner.policies.read().expect("engine lock");
            let snapshots: Vec<(PolicyKey, PolicySnapshot)> = policies
                .iter()
                .map(|(key, running)| (key.clone(), running.snapshot(now)))
                .collect();
            let report = Report::render_all(&snapshots);
            let body = report.to_bytes(view);
            let turns_stale = turns_stale(&policies, now);
            (
                Rendered {
                    status: report.status_code(),
                    body: body.into(),
                },
                turns_stale,
            )
        })
    }

    /// Snapshots of every policy, for renderings that need all of them at one instant.
    pub fn snapshot_all(&self) -> Vec<(PolicyKey, PolicySnapshot)> {
        self.snapshot_all_at(Instant::now()).0
    }

    /// [`Engine::snapshot_all`] at `now`, and when the first fresh result turns stale (the next
    /// time the answer changes without any check publishing).
    pub fn snapshot_all_at(
        &self,
        now: Instant,
    ) -> (Vec<(PolicyKey, PolicySnapshot)>, Option<Instant>) {
        let policies = self.inner.policies.read().expect("engine lock");
        let snapshots = policies
            .iter()
            .map(|(key, running)| (key.clone(), running.snapshot(now)))
            .collect();
        (snapshots, turns_stale(&policies, now))
    }

    /// Wakes after every change to what /ready would say: a published result, a policy applied
    /// or removed, a shared outage, a drain. Staleness is not an event: see
    /// [`Engine::snapshot_all_at`].
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.inner.ready.generation().subscribe()
    }

    /// Marks the cached answers outdated, for state outside the engine that changes them.
    pub fn invalidate(&self) {
        self.inner.ready.invalidate();
    }

    /// Brings the gauges that are derived from the cache up to date; called on each scrape so
    /// they cost nothing between scrapes.
    pub fn refresh_metrics(&self) {
        let policies = self.inner.policies.read().expect("engine lock");
        let now = Instant::now();
        for (key, running) in policies.iter() {
            let snapshot = running.snapshot(now);
            let metrics = &self.inner.metrics;
            metrics.set_policy_status(key, snapshot.overall);
            if snapshot.cascade_protection {
                for dep in snapshot.dependencies.iter().filter(|d| d.critical) {
                    metrics.set_protection(key, &dep.name, dep.protected);
                }
            }
            if snapshot.maintenance {
                for dep in &snapshot.dependencies {
                    metrics.set_maintenance(key, &dep.name, dep.maintenance_until.is_some());
                }
            }
        }
    }

    /// What `type: policy` probes of `namespace` read: this engine, without keeping it alive.
    fn upstreams(&self, namespace: &str) -> Arc<dyn Upstreams> {
        Arc::new(upstream::EngineUpstreams {
            inner: Arc::downgrade(&self.inner),
            namespace: namespace.to_string(),
        })
    }

    /// Stops every checker, waits for them and closes the pools.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.connections.close().await;
    }

    fn start(
        &self,
        key: &PolicyKey,
        spec: &DependencySpec,
        carried: Option<CheckRecord>,
        predecessor: Option<JoinHandle<()>>,
    ) -> RunningCheck {
        let slot: Slot = Arc::new(Mutex::new(carried));
        let cancel = self.inner.cancel.child_token();
        let spec = Arc::new(spec.clone());
        let flight_key = FlightKey::new(key, &spec);
        let phase = self.inner.clock.phase(&flight_key, spec.schedule.interval);
        let flight = self
            .inner
            .flights
            .join(flight_key, self.inner.metrics.running(), || {
                Probe::new(
                    &spec.target,
                    spec.schedule.timeout,
                    &self.inner.connections,
                    &self.upstreams(&key.namespace),
                )
            });
        let checker = Checker {
            key: key.clone(),
            spec: spec.clone(),
            flight,
            clock: self.inner.clock.clone(),
            phase,
            slot: slot.clone(),
            published: self.inner.ready.generation(),
            metrics: self.inner.metrics.clone(),
        };
        let token = cancel.clone();
        let task = self.inner.tasks.spawn(async move {
            // The replaced checker removes its metric series when it stops; waiting for it keeps
            // that removal from deleting the series this checker is about to write.
            if let Some(predecessor) = predecessor {
                let _ = predecessor.await;
            }
            checker.run(token).await;
        });
        RunningCheck {
            spec,
            slot,
            cancel,
            task,
        }
    }
}

/// When the answer next changes without any check publishing: the first result that is fresh
/// at `now` turns stale, or a maintenance window opens or closes.
fn turns_stale(policies: &BTreeMap<PolicyKey, RunningPolicy>, now: Instant) -> Option<Instant> {
    let wall = Timestamp::now();
    let stale = policies
        .values()
        .flat_map(|running| {
            let max_staleness = running.policy.max_staleness;
            running.checks.values().filter_map(move |check| {
                let record = check.slot.lock().expect("check slot lock");
                record.as_ref().map(|r| r.checked_instant + max_staleness)
            })
        })
        .filter(|at| *at > now);
    let maintenance = policies
        .values()
        .filter_map(|running| running.next_maintenance_change(wall))
        .filter_map(|at| {
            let ahead = wall.duration_until(at).unsigned_abs();
            now.checked_add(ahead)
        });
    stale.chain(maintenance).min()
}

#[cfg(test)]
impl Engine {
    /// Serves `policy` from fixed results instead of running checkers, so everything that reads
    /// the engine (routes, status, cascade) can be tested in-process. Dependencies missing from
    /// `results` stay never-checked.
    pub(crate) fn serve_fixed(&self, key: &PolicyKey, policy: Policy, results: &[(&str, State)]) {
        let mut policies = self.inner.policies.write().expect("engine lock");
        let checks = policy
            .dependencies
            .iter()
            .map(|spec| {
                let record = results
                    .iter()
                    .find(|(name, _)| *name == spec.name)
                    .map(|(_, state)| CheckRecord::fixed(*state));
                let check = RunningCheck {
                    spec: Arc::new(spec.clone()),
                    slot: Arc::new(Mutex::new(record)),
                    cancel: CancellationToken::new(),
                    task: tokio::spawn(async {}),
                };
                (spec.name.clone(), check)
            })
            .collect();
        policies.insert(
            key.clone(),
            RunningPolicy {
                policy,
                checks,
                shared_outage: BTreeSet::new(),
            },
        );
        self.inner.ready.invalidate();
    }
}
