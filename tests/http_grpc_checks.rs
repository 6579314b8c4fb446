//! HTTP and gRPC dependency checks against real servers: a warp app and a tonic
//! grpc.health.v1 server running in the test process.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::healthgate::Healthgate;
use tonic_health::ServingStatus;
use warp::Filter;

/// Starts the dependencies on a runtime of their own; they live as long as the returned handle.
fn start_dependencies() -> (tokio::runtime::Runtime, SocketAddr, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (http, grpc) = runtime.block_on(async {
        let ok = warp::path!("ok").map(|| "all good");
        let broken = warp::path!("broken").map(|| {
            warp::reply::with_status("boom", warp::http::StatusCode::INTERNAL_SERVER_ERROR)
        });
        let slow = warp::path!("slow" / u64).then(|ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            "late but fine"
        });
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        tokio::spawn(
            warp::serve(ok.or(broken).or(slow))
                .incoming(http_listener)
                .run(),
        );

        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("billing", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("ledger", ServingStatus::NotServing)
            .await;
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream_from(grpc_listener)),
        );
        (http, grpc)
    });
    (runtime, http, grpc)
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

#[test]
fn http_and_grpc_checks_report_each_failure_mode() {
    let (_runtime, http, grpc) = start_dependencies();
    let deps = format!(
        "    - {{name: web, type: http, http: {{url: 'http://{http}/ok', bodyContains: good}}}}\n    \
         - {{name: web-body, type: http, critical: false, http: {{url: 'http://{http}/ok', bodyContains: missing-marker}}}}\n    \
         - {{name: web-status, type: http, critical: false, http: {{url: 'http://{http}/broken'}}}}\n    \
         - {{name: web-500-ok, type: http, http: {{url: 'http://{http}/broken', expectStatus: '200-299,500'}}}}\n    \
         - {{name: web-slow, type: http, critical: false, degradedLatency: 100ms, http: {{url: 'http://{http}/slow/200'}}}}\n    \
         - {{name: web-timeout, type: http, critical: false, http: {{url: 'http://{http}/slow/3000'}}}}\n    \
         - {{name: billing, type: grpc, grpc: {{address: '{grpc}', service: billing}}}}\n    \
         - {{name: server, type: grpc, grpc: {{address: '{grpc}'}}}}\n    \
         - {{name: ledger, type: grpc, critical: false, grpc: {{address: '{grpc}', service: ledger}}}}\n    \
         - {{name: unknown-svc, type: grpc, critical: false, grpc: {{address: '{grpc}', service: nope}}}}\n"
    );
    let policy = format!(
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: net}}\nspec:\n  \
         defaults: {{interval: 300ms, timeout: 1s}}\n  dependencies:\n{deps}"
    );
    let hg = Healthgate::start(&policy, &[], &[]);
    hg.wait_until("every check ran", Duration::from_secs(15), |hg| {
        let body = hg.get("/ready").json();
        body["checks"]
            .as_object()
            .unwrap()
            .values()
            .all(|c| c["checked_at"].is_string())
    });
    let ready = hg.get("/ready");
    let body = ready.json();
    let expect = [
        ("web", "ok", "ok"),
        ("web-body", "down", "body"),
        ("web-status", "down", "status"),
        ("web-500-ok", "ok", "ok"),
        ("web-slow", "degraded", "slow"),
        ("web-timeout", "down", "timeout"),
        ("billing", "ok", "ok"),
        ("server", "ok", "ok"),
        ("ledger", "down", "not_serving"),
        ("unknown-svc", "down", "not_serving"),
    ];
    for (name, status, reason) in expect {
        let check = &body["checks"][name];
        assert_eq!(
            (check["status"].as_str(), check["reason"].as_str()),
            (Some(status), Some(reason)),
            "{name}: {check}"
        );
    }
    assert_eq!(
        body["checks"]["web-status"]["error"],
        "unexpected status 500"
    );
    assert_eq!(body["status"], "degraded");
    assert_eq!(ready.status, 207);
}

/// The token an `echo` request must carry, from an environment variable: it must never show.
const TOKEN: &str = "tok-3f9a61c2d8e74b05";

fn start_api() -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let status = warp::path!("status.json").map(|| {
            warp::reply::with_header(
                warp::reply::json(&serde_json::json!({
                    "status": "UP",
                    "version": "2.4.1",
                    "checks": [{"name": "db", "up": true}]
                })),
                "x-version",
                "2.4.1",
            )
        });
        let text = warp::path!("text").map(|| "all good, healthy");
        // Answers only a POST carrying the token and the body `ping`.
        let echo = warp::path!("echo")
            .and(warp::post())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .map(|auth: Option<String>, body: bytes::Bytes| {
                let (code, reply) = if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
                    (401, "who are you")
                } else if &body[..] != b"ping" {
                    (400, "say ping")
                } else {
                    (200, "pong")
                };
                warp::reply::with_status(reply, warp::http::StatusCode::from_u16(code).unwrap())
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            warp::serve(status.or(text).or(echo))
                .incoming(listener)
                .run(),
        );
        addr
    });
    (runtime, addr)
}

#[test]
fn http_assertions_methods_headers_and_bodies() {
    let (_runtime, api) = start_api();
    let http = |name: &str, fields: &str| {
        format!("    - {{name: {name}, type: http, critical: false, http: {{{fields}}}}}\n")
    };
    let deps = [
        http(
            "json-ok",
            &format!(
                "url: 'http://{api}/status.json', assert: [{{jsonPointer: /status, equals: UP}}, \
                 {{jsonPointer: /version, oneOf: ['2.4.1', '2.5.0']}}, {{jsonPointer: /checks/0/up, equals: 'true'}}, \
                 {{header: Content-Type, matches: '^application/json'}}]"
            ),
        ),
        http(
            "json-fail",
            &format!(
                "url: 'http://{api}/status.json', assert: [{{jsonPointer: /status, equals: UP}}, \
                 {{jsonPointer: /status, oneOf: [DOWN, DEGRADED]}}, {{header: X-Version, matches: '^3\\.'}}, \
                 {{header: X-Missing, equals: 'yes'}}, {{jsonPointer: /nope, equals: x}}]"
            ),
        ),
        http(
            "not-json",
            &format!("url: 'http://{api}/text', assert: [{{jsonPointer: /status, equals: UP}}]"),
        ),
        http(
            "body-regex",
            &format!("url: 'http://{api}/text', bodyMatches: 'good, (healthy|fine)$'"),
        ),
        http(
            "body-regex-fail",
            &format!("url: 'http://{api}/text', bodyMatches: '^UP$'"),
        ),
        http(
            "head",
            &format!("url: 'http://{api}/status.json', method: HEAD, assert: [{{header: x-version, equals: '2.4.1'}}]"),
        ),
        http(
            "post-token",
            &format!(
                "url: 'http://{api}/echo', method: POST, body: ping, bodyContains: pong, \
                 headers: [{{name: Authorization, valueFrom: {{env: HG_API_TOKEN}}}}]"
            ),
        ),
        http(
            "post-wrong-token",
            &format!(
                "url: 'http://{api}/echo', method: POST, body: ping, \
                 headers: [{{name: Authorization, value: 'Bearer wrong'}}]"
            ),
        ),
        http(
            "post-wrong-body",
            &format!(
                "url: 'http://{api}/echo', method: POST, body: pong, \
                 headers: [{{name: Authorization, valueFrom: {{env: HG_API_TOKEN}}}}]"
            ),
        ),
        // The route takes POST only: a GET is refused, so the method really is what is sent.
        http(
            "get-echo",
            &format!(
                "url: 'http://{api}/echo', headers: [{{name: Authorization, valueFrom: {{env: HG_API_TOKEN}}}}]"
            ),
        ),
    ]
    .concat();
    let policy = format!(
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: api}}\nspec:\n  \
         defaults: {{interval: 300ms, timeout: 1s}}\n  dependencies:\n{deps}"
    );
    let token = format!("Bearer {TOKEN}");
    let hg = Healthgate::start(&policy, &[("HG_API_TOKEN", &token)], &[]);
    hg.wait_until("every check ran", Duration::from_secs(15), |hg| {
        let body = hg.get("/ready").json();
        body["checks"]
            .as_object()
            .unwrap()
            .values()
            .all(|c| c["checked_at"].is_string())
    });
    let body = hg.get("/ready").json();
    let expect = [
        ("json-ok", "ok", "ok", None),
        (
            "json-fail",
            "down",
            "assertion",
            Some(
                r#"status 200, /status is "UP", expected one of "DOWN", "DEGRADED"; header x-version is "2.4.1", expected to match "^3\\."; header x-missing is missing; /nope is not in the body"#,
            ),
        ),
        (
            "not-json",
            "down",
            "assertion",
            Some("status 200, /status: body is not JSON (expected value at line 1 column 1)"),
        ),
        ("body-regex", "ok", "ok", None),
        (
            "body-regex-fail",
            "down",
            "assertion",
            Some(r#"status 200, body does not match "^UP$""#),
        ),
        ("head", "ok", "ok", None),
        ("post-token", "ok", "ok", None),
        (
            "post-wrong-token",
            "down",
            "status",
            Some("unexpected status 401"),
        ),
        (
            "post-wrong-body",
            "down",
            "status",
            Some("unexpected status 400"),
        ),
        ("get-echo", "down", "status", Some("unexpected status 405")),
    ];
    for (name, status, reason, error) in expect {
        let check = &body["checks"][name];
        assert_eq!(
            (check["status"].as_str(), check["reason"].as_str()),
            (Some(status), Some(reason)),
            "{name}: {check}"
        );
        assert_eq!(check["error"].as_str(), error, "{name}: {check}");
    }
    let logs = hg.logs().join("\n");
    for output in [body.to_string(), hg.get("/metrics").body, logs] {
        assert!(!output.contains(TOKEN), "the token leaked: {output}");
    }
}
