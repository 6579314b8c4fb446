//! The background task of one dependency: run the probe on its schedule, apply thresholds,
//! publish the result for /ready and metrics. Owned by the engine through a cancellation token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, field, info, warn};

use super::PolicyKey;
use super::flight::{Flight, Run};
use super::metrics::{CheckLabels, CheckMetrics, outcome_str};
use super::ready_cache::Generation;
use super::schedule::Clock;
use crate::checks::Observation;
use crate::health::{Hysteresis, Outcome, Reason, State};
use crate::policy::DependencySpec;

/// The latest published result of a checker; what /ready reads.
#[derive(Clone, Debug)]
pub struct CheckRecord {
    pub state: State,
    pub reason: Reason,
    pub latency: Duration,
    pub checked_at: DateTime<Utc>,
    pub checked_instant: Instant,
    /// Shared, so a snapshot copies a reference count, not the text.
    pub detail: Option<Arc<str>>,
    pub error: Option<Arc<str>>,
    /// When `state` last changed, for status conditions.
    pub since: DateTime<Utc>,
}

pub type Slot = Arc<Mutex<Option<CheckRecord>>>;

#[cfg(test)]
impl CheckRecord {
    /// A result just taken, for tests that feed the engine fixed results.
    pub fn fixed(state: State) -> Self {
        let (reason, error) = match state {
            State::Down => (Reason::Connect, Some(Arc::from("connection refused"))),
            State::Degraded => (Reason::Slow, None),
            State::Ok | State::Unknown => (Reason::Ok, None),
        };
        Self {
            state,
            reason,
            latency: Duration::from_micros(1500),
            checked_at: Utc::now(),
            checked_instant: Instant::now(),
            detail: None,
            error,
            since: Utc::now(),
        }
    }
}

pub struct Checker {
    pub key: PolicyKey,
    pub spec: Arc<DependencySpec>,
    /// The probe, shared with identical checkers of other policies.
    pub flight: Arc<Flight>,
    pub clock: Arc<Clock>,
    /// Where in the interval this checker runs (see `schedule.rs`).
    pub phase: Duration,
    pub slot: Slot,
    /// Bumped after every publish, so the cached /ready answer is redone.
    pub published: Arc<Generation>,
    pub metrics: CheckMetrics,
}

impl Checker {
    pub async fn run(self, cancel: CancellationToken) {
        let mut labels =
            CheckLabels::new(&self.key, &self.spec.name, self.spec.target.kind().as_str());
        if let crate::checks::Target::Policy { name } = &self.spec.target {
            self.metrics.set_upstream(&mut labels, name);
        }
        info!(policy = %self.key, dependency = %self.spec.name, endpoint = %self.spec.target.describe(), "checker started");
        let schedule = &self.spec.schedule;
        let mut hysteresis = Hysteresis::new(schedule.failing, schedule.recovering);
        let now = Instant::now();
        let carried = self.slot.lock().expect("check slot lock").is_some();
        let mut planned = if carried {
            self.clock.next_run(self.phase, schedule.interval, now)
        } else {
            self.clock.first_run(self.phase, schedule.interval, now)
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(planned.into()) => {}
            }
            self.metrics
                .observe_lag(Instant::now().saturating_duration_since(planned));
            let span = self.check_span();
            let run = tokio::select! {
                _ = cancel.cancelled() => break,
                // Boxed: a checker spends its life asleep, and an inline run would make every
                // sleeping checker's task as large as a running one (~2 KB × 10,000 checks).
                run = Box::pin(self.flight.run(planned).instrument(span.clone())) => run,
            };
            let Run {
                started,
                latency,
                finished_at,
                observation,
            } = run;
            let observation = self.slow_is_degraded(observation, latency);
            let previous = hysteresis.state();
            let state = hysteresis.observe(observation.outcome);
            // Decided by this result, so the first failure is confirmed at the retry pace.
            planned = match schedule.retry_interval {
                Some(retry) if hysteresis.unsettled() => started.max(planned) + retry,
                _ => self
                    .clock
                    .next_run(self.phase, schedule.interval, Instant::now()),
            };
            span.in_scope(|| {
                record_check(&span, &observation, state);
                self.publish(&observation, state, previous, latency, started, finished_at);
                self.metrics
                    .record(&mut labels, &observation, state, latency);
            });
        }
        self.metrics.remove(&labels);
        debug!(policy = %self.key, dependency = %self.spec.name, "checker stopped");
    }

    /// One span per check run, a root of its own trace (a check is not part of any request).
    fn check_span(&self) -> Span {
        tracing::info_span!(
            target: "healthgate::check",
            parent: None,
            "check",
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
            error.type = field::Empty,
            healthgate.policy.namespace = %self.key.namespace,
            healthgate.policy.name = %self.key.name,
            healthgate.dependency.name = %self.spec.name,
            healthgate.dependency.type = self.spec.target.kind().as_str(),
            healthgate.check.result = field::Empty,
            healthgate.check.reason = field::Empty,
            healthgate.dependency.state = field::Empty,
            healthgate.queue.depth = field::Empty,
            healthgate.tls.cert_not_after = field::Empty,
        )
    }

    fn slow_is_degraded(&self, mut observation: Observation, latency: Duration) -> Observation {
        if let Some(limit) = self.spec.schedule.degraded_latency
            && observation.outcome == Outcome::Ok
            && latency > limit
        {
            observation.outcome = Outcome::Degraded;
            observation.reason = Reason::Slow;
        }
        observation
    }

    fn publish(
        &self,
        observation: &Observation,
        state: State,
        previous: State,
        latency: Duration,
        started: Instant,
        finished_at: DateTime<Utc>,
    ) {
        let now = finished_at;
        let mut slot = self.slot.lock().expect("check slot lock");
        let since = match slot.as_ref() {
            Some(record) if record.state == state => record.since,
            _ => now,
        };
        *slot = Some(CheckRecord {
            state,
            reason: observation.reason,
            latency,
            checked_at: now,
            checked_instant: started + latency,
            detail: observation.detail.as_deref().map(Arc::from),
            error: observation.error.as_deref().map(Arc::from),
            since,
        });
        drop(slot);
        self.published.bump();
        if state != previous {
            let (policy, dependency) = (&self.key, &self.spec.name);
            let (from, to, reason) = (
                previous.as_str(),
                state.as_str(),
                observation.reason.as_str(),
            );
            let error = observation.error.as_deref().unwrap_or("");
            if state == State::Down {
                warn!(%policy, %dependency, from, to, reason, error, "dependency state changed");
            } else {
                info!(%policy, %dependency, from, to, reason, "dependency state changed");
            }
        }
    }
}

/// The check span's outcome. `error` is already scrubbed of credentials (it is shown on /ready).
fn record_check(span: &Span, observation: &Observation, state: State) {
    span.record("healthgate.check.result", outcome_str(observation.outcome));
    span.record("healthgate.check.reason", observation.reason.as_str());
    span.record("healthgate.dependency.state", state.as_str());
    if let Some(depth) = observation.queue_depth {
        span.record(
            "healthgate.queue.depth",
            i64::try_from(depth).unwrap_or(i64::MAX),
        );
    }
    if let Some(not_after) = observation.cert_not_after {
        span.record("healthgate.tls.cert_not_after", not_after);
    }
    if observation.outcome == Outcome::Down {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", observation.reason.as_str());
        if let Some(error) = &observation.error {
            span.record("otel.status_description", error.as_str());
        }
    }
}
