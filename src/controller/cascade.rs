//! Readiness-cascade protection: replicas share, through the API server, which critical
//! dependencies each one sees down, and a dependency down on every live replica stops counting
//! as critical (for policies with `cascadeProtection.enabled`).
//!
//! Why: a readiness probe that fails on every replica at once removes every endpoint of the
//! Service, turning a partial outage (one database) into a total one (nothing is served, not even
//! what does not need that database). Taking a replica out of rotation only helps if another one
//! is better off. So a dependency down on *some* replicas still takes those out, while one down
//! on *all* of them degrades instead.
//!
//! Each replica publishes its view in its own `coordination.k8s.io` Lease (labelled with the
//! leader Lease's name, so replicas of one deployment find each other; renewed every
//! [`HEARTBEAT`], considered dead after [`VIEW_TTL`]). No replica-to-replica protocol: the API
//! server is the only shared medium, and a replica that cannot reach it only sees its own view.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, FIELD_MANAGER, Settings};
use crate::engine::PolicyKey;

/// Label on view Leases; its value is the leader Lease name, which groups one deployment's replicas.
pub const VIEW_LABEL: &str = "healthgate.dev/view-of";
/// Annotation holding the view: `{"namespace/policy": ["dependency", ...]}`.
pub const VIEW_ANNOTATION: &str = "healthgate.dev/down";
/// A view not renewed for this long belongs to a dead replica and is ignored.
const VIEW_TTL: Duration = Duration::from_secs(10);
/// Renewal of an unchanged view; a changed view is published at once.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// After starting to watch views, how long before an absent peer is taken as no peer: every
/// live replica renews within a heartbeat, plus time for the watch to deliver it.
const PEER_DISCOVERY: Duration = Duration::from_secs(HEARTBEAT.as_secs() + 2);
/// How often views are recomputed: the delay between "down everywhere" and "degraded". Well
/// inside a readiness probe's period × failureThreshold (10 s in manifests/), so the kubelet does
/// not remove the endpoints in between.
const TICK: Duration = Duration::from_millis(500);

/// For each protected policy a replica serves: the critical dependencies it sees down.
pub type View = BTreeMap<String, BTreeSet<String>>;

/// The dependencies of each policy that are down in `own` view and in every peer view that
/// covers the same policy. Peers that do not serve a policy have no say about it.
pub fn shared_outages(own: &View, peers: &[View]) -> View {
    own.iter()
        .map(|(policy, down)| {
            let shared = down
                .iter()
                .filter(|dep| {
                    peers
                        .iter()
                        .filter_map(|peer| peer.get(policy))
                        .all(|peer_down| peer_down.contains(*dep))
                })
                .cloned()
                .collect();
            (policy.clone(), shared)
        })
        .collect()
}

fn policy_id(key: &PolicyKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

/// A Lease name for this replica's view: a DNS subdomain built from the identity.
fn view_name(settings: &Settings) -> String {
    let identity: String = settings
        .identity
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = format!("{}-view-{identity}", settings.lease_name);
    name.chars()
        .take(253)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

pub async fn run(client: Client, ctx: Arc<Context>, settings: Settings, cancel: CancellationToken) {
    let api: Api<Lease> = Api::namespaced(client, &settings.lease_namespace);
    let name = view_name(&settings);
    let (store, writer) = reflector::store();
    let selector = format!("{VIEW_LABEL}={}", settings.lease_name);
    let mut views = reflector::reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().labels(&selector)),
    )
    .default_backoff()
    .boxed();
    let mut published: Option<(View, Instant)> = None;
    let mut watching_since: Option<Instant> = None;
    let mut views_listed = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            // The view watch is driven here, but only while something is protected: without a
            // protected policy this replica makes no Lease calls at all.
            event = views.next(), if watching_since.is_some() => {
                match event {
                    Some(Ok(watcher::Event::InitDone)) => views_listed = true,
                    Some(Err(e)) => warn!(error = %e, "watching replica views"),
                    _ => {}
                }
                continue;
            }
            _ = tokio::time::sleep(TICK) => {}
        }
        let own = own_view(&ctx);
        if own.is_empty() && published.is_none() {
            continue;
        }
        let watching = *watching_since.get_or_insert_with(Instant::now);
        let due = published
            .as_ref()
            .is_none_or(|(view, at)| *view != own || at.elapsed() >= HEARTBEAT);
        if due {
            match publish(&api, &name, &settings, &own, VIEW_TTL).await {
                Ok(()) => published = Some((own.clone(), Instant::now())),
                Err(e) => warn!(error = %e, "could not publish this replica's view"),
            }
        }
        let peers = peer_views(&store, &name);
        // Until every live peer has had a heartbeat to show up in our cache, "no peer seen"
        // would read as "alone, so down everywhere": protect nothing yet.
        let settled = views_listed && watching.elapsed() >= PEER_DISCOVERY;
        let shared = if settled {
            shared_outages(&own, &peers)
        } else {
            View::new()
        };
        for key in ctx.engine.policies() {
            let deps = shared.get(&policy_id(&key)).cloned().unwrap_or_default();
            if !deps.is_empty() {
                let dependencies: Vec<&String> = deps.iter().collect();
                info!(policy = %key, ?dependencies, replicas = peers.len() + 1, "down on every replica; cascade protection keeps this replica in rotation");
            }
            ctx.engine.set_shared_outage(&key, deps);
        }
    }
    // Expire our view at once, so peers do not wait out the TTL for a replica that has gone.
    if published.is_some() {
        let _ = publish(&api, &name, &settings, &View::new(), Duration::from_secs(1)).await;
    }
}

/// This replica's view from its engine: critical dependencies it sees down.
fn own_view(ctx: &Context) -> View {
    let protected: Vec<PolicyKey> = ctx
        .observed
        .borrow()
        .iter()
        .filter(|(_, o)| o.applied.as_ref().is_some_and(|p| p.cascade_protection))
        .map(|(k, _)| k.clone())
        .collect();
    protected
        .into_iter()
        .filter_map(|key| Some((policy_id(&key), ctx.engine.critical_down(&key)?)))
        .collect()
}

fn peer_views(store: &Store<Lease>, own_name: &str) -> Vec<View> {
    let now = Timestamp::now();
    store
        .state()
        .iter()
        .filter(|lease| lease.metadata.name.as_deref() != Some(own_name))
        .filter(|lease| {
            let spec = lease.spec.as_ref();
            let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
            let ttl = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(0);
            renewed.is_some_and(|at| at + SignedDuration::from_secs(i64::from(ttl)) > now)
        })
        .filter_map(|lease| {
            let text = lease.metadata.annotations.as_ref()?.get(VIEW_ANNOTATION)?;
            serde_json::from_str(text).ok()
        })
        .collect()
}

async fn publish(
    api: &Api<Lease>,
    name: &str,
    settings: &Settings,
    view: &View,
    ttl: Duration,
) -> Result<(), kube::Error> {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "labels": {VIEW_LABEL: settings.lease_name},
            "annotations": {VIEW_ANNOTATION: serde_json::to_string(view).expect("a view serialises")},
        },
        "spec": {
            "holderIdentity": settings.identity,
            "leaseDurationSeconds": ttl.as_secs(),
            "renewTime": MicroTime(Timestamp::now()),
        },
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&lease),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entries: &[(&str, &[&str])]) -> View {
        entries
            .iter()
            .map(|(p, deps)| (p.to_string(), deps.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn shared_outage_table() {
        type Row<'a> = (View, Vec<View>, View);
        let rows: Vec<Row> = vec![
            // Alone: everything this replica sees down is down "everywhere".
            (
                view(&[("ns/p", &["db"])]),
                vec![],
                view(&[("ns/p", &["db"])]),
            ),
            // Down on both.
            (
                view(&[("ns/p", &["db"])]),
                vec![view(&[("ns/p", &["db"])])],
                view(&[("ns/p", &["db"])]),
            ),
            // A peer sees it up: this replica alone is the problem.
            (
                view(&[("ns/p", &["db"])]),
                vec![view(&[("ns/p", &[])])],
                view(&[("ns/p", &[])]),
            ),
            // Only the dependency down on all counts.
            (
                view(&[("ns/p", &["db", "cache"])]),
                vec![
                    view(&[("ns/p", &["db"])]),
                    view(&[("ns/p", &["db", "cache"])]),
                ],
                view(&[("ns/p", &["db"])]),
            ),
            // A peer serving other policies has no say about this one.
            (
                view(&[("ns/p", &["db"])]),
                vec![view(&[("ns/q", &[])])],
                view(&[("ns/p", &["db"])]),
            ),
            // Nothing down here: nothing shared, whatever peers see.
            (
                view(&[("ns/p", &[])]),
                vec![view(&[("ns/p", &["db"])])],
                view(&[("ns/p", &[])]),
            ),
        ];
        for (own, peers, expected) in rows {
            assert_eq!(
                shared_outages(&own, &peers),
                expected,
                "{own:?} with {peers:?}"
            );
        }
    }

    #[test]
    fn view_names_are_dns_subdomains() {
        let settings = Settings {
            scope: super::super::Scope::AllNamespaces,
            selector: None,
            identity: "Pod_Name/1".into(),
            lease_namespace: "ns".into(),
            lease_name: "healthgate".into(),
            write_qps: 10.0,
            write_burst: 10,
        };
        assert_eq!(view_name(&settings), "healthgate-view-pod-name-1");
    }
}
