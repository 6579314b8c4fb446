//! Readiness gates on the real node: one healthgate (two replicas, run beside the node with a
//! ServiceAccount token bound to exactly the base Role and the pod-gates component) gates every
//! pod of an app in another language (busybox httpd) through the `healthgate.dev/ready` pod
//! condition; the kubelet, kube-controller-manager's EndpointSlice controller and the scheduler
//! are real.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::support::healthgate::Healthgate;
use super::support::node::{self, Node};
use super::support::services::{PG_PASSWORD, Postgres};
use super::{apply_crds, condition, endpoints, pods, wait_endpoints};

const GATE: &str = "healthgate.dev/ready";
/// The policy's check interval: what "one check per interval" is counted against.
const INTERVAL: Duration = Duration::from_secs(1);
/// The issue's bound for gating a new pod.
const NEW_POD_GATED: Duration = Duration::from_secs(2);

fn gate(pod: &Value) -> Option<&Value> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == GATE)
}

fn live(pods: Vec<Value>) -> Vec<Value> {
    pods.into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

/// (name, container id, restart count) of every live app pod.
fn containers(node: &Node, ns: &str) -> Vec<(String, String, i64)> {
    live(pods(node, ns, "app=gated"))
        .iter()
        .map(|p| {
            let status = &p["status"]["containerStatuses"][0];
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                status["containerID"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                status["restartCount"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// The base Role and the pod-gates component, as shipped, for a ServiceAccount `healthgate`
/// in `ns`; returns a kubeconfig with that ServiceAccount's token.
fn install_rbac(node: &Node, ns: &str, dir: &std::path::Path) -> std::path::PathBuf {
    node.kubectl_ok(&["create", "serviceaccount", "healthgate", "-n", ns]);
    for file in ["manifests/base/rbac.yaml", "manifests/pod-gates/rbac.yaml"] {
        let yaml = std::fs::read_to_string(format!("{}/{file}", node::REPO)).unwrap();
        let yaml = yaml.replace("namespace: healthgate", &format!("namespace: {ns}"));
        node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &yaml);
    }
    let token = node.kubectl_ok(&["create", "token", "healthgate", "-n", ns, "--duration=2h"]);
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(node.kubeconfig_path()).unwrap()).unwrap();
    config["users"][0]["user"] = serde_json::json!({"token": token.trim()});
    config["contexts"][0]["context"]["namespace"] = Value::from(ns);
    let path = dir.join("healthgate.kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    // What the component grants and nothing more on pods.
    let sa = format!("system:serviceaccount:{ns}:healthgate");
    for (verb, subresource, allowed) in [
        ("watch", "", "yes"),
        ("patch", "status", "yes"),
        ("update", "status", "no"),
        ("patch", "", "no"),
        ("delete", "", "no"),
        ("create", "", "no"),
    ] {
        let subresource = format!("--subresource={subresource}");
        let out = node.kubectl(&[
            "auth",
            "can-i",
            verb,
            "pods",
            &subresource,
            "-n",
            ns,
            "--as",
            &sa,
        ]);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(answer, allowed, "can {sa} {verb} pods ({subresource})?");
    }
    path
}

fn apply_app(node: &Node, ns: &str, replicas: u32, db_url: &str) {
    let yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: gated-db}}
stringData: {{url: "{db_url}"}}
---
apiVersion: healthgate.dev/v1alpha1
kind: HealthPolicy
metadata: {{name: gated}}
spec:
  podSelector: {{matchLabels: {{app: gated}}}}
  defaults: {{interval: {interval}s}}
  dependencies:
    - name: db
      type: postgres
      postgres: {{urlFrom: {{secretKeyRef: {{name: gated-db, key: url}}}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: gated}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: gated}}}}
  template:
    metadata: {{labels: {{app: gated}}}}
    spec:
      readinessGates: [{{conditionType: "{GATE}"}}]
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: {image}
          imagePullPolicy: Never
          ports: [{{name: http, containerPort: 8000}}]
          readinessProbe: {{httpGet: {{path: /index.html, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: gated}}
spec:
  selector: {{app: gated}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#,
        interval = INTERVAL.as_secs(),
        image = node::APP_IMAGE,
    );
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &yaml);
}

/// Polls until `done` holds for the live app pods.
fn wait_pods(
    node: &Node,
    ns: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let pods = live(pods(node, ns, "app=gated"));
        if done(&pods) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}: {pods:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `SELECT 1` statements Postgres ran during `window` (log_statement=all).
fn statements_during(pg: &Postgres, window: Duration) -> usize {
    let before = pg.statements_logged("SELECT 1");
    std::thread::sleep(window);
    pg.statements_logged("SELECT 1") - before
}

fn leader_of(replicas: &[Healthgate]) -> Option<usize> {
    replicas
        .iter()
        .position(|hg| hg.metric("healthgate_leader") == Some(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gates_take_every_pod_out_and_back_without_restarts() {
    let node = node::node();
    let client = node.client().await;
    apply_crds(node);
    let ns = node.namespace("gates");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = install_rbac(node, &ns, dir.path());
    let mut pg = Postgres::start();
    apply_app(node, &ns, 3, &pg.url());

    // 1. Without healthgate the gate is never set: containers ready, pods not Ready.
    wait_pods(
        node,
        &ns,
        "3 pods with ready containers",
        Duration::from_secs(120),
        |pods| pods.len() == 3 && pods.iter().all(|p| condition(p, "ContainersReady")),
    );
    std::thread::sleep(Duration::from_secs(2));
    for pod in live(pods(node, &ns, "app=gated")) {
        assert!(!condition(&pod, "Ready"), "Ready without the gate: {pod:#}");
        assert!(gate(&pod).is_none());
    }
    let (ready, not_ready) = endpoints(&client, &ns, "gated").await;
    assert_eq!((ready.len(), not_ready.len()), (0, 3));

    // 2. healthgate starts: the leader gates every pod, the endpoints become ready.
    let started = Instant::now();
    let env_for = |name: &'static str| [("POD_NAME", name), ("POD_NAMESPACE", ns.as_str())];
    let mut replicas = vec![
        Healthgate::start_kube(&kubeconfig, &env_for("hg-a"), &["--namespace", &ns]),
        Healthgate::start_kube(&kubeconfig, &env_for("hg-b"), &["--namespace", &ns]),
    ];
    wait_endpoints(&client, &ns, "gated", "every endpoint ready", |r, n| {
        r.len() == 3 && n.is_empty()
    })
    .await;
    eprintln!(
        "gates: healthgate started → 3 endpoints ready in {:.1?}",
        started.elapsed()
    );
    for pod in live(pods(node, &ns, "app=gated")) {
        let gate = gate(&pod).expect("gate set");
        assert_eq!(gate["status"], "True", "{gate}");
        assert_eq!(gate["reason"], "PolicyOk", "{gate}");
    }
    let before = containers(node, &ns);

    // 3. The critical dependency stops: every pod NotReady, every endpoint not ready.
    pg.stop();
    let down = wait_endpoints(&client, &ns, "gated", "every endpoint not ready", |r, n| {
        r.is_empty() && n.len() == 3
    })
    .await;
    for pod in live(pods(node, &ns, "app=gated")) {
        assert!(!condition(&pod, "Ready"));
        assert!(
            condition(&pod, "ContainersReady"),
            "the app itself stays ready"
        );
        let gate = gate(&pod).expect("gate");
        assert_eq!(gate["status"], "False", "{gate}");
        assert_eq!(gate["reason"], "DependencyDown", "{gate}");
        let message = gate["message"].as_str().unwrap();
        assert!(message.contains("critical db"), "{message}");
        assert!(
            !message.contains(PG_PASSWORD) && !message.contains("postgres://"),
            "{message}"
        );
    }

    // 4. It comes back: every endpoint ready again, same containers, no restart.
    pg.restart();
    let back = wait_endpoints(
        &client,
        &ns,
        "gated",
        "every endpoint ready again",
        |r, n| r.len() == 3 && n.is_empty(),
    )
    .await;
    assert_eq!(
        before,
        containers(node, &ns),
        "same pods, same containers, no restart"
    );
    eprintln!(
        "gates: Postgres stopped → 3 endpoints not ready in {down:.1?}; back → ready in {back:.1?}"
    );

    // 5. One check per interval per healthgate replica, however many pods it gates.
    let window = Duration::from_secs(10);
    let with_3 = statements_during(&pg, window);

    // 6. Scale to 20: each new pod gated within 2 s of appearing.
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let (store, writer) = reflector::store();
    let mut events = reflector(
        writer,
        watcher(api, watcher::Config::default().labels("app=gated")),
    )
    .applied_objects()
    .boxed();
    tokio::spawn(async move { while events.next().await.is_some() {} });
    store.wait_until_ready().await.expect("pod watch");
    let old: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
    node.kubectl_ok(&["scale", "deployment/gated", "-n", &ns, "--replicas=20"]);
    let scaled = Instant::now();
    let mut seen: BTreeMap<String, Instant> = BTreeMap::new();
    let mut gated_after: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while gated_after.len() < 17 {
        assert!(
            Instant::now() < deadline,
            "not every new pod gated: {gated_after:?}"
        );
        for pod in store.state() {
            let name = pod.name_any();
            if old.contains(&name) {
                continue;
            }
            let first = *seen.entry(name.clone()).or_insert_with(Instant::now);
            let has_gate = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == GATE));
            if has_gate {
                gated_after.entry(name).or_insert_with(|| first.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slowest = gated_after.values().max().copied().unwrap();
    eprintln!(
        "gates: 17 new pods, slowest gated {slowest:.2?} after the watch saw it: {gated_after:?}"
    );
    assert!(
        slowest <= NEW_POD_GATED,
        "a new pod waited {slowest:?} for its gate"
    );
    wait_endpoints(&client, &ns, "gated", "20 endpoints ready", |r, _| {
        r.len() == 20
    })
    .await;
    eprintln!(
        "gates: scaled 3 → 20: 20 endpoints ready {:.1?} after `kubectl scale`",
        scaled.elapsed()
    );
    let with_20 = statements_during(&pg, window);
    let per_interval = window.as_secs_f64() / INTERVAL.as_secs_f64();
    eprintln!(
        "gates: SELECT 1 in {window:?} (interval {INTERVAL:?}, 2 healthgate replicas): {with_3} with 3 pods, {with_20} with 20"
    );
    // Each healthgate replica checks once per interval, on its fixed phase: at most
    // 2 × (10 + 1) in a 10-interval window (a window can hold both ends), whether it gates 3
    // pods or 20.
    let most = (2.0 * (per_interval + 1.0)).ceil() as usize;
    assert!(
        with_3 <= most && with_20 <= most,
        "{with_3}, {with_20} > {most}"
    );
    assert!(
        with_20 >= (per_interval * 2.0 * 0.6) as usize,
        "checks stopped? {with_20}"
    );

    // 7. Kill the leader: the other replica takes over and no pod flips.
    let leader = leader_of(&replicas).expect("a leader");
    let standby = 1 - leader;
    let gates_before: Vec<(String, Value)> = live(pods(node, &ns, "app=gated"))
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                gate(p).cloned().unwrap(),
            )
        })
        .collect();
    let writes_before =
        replicas[standby].metric(r#"healthgate_pod_gate_writes_total{result="success"}"#);
    replicas[leader].signal(Signal::SIGKILL);
    let killed = Instant::now();
    let mut took_over = None;
    while killed.elapsed() < Duration::from_secs(25) {
        let (ready, not_ready) = endpoints(&client, &ns, "gated").await;
        assert_eq!(
            (ready.len(), not_ready.len()),
            (20, 0),
            "an endpoint flipped {:.1?} after the leader was killed",
            killed.elapsed()
        );
        if took_over.is_none() && replicas[standby].metric("healthgate_leader") == Some(1.0) {
            took_over = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took_over = took_over.expect("the standby never took over");
    let gates_after: Vec<(String, Value)> = live(pods(node, &ns, "app=gated"))
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                gate(p).cloned().unwrap(),
            )
        })
        .collect();
    assert_eq!(gates_before, gates_after, "the new leader rewrote gates");
    assert_eq!(
        replicas[standby].metric(r#"healthgate_pod_gate_writes_total{result="success"}"#),
        writes_before,
        "the new leader wrote gates that already said the right thing"
    );
    eprintln!(
        "gates: leader killed → standby leads after {took_over:.1?}; no pod flipped, no gate rewritten"
    );
    // The new leader gates what comes next.
    node.kubectl_ok(&["scale", "deployment/gated", "-n", &ns, "--replicas=21"]);
    wait_endpoints(&client, &ns, "gated", "21 endpoints ready", |r, _| {
        r.len() == 21
    })
    .await;
    let _ = replicas.remove(leader);
}
