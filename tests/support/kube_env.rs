//! Kubernetes-mode fixtures: a namespace with the healthgate ServiceAccount bound to the Role
//! from manifests/base/rbac.yaml, healthgate started as that ServiceAccount, and kubectl-based reads of
//! policies and Events.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::apiserver::{self, ApiServer, REPO, ServiceAccountAccess};
use super::healthgate::Healthgate;

pub const SA: &str = "healthgate";
/// Generous: two cores shared by the API server, etcd, Postgres, Redis and several healthgates.
pub const SETTLE: Duration = Duration::from_secs(30);

pub struct Env<'a> {
    pub server: &'a ApiServer,
    pub ns: String,
    pub sa: ServiceAccountAccess,
}

/// A fresh namespace on the shared control plane, with the ServiceAccount bound to the Role.
pub async fn env(prefix: &str) -> Env<'static> {
    env_on(apiserver::server(), prefix).await
}

/// The same on a given (e.g. dedicated) control plane.
pub async fn env_on<'a>(server: &'a ApiServer, prefix: &str) -> Env<'a> {
    server.apply_crds().await;
    let ns = server.namespace(prefix).await;
    let sa = server.service_account(&ns, SA).await;
    bind_role(server, &ns);
    Env { server, ns, sa }
}

/// Applies manifests/base/rbac.yaml into `ns`, with the binding's subject moved to that namespace.
pub fn bind_role(server: &ApiServer, ns: &str) {
    let text = std::fs::read_to_string(format!("{REPO}/manifests/base/rbac.yaml")).unwrap();
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    for doc in &mut docs {
        doc["metadata"]["namespace"] = json!(ns);
        if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
            for subject in subjects {
                subject["namespace"] = json!(ns);
            }
        }
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &list.to_string());
    assert!(
        out.status.success(),
        "applying the Role: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Env<'_> {
    pub fn start(&self, pod: &str) -> Healthgate {
        self.start_with(pod, &[], &[])
    }

    pub fn start_with(&self, pod: &str, env: &[(&str, &str)], args: &[&str]) -> Healthgate {
        let mut all_env = vec![("POD_NAME", pod)];
        all_env.extend_from_slice(env);
        let mut all_args = vec!["--namespace", &self.ns, "--pod-namespace", &self.ns];
        all_args.extend_from_slice(args);
        Healthgate::start_kube(&self.sa.kubeconfig, &all_env, &all_args)
    }

    pub fn apply(&self, yaml: &str) {
        let out = self
            .server
            .kubectl_stdin(&["apply", "-n", &self.ns, "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["-n", &self.ns]);
        self.server.kubectl_ok(&all)
    }

    pub fn policy(&self, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["get", "hp", name, "-o", "json"])).unwrap()
    }

    pub fn condition(&self, name: &str, type_: &str) -> Option<Value> {
        self.policy(name)["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// Applies a policy and waits until its Ready condition is True.
    pub fn apply_ready(&self, name: &str, dependencies: &str) -> Value {
        self.apply(&super::policy::fast(name, dependencies));
        self.wait_policy(name, "Ready", |p| {
            condition_status(p, "Ready").as_deref() == Some("True")
        })
    }

    /// Polls the policy until `done` holds for it; panics with the object after `timeout`.
    pub fn wait_policy(
        &self,
        name: &str,
        what: &str,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let policy = self.policy(name);
            if done(&policy) {
                return policy;
            }
            assert!(
                started.elapsed() < SETTLE,
                "timed out waiting for {what} on {name}:\n{policy:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn events(&self) -> Vec<Value> {
        let list: Value =
            serde_json::from_str(&self.kubectl(&["get", "events.v1.events.k8s.io", "-o", "json"]))
                .unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn events_with_reason(&self, policy: &str, reason: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["reason"] == reason && e["regarding"]["name"] == policy)
            .collect()
    }
}

/// How many times the checker of `dependency` has started, from the log.
pub fn checker_starts(hg: &Healthgate, dependency: &str) -> usize {
    let needle = format!("\"dependency\":\"{dependency}\"");
    hg.logs()
        .iter()
        .filter(|l| l.contains("checker started") && l.contains(&needle))
        .count()
}

pub fn condition_status(policy: &Value, type_: &str) -> Option<String> {
    policy["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(String::from))
}

impl Env<'_> {
    /// kubectl as the ServiceAccount.
    pub fn sa_kubectl(&self, args: &[&str]) -> std::process::Output {
        self.server.kubectl_with(&self.sa.kubeconfig, args, None)
    }
}
