//! `urlFrom.secretKeyRef`: URLs come from a reflector cache of the Secrets in scope, and a Secret
//! change re-reconciles exactly the policies that reference it, so a rotated password reaches
//! the checker without a restart. Values are only ever handed to [`crate::secret::SecretUrl`];
//! error messages name the Secret and key, never the content.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::{CaFrom, DependencyType, HealthPolicy, HealthPolicySpec, SecretKeyRef, UrlFrom};
use crate::policy::UrlResolver;

/// Resolves URLs for one policy: Secrets from its own namespace, env vars from this process.
pub struct SecretUrls<'a> {
    pub store: &'a Store<Secret>,
    pub namespace: &'a str,
}

impl UrlResolver for SecretUrls<'_> {
    fn resolve(&self, from: &UrlFrom) -> Result<String, String> {
        match (&from.env, &from.secret_key_ref) {
            (Some(name), _) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            (None, Some(reference)) => self.secret_value(reference),
            (None, None) => Err("set env or secretKeyRef".into()),
        }
    }

    fn resolve_ca(&self, from: &CaFrom) -> Result<String, String> {
        match &from.secret_key_ref {
            Some(reference) => self.secret_value(reference),
            // The controller's files (its service-account token among them) are not a policy
            // author's to point at.
            None => Err("file is read only in standalone mode; \
                 in Kubernetes mode use secretKeyRef"
                .into()),
        }
    }
}

impl SecretUrls<'_> {
    fn secret_value(&self, reference: &SecretKeyRef) -> Result<String, String> {
        let SecretKeyRef { name, key } = reference;
        let secret = self
            .store
            .get(&ObjectRef::new(name).within(self.namespace))
            .ok_or_else(|| format!("Secret {name:?} not found in namespace {}", self.namespace))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .ok_or_else(|| format!("Secret {name:?} has no key {key:?}"))?;
        let text = std::str::from_utf8(&bytes.0)
            .map_err(|_| format!("key {key:?} of Secret {name:?} is not UTF-8 text"))?;
        // `echo url | kubectl create secret --from-file` leaves a newline no URL ends with.
        Ok(text.trim_end().to_string())
    }
}

/// Every Secret a policy reads: whatever each kind declares as its URL or CA source.
pub fn references(spec: &HealthPolicySpec) -> impl Iterator<Item = &SecretKeyRef> {
    spec.dependencies.iter().flat_map(|dep| {
        DependencyType::ALL
            .into_iter()
            .filter_map(|kind| dep.block_of(kind))
            .flat_map(|block| {
                let url = block.url().and_then(|u| u.from?.secret_key_ref.as_ref());
                let ca = block.ca_from().and_then(|c| c.from.secret_key_ref.as_ref());
                let values = block
                    .values_from()
                    .into_iter()
                    .filter_map(|from| from.secret_key_ref.as_ref());
                url.into_iter().chain(ca).chain(values)
            })
    })
}

/// The policies to reconcile when `secret` changes (or appears, or goes).
pub fn policies_referencing(
    policies: &Store<HealthPolicy>,
    secret: &Secret,
) -> Vec<ObjectRef<HealthPolicy>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    policies
        .state()
        .iter()
        .filter(|policy| policy.namespace() == namespace)
        .filter(|policy| references(&policy.spec).any(|r| r.name == name))
        .map(|policy| ObjectRef::from_obj(policy.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_bearing_kind_is_followed() {
        let spec: HealthPolicySpec = serde_saphyr::from_str(
            "dependencies:\n\
             - {name: a, type: postgres, postgres: {urlFrom: {secretKeyRef: {name: pg, key: url}}}}\n\
             - {name: b, type: redis, redis: {urlFrom: {secretKeyRef: {name: rd, key: url}}}}\n\
             - {name: c, type: redisQueue, redisQueue: {key: q, urlFrom: {secretKeyRef: {name: q, key: url}}}}\n\
             - {name: d, type: redis, redis: {urlFrom: {env: REDIS_URL}}}\n\
             - {name: e, type: tcp, tcp: {address: 'db:5432'}}\n\
             - {name: f, type: tls, tls: {address: 'db:443', caFrom: {secretKeyRef: {name: ca, key: ca.crt}}}}\n\
             - {name: g, type: tls, tls: {address: 'db:443'}}\n\
             - {name: h, type: http, http: {url: 'https://web/', tls: {caFrom: {secretKeyRef: {name: web-ca, key: ca.crt}}}}}\n\
             - {name: i, type: grpc, grpc: {address: 'api:443', tls: {caFrom: {secretKeyRef: {name: api-ca, key: ca.crt}}}}}\n\
             - {name: j, type: http, http: {url: 'http://web/', headers: [{name: Authorization, valueFrom: {secretKeyRef: {name: token, key: t}}}, {name: X-A, value: b}]}}\n\
             - {name: k, type: mysql, mysql: {urlFrom: {secretKeyRef: {name: my, key: url}}}}\n",
        )
        .unwrap();
        let names: Vec<&str> = references(&spec).map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["pg", "rd", "q", "ca", "web-ca", "api-ca", "token", "my"]
        );
    }
}
