//! `grpc.health.v1` on `--grpc-listen`, for kubelet `grpc:` probes and gRPC-aware load
//! balancers. It says what /ready says: service `""` is everything this instance serves,
//! `NAMESPACE/NAME` (standalone: `NAME`) one policy; an answer /ready would give with a status
//! below 400 is SERVING, anything else NOT_SERVING, an unknown service NOT_FOUND.
//!
//! Check and Watch read statuses that a publisher task keeps current; neither ever waits for a
//! dependency. The publisher is woken by the engine (a published result, a policy change, a
//! drain), by the first sync, and by the instant the next result turns stale: it never polls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, warn};

use super::AppState;
use crate::engine::{PolicyKey, PolicySnapshot, Report};

/// A burst of results (every checker of a large policy publishing at once) is folded into one
/// recomputation; far below any probe period.
const COALESCE: Duration = Duration::from_millis(20);

/// Serves until `stop` is cancelled, then ends every Watch stream so the server can close.
pub async fn serve(listener: TcpListener, state: AppState, stop: CancellationToken) {
    let (reporter, service) = tonic_health::server::health_reporter();
    // One service needs no router (and no axum in the binary).
    let server = tonic::transport::Server::builder().serve_with_incoming_shutdown(
        service,
        TcpIncoming::from(listener),
        stop.clone().cancelled_owned(),
    );
    let publisher = publish(reporter, state, stop);
    let (served, ()) = tokio::join!(server, publisher);
    if let Err(e) = served {
        warn!(error = %e, "gRPC health server failed");
    }
}

/// The status of every service, as /ready would answer right now.
pub fn statuses(
    synced: bool,
    draining: bool,
    snapshots: &[(PolicyKey, PolicySnapshot)],
) -> BTreeMap<String, ServingStatus> {
    let serving = |status_code: u16| {
        if synced && !draining && status_code < 400 {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut statuses: BTreeMap<String, ServingStatus> = snapshots
        .iter()
        .map(|(key, snapshot)| {
            (
                key.to_string(),
                serving(Report::render(snapshot).status_code()),
            )
        })
        .collect();
    statuses.insert(
        String::new(),
        serving(Report::render_all(snapshots).status_code()),
    );
    statuses
}

async fn publish(mut reporter: HealthReporter, state: AppState, stop: CancellationToken) {
    let mut changes = state.engine.changes();
    let mut published: BTreeMap<String, ServingStatus> = BTreeMap::new();
    loop {
        changes.borrow_and_update();
        let synced = state.is_synced();
        let (snapshots, turns_stale) = state.engine.snapshot_all_at(Instant::now());
        let wanted = statuses(synced, state.is_draining(), &snapshots);
        for gone in published.keys().filter(|s| !wanted.contains_key(*s)) {
            reporter.clear_service_status(gone).await;
        }
        for (service, status) in &wanted {
            if published.get(service) != Some(status) {
                debug!(service, ?status, "gRPC health status");
                reporter.set_service_status(service, *status).await;
            }
        }
        published = wanted;

        let stale = async {
            match turns_stale {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                tokio::time::sleep(COALESCE).await;
            }
            _ = state.synced.opened(), if !synced => {}
            _ = stale => {}
        }
    }
    // A Watch stream ends when its service is cleared; open streams would otherwise hold the
    // server's graceful shutdown forever.
    for service in published.keys() {
        reporter.clear_service_status(service).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::health::State;

    fn policy(degraded_code: u16) -> crate::policy::Policy {
        let text = format!(
            "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: p}}\n\
             spec:\n  statusCodes: {{degraded: {degraded_code}}}\n  dependencies:\n\
             \x20   - {{name: db, type: tcp, tcp: {{address: 'h:1'}}}}\n\
             \x20   - {{name: cache, type: tcp, critical: false, tcp: {{address: 'h:2'}}}}\n"
        );
        crate::standalone::parse(&text, std::path::Path::new("p.yaml"))
            .expect("valid policy")
            .1
    }

    fn engine(policies: &[(&str, u16, State, State)]) -> Engine {
        let engine = Engine::new(crate::metrics::Metrics::new().checks.clone());
        for (name, degraded_code, db, cache) in policies {
            engine.serve_fixed(
                &PolicyKey::new("team", *name),
                policy(*degraded_code),
                &[("db", *db), ("cache", *cache)],
            );
        }
        engine
    }

    #[tokio::test]
    async fn statuses_follow_the_ready_status_code() {
        use ServingStatus::{NotServing as Not, Serving};
        use State::{Down, Ok};
        let mixed = engine(&[
            ("ok", 207, Ok, Ok),
            // A non-critical dependency down: degraded, 207 keeps it serving...
            ("degraded", 207, Ok, Down),
            // ...unless the policy maps degraded to a status that takes the pod out.
            ("strict", 503, Ok, Down),
        ]);
        let snapshots = mixed.snapshot_all();
        let got = statuses(true, false, &snapshots);
        let want: BTreeMap<String, ServingStatus> = [
            // /ready's own answer for several policies: the worst overall state, with the codes
            // of the first policy in that state (team/degraded's 207).
            ("", Serving),
            ("team/degraded", Serving),
            ("team/ok", Serving),
            ("team/strict", Not),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            got, want,
            "the overall answer is /ready's: strict's 503 wins"
        );

        let healthy = engine_ok();
        let snapshots = healthy.snapshot_all();
        assert_eq!(statuses(true, false, &snapshots)[""], Serving);
        assert!(
            statuses(false, false, &snapshots)
                .values()
                .all(|s| *s == Not),
            "not synced: nothing is serving yet"
        );
        assert!(
            statuses(true, true, &snapshots).values().all(|s| *s == Not),
            "draining: nothing is serving any more"
        );
        let critical_down = engine(&[("down", 207, Down, Ok)]);
        assert_eq!(
            statuses(true, false, &critical_down.snapshot_all())["team/down"],
            Not
        );
    }

    fn engine_ok() -> Engine {
        engine(&[("ok", 207, State::Ok, State::Ok)])
    }
}
