//! Pod-gate metrics: writes, what waits for the write budget, and the age of the last write
//! (the one number that tells a frozen gate from a quiet one, see README "Readiness gates").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

use crate::metrics::registered;

/// `result` values of `healthgate_pod_gate_writes_total`, pre-created.
pub const WRITE_RESULTS: &[&str] = &["success", "error"];

#[derive(Clone)]
pub struct GateMetrics {
    writes: IntCounterVec,
    /// Unix time of this replica's last successful gate write; 0 before the first.
    last_write: Gauge,
    /// Seconds since then, refreshed on every pass while leading; -1 before the first write.
    last_write_age: Gauge,
    pub pending: IntGauge,
    pub gated_pods: IntGauge,
}

impl GateMetrics {
    pub fn register(registry: &Registry) -> Self {
        let writes = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "healthgate_pod_gate_writes_total",
                    "Patches of the healthgate.dev/ready pod condition by result (success, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        for result in WRITE_RESULTS {
            writes.with_label_values(&[result]);
        }
        let last_write_age = registered(
            registry,
            Gauge::new(
                "healthgate_pod_gate_last_write_age_seconds",
                "Seconds since this replica last wrote a pod gate (-1: never). Refreshed while it leads.",
            )
            .expect("valid metric"),
        );
        last_write_age.set(-1.0);
        Self {
            writes,
            last_write: registered(
                registry,
                Gauge::new(
                    "healthgate_pod_gate_last_write_timestamp_seconds",
                    "Unix time of this replica's last successful pod gate write (0: never).",
                )
                .expect("valid metric"),
            ),
            last_write_age,
            pending: registered(
                registry,
                IntGauge::new(
                    "healthgate_pod_gates_pending",
                    "Pods whose healthgate.dev/ready condition differs from the policy's answer and waits for the write budget.",
                )
                .expect("valid metric"),
            ),
            gated_pods: registered(
                registry,
                IntGauge::new(
                    "healthgate_pod_gates_selected",
                    "Pods selected by a policy's podSelector that list the healthgate.dev/ready readiness gate (leader only).",
                )
                .expect("valid metric"),
            ),
        }
    }

    pub fn written(&self, ok: bool) {
        if ok {
            self.writes.with_label_values(&["success"]).inc();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            self.last_write.set(now.as_secs_f64());
            self.last_write_age.set(0.0);
        } else {
            self.writes.with_label_values(&["error"]).inc();
        }
    }

    /// Moves the age gauge on; called on every pass of the leader.
    pub fn refresh_age(&self) {
        let last = self.last_write.get();
        if last > 0.0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            self.last_write_age.set((now.as_secs_f64() - last).max(0.0));
        }
    }
}
