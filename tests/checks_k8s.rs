//! Issue 11's settings in Kubernetes mode on a real kube-apiserver: a `tls` check's `caFrom`
//! and an http header's `valueFrom` come from Secrets and follow their rotation without a
//! restart; `caFrom.file` is refused there. The TLS server is `openssl s_server` on loopback.

mod support;

use std::time::Duration;

use serde_json::json;
use support::kube_env::{condition_status, env};
use support::policy;
use support::tls::{TestCa, TlsServer};
use warp::Filter;

const DAY: i64 = 86_400;
/// The header the API in the test wants: it must never show in status, Events or logs.
const TOKEN: &str = "Bearer k8s-tok-5d0c97e1a4b2";

fn secret(name: &str, key: &str, value: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
           "stringData": {key: value}})
    .to_string()
}

fn dependency_state(policy: &serde_json::Value, name: &str) -> (String, String) {
    let deps = policy["status"]["dependencies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let dep = deps
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap_or_default();
    (
        dep["state"].as_str().unwrap_or("").to_string(),
        dep["reason"].as_str().unwrap_or("").to_string(),
    )
}

/// An HTTP API on loopback that answers 200 only with [`TOKEN`] in `Authorization`.
async fn start_api() -> u16 {
    let route = warp::path!("health")
        .and(warp::header::optional::<String>("authorization"))
        .map(|auth: Option<String>| {
            let code = if auth.as_deref() == Some(TOKEN) {
                200
            } else {
                401
            };
            warp::reply::with_status("", warp::http::StatusCode::from_u16(code).unwrap())
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_and_header_secrets_are_followed_and_files_refused() {
    let env = env("checks").await;
    let ca = TestCa::new("k8s test CA");
    let stranger = TestCa::new("k8s other CA");
    let leaf = ca.leaf("site", "IP:127.0.0.1", 90 * DAY);
    let server = TlsServer::start(&leaf);
    let api = start_api().await;
    let pem = |ca: &TestCa| std::fs::read_to_string(ca.pem()).unwrap();

    // The Secrets start out wrong: a CA that did not sign the server's certificate, an old token.
    env.apply(&secret("site-ca", "ca.crt", &pem(&stranger)));
    env.apply(&secret("api-token", "header", "Bearer old-token-0000"));
    let hg = env.start("hg-0");
    let deps = [
        policy::dep(
            "site",
            &format!(
                "type: tls, tls: {{address: '127.0.0.1:{}', caFrom: {{secretKeyRef: {{name: site-ca, key: ca.crt}}}}}}",
                server.port
            ),
        ),
        policy::dep(
            "api",
            &format!(
                "type: http, http: {{url: 'http://127.0.0.1:{api}/health', \
                 headers: [{{name: Authorization, valueFrom: {{secretKeyRef: {{name: api-token, key: header}}}}}}]}}"
            ),
        ),
    ]
    .concat();
    env.apply(&policy::fast("certs", &deps));
    env.wait_policy("certs", "both down for the stated reasons", |p| {
        dependency_state(p, "site") == ("down".into(), "tls".into())
            && dependency_state(p, "api") == ("down".into(), "status".into())
    });
    let pid = hg.pid();

    // Rotating both Secrets brings both back in the same process.
    env.apply(&secret("site-ca", "ca.crt", &pem(&ca)));
    env.apply(&secret("api-token", "header", TOKEN));
    env.wait_policy("certs", "Ready after the rotation", |p| {
        condition_status(p, "Ready").as_deref() == Some("True")
    });
    assert_eq!(hg.pid(), pid);

    // A file is the controller's, not the policy author's: refused, naming the field.
    env.apply(&policy::fast(
        "files",
        &policy::dep(
            "site",
            "type: tls, tls: {address: '127.0.0.1:443', caFrom: {file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt}}",
        ),
    ));
    let invalid = env.wait_policy("files", "Invalid", |p| {
        condition_status(p, "Invalid").as_deref() == Some("True")
    });
    let message = invalid["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Invalid")
        .unwrap()["message"]
        .to_string();
    assert!(
        message
            .contains("spec.dependencies[0].tls.caFrom.file: file is read only in standalone mode"),
        "{message}"
    );

    std::thread::sleep(Duration::from_millis(500));
    let everywhere = [
        hg.logs().join("\n"),
        env.policy("certs").to_string(),
        serde_json::Value::from(env.events()).to_string(),
        hg.get("/metrics").body,
    ];
    for text in everywhere {
        assert!(
            !text.contains("k8s-tok-5d0c97e1a4b2"),
            "the token leaked: {text}"
        );
    }
}
