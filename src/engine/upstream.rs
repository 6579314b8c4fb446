//! `type: policy` dependencies: a policy reads another one's state from this engine, and the
//! graph of such dependencies must stay free of cycles.

use std::collections::{BTreeMap, BTreeSet};
#[cfg(test)]
use std::sync::Arc;
use std::sync::{RwLock, Weak};
use std::time::Instant;

use super::{Inner, PolicyKey, PolicySnapshot, RunningPolicy};
use crate::checks::{Observation, Target, Upstreams};
use crate::health::{Outcome, Overall, Reason, State};
use crate::policy::{FieldError, Policy};

/// Root-cause texts nest one level per upstream; this keeps a long chain readable and bounded.
const MAX_MESSAGE: usize = 512;

/// The policies of one namespace, as seen by a `type: policy` probe of that namespace.
pub struct EngineUpstreams {
    pub(super) inner: Weak<Inner>,
    pub(super) namespace: String,
}

impl Upstreams for EngineUpstreams {
    fn observe(&self, name: &str) -> (Observation, bool) {
        let key = PolicyKey::new(self.namespace.clone(), name);
        let Some(inner) = self.inner.upgrade() else {
            return (
                Observation::down(Reason::Config, "healthgate is stopping"),
                true,
            );
        };
        let policies: &RwLock<BTreeMap<PolicyKey, RunningPolicy>> = &inner.policies;
        let snapshot = policies
            .read()
            .expect("engine lock")
            .get(&key)
            .map(|running| running.snapshot(Instant::now()));
        match snapshot {
            // Not settled: the policies of a set are applied one after another, so at start-up
            // the upstream may be a moment away; the probe waits for it within its patience.
            None => (
                Observation::down(
                    Reason::Config,
                    format!("policy {key} is not served by this healthgate"),
                ),
                false,
            ),
            Some(snapshot) => (judge(&key, &snapshot), snapshot.all_checked()),
        }
    }
}

/// The upstream's aggregate as this dependency's observation, naming what fails inside it.
pub fn judge(key: &PolicyKey, upstream: &PolicySnapshot) -> Observation {
    match upstream.overall {
        Overall::Ok => Observation::ok(format!("policy {key} is ok")),
        Overall::Degraded => Observation {
            outcome: Outcome::Degraded,
            reason: Reason::Upstream,
            detail: Some(format!(
                "policy {key} is degraded: {}",
                causes(upstream, false)
            )),
            error: None,
            queue_depth: None,
            cert_not_after: None,
        },
        Overall::Down => {
            let mut message = format!("policy {key} is down: {}", causes(upstream, true));
            if message.len() > MAX_MESSAGE {
                let mut cut = MAX_MESSAGE;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push('…');
            }
            Observation::down(Reason::Upstream, message)
        }
    }
}

/// `postgres is down (connect: connection refused)`, for the dependencies that make the
/// upstream down (`critical`) or degraded. An upstream's own `upstream` error is quoted whole,
/// so the chain reaches the root cause.
fn causes(snapshot: &PolicySnapshot, critical: bool) -> String {
    snapshot
        .dependencies
        .iter()
        .filter(|d| d.state != State::Ok && (!critical || d.counts_as_critical()))
        .map(|d| {
            let reason = d.reason().map_or("never checked", Reason::as_str);
            match d.last.as_ref().and_then(|r| r.error.as_deref()) {
                Some(error) => format!("{} is {} ({reason}: {error})", d.name, d.state.as_str()),
                None => format!("{} is {} ({reason})", d.name, d.state.as_str()),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The names `policy` depends on through `type: policy`, with each dependency's index.
fn upstream_names(policy: &Policy) -> impl Iterator<Item = (usize, &str)> {
    policy
        .dependencies
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match &d.target {
            Target::Policy { name } => Some((i, name.as_str())),
            _ => None,
        })
}

/// If running `policy` as `key` next to `others` closes a cycle of `type: policy` dependencies:
/// the index of the dependency that does, and the cycle (`key` first and last).
pub fn cycle<'a>(
    key: &PolicyKey,
    policy: &Policy,
    others: impl Fn(&PolicyKey) -> Option<&'a Policy>,
) -> Option<(usize, Vec<PolicyKey>)> {
    for (index, name) in upstream_names(policy) {
        let start = PolicyKey::new(key.namespace.clone(), name);
        let mut path = vec![key.clone()];
        let mut seen = BTreeSet::new();
        if reaches(&start, key, &others, &mut path, &mut seen) {
            return Some((index, path));
        }
    }
    None
}

fn reaches<'a>(
    from: &PolicyKey,
    target: &PolicyKey,
    others: &impl Fn(&PolicyKey) -> Option<&'a Policy>,
    path: &mut Vec<PolicyKey>,
    seen: &mut BTreeSet<PolicyKey>,
) -> bool {
    path.push(from.clone());
    if from == target {
        return true;
    }
    if seen.insert(from.clone()) {
        let next: Option<&Policy> = others(from);
        if let Some(next) = next {
            for (_, name) in upstream_names(next) {
                let key = PolicyKey::new(from.namespace.clone(), name);
                if reaches(&key, target, others, path, seen) {
                    return true;
                }
            }
        }
    }
    path.pop();
    false
}

/// [`cycle`] as the validation error a user sees, at the field that closes it.
pub fn cycle_error<'a>(
    key: &PolicyKey,
    policy: &Policy,
    others: impl Fn(&PolicyKey) -> Option<&'a Policy>,
) -> Option<FieldError> {
    let (index, path) = cycle(key, policy, others)?;
    let names: Vec<&str> = path.iter().map(|k| k.name.as_str()).collect();
    Some(FieldError {
        path: format!("spec.dependencies[{index}].policy.name"),
        message: format!(
            "closes a cycle of policy dependencies: {}",
            names.join(" → ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::metrics::Metrics;

    fn policy(text_deps: &str) -> Policy {
        let text = format!(
            "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: p}}\n\
             spec:\n  dependencies:\n{text_deps}"
        );
        crate::standalone::parse(&text, std::path::Path::new("p.yaml"))
            .expect("valid policy")
            .1
    }

    fn on(name: &str) -> String {
        format!("    - {{name: {name}, type: policy, policy: {{name: {name}}}}}\n")
    }

    const DB: &str = "    - {name: db, type: tcp, tcp: {address: 'h:1'}}\n";

    #[test]
    fn cycles_are_found_through_running_policies() {
        let key = |name: &str| PolicyKey::new("team", name);
        let running: BTreeMap<PolicyKey, Policy> = [
            (key("a"), policy(&on("b"))),
            (key("b"), policy(&(on("c") + DB))),
            (key("c"), policy(DB)),
        ]
        .into_iter()
        .collect();
        let others = |k: &PolicyKey| running.get(k);
        // c → a closes a → b → c → a.
        let error = cycle_error(&key("c"), &policy(&(String::from(DB) + &on("a"))), others)
            .expect("a cycle");
        assert_eq!(error.path, "spec.dependencies[1].policy.name");
        assert_eq!(
            error.message,
            "closes a cycle of policy dependencies: c → a → b → c"
        );
        // d → a is a chain, not a cycle; a name nobody runs is no cycle either.
        assert!(cycle_error(&key("d"), &policy(&on("a")), others).is_none());
        assert!(cycle_error(&key("d"), &policy(&on("nobody")), others).is_none());
        // A policy on itself, with nothing else running.
        let itself = cycle_error(&key("solo"), &policy(&on("solo")), |_| None).unwrap();
        assert_eq!(
            itself.message,
            "closes a cycle of policy dependencies: solo → solo"
        );
        // Another namespace's "a" is another policy.
        let elsewhere = PolicyKey::new("other", "c");
        assert!(cycle_error(&elsewhere, &policy(&on("a")), others).is_none());
    }

    #[tokio::test]
    async fn an_upstream_down_names_its_root_cause() {
        let engine = Engine::new(Metrics::new().checks.clone());
        let upstream = PolicyKey::new("team", "payments");
        engine.serve_fixed(
            &upstream,
            policy(
                &(String::from(DB)
                    + "    - {name: cache, type: tcp, critical: false, tcp: {address: 'h:2'}}\n"),
            ),
            &[("db", State::Down), ("cache", State::Ok)],
        );
        let snapshot = engine.snapshot(&upstream).unwrap();
        let seen = judge(&upstream, &snapshot);
        assert_eq!(seen.outcome, Outcome::Down);
        assert_eq!(seen.reason, Reason::Upstream);
        assert_eq!(
            seen.error.as_deref(),
            Some("policy team/payments is down: db is down (connect: connection refused)")
        );

        engine.serve_fixed(
            &upstream,
            policy(
                &(String::from(DB)
                    + "    - {name: cache, type: tcp, critical: false, tcp: {address: 'h:2'}}\n"),
            ),
            &[("db", State::Ok), ("cache", State::Down)],
        );
        let seen = judge(&upstream, &engine.snapshot(&upstream).unwrap());
        assert_eq!(
            (seen.outcome, seen.reason),
            (Outcome::Degraded, Reason::Upstream)
        );
        assert_eq!(
            seen.detail.as_deref(),
            Some("policy team/payments is degraded: cache is down (connect: connection refused)")
        );

        let unknown = EngineUpstreams {
            inner: Arc::downgrade(&engine.inner),
            namespace: "team".into(),
        }
        .observe("nobody")
        .0;
        assert_eq!(unknown.reason, Reason::Config);
        assert_eq!(
            unknown.error.as_deref(),
            Some("policy team/nobody is not served by this healthgate")
        );
    }
}
