//! Kubernetes mode on a real kube-apiserver: the healthgate binary runs as its ServiceAccount
//! under the Role from manifests/base/rbac.yaml and reconciles HealthPolicies into checkers against
//! real PostgreSQL and Redis.

mod support;

use serde_json::{Value, json};
use support::healthgate::Healthgate;
use support::kube_env::{SETTLE, checker_starts, condition_status, env};
use support::policy;
use support::services::{Postgres, Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_reconciled_into_checkers_with_status() {
    let env = env("lifecycle").await;
    let redis = Redis::start();
    let pg = Postgres::start();
    let hg = env.start("hg-0");
    // Nothing to serve yet: ready once the (empty) list is loaded, and an unknown policy is 404.
    hg.wait_ready_status(200, SETTLE);
    let unknown = hg.get("/ready/x/y");
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"].is_string());

    let redis_url = policy::inline(&redis.url());
    env.apply(&policy::fast("shop", &policy::redis("cache", &redis_url)));
    let path = format!("/ready/{}/shop", env.ns);
    hg.wait_until("policy served and ok", SETTLE, |hg| {
        hg.try_get(&path).is_ok_and(|r| r.status == 200)
    });
    assert_eq!(hg.get(&path).json()["checks"]["cache"]["status"], "ok");
    assert_eq!(hg.get("/ready").status, 200);
    hg.assert_logs_are_json();

    // Status: conditions, observedGeneration, per-dependency list; kubectl wait works.
    let out = env.server.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "hp/shop",
        "-n",
        &env.ns,
        "--timeout=30s",
    ]);
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = env.wait_policy("shop", "observedGeneration 1", |p| {
        p["status"]["observedGeneration"] == 1
    });
    let status = &policy["status"];
    assert_eq!(condition_status(&policy, "Ready").as_deref(), Some("True"));
    assert_eq!(
        condition_status(&policy, "Degraded").as_deref(),
        Some("False")
    );
    assert_eq!(
        condition_status(&policy, "Invalid").as_deref(),
        Some("False")
    );
    let ready = env.condition("shop", "Ready").unwrap();
    assert_eq!(ready["reason"], "AllDependenciesOk");
    assert_eq!(ready["observedGeneration"], 1);
    assert_eq!(status["dependencies"][0]["name"], "cache");
    assert_eq!(status["dependencies"][0]["state"], "ok");
    assert!(status["dependencies"][0]["lastTransitionTime"].is_string());
    assert!(status["dependencies"][0]["latencyMs"].is_number());
    assert_eq!(status["summary"], "1/1 ok");
    let printed = env.kubectl(&["get", "hp", "shop"]);
    assert!(printed.contains("True"), "{printed}");
    // One field manager owns the status.
    let with_fields: Value = serde_json::from_str(&env.kubectl(&[
        "get",
        "hp",
        "shop",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    let managers: Vec<String> = with_fields["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["subresource"] == "status")
        .map(|m| m["manager"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(managers, ["healthgate"]);
    let ready_since = ready["lastTransitionTime"].clone();

    // Status is written on transitions (and latency at most every 10 s), never once per check:
    // ten checks in 3 s of steady state make at most one write.
    let writes = || hg.metric("healthgate_status_writes_total").unwrap_or(0.0);
    let before = writes();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        writes() - before <= 1.0,
        "{} status writes in 3 s",
        writes() - before
    );

    // Update: add a dependency. The unchanged one keeps its checker.
    let deps = policy::redis("cache", &redis_url)
        + &format!(
            "    - {{name: db, type: postgres, postgres: {{url: \"{}\"}}}}\n",
            pg.url()
        );
    env.apply(&policy::fast("shop", &deps));
    hg.wait_until("postgres checked", SETTLE, |hg| {
        hg.try_get(&path)
            .is_ok_and(|r| r.status == 200 && r.json()["checks"]["db"]["status"] == "ok")
    });
    assert_eq!(
        checker_starts(&hg, "cache"),
        1,
        "cache checker was restarted"
    );
    let policy = env.wait_policy("shop", "generation 2 observed with 2 deps", |p| {
        p["status"]["observedGeneration"] == 2 && p["status"]["summary"] == "2/2 ok"
    });
    let ready = env.condition("shop", "Ready").unwrap();
    assert_eq!(ready["observedGeneration"], 2);
    assert_eq!(
        ready["lastTransitionTime"], ready_since,
        "Ready did not flip, so its time must not move"
    );
    assert_eq!(policy["metadata"]["generation"], 2);

    // Metrics for the running policy, then gone with it.
    let series = format!(
        r#"healthgate_dependency_state{{name="cache",namespace="{}",policy="shop",state="ok"}}"#,
        env.ns
    );
    assert_eq!(hg.metric(&series), Some(1.0));
    assert_eq!(hg.metric("healthgate_leader"), Some(1.0));

    env.kubectl(&["delete", "hp", "shop"]);
    hg.wait_until("policy gone", SETTLE, |hg| {
        hg.try_get(&path).is_ok_and(|r| r.status == 404)
    });
    let body = hg.get(&path).json();
    assert!(body["error"].is_string(), "{body}");
    hg.wait_until("metric series removed", SETTLE, |hg| {
        !hg.get("/metrics").body.contains("policy=\"shop\"")
    });
    assert_eq!(hg.get("/ready").status, 200, "nothing left to fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_takes_effect_without_restart_and_never_leaks() {
    let env = env("secrets").await;
    let old_password = "old-Pa55word-for-rotation";
    let new_password = "new-Pa55word-after-rotation";
    let redis = Redis::start_with_password(Some(old_password));
    let url = |pw: &str| format!("redis://:{pw}@127.0.0.1:{}/0", redis.port);
    let secret = |pw: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cache-creds"},
               "stringData": {"url": url(pw)}})
        .to_string()
    };
    env.apply(&secret(old_password));
    let hg = env.start("hg-0");
    env.apply(&policy::fast(
        "shop",
        &policy::redis(
            "cache",
            "{urlFrom: {secretKeyRef: {name: cache-creds, key: url}}}",
        ),
    ));
    env.wait_policy("shop", "Ready", |p| {
        condition_status(p, "Ready").as_deref() == Some("True")
    });
    let pid = hg.pid();

    // The password changes on the server; established connections are cut.
    let _: () = redis.cmd(&["CONFIG", "SET", "requirepass", new_password]);
    let mut admin = redis::Client::open(url(new_password))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut admin)
        .unwrap();
    let down = env.wait_policy("shop", "Ready False after the password change", |p| {
        condition_status(p, "Ready").as_deref() == Some("False")
    });
    assert_eq!(down["status"]["dependencies"][0]["state"], "down");

    // Rotating the Secret brings it back, in the same process.
    env.apply(&secret(new_password));
    env.wait_policy("shop", "Ready after the rotation", |p| {
        condition_status(p, "Ready").as_deref() == Some("True")
    });
    assert_eq!(hg.pid(), pid);
    assert_eq!(
        hg.get(&format!("/ready/{}/shop", env.ns)).json()["checks"]["cache"]["status"],
        "ok"
    );
    // One transition, one Event each way (derived from status, not from checks).
    let down_events = env.events_with_reason("shop", "DependencyDown");
    assert_eq!(down_events.len(), 1, "{down_events:#?}");
    assert_eq!(down_events[0]["type"], "Warning");
    assert_eq!(
        down_events[0]["reportingController"],
        "healthgate.dev/controller"
    );
    assert_eq!(down_events[0]["reportingInstance"], "hg-0");
    assert_eq!(
        env.events_with_reason("shop", "DependencyRecovered").len(),
        1
    );

    // Neither password appears in logs, status, events, /ready or /metrics.
    let everywhere = [
        hg.logs().join("\n"),
        env.policy("shop").to_string(),
        Value::from(env.events()).to_string(),
        hg.get("/ready").body,
        hg.get("/metrics").body,
    ];
    for (place, text) in ["logs", "status", "events", "/ready", "/metrics"]
        .iter()
        .zip(&everywhere)
    {
        for pw in [old_password, new_password] {
            assert!(!text.contains(pw), "password in {place}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_last_good_checkers_and_says_where() {
    let env = env("invalid").await;
    let redis = Redis::start();
    let hg = env.start("hg-0");
    let redis_url = policy::inline(&redis.url());
    env.apply(&policy::fast("good", &policy::redis("cache", &redis_url)));
    env.apply(&policy::fast("other", &policy::redis("cache", &redis_url)));
    for name in ["good", "other"] {
        env.wait_policy(name, "Ready", |p| {
            condition_status(p, "Ready").as_deref() == Some("True")
        });
    }

    // Passes the schema, fails validation: the Secret does not exist.
    env.apply(&policy::fast(
        "good",
        &policy::redis(
            "cache",
            "{urlFrom: {secretKeyRef: {name: missing, key: url}}}",
        ),
    ));
    let policy = env.wait_policy("good", "Invalid", |p| {
        condition_status(p, "Invalid").as_deref() == Some("True")
    });
    let invalid = env.condition("good", "Invalid").unwrap();
    assert_eq!(invalid["reason"], "InvalidSpec");
    let message = invalid["message"].as_str().unwrap();
    assert!(
        message.contains("spec.dependencies[0].redis.urlFrom.secretKeyRef"),
        "{message}"
    );
    assert_eq!(policy["status"]["observedGeneration"], 2);
    // The previous checkers keep the service ready.
    assert_eq!(condition_status(&policy, "Ready").as_deref(), Some("True"));
    let ready = hg.get(&format!("/ready/{}/good", env.ns));
    assert_eq!(ready.status, 200);
    assert_eq!(
        checker_starts(&hg, "cache"),
        2,
        "one checker per policy, none restarted"
    );
    let events = env.events_with_reason("good", "InvalidSpec");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Warning");
    assert!(events[0]["note"].as_str().unwrap().contains("secretKeyRef"));
    // The other policy is untouched.
    assert_eq!(
        condition_status(&env.policy("other"), "Invalid").as_deref(),
        Some("False")
    );

    // Creating the Secret fixes it without another edit.
    env.apply(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "missing"},
                "stringData": {"url": redis.url()}})
        .to_string(),
    );
    env.wait_policy("good", "valid again", |p| {
        condition_status(p, "Invalid").as_deref() == Some("False")
    });
    // The fix is recorded next to the complaint, once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let fixed = loop {
        let events = env.events_with_reason("good", "SpecValid");
        if !events.is_empty() || std::time::Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(fixed.len(), 1, "{fixed:?}");
    assert_eq!(fixed[0]["type"], "Normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_is_sufficient_and_no_wider() {
    let env = env("rbac").await;
    let other = env.server.namespace("rbac-other").await;
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = env.sa_kubectl(&all);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let ns = env.ns.as_str();
    // What the controller calls.
    for args in [
        vec!["list", "healthpolicies.healthgate.dev", "-n", ns],
        vec!["watch", "healthpolicies.healthgate.dev", "-n", ns],
        vec![
            "patch",
            "healthpolicies.healthgate.dev/x",
            "--subresource=status",
            "-n",
            ns,
        ],
        vec!["list", "secrets", "-n", ns],
        vec!["watch", "secrets", "-n", ns],
        vec!["create", "events.events.k8s.io", "-n", ns],
        vec!["patch", "events.events.k8s.io", "-n", ns],
        vec!["create", "leases.coordination.k8s.io", "-n", ns],
        vec!["get", "leases.coordination.k8s.io/healthgate", "-n", ns],
        vec!["patch", "leases.coordination.k8s.io/healthgate", "-n", ns],
        vec![
            "patch",
            "leases.coordination.k8s.io/healthgate-view-hg-0",
            "-n",
            ns,
        ],
        vec!["list", "leases.coordination.k8s.io", "-n", ns],
        vec!["watch", "leases.coordination.k8s.io", "-n", ns],
    ] {
        assert!(can(&args), "the Role must allow {args:?}");
    }
    // And nothing more.
    for args in [
        vec!["get", "secrets/anything", "-n", ns],
        vec!["update", "healthpolicies.healthgate.dev/x", "-n", ns],
        vec!["patch", "healthpolicies.healthgate.dev/x", "-n", ns],
        vec!["delete", "healthpolicies.healthgate.dev/x", "-n", ns],
        vec!["create", "healthpolicies.healthgate.dev", "-n", ns],
        vec!["list", "secrets", "-n", &other],
        vec!["list", "healthpolicies.healthgate.dev", "-n", &other],
        vec!["list", "healthpolicies.healthgate.dev", "--all-namespaces"],
        vec!["list", "pods", "-n", ns],
        vec!["create", "secrets", "-n", ns],
        vec!["delete", "events.events.k8s.io", "-n", ns],
        vec!["get", "leases.coordination.k8s.io/someone-else", "-n", ns],
        vec!["update", "leases.coordination.k8s.io/healthgate", "-n", ns],
        vec!["patch", "leases.coordination.k8s.io/x", "-n", &other],
        vec!["delete", "leases.coordination.k8s.io/healthgate", "-n", ns],
        vec!["create", "events", "-n", ns],
    ] {
        assert!(!can(&args), "the Role must not allow {args:?}");
    }
    // A real request outside the Role is forbidden by the API server.
    let out = env.sa_kubectl(&["get", "secrets", "-n", &other]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the controller itself runs with it: it reconciles, writes status and elects itself.
    let redis = Redis::start();
    let hg = env.start("hg-0");
    env.apply_ready("p", &policy::redis("cache", &policy::inline(&redis.url())));
    assert_eq!(hg.metric("healthgate_leader"), Some(1.0));
    let forbidden = hg
        .logs()
        .into_iter()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .collect::<Vec<_>>();
    assert!(forbidden.is_empty(), "{forbidden:#?}");
}

/// CR edit → checker live: the time from writing a spec with a new dependency until /ready
/// shows that dependency's first result. The issue's target is p99 < 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reaches_a_live_checker_within_a_second() {
    use kube::Api;
    use kube::api::{Patch, PatchParams};

    const EDITS: usize = 20;
    let env = env("latency").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let hg = env.start("hg-0");
    let api: Api<healthgate::HealthPolicy> = Api::namespaced(env.server.client().await, &env.ns);
    let path = format!("/ready/{}/lat", env.ns);
    let mut samples = Vec::with_capacity(EDITS);
    for i in 0..EDITS {
        let name = format!("d{i}");
        let policy = json!({
            "apiVersion": "healthgate.dev/v1alpha1", "kind": "HealthPolicy",
            "metadata": {"name": "lat"},
            "spec": {"defaults": {"interval": "1s", "timeout": "500ms"},
                     "dependencies": [{"name": name, "type": "tcp", "tcp": {"address": address}}]},
        });
        let started = std::time::Instant::now();
        api.patch(
            "lat",
            &PatchParams::apply("latency-test").force(),
            &Patch::Apply(&policy),
        )
        .await
        .unwrap();
        hg.wait_until(&format!("{name} live"), SETTLE, |hg| {
            hg.try_get(&path)
                .is_ok_and(|r| r.status == 200 && r.json()["checks"][&name]["status"] == "ok")
        });
        samples.push(started.elapsed());
    }
    samples.sort();
    let p50 = samples[EDITS / 2];
    let p99 = samples[(EDITS * 99).div_ceil(100) - 1];
    eprintln!(
        "edit -> live checker over {EDITS} edits: min {:?}, p50 {p50:?}, p99 {p99:?}, max {:?}",
        samples[0],
        samples[EDITS - 1]
    );
    assert!(
        p99 < std::time::Duration::from_secs(1),
        "p99 {p99:?}: {samples:?}"
    );
    drop(listener);
}

/// The default install grants nothing on pods; an overlay with manifests/pod-gates adds exactly
/// the pod rules readiness gates need, in the served namespace (and the cluster-wide component
/// the same as a ClusterRole).
fn pod_gates_are_a_separate_component(server: &support::apiserver::ApiServer, base: &[Value]) {
    let rules_on_pods = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| {
                r["resources"].as_array().is_some_and(|res| {
                    res.iter()
                        .any(|x| x.as_str().is_some_and(|x| x.starts_with("pods")))
                })
            })
            .collect()
    };
    assert!(
        rules_on_pods(base).is_empty(),
        "the default install grants pods"
    );
    let overlay = tempfile::tempdir().unwrap();
    // kustomize takes only relative paths to other kustomizations.
    let up = "../".repeat(overlay.path().components().count() - 1);
    let repo = format!("{up}{}", support::apiserver::REPO.trim_start_matches('/'));
    for (base, component, role) in [
        ("manifests/base", "manifests/pod-gates", "Role"),
        (
            "manifests/cluster-wide",
            "manifests/pod-gates-cluster-wide",
            "ClusterRole",
        ),
    ] {
        std::fs::write(
            overlay.path().join("kustomization.yaml"),
            format!("resources: [{repo}/{base}]\ncomponents: [{repo}/{component}]\n"),
        )
        .unwrap();
        let built = server.kubectl_ok(&["kustomize", &overlay.path().display().to_string()]);
        let docs: Vec<Value> = serde_saphyr::from_multiple(&built).unwrap();
        let gates = docs
            .iter()
            .find(|d| d["kind"] == role && d["metadata"]["name"] == "healthgate-pod-gates")
            .unwrap_or_else(|| panic!("no {role} healthgate-pod-gates in {component}"));
        if role == "Role" {
            assert_eq!(gates["metadata"]["namespace"], "healthgate");
        }
        let rules: Vec<(Value, Value)> = rules_on_pods(&docs)
            .into_iter()
            .map(|r| (r["resources"].clone(), r["verbs"].clone()))
            .collect();
        assert_eq!(
            rules,
            [
                (
                    serde_json::json!(["pods"]),
                    serde_json::json!(["get", "list", "watch"])
                ),
                (
                    serde_json::json!(["pods/status"]),
                    serde_json::json!(["patch"])
                ),
            ],
            "{component}"
        );
    }
}

/// `kubectl apply -k manifests/` works on a real API server, and the examples apply too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_build_offline_and_apply() {
    let server = support::apiserver::server();
    server.apply_crds().await;
    let built = server.kubectl_ok(&[
        "kustomize",
        &format!("{}/manifests", support::apiserver::REPO),
    ]);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&built).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert_eq!(pod["serviceAccountName"], "healthgate");
    let env_names: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env_names.contains(&"POD_NAME") && env_names.contains(&"POD_NAMESPACE"));

    let cluster_wide = server.kubectl_ok(&[
        "kustomize",
        &format!("{}/manifests/cluster-wide", support::apiserver::REPO),
    ]);
    assert!(
        cluster_wide.contains("kind: ClusterRole\n") && cluster_wide.contains("--all-namespaces")
    );
    pod_gates_are_a_separate_component(server, &docs);
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &built);
    assert!(
        out.status.success(),
        "kubectl apply -k manifests/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = server.namespace("examples").await;
    for file in support::apiserver::yaml_files(
        &std::path::Path::new(support::apiserver::REPO).join("manifests/examples"),
    ) {
        let path = file.display().to_string();
        let out = server.kubectl(&["apply", "-n", &ns, "-f", &path]);
        assert!(
            out.status.success(),
            "kubectl apply -f {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The sidecar example's ServiceAccount gets exactly what its healthgate needs.
    let sa = server.service_account(&ns, "shop").await;
    for verb_resource in [
        ["list", "healthpolicies.healthgate.dev"],
        ["watch", "secrets"],
        ["get", "leases.coordination.k8s.io/shop-healthgate"],
    ] {
        let out = server.kubectl_with(
            &sa.kubeconfig,
            &[
                "auth",
                "can-i",
                verb_resource[0],
                verb_resource[1],
                "-n",
                &ns,
            ],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "yes",
            "{verb_resource:?}"
        );
    }
}

/// A replica must not report ready before it has loaded its policies: an empty engine would
/// otherwise read as "nothing to fail".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_policies_to_load() {
    let env = env("startup").await;
    let closed = support::services::free_port();
    env.apply(&policy::fast(
        "p",
        &policy::redis(
            "cache",
            &format!("{{url: \"redis://127.0.0.1:{closed}/0\"}}"),
        ),
    ));
    let hg = env.start("hg-0");
    let mut answers = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(3) {
        let reply = hg.get("/ready");
        answers.push((reply.status, reply.json()));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        answers.iter().all(|(status, _)| *status == 503),
        "{answers:?}"
    );
    let (_, last) = answers.last().unwrap();
    assert_eq!(last["checks"]["cache"]["status"], "down", "{last}");
}

/// `--all-namespaces` under the ClusterRole of manifests/cluster-wide: policies of several
/// namespaces in one /ready (keyed namespace/policy/dependency), status written in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_namespaces_mode_serves_every_namespace_under_the_cluster_role() {
    let env = env("cluster").await;
    let server = env.server;
    // The ClusterRole and its binding, renamed per test (cluster-scoped names) and bound to
    // this test's ServiceAccount.
    let text = std::fs::read_to_string(format!(
        "{}/manifests/cluster-wide/clusterrole.yaml",
        support::apiserver::REPO
    ))
    .unwrap();
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let unique = format!("healthgate-{}", env.ns);
    for doc in &mut docs {
        doc["metadata"]["name"] = json!(unique);
        if doc["kind"] == "ClusterRoleBinding" {
            doc["roleRef"]["name"] = json!(unique);
            doc["subjects"][0]["namespace"] = json!(env.ns);
        }
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string();
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &list);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let redis = Redis::start();
    let teams = [
        server.namespace("team-a").await,
        server.namespace("team-b").await,
    ];
    // Other tests' policies live on this server too; the selector keeps this instance to ours.
    let label = format!("suite={}", env.ns);
    for ns in &teams {
        let yaml = policy::fast(
            "api",
            &policy::redis("cache", &policy::inline(&redis.url())),
        )
        .replace(
            "metadata: {name: api}",
            &format!("metadata: {{name: api, labels: {{suite: {}}}}}", env.ns),
        );
        let out = server.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hg = Healthgate::start_kube(
        &env.sa.kubeconfig,
        &[("POD_NAME", "hg-0")],
        &[
            "--all-namespaces",
            "--pod-namespace",
            &env.ns,
            "--selector",
            &label,
        ],
    );
    hg.wait_until("both namespaces served", SETTLE, |hg| {
        hg.try_get("/ready").is_ok_and(|r| {
            let body = r.json();
            r.status == 200
                && teams
                    .iter()
                    .all(|ns| body["checks"][format!("{ns}/api/cache")]["status"] == "ok")
        })
    });
    for ns in &teams {
        assert_eq!(hg.get(&format!("/ready/{ns}/api")).status, 200);
        let out = server.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "hp/api",
            "-n",
            ns,
            "--timeout=30s",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Without `--policy` and without any cluster configuration, serve fails fast and says why.
#[test]
fn kubernetes_mode_without_a_cluster_exits_2() {
    let out = std::process::Command::new(support::healthgate::BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("HEALTHGATE_POLICY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Kubernetes"), "{stderr}");
}

/// The one call readiness gates make (controller/gates/patcher.rs), against the real API
/// server: it sets only the `healthgate.dev/ready` condition (the kubelet's stay), replaces it in
/// place, and refuses a pod recreated under the same name (another uid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gate_patch_touches_one_condition_of_the_planned_pod_only() {
    use healthgate::controller::gates::decide::{self, Gate, Write};
    use healthgate::controller::gates::patcher;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

    let server = support::apiserver::server();
    let ns = server.namespace("gate-patch").await;
    let client = server.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {
            "containers": [{"name": "app", "image": "localhost/app:1"}],
            "readinessGates": [{"conditionType": decide::CONDITION}],
        },
    }))
    .unwrap();
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    // What a kubelet would have written.
    pods.patch_status(
        "app",
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady"},
        ]}})),
    )
    .await
    .unwrap();
    let write = |uid: &str, ready: bool| Write {
        namespace: ns.clone(),
        name: "app".into(),
        uid: uid.into(),
        condition: decide::change(
            None,
            &Gate {
                ready,
                reason: if ready { "PolicyOk" } else { "DependencyDown" },
                message: format!("HealthPolicy {ns}/p"),
            },
            k8s_openapi::jiff::Timestamp::now(),
        )
        .unwrap(),
    };
    let conditions = || async {
        let pod = pods.get("app").await.unwrap();
        let mut seen: Vec<(String, String)> = pod
            .status
            .unwrap()
            .conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        seen.sort();
        seen
    };
    let expect = |gate: &str| {
        vec![
            ("ContainersReady".to_string(), "True".to_string()),
            ("Ready".to_string(), "False".to_string()),
            (decide::CONDITION.to_string(), gate.to_string()),
        ]
    };

    patcher::patch(&client, &write(&uid, true)).await.unwrap();
    assert_eq!(conditions().await, expect("True"));
    patcher::patch(&client, &write(&uid, false)).await.unwrap();
    assert_eq!(
        conditions().await,
        expect("False"),
        "replaced in place, once"
    );

    let error = patcher::patch(
        &client,
        &write("0c0ffee0-0000-4000-8000-000000000000", true),
    )
    .await
    .expect_err("another pod's uid");
    assert!(!patcher::is_gone(&error), "{error}");
    assert_eq!(conditions().await, expect("False"), "unchanged");

    pods.delete("app", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let error = patcher::patch(&client, &write(&uid, true))
        .await
        .expect_err("the pod is gone");
    assert!(patcher::is_gone(&error), "{error}");
}
