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
