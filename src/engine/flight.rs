//! Single flight: checkers of several policies that check the same target with the same
//! settings share one probe run per interval. Each checker still applies its own thresholds to
//! the shared observation, so every policy sees the result as if it had probed alone.
//!
//! Shared checkers sit on the same phase (`schedule.rs` hashes the [`FlightKey`]), so they come
//! due together: the first starts the run, the others join it or take the run that started no
//! earlier than their own planned time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use prometheus::IntGauge;

use super::PolicyKey;
use crate::checks::{Observation, Probe, Target};
use crate::policy::DependencySpec;

/// What makes two checkers' probe runs interchangeable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlightKey {
    target: Target,
    timeout: Duration,
    interval: Duration,
    /// `type: policy` names a policy in the checker's own namespace, so the name alone does not
    /// say which one.
    namespace: Option<String>,
}

impl FlightKey {
    pub fn new(key: &PolicyKey, spec: &DependencySpec) -> Self {
        let namespace = matches!(spec.target, Target::Policy { .. }).then(|| key.namespace.clone());
        Self {
            target: spec.target.clone(),
            timeout: spec.schedule.timeout,
            interval: spec.schedule.interval,
            namespace,
        }
    }
}

/// One probe run, as every sharing checker sees it.
#[derive(Clone, Debug)]
pub struct Run {
    pub started: Instant,
    pub latency: Duration,
    /// Wall-clock end, so every policy sharing the run reports the same `checked_at`.
    pub finished_at: DateTime<Utc>,
    pub observation: Observation,
}

type InFlight = Shared<BoxFuture<'static, Run>>;

#[derive(Default)]
struct Latest {
    running: Option<InFlight>,
    finished: Option<Run>,
}

/// The probe of one [`FlightKey`] and its latest run.
pub struct Flight {
    probe: Arc<Probe>,
    timeout: Duration,
    /// Probes running now, across all flights: `healthgate_checks_running`.
    running: IntGauge,
    latest: Arc<Mutex<Latest>>,
}

impl Flight {
    /// The run that answers a check planned for `planned`: one in progress, or one that started
    /// at or after `planned`, or else a new one.
    pub async fn run(&self, planned: Instant) -> Run {
        let run = {
            let mut latest = self.latest.lock().expect("flight lock");
            if let Some(finished) = latest.finished.as_ref().filter(|r| r.started >= planned) {
                return finished.clone();
            }
            match &latest.running {
                Some(running) => running.clone(),
                None => {
                    let run = fly(
                        self.probe.clone(),
                        self.timeout,
                        self.running.clone(),
                        Arc::downgrade(&self.latest),
                    )
                    .boxed()
                    .shared();
                    latest.running = Some(run.clone());
                    run
                }
            }
        };
        run.await
    }
}

/// The run itself. It holds the flight's state only weakly: a run nobody waits for any more must
/// not keep its flight alive.
async fn fly(
    probe: Arc<Probe>,
    timeout: Duration,
    running: IntGauge,
    latest: Weak<Mutex<Latest>>,
) -> Run {
    let started = Instant::now();
    running.inc();
    let _running = scopeguard(move || running.dec());
    let observation = tokio::time::timeout(timeout, probe.run())
        .await
        .unwrap_or_else(|_| Observation::timed_out(timeout));
    let run = Run {
        started,
        latency: started.elapsed(),
        finished_at: Utc::now(),
        observation,
    };
    if let Some(latest) = latest.upgrade() {
        let mut latest = latest.lock().expect("flight lock");
        latest.running = None;
        latest.finished = Some(run.clone());
    }
    run
}

/// Runs `f` when dropped, so a cancelled run still leaves the running gauge.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Every live flight by key; a flight lives while a checker holds it.
#[derive(Default)]
pub struct Flights {
    by_key: Mutex<HashMap<FlightKey, Weak<Flight>>>,
}

impl Flights {
    /// The flight of `key`, joined if a checker runs it already, else made by `probe`.
    pub fn join(
        &self,
        key: FlightKey,
        running: &IntGauge,
        probe: impl FnOnce() -> Probe,
    ) -> Arc<Flight> {
        let mut by_key = self.by_key.lock().expect("flights lock");
        if let Some(flight) = by_key.get(&key).and_then(Weak::upgrade) {
            return flight;
        }
        let flight = Arc::new(Flight {
            probe: Arc::new(probe()),
            timeout: key.timeout,
            running: running.clone(),
            latest: Arc::default(),
        });
        // Dropped flights leave dead entries; sweeping when the map doubles keeps it linear.
        if by_key.len() >= 64 && by_key.len().is_power_of_two() {
            by_key.retain(|_, flight| flight.strong_count() > 0);
        }
        by_key.insert(key, Arc::downgrade(&flight));
        flight
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        let by_key = self.by_key.lock().expect("flights lock");
        by_key.values().filter(|f| f.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Connections, Upstreams};
    use crate::policy::{DEFAULT_INTERVAL, DEFAULT_TIMEOUT, Schedule};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn spec(address: &str) -> DependencySpec {
        DependencySpec {
            name: "dep".into(),
            critical: true,
            schedule: Schedule {
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                retry_interval: None,
                failing: crate::health::Window::consecutive(1),
                recovering: crate::health::Window::consecutive(1),
                degraded_latency: None,
            },
            target: Target::Tcp {
                address: address.into(),
            },
        }
    }

    struct NoUpstreams;
    impl Upstreams for NoUpstreams {
        fn observe(&self, _: &str) -> (Observation, bool) {
            unreachable!("no policy targets here")
        }
    }

    fn probe(spec: &DependencySpec) -> Probe {
        let upstreams: Arc<dyn Upstreams> = Arc::new(NoUpstreams);
        Probe::new(
            &spec.target,
            spec.schedule.timeout,
            &Connections::new(None),
            &upstreams,
        )
    }

    #[tokio::test]
    async fn identical_targets_of_two_policies_share_one_run() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((_conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let (a, b) = (PolicyKey::new("a", "p"), PolicyKey::new("b", "p"));
        let dep = spec(&address);
        let flights = Flights::default();
        let running = IntGauge::new("running", "test").unwrap();
        let built = AtomicUsize::new(0);
        let make = || {
            built.fetch_add(1, Ordering::SeqCst);
            probe(&dep)
        };
        let first = flights.join(FlightKey::new(&a, &dep), &running, make);
        let second = flights.join(FlightKey::new(&b, &dep), &running, || probe(&dep));
        assert_eq!(built.load(Ordering::SeqCst), 1);
        assert_eq!(flights.live(), 1);

        let planned = Instant::now();
        let (x, y) = tokio::join!(first.run(planned), second.run(planned));
        assert_eq!(x.started, y.started);
        assert_eq!(x.observation.outcome, crate::health::Outcome::Ok);
        // A checker due a moment later than a finished run starts its own.
        let z = second.run(Instant::now()).await;
        assert!(z.started > x.started);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "two runs, two connections"
        );
        assert_eq!(running.get(), 0);

        drop((first, second));
        assert_eq!(flights.live(), 0);
    }

    #[test]
    fn other_settings_or_another_namespace_for_a_policy_target_do_not_share() {
        let (a, b) = (PolicyKey::new("a", "p"), PolicyKey::new("b", "p"));
        let dep = spec("127.0.0.1:1");
        assert_eq!(FlightKey::new(&a, &dep), FlightKey::new(&b, &dep));
        let mut slower = dep.clone();
        slower.schedule.timeout *= 2;
        assert_ne!(FlightKey::new(&a, &dep), FlightKey::new(&a, &slower));
        let mut upstream = dep.clone();
        upstream.target = Target::Policy { name: "db".into() };
        assert_ne!(FlightKey::new(&a, &upstream), FlightKey::new(&b, &upstream));
    }
}
