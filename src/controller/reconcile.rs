//! One pass over one HealthPolicy: validate against the current Secrets, then make the engine run
//! it. Idempotent: an unchanged result leaves the engine alone, and the engine itself restarts
//! only the dependencies whose spec changed.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::secrets::SecretUrls;
use super::{Context, Error, Observed, RESYNC, RETRY, Result, SECRETS_SYNC_TIMEOUT};
use crate::api::HealthPolicy;
use crate::engine::PolicyKey;
use crate::policy::validate;

pub async fn reconcile(policy: Arc<HealthPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = policy
        .namespace()
        .ok_or_else(|| Error::NoNamespace(policy.name_any()))?;
    let key = PolicyKey::new(namespace.clone(), policy.name_any());
    let mut secrets_synced = ctx.secrets_synced.clone();
    let listed = tokio::time::timeout(SECRETS_SYNC_TIMEOUT, secrets_synced.wait_for(|s| *s)).await;
    if !matches!(listed, Ok(Ok(_))) {
        return Err(Error::SecretsNotSynced(SECRETS_SYNC_TIMEOUT));
    }
    let urls = SecretUrls {
        store: &ctx.secrets,
        namespace: &namespace,
    };
    let generation = policy.meta().generation;
    let result = validate(&policy.spec, &urls);

    let previous = ctx.observed.borrow().get(&key).cloned();
    let mut observed = previous.clone().unwrap_or_else(|| Observed {
        generation,
        reference: policy.object_ref(&()),
        applied: None,
        invalid: None,
    });
    observed.generation = generation;
    observed.reference = policy.object_ref(&());
    match result {
        Ok(valid) if observed.applied.as_ref() == Some(&valid) => observed.invalid = None,
        Ok(valid) => match ctx.engine.apply_acyclic(&key, valid.clone()) {
            Ok(changes) => {
                info!(policy = %key, generation, started = ?changes.started, restarted = ?changes.restarted, stopped = ?changes.stopped, "reconciled");
                observed.applied = Some(valid);
                observed.invalid = None;
            }
            Err(cycle) => {
                warn!(policy = %key, generation, problem = %cycle, keeps_running = observed.applied.is_some(), "invalid policy; the last good spec keeps running");
                observed.invalid = Some(vec![cycle]);
            }
        },
        Err(errors) => {
            // FieldError messages never quote a credential (validation redacts URLs).
            let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
            if previous.as_ref().and_then(|p| p.invalid.as_ref()) != Some(&errors) {
                warn!(policy = %key, generation, ?problems, keeps_running = observed.applied.is_some(), "invalid policy; the last good spec keeps running");
            }
            observed.invalid = Some(errors);
        }
    }
    // Every status write comes back as a watch event and a reconcile; only a change that the
    // subscribers act on (a new policy, generation, applied spec or problem) wakes them.
    ctx.observed.send_if_modified(|all| {
        let news = all.get(&key).is_none_or(|old| !old.same_as(&observed));
        all.insert(key, observed);
        news
    });
    ctx.metrics.reconciled(Ok(()));
    Ok(Action::requeue(RESYNC))
}

pub fn error_policy(policy: Arc<HealthPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciled(Err(error.metric_label()));
    warn!(policy = %policy.name_any(), error = %error, "reconcile failed");
    Action::requeue(RETRY)
}
