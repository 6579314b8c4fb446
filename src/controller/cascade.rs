//! Readiness-cascade protection: replicas share, through the API server, which critical
//! dependencies each one sees down, and a dependency that enough live replicas see down stops
//! counting as critical, for a bounded time (for policies with `cascadeProtection.enabled`).
//!
//! The rules (see [`CascadeRules`]): protection engages for a dependency when at least
//! `minReplicas` replicas, and at least `quorumPercent` of the replicas currently serving the
//! policy, see it down; a replica whose view has not been renewed within [`VIEW_TTL`] does not
//! count. It holds for at most `maxDuration`; then the fleet reports the dependency down until it
//! recovers, and a later outage starts a new hold.
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
use crate::policy::CascadeRules;

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

/// The dependencies of each of `own`'s policies that enough replicas see down: this replica and
/// every peer whose view covers the policy (peers that do not serve it have no say). Only
/// dependencies down here can be shared: protection only ever keeps this replica in rotation.
pub fn shared_outages(own: &View, peers: &[View], rules: &BTreeMap<String, CascadeRules>) -> View {
    own.iter()
        .filter_map(|(policy, down)| {
            let rules = rules.get(policy)?;
            let serving: Vec<&BTreeSet<String>> =
                peers.iter().filter_map(|peer| peer.get(policy)).collect();
            let replicas = serving.len() as u32 + 1;
            let shared = down
                .iter()
                .filter(|dep| {
                    let seen_down = 1 + serving.iter().filter(|p| p.contains(*dep)).count() as u32;
                    rules.engages(seen_down, replicas)
                })
                .cloned()
                .collect();
            Some((policy.clone(), shared))
        })
        .collect()
}

/// Since when protection has held each dependency, so `maxDuration` can end it.
#[derive(Debug, Default)]
pub struct Holds(BTreeMap<(String, String), Instant>);

impl Holds {
    /// The shared outages still within their policy's `maxDuration`. A dependency that stops
    /// being shared (it recovered, or fewer replicas see it) is forgotten, so a later outage
    /// starts a new hold; one whose hold has run out stays excluded until then.
    pub fn within_limit(
        &mut self,
        shared: View,
        rules: &BTreeMap<String, CascadeRules>,
        now: Instant,
    ) -> View {
        self.0
            .retain(|(policy, dep), _| shared.get(policy).is_some_and(|deps| deps.contains(dep)));
        shared
            .into_iter()
            .map(|(policy, deps)| {
                let limit = rules.get(&policy).map(|r| r.max_duration);
                let held = deps
                    .into_iter()
                    .filter(|dep| {
                        let since = *self.0.entry((policy.clone(), dep.clone())).or_insert(now);
                        limit.is_some_and(|limit| now.duration_since(since) < limit)
                    })
                    .collect();
                (policy, held)
            })
            .collect()
    }
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
    .backoff(super::backoff::WatchBackoff::default())
    .boxed();
    let mut published: Option<(View, Instant)> = None;
    let mut watching_since: Option<Instant> = None;
    let mut views_listed = false;
    let mut holds = Holds::default();
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
        let (own, rules) = own_view(&ctx);
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
            shared_outages(&own, &peers, &rules)
        } else {
            View::new()
        };
        let held = holds.within_limit(shared.clone(), &rules, Instant::now());
        for key in ctx.engine.policies() {
            let id = policy_id(&key);
            let deps = held.get(&id).cloned().unwrap_or_default();
            let expired: Vec<&String> = shared
                .get(&id)
                .map(|all| all.difference(&deps).collect())
                .unwrap_or_default();
            let dependencies: Vec<&String> = deps.iter().collect();
            if ctx.engine.set_shared_outage(&key, deps.clone()) {
                if !dependencies.is_empty() {
                    info!(policy = %key, ?dependencies, replicas = peers.len() + 1, "down on enough replicas; cascade protection keeps this replica in rotation");
                }
                if !expired.is_empty() {
                    warn!(policy = %key, dependencies = ?expired, "cascade protection reached maxDuration; reporting down");
                }
            }
        }
    }
    // Expire our view at once, so peers do not wait out the TTL for a replica that has gone.
    if published.is_some() {
        let _ = publish(&api, &name, &settings, &View::new(), Duration::from_secs(1)).await;
    }
}

/// This replica's view from its engine (critical dependencies it sees down, for each protected
/// policy), and each protected policy's rules.
fn own_view(ctx: &Context) -> (View, BTreeMap<String, CascadeRules>) {
    let protected: Vec<(PolicyKey, CascadeRules)> = ctx
        .observed
        .borrow()
        .iter()
        .filter_map(|(k, o)| Some((k.clone(), o.applied.as_ref()?.cascade_protection?)))
        .collect();
    let mut view = View::new();
    let mut rules = BTreeMap::new();
    for (key, policy_rules) in protected {
        if let Some(down) = ctx.engine.critical_down(&key) {
            view.insert(policy_id(&key), down);
            rules.insert(policy_id(&key), policy_rules);
        }
    }
    (view, rules)
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

    fn rules(min_replicas: u32, quorum_percent: u32) -> BTreeMap<String, CascadeRules> {
        [(
            "ns/p".to_string(),
            CascadeRules {
                min_replicas,
                quorum_percent,
                max_duration: Duration::from_secs(600),
            },
        )]
        .into()
    }

    #[test]
    fn shared_outage_table() {
        // (own, peers, minReplicas, quorumPercent) → shared
        type Row<'a> = (View, Vec<View>, u32, u32, View);
        let down = |deps: &[&str]| view(&[("ns/p", deps)]);
        let rows: Vec<Row> = vec![
            // Alone: below minReplicas 2, so this replica goes down like any other.
            (down(&["db"]), vec![], 2, 100, down(&[])),
            // Alone with minReplicas 1 (an explicit opt-in): protected.
            (down(&["db"]), vec![], 1, 100, down(&["db"])),
            // Down on both.
            (down(&["db"]), vec![down(&["db"])], 2, 100, down(&["db"])),
            // A peer sees it up: this replica alone is the problem.
            (down(&["db"]), vec![down(&[])], 2, 100, down(&[])),
            // Three replicas, two see it down: not all (100 %), but two thirds (60 %) is enough.
            (
                down(&["db"]),
                vec![down(&["db"]), down(&[])],
                2,
                100,
                down(&[]),
            ),
            (
                down(&["db"]),
                vec![down(&["db"]), down(&[])],
                2,
                60,
                down(&["db"]),
            ),
            // Only the dependency down on all counts.
            (
                down(&["db", "cache"]),
                vec![down(&["db"]), down(&["db", "cache"])],
                2,
                100,
                down(&["db"]),
            ),
            // A peer serving other policies has no say about this one (and does not count).
            (
                down(&["db"]),
                vec![view(&[("ns/q", &[])])],
                1,
                100,
                down(&["db"]),
            ),
            (
                down(&["db"]),
                vec![view(&[("ns/q", &[])])],
                2,
                100,
                down(&[]),
            ),
            // Nothing down here: nothing shared, whatever peers see.
            (down(&[]), vec![down(&["db"])], 2, 100, down(&[])),
        ];
        for (own, peers, min, quorum, expected) in rows {
            assert_eq!(
                shared_outages(&own, &peers, &rules(min, quorum)),
                expected,
                "{own:?} with {peers:?}, min {min}, quorum {quorum}"
            );
        }
    }

    #[test]
    fn holds_end_after_max_duration_and_rearm_after_recovery() {
        let rules = rules(2, 100);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let shared = view(&[("ns/p", &["db"])]);
        let mut holds = Holds::default();
        assert_eq!(holds.within_limit(shared.clone(), &rules, at(0)), shared);
        assert_eq!(holds.within_limit(shared.clone(), &rules, at(599)), shared);
        // maxDuration reached: reported down while the outage lasts.
        let none = view(&[("ns/p", &[])]);
        assert_eq!(holds.within_limit(shared.clone(), &rules, at(600)), none);
        assert_eq!(holds.within_limit(shared.clone(), &rules, at(900)), none);
        // The dependency recovers; the next outage is held afresh.
        assert_eq!(holds.within_limit(none.clone(), &rules, at(901)), none);
        assert_eq!(holds.within_limit(shared.clone(), &rules, at(902)), shared);
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
            gates: super::super::gates::GateSettings {
                qps: 10.0,
                burst: 10,
            },
        };
        assert_eq!(view_name(&settings), "healthgate-view-pod-name-1");
    }
}
