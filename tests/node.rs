//! healthgate as it is deployed: its image on a real kubelet (tests/support/node.rs), installed
//! from the real manifests with kustomize, probed by the kubelet, and Services gaining and losing
//! endpoints because of what it answers.
//!
//! There is no kube-proxy on the test node, so "through the Service" means what kube-proxy does:
//! each request goes to one of the Service's EndpointSlice endpoints that is `ready`, as a watch
//! sees them at that moment (see `RequestLoop`). Pods' requests to the API server use the bridge
//! address instead of the `kubernetes` ClusterIP for the same reason (tests/node/controller).

mod support;
// Readiness gates share this binary's node; the file is theirs to keep this one readable.
#[path = "node/gates.rs"]
mod gates;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use serde_json::Value;

use support::healthgate::request_to;
use support::node::{self, NODE_IP, Node};
use support::services::{Postgres, Redis};

/// The sidecar example's readiness probe: periodSeconds 5 × failureThreshold 2, plus the
/// policy's default 5 s check interval. Outage detection must fit well inside this.
const DETECTION_BOUND: Duration = Duration::from_secs(60);

fn pods(node: &Node, ns: &str, selector: &str) -> Vec<Value> {
    let out = node.kubectl_ok(&["get", "pods", "-n", ns, "-l", selector, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("pod list JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn condition(pod: &Value, kind: &str) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|s| s.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no status for container {name}: {pod}"))
}

fn pod_ip(pod: &Value) -> IpAddr {
    pod["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("pod without an IP: {pod}"))
}

/// (ready, not ready) endpoint addresses of a Service, from its EndpointSlices.
async fn endpoints(client: &Client, ns: &str, service: &str) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let api = Api::<EndpointSlice>::namespaced(client.clone(), ns);
    let slices = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("listing EndpointSlices");
    split_endpoints(slices.items.iter())
}

fn split_endpoints<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
    for slice in slices {
        for endpoint in &slice.endpoints {
            let is_ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(false);
            for address in &endpoint.addresses {
                let ip: IpAddr = address.parse().expect("an endpoint address");
                if is_ready {
                    ready.push(ip);
                } else {
                    not_ready.push(ip);
                }
            }
        }
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

/// Polls until `done` holds for the Service's endpoints; returns how long that took.
async fn wait_endpoints(
    client: &Client,
    ns: &str,
    service: &str,
    what: &str,
    done: impl Fn(&[IpAddr], &[IpAddr]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let (ready, not_ready) = endpoints(client, ns, service).await;
        if done(&ready, &not_ready) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < DETECTION_BOUND,
            "{what}: not within {DETECTION_BOUND:?} (ready {ready:?}, not ready {not_ready:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_rollout(node: &Node, ns: &str, deployment: &str) {
    node.kubectl_ok(&[
        "rollout",
        "status",
        &format!("deployment/{deployment}"),
        "-n",
        ns,
        "--timeout=240s",
    ]);
}

/// A bounded client that sends each request to one ready endpoint of a Service, as kube-proxy
/// would: it follows the Service's EndpointSlices with a watch and round-robins over the
/// endpoints whose `ready` condition is true at the moment of the request.
struct RequestLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LoopResult>,
}

#[derive(Debug, Default)]
struct LoopResult {
    sent: usize,
    failures: Vec<String>,
    per_endpoint: BTreeMap<IpAddr, usize>,
    /// Iterations in which no endpoint was ready (nothing could be sent).
    empty: usize,
}

impl RequestLoop {
    /// Bounded: stops on [`RequestLoop::finish`], after `MAX_REQUESTS`, or after 5 minutes.
    const MAX_REQUESTS: usize = 20_000;

    async fn start(client: Client, ns: &str, service: &str, port: u16, path: &'static str) -> Self {
        let api = Api::<EndpointSlice>::namespaced(client, ns);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let (reader, writer) = reflector::store();
        let mut events = reflector(writer, watcher(api, config))
            .applied_objects()
            .boxed();
        tokio::spawn(async move { while events.next().await.is_some() {} });
        reader
            .wait_until_ready()
            .await
            .expect("EndpointSlice watch");

        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut result = LoopResult::default();
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut next = 0usize;
            while !stopped.load(Ordering::Relaxed)
                && result.sent < Self::MAX_REQUESTS
                && Instant::now() < deadline
            {
                let state = reader.state();
                let (ready, _) = split_endpoints(state.iter().map(|s| s.as_ref()));
                if ready.is_empty() {
                    result.empty += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let ip = ready[next % ready.len()];
                next += 1;
                let addr = SocketAddr::new(ip, port);
                let reply = tokio::task::spawn_blocking(move || {
                    request_to(addr, "GET", path, Duration::from_secs(2))
                })
                .await
                .expect("request task");
                result.sent += 1;
                *result.per_endpoint.entry(ip).or_default() += 1;
                match reply {
                    Ok(r) if (200..400).contains(&r.status) => {}
                    Ok(r) => result.failures.push(format!("{addr}: HTTP {}", r.status)),
                    Err(e) => result.failures.push(format!("{addr}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result
        });
        RequestLoop { stop, task }
    }

    async fn finish(self) -> LoopResult {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("request loop")
    }
}

/// `kubectl rollout restart` under the request loop: every request answered.
async fn rollout_loses_nothing(
    node: &'static Node,
    ns: &str,
    deployment: &str,
    service: &str,
    port: u16,
    path: &'static str,
) {
    let client = node.client().await;
    let (old, _) = endpoints(&client, ns, service).await;
    let requests = RequestLoop::start(client, ns, service, port, path).await;
    // Some traffic before the restart, so the loop is proven to work against the old pods.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    node.kubectl_ok(&[
        "rollout",
        "restart",
        &format!("deployment/{deployment}"),
        "-n",
        ns,
    ]);
    let (ns2, dep2) = (ns.to_string(), deployment.to_string());
    tokio::task::spawn_blocking(move || wait_rollout(node, &ns2, &dep2))
        .await
        .expect("rollout status");
    // Keep sending past the old pods' drain delay (5 s), when their listeners close: a client
    // still routing to them then would fail.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let result = requests.finish().await;
    let took = started.elapsed();
    eprintln!(
        "rollout restart of {ns}/{deployment}: {} requests in {took:.1?}, {} failed, per endpoint {:?}",
        result.sent,
        result.failures.len(),
        result.per_endpoint
    );
    assert!(
        result.failures.is_empty(),
        "requests lost during the rollout of {ns}/{deployment}: {:?}",
        result.failures
    );
    assert_eq!(
        result.empty, 0,
        "the Service had no ready endpoint at some point"
    );
    assert!(
        result.sent >= 50,
        "too few requests to prove anything: {result:?}"
    );
    let reached = |ip: &IpAddr| result.per_endpoint.contains_key(ip);
    assert!(
        old.iter().all(reached),
        "requests did not reach every old pod {old:?}: {:?}",
        result.per_endpoint
    );
    assert!(
        result.per_endpoint.keys().any(|ip| !old.contains(ip)),
        "requests did not reach a new pod: {:?}",
        result.per_endpoint
    );
}

/// The sidecar example (manifests/examples/sidecar.yaml) as a kustomize overlay for this node:
/// local images, never pulled; the app is busybox httpd instead of python (no registry to pull
/// python from); the in-cluster API address (no kube-proxy); the Secret and the cache URL point
/// at the real Postgres and Redis the test started on the node's bridge. The cache is made
/// critical so that a Redis outage gates readiness, which is what these tests exercise.
fn apply_sidecar(node: &Node, ns: &str, postgres: &Postgres, redis: &Redis, cascade: bool) {
    let dir = tempfile::Builder::new()
        .prefix("healthgate-sidecar-")
        .tempdir()
        .expect("temp dir");
    std::fs::copy(
        format!("{}/manifests/examples/sidecar.yaml", node::REPO),
        dir.path().join("sidecar.yaml"),
    )
    .expect("copying the sidecar example");
    // With the example's 5 s check interval the replicas see a shared outage up to 5 s apart,
    // and the first one fails two probes 5 s apart before the last one has seen it: measured,
    // one endpoint went 5.9 s into the outage. Protection needs every replica to notice well
    // inside periodSeconds × (failureThreshold − 1), so the protected policy checks every second.
    let cascade_patch = if cascade {
        "\n      - {op: add, path: /spec/cascadeProtection, value: {enabled: true}}\
         \n      - {op: add, path: /spec/defaults, value: {interval: 1s}}"
    } else {
        ""
    };
    let kustomization = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {ns}
resources: [sidecar.yaml]
images:
  - {{name: ghcr.io/healthgate/healthgate, newName: localhost/healthgate, newTag: dev}}
  - {{name: python, newName: localhost/hg-app, newTag: "1"}}
patches:
  - target: {{kind: Deployment, name: shop}}
    patch: |-
      - {{op: remove, path: /spec/template/spec/containers/0/command}}
      - {{op: add, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}}
      - {{op: add, path: /spec/template/spec/containers/1/imagePullPolicy, value: Never}}
      - {{op: add, path: /spec/template/spec/containers/1/env/-, value: {{name: KUBERNETES_SERVICE_HOST, value: "{NODE_IP}"}}}}
      - {{op: add, path: /spec/template/spec/containers/1/env/-, value: {{name: KUBERNETES_SERVICE_PORT, value: "{port}"}}}}
  - target: {{kind: HealthPolicy, name: shop}}
    patch: |-
      - {{op: replace, path: /spec/dependencies/1/critical, value: true}}
      - {{op: replace, path: /spec/dependencies/1/redis/url, value: "{redis}"}}{cascade_patch}
  - target: {{kind: Secret, name: shop-db}}
    patch: |-
      - {{op: replace, path: /stringData/url, value: "{postgres}"}}
"#,
        port = node::API_PORT,
        redis = redis.url(),
        postgres = postgres.url(),
    );
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).unwrap();
    node.kubectl_ok(&["apply", "-k", &dir.path().display().to_string()]);
}

fn apply_crds(node: &Node) {
    node.kubectl_ok(&["apply", "--server-side", "-f", "crds/"]);
    node.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/healthpolicies.healthgate.dev",
        "--timeout=60s",
    ]);
}

/// Readiness of every pod of the sidecar Deployment, and each container's restart count and id.
fn shop_pods(node: &Node, ns: &str) -> Vec<(String, bool, String, i64)> {
    pods(node, ns, "app=shop")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let hg = container_status(p, "healthgate");
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                condition(p, "Ready"),
                hg["containerID"].as_str().unwrap_or_default().to_string(),
                hg["restartCount"].as_i64().unwrap_or(-1)
                    + container_status(p, "app")["restartCount"]
                        .as_i64()
                        .unwrap_or(-1),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_in_cluster_as_deployed() {
    let node = node::node();
    let client = node.client().await;
    apply_crds(node);
    // The README's install, with the overlay that points it at the local image.
    node.kubectl_ok(&["apply", "-k", "tests/node/controller"]);
    node.kubectl_ok(&[
        "wait",
        "--for=condition=Available",
        "deployment/healthgate",
        "-n",
        "healthgate",
        "--timeout=180s",
    ]);

    let pods = pods(node, "healthgate", "app.kubernetes.io/name=healthgate");
    assert_eq!(pods.len(), 2, "the base runs two replicas");
    for pod in &pods {
        assert!(condition(pod, "Ready"), "pod not Ready: {pod}");
        let status = container_status(pod, "healthgate");
        assert_eq!(status["restartCount"], 0, "liveness restarted it: {status}");
        assert_eq!(status["ready"], true);
        let spec = &pod["spec"]["containers"][0];
        assert_eq!(spec["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(spec["readinessProbe"]["httpGet"]["path"], "/ready");

        // What the kernel says about the running container, not what the spec asks for.
        let pid = node.container_pid(status["containerID"].as_str().unwrap());
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids = proc_status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap();
        assert!(
            uids.split_whitespace().all(|u| u == "65532"),
            "healthgate runs as {uids}"
        );
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap();
        assert!(
            root.split_whitespace()
                .nth(5)
                .unwrap()
                .split(',')
                .any(|o| o == "ro"),
            "root filesystem not read-only: {root}"
        );
        // The kubelet's probes answered from the pod's own address on the bridge.
        let ip = pod_ip(pod);
        for path in ["/health", "/ready"] {
            let reply = request_to(
                SocketAddr::new(ip, 8080),
                "GET",
                path,
                Duration::from_secs(2),
            )
            .unwrap_or_else(|e| panic!("{ip}{path}: {e}"));
            assert_eq!(reply.status, 200, "{ip}{path}: {}", reply.body);
        }
    }

    // In-cluster config from the mounted ServiceAccount token: the controller watches a policy
    // and its leader writes status, as the Role in manifests/base allows.
    let redis = Redis::start_on(NODE_IP);
    let policy = format!(
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: in-cluster, \
         namespace: healthgate}}\nspec:\n  dependencies:\n    - name: cache\n      type: redis\n      \
         redis: {{url: \"{}\"}}\n",
        redis.url()
    );
    node.kubectl_stdin(&["apply", "-f", "-"], &policy);
    node.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "healthpolicy/in-cluster",
        "-n",
        "healthgate",
        "--timeout=60s",
    ]);
    let (ready, _) = endpoints(&client, "healthgate", "healthgate").await;
    assert_eq!(ready.len(), 2, "both replicas serve the Service");
    // Readiness may fail while a replica starts (503 until its first list is loaded); liveness
    // never may.
    let events: Value = serde_json::from_str(&node.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "healthgate",
        "-o",
        "json",
    ]))
    .expect("event list JSON");
    let liveness_failures: Vec<&Value> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["reason"] == "Unhealthy"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Liveness"))
        })
        .collect();
    assert!(liveness_failures.is_empty(), "{liveness_failures:?}");

    // SIGTERM drain on a real rollout: /ready turns 503 and the endpoint goes before the
    // listener closes, so a client following the endpoints loses nothing.
    rollout_loses_nothing(
        node,
        "healthgate",
        "healthgate",
        "healthgate",
        8080,
        "/health",
    )
    .await;
    let after = pods_ready(node, "healthgate", "app.kubernetes.io/name=healthgate");
    assert_eq!(after, 2, "two ready replicas after the rollout");
}

fn pods_ready(node: &Node, ns: &str, selector: &str) -> usize {
    pods(node, ns, selector)
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && condition(p, "Ready"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_gates_its_pods_endpoints_on_redis_and_a_rollout_loses_nothing() {
    let node = node::node();
    let client = node.client().await;
    apply_crds(node);
    let ns = node.namespace("shop");
    let postgres = Postgres::start_on(NODE_IP);
    let mut redis = Redis::start_on(NODE_IP);
    apply_sidecar(node, &ns, &postgres, &redis, false);
    wait_rollout(node, &ns, "shop");
    let before = shop_pods(node, &ns);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().all(|p| p.1), "not all Ready: {before:?}");
    let (ready, _) = endpoints(&client, &ns, "shop").await;
    assert_eq!(ready.len(), 3);
    // The app (busybox httpd) answers on each endpoint.
    for ip in &ready {
        let reply = request_to(
            SocketAddr::new(*ip, 8000),
            "GET",
            "/index.html",
            Duration::from_secs(2),
        )
        .expect("the app answers");
        assert_eq!(reply.status, 200);
    }

    redis.stop();
    let down = wait_endpoints(&client, &ns, "shop", "every endpoint not ready", |r, n| {
        r.is_empty() && n.len() == 3
    })
    .await;
    let during = shop_pods(node, &ns);
    assert!(
        during.iter().all(|p| !p.1),
        "the kubelet kept a pod Ready: {during:?}"
    );
    // Only readiness: the app keeps running and nothing restarts.
    for pod in pods(node, &ns, "app=shop") {
        // The kubelet judged healthgate through its native gRPC probe (`--grpc-listen`).
        let healthgate = &pod["spec"]["containers"][1];
        assert_eq!(healthgate["name"], "healthgate");
        assert_eq!(
            healthgate["readinessProbe"]["grpc"]["port"], 8082,
            "{healthgate}"
        );
        assert!(!condition(&pod, "Ready"));
        assert_eq!(container_status(&pod, "app")["ready"], true);
        assert_eq!(container_status(&pod, "healthgate")["ready"], false);
    }
    let ready_body = request_to(
        SocketAddr::new(pod_ip(&pods(node, &ns, "app=shop")[0]), 8081),
        "GET",
        "/ready",
        Duration::from_secs(2),
    )
    .expect("healthgate /ready");
    assert_eq!(ready_body.status, 503, "{}", ready_body.body);

    redis.restart();
    let back = wait_endpoints(
        &client,
        &ns,
        "shop",
        "every endpoint ready again",
        |r, n| r.len() == 3 && n.is_empty(),
    )
    .await;
    let after = shop_pods(node, &ns);
    assert_eq!(
        before.iter().map(|p| (&p.0, &p.2, p.3)).collect::<Vec<_>>(),
        after.iter().map(|p| (&p.0, &p.2, p.3)).collect::<Vec<_>>(),
        "same pods, same containers, no restart"
    );
    eprintln!(
        "sidecar: Redis stopped → all 3 endpoints not ready in {down:.1?}; Redis back → all \
         ready in {back:.1?}"
    );

    rollout_loses_nothing(node, &ns, "shop", "shop", 8000, "/index.html").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_protection_keeps_the_endpoints_during_a_shared_outage() {
    let node = node::node();
    let client = node.client().await;
    apply_crds(node);
    let ns = node.namespace("shop-cascade");
    let postgres = Postgres::start_on(NODE_IP);
    let mut redis = Redis::start_on(NODE_IP);
    apply_sidecar(node, &ns, &postgres, &redis, true);
    wait_rollout(node, &ns, "shop");
    let (ready, _) = endpoints(&client, &ns, "shop").await;
    assert_eq!(ready.len(), 3);
    // Protection starts 5 s after a replica first sees its peers' views (README).
    tokio::time::sleep(Duration::from_secs(6)).await;

    redis.stop();
    // Longer than outage detection plus the kubelet's periodSeconds × failureThreshold (10 s)
    // with margin: without protection every endpoint is gone by then (previous test).
    let window = Duration::from_secs(30);
    let started = Instant::now();
    let mut degraded_seen = false;
    while started.elapsed() < window {
        let (ready, not_ready) = endpoints(&client, &ns, "shop").await;
        assert_eq!(
            (ready.len(), not_ready.len()),
            (3, 0),
            "an endpoint went during a shared outage after {:.1?}",
            started.elapsed()
        );
        if !degraded_seen {
            degraded_seen = ready.iter().all(|ip| {
                request_to(
                    SocketAddr::new(*ip, 8081),
                    "GET",
                    "/ready",
                    Duration::from_secs(2),
                )
                .is_ok_and(|r| r.status == 207 && r.json()["checks"]["cache"]["protected"] == true)
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        degraded_seen,
        "no replica answered 207 with the cache `protected` during the outage"
    );
    redis.restart();
}
