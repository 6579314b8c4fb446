//! `--details` in Kubernetes mode on a real kube-apiserver: anonymous callers (the kubelet) get
//! status codes and per-check status only; a ServiceAccount token that RBAC allows to `get`
//! `healthpolicies/status` gets the full body, found out through real TokenReview and
//! SubjectAccessReview calls, which are cached so a probe storm is not an API storm.

mod support;

use serde_json::{Value, json};
use support::apiserver::{ApiServer, REPO};
use support::kube_env::{SETTLE, env};
use support::policy;
use support::services::free_port;

/// manifests/base/auth-delegator.yaml for the test namespace's ServiceAccount, under a name of
/// its own so parallel tests do not rebind one another's.
fn bind_auth_delegator(server: &ApiServer, ns: &str) {
    let text =
        std::fs::read_to_string(format!("{REPO}/manifests/base/auth-delegator.yaml")).unwrap();
    let mut doc: Value = serde_saphyr::from_str(&text).unwrap();
    doc["metadata"]["name"] = json!(format!("healthgate-auth-delegator-{ns}"));
    doc["subjects"][0]["namespace"] = json!(ns);
    apply(server, &doc);
}

fn apply(server: &ApiServer, doc: &Value) {
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &doc.to_string());
    assert!(
        out.status.success(),
        "kubectl apply: {}\n{doc}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// TokenReviews the API server has handled so far, from its own metrics.
fn token_reviews(server: &ApiServer) -> f64 {
    let text = server.kubectl_ok(&["get", "--raw=/metrics"]);
    text.lines()
        .filter(|line| line.starts_with("apiserver_request_total{"))
        .filter(|line| line.contains("resource=\"tokenreviews\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn only_status(body: &Value) -> bool {
    body["checks"].as_object().unwrap().values().all(|check| {
        check
            .as_object()
            .unwrap()
            .keys()
            .all(|key| key == "status" || key == "protected")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_see_status_only_and_authorized_tokens_see_details() {
    let env = env("details").await;
    bind_auth_delegator(env.server, &env.ns);
    let closed = free_port();
    let address = format!("127.0.0.1:{closed}");
    env.apply(&policy::fast("shop", &policy::tcp("db", &address, true)));

    // A reader allowed `get` on the policies' status, and a stranger allowed nothing.
    let reader = env.server.service_account(&env.ns, "reader").await;
    let stranger = env.server.service_account(&env.ns, "stranger").await;
    apply(
        env.server,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "health-reader", "namespace": env.ns},
            "rules": [{"apiGroups": ["healthgate.dev"], "resources": ["healthpolicies/status"],
                       "verbs": ["get"]}],
        }),
    );
    apply(
        env.server,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "health-reader", "namespace": env.ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "health-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": env.ns}],
        }),
    );
    // /metrics for the reader too: the non-resource URL Prometheus is usually granted.
    let metrics_role = format!("healthgate-metrics-{}", env.ns);
    apply(
        env.server,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": metrics_role},
            "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
        }),
    );
    apply(
        env.server,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": metrics_role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": metrics_role},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": env.ns}],
        }),
    );

    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let hg = env.start_with(
        "details-0",
        &[],
        &["--protect-metrics", "--metrics-listen", &metrics_listen],
    );
    let one = format!("/ready/{}/shop", env.ns);
    hg.wait_until("db checked and down", SETTLE, |hg| {
        hg.try_get(&one)
            .is_ok_and(|r| r.status == 503 && r.json()["checks"]["db"]["status"] == "down")
    });

    for path in ["/ready", one.as_str()] {
        let anonymous = hg.get_as(hg.port, path, None);
        let garbage = hg.get_as(hg.port, path, Some("not-a-token"));
        let strange = hg.get_as(hg.port, path, Some(&stranger.token));
        let read = hg.get_as(hg.port, path, Some(&reader.token));
        // The kubelet sees the same status code whoever asks.
        for reply in [&anonymous, &garbage, &strange, &read] {
            assert_eq!(reply.status, 503, "{path}: {}", reply.body);
        }
        for (who, reply) in [
            ("anonymous", &anonymous),
            ("garbage", &garbage),
            ("stranger", &strange),
        ] {
            let body = reply.json();
            assert!(only_status(&body), "{who} {path}: {body}");
            assert_eq!(
                body["checks"]["db"]["status"], "down",
                "{who} {path}: {body}"
            );
            for secret in ["127.0.0.1", &closed.to_string(), "refused", "connect"] {
                assert!(
                    !reply.body.contains(secret),
                    "{who} {path} shows {secret}: {body}"
                );
            }
        }
        let body = read.json();
        assert_eq!(body["checks"]["db"]["reason"], "connect", "{path}: {body}");
        assert!(body["checks"]["db"]["error"].is_string(), "{path}: {body}");
        assert_eq!(body["checks"]["db"]["critical"], true, "{path}: {body}");
    }

    // /metrics lives on its own listener, and only for an allowed token there.
    assert_eq!(
        hg.get_as(hg.port, "/metrics", Some(&reader.token)).status,
        404
    );
    assert_eq!(hg.get_as(metrics_port, "/metrics", None).status, 401);
    assert_eq!(
        hg.get_as(metrics_port, "/metrics", Some(&stranger.token))
            .status,
        403
    );
    let scraped = hg.get_as(metrics_port, "/metrics", Some(&reader.token));
    assert_eq!(scraped.status, 200, "{}", scraped.body);
    assert!(scraped.body.contains("healthgate_dependency_state"));
    assert_eq!(hg.get_as(metrics_port, "/ready", None).status, 404);

    // A storm with a token not seen before, from 8 clients at once, costs one review per cache
    // lifetime (10 s): concurrent first requests share it.
    let fresh = env.server.service_account(&env.ns, "reader").await.token;
    let before = token_reviews(env.server);
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..25 {
                    let reply = hg.get_as(hg.port, &one, Some(&fresh));
                    assert_eq!(reply.status, 503);
                    assert!(reply.json()["checks"]["db"]["error"].is_string());
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let reviews = token_reviews(env.server) - before;
    eprintln!("200 authorized requests from 8 clients in {elapsed:?}: {reviews} TokenReviews");
    assert!(reviews >= 1.0, "the new token was never reviewed");
    assert!(
        reviews <= (elapsed.as_secs_f64() / 10.0).ceil(),
        "{reviews} TokenReviews for 200 requests in {elapsed:?}"
    );
}
