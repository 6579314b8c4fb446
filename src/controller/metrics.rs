//! The controller's own metrics: reconciles, leadership and status writes.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::metrics::registered;

/// `result` values of `healthgate_reconciles_total`, pre-created so `rate()` has a series from
/// the first scrape on.
pub const RECONCILE_RESULTS: &[&str] = &["success", "error"];

#[derive(Clone)]
pub struct ControllerMetrics {
    reconciles: IntCounterVec,
    reconcile_errors: IntCounterVec,
    pub leader: IntGauge,
    pub lease_clash: IntGauge,
    pub status_writes: IntCounter,
    pub events: IntCounter,
    pub gates: super::gates::GateMetrics,
}

impl ControllerMetrics {
    pub fn register(registry: &Registry) -> Self {
        let reconciles = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "healthgate_reconciles_total",
                    "HealthPolicy reconciliations by result (success, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        for result in RECONCILE_RESULTS {
            reconciles.with_label_values(&[result]);
        }
        Self {
            gates: super::gates::GateMetrics::register(registry),
            reconciles,
            reconcile_errors: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "healthgate_reconcile_errors_total",
                        "Failed HealthPolicy reconciliations by bounded error reason.",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            leader: registered(
                registry,
                IntGauge::new(
                    "healthgate_leader",
                    "1 while this replica holds the leader lease and writes policy status, else 0.",
                )
                .expect("valid metric"),
            ),
            lease_clash: registered(
                registry,
                IntGauge::new(
                    "healthgate_lease_clash",
                    "1 while the leader lease is held by a replica serving other policies (another scope or selector): this replica's policies then get no status writer.",
                )
                .expect("valid metric"),
            ),
            status_writes: registered(
                registry,
                IntCounter::new(
                    "healthgate_status_writes_total",
                    "HealthPolicy status updates written to the Kubernetes API.",
                )
                .expect("valid metric"),
            ),
            events: registered(
                registry,
                IntCounter::new(
                    "healthgate_events_total",
                    "Events written to the Kubernetes API (a new Event or a raised series count).",
                )
                .expect("valid metric"),
            ),
        }
    }

    /// One finished reconciliation: `Ok` counts a success, `Err(reason)` an error with its
    /// bounded reason (`Error::metric_label`).
    pub fn reconciled(&self, outcome: Result<(), &str>) {
        match outcome {
            Ok(()) => self.reconciles.with_label_values(&["success"]).inc(),
            Err(reason) => {
                self.reconciles.with_label_values(&["error"]).inc();
                self.reconcile_errors.with_label_values(&[reason]).inc();
            }
        }
    }
}
