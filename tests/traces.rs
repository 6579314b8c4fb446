//! Traces proven with a real OTLP collector: rotel-agent receives healthgate's spans over gRPC
//! and HTTP/protobuf and forwards them to a sink the test reads. Asserts span names, semantic-
//! convention attributes, parent/child links, `traceparent` continuation, log lines carrying
//! the trace ids, the flush on shutdown, and that a dead collector costs requests nothing.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::healthgate::Healthgate;
use support::policy;
use support::services::{PG_PASSWORD, Postgres};
use support::tools::Collector;

/// OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind) and status codes.
const KIND_INTERNAL: u64 = 1;
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;

const WAIT: Duration = Duration::from_secs(20);

fn policy() -> String {
    policy::document_in(
        "shop",
        "traced",
        policy::FAST,
        &(policy::postgres("postgres", &policy::env("PG_URL"))
            + &policy::tcp("nothing-listens", "127.0.0.1:1", true)),
    )
}

/// A GET with extra headers over a fresh connection; returns the status code.
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: healthgate-tests\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"))
}

/// A fresh W3C trace context: (trace id, parent span id, traceparent header).
fn traceparent() -> (String, String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let span_id = format!("{:016x}", rand::random::<u64>() | 1);
    let header = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, header)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn log_lines(hg: &Healthgate) -> Vec<Value> {
    hg.logs()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn start(collector_env: &[(&str, &str)], pg: &Postgres) -> Healthgate {
    let mut env = vec![
        ("PG_URL", pg.url()),
        ("DATABASE_URL", pg.url()),
        ("OTEL_SERVICE_NAME", "healthgate-test".to_string()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test,service.namespace=shop".to_string(),
        ),
    ];
    env.extend(collector_env.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hg = Healthgate::start(&policy(), &env, &[]);
    hg.wait_until("the users table", WAIT, |hg| {
        hg.try_get("/api/users/nobody")
            .is_ok_and(|r| r.status == 404)
    });
    hg
}

#[test]
fn spans_over_grpc_carry_semantic_conventions_links_and_log_ids() {
    let mut collector = Collector::start();
    let pg = Postgres::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.grpc_port);
    let hg = start(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
        &pg,
    );
    pg.psql("INSERT INTO users (id, email) VALUES ('alice', 'alice@example.com')");

    // A caller's trace continues through healthgate into the database query.
    let (trace_id, caller_span, header) = traceparent();
    assert_eq!(
        get(hg.port, "/api/users/alice", &[("traceparent", &header)]),
        200
    );
    let server = collector.wait_for_span("the users request", WAIT, |s| {
        s["trace_id"] == trace_id.as_str() && s["kind"] == KIND_SERVER
    });
    assert_eq!(server["name"], "GET /api/users/{id}");
    assert_eq!(server["parent_span_id"], caller_span.as_str());
    assert_eq!(attr(&server, "http.request.method"), "GET");
    assert_eq!(attr(&server, "http.route"), "/api/users/{id}");
    assert_eq!(attr(&server, "http.response.status_code"), 200);
    assert_eq!(attr(&server, "url.path"), "/api/users/alice");
    assert_eq!(attr(&server, "url.scheme"), "http");
    assert_eq!(attr(&server, "network.protocol.version"), "1.1");
    assert_eq!(attr(&server, "server.address"), "127.0.0.1");
    assert_eq!(attr(&server, "server.port"), i64::from(hg.port));
    assert_eq!(attr(&server, "user_agent.original"), "healthgate-tests");
    assert_ne!(server["status"]["code"], STATUS_ERROR);
    assert_eq!(server["resource"]["service.name"], "healthgate-test");
    assert_eq!(server["resource"]["deployment.environment.name"], "test");
    assert_eq!(server["resource"]["service.namespace"], "shop");

    let query = collector.wait_for_span("the users query", WAIT, |s| {
        s["trace_id"] == trace_id.as_str() && s["kind"] == KIND_CLIENT
    });
    assert_eq!(query["name"], "SELECT users");
    assert_eq!(query["parent_span_id"], server["span_id"]);
    assert_eq!(attr(&query, "db.system.name"), "postgresql");
    assert_eq!(attr(&query, "db.namespace"), "app");
    assert_eq!(attr(&query, "db.operation.name"), "SELECT");
    assert_eq!(attr(&query, "db.collection.name"), "users");
    assert_eq!(attr(&query, "server.address"), "127.0.0.1");
    assert_eq!(attr(&query, "server.port"), i64::from(pg.port));
    assert_eq!(attr(&query, "db.response.returned_rows"), 1);
    let text = attr(&query, "db.query.text").as_str().unwrap();
    assert!(text.starts_with("SELECT") && text.contains("$1"), "{text}");
    assert!(
        !text.contains("alice"),
        "the id a caller sent is not in the span"
    );

    // The access log line of that request carries its trace and span ids.
    let access = log_lines(&hg)
        .into_iter()
        .find(|l| l["target"] == "healthgate::access" && l["path"] == "/api/users/alice")
        .expect("an access log line");
    assert_eq!(access["trace_id"], trace_id.as_str());
    assert_eq!(access["span_id"], server["span_id"]);

    // Without a traceparent a request starts a trace of its own; a 503 marks its span an error.
    assert_eq!(get(hg.port, "/ready", &[]), 503);
    let ready = collector.wait_for_span("/ready", WAIT, |s| s["name"] == "GET /ready");
    assert_eq!(ready["parent_span_id"], "");
    assert_eq!(attr(&ready, "http.response.status_code"), 503);
    assert_eq!(attr(&ready, "error.type"), "503");
    assert_eq!(ready["status"]["code"], STATUS_ERROR);
    // An unmatched path has no route: the span is named by the method alone.
    assert_eq!(get(hg.port, "/no/such/route", &[]), 404);
    let unmatched = collector.wait_for_span("an unmatched path", WAIT, |s| {
        attr(s, "url.path") == "/no/such/route"
    });
    assert_eq!(unmatched["name"], "GET");
    assert!(attr(&unmatched, "http.route").is_null());

    // One span per check run, with the dependency, its type, the result and the reason.
    let ok_check = collector.wait_for_span("a postgres check", WAIT, |s| {
        s["name"] == "check" && attr(s, "healthgate.dependency.name") == "postgres"
    });
    assert_eq!(ok_check["kind"], KIND_INTERNAL);
    assert_eq!(ok_check["parent_span_id"], "");
    assert_eq!(attr(&ok_check, "healthgate.dependency.type"), "postgres");
    assert_eq!(attr(&ok_check, "healthgate.check.result"), "ok");
    assert_eq!(attr(&ok_check, "healthgate.check.reason"), "ok");
    assert_eq!(attr(&ok_check, "healthgate.policy.namespace"), "shop");
    assert_eq!(attr(&ok_check, "healthgate.policy.name"), "traced");
    let down_check = collector.wait_for_span("a failing tcp check", WAIT, |s| {
        s["name"] == "check" && attr(s, "healthgate.dependency.name") == "nothing-listens"
    });
    assert_eq!(attr(&down_check, "healthgate.dependency.type"), "tcp");
    assert_eq!(attr(&down_check, "healthgate.check.result"), "down");
    assert_eq!(attr(&down_check, "healthgate.check.reason"), "connect");
    assert_eq!(down_check["status"]["code"], STATUS_ERROR);
    // The state change was logged inside a check span, with that span's ids.
    let changed = log_lines(&hg)
        .into_iter()
        .find(|l| {
            l["message"] == "dependency state changed" && l["dependency"] == "nothing-listens"
        })
        .expect("a state change log line");
    let check_span = collector.wait_for_span("the check that logged the change", WAIT, |s| {
        s["trace_id"] == changed["trace_id"] && s["span_id"] == changed["span_id"]
    });
    assert_eq!(check_span["name"], "check");

    // No credential in any span.
    for span in collector.spans() {
        assert!(!span.to_string().contains(PG_PASSWORD), "{span}");
    }
}

#[test]
fn spans_still_queued_at_shutdown_are_flushed() {
    let mut collector = Collector::start();
    let pg = Postgres::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.grpc_port);
    // Batches wait ten minutes: only the shutdown flush can deliver these spans.
    let mut hg = start(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
        &pg,
    );
    let (trace_id, _, header) = traceparent();
    assert_eq!(get(hg.port, "/health", &[("traceparent", &header)]), 200);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        collector.spans().is_empty(),
        "spans were exported before the batch delay"
    );
    hg.signal(Signal::SIGTERM);
    assert!(hg.wait_exit(Duration::from_secs(20)).success());
    let last = collector.wait_for_span("the request before shutdown", WAIT, |s| {
        s["trace_id"] == trace_id.as_str()
    });
    assert_eq!(last["name"], "GET /health");
    // Check spans that ended before the checkers stopped went out with it.
    collector.wait_for_span("a check span", WAIT, |s| s["name"] == "check");
}

#[test]
fn spans_over_http_protobuf_reach_the_collector() {
    let mut collector = Collector::start();
    let pg = Postgres::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.http_port);
    let hg = start(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
        &pg,
    );
    let (trace_id, caller_span, header) = traceparent();
    assert_eq!(
        get(hg.port, "/api/users/nobody", &[("traceparent", &header)]),
        404
    );
    let server = collector.wait_for_span("the request", WAIT, |s| {
        s["trace_id"] == trace_id.as_str() && s["kind"] == KIND_SERVER
    });
    assert_eq!(server["name"], "GET /api/users/{id}");
    assert_eq!(server["parent_span_id"], caller_span.as_str());
    assert_eq!(attr(&server, "http.response.status_code"), 404);
    // A 4xx is the client's error, not the server's.
    assert_ne!(server["status"]["code"], STATUS_ERROR);
    let query = collector.wait_for_span("the query", WAIT, |s| {
        s["trace_id"] == trace_id.as_str() && s["kind"] == KIND_CLIENT
    });
    assert_eq!(query["parent_span_id"], server["span_id"]);
    assert_eq!(attr(&query, "db.response.returned_rows"), 0);
    assert!(
        hg.metric("healthgate_trace_spans_exported_total")
            .is_some_and(|n| n > 0.0)
    );
}

/// Latencies of `count` sequential GETs of `path`, sorted.
fn latencies(hg: &Healthgate, path: &str, count: usize) -> Vec<Duration> {
    let mut all: Vec<Duration> = (0..count).map(|_| hg.get(path).elapsed).collect();
    all.sort();
    all
}

#[test]
fn a_dead_collector_does_not_slow_requests_and_drops_are_counted() {
    let pg = Postgres::start();
    // A collector that accepts connections and never answers: the worst kind of down.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!(
        "http://127.0.0.1:{}",
        blackhole.local_addr().unwrap().port()
    );
    let without = start(&[], &pg);
    let with_dead = start(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            // A small queue, so spans also overflow it while an export hangs.
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
        ],
        &pg,
    );
    // Interleaved rounds so both see the same machine load.
    let (mut base, mut dead) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        base.extend(latencies(&without, "/api/users/nobody", 40));
        dead.extend(latencies(&with_dead, "/api/users/nobody", 40));
    }
    base.sort();
    dead.sort();
    let p50 = |v: &[Duration]| v[v.len() / 2];
    let p95 = |v: &[Duration]| v[v.len() * 95 / 100];
    // Lenient: a shared 2-core machine is noisy; a blocked request would take ≥ 1 s.
    assert!(
        p50(&dead) <= p50(&base) * 3 + Duration::from_millis(5),
        "p50 {:?} with a dead collector vs {:?} without",
        p50(&dead),
        p50(&base)
    );
    assert!(
        p95(&dead) <= p95(&base) * 3 + Duration::from_millis(20),
        "p95 {:?} with a dead collector vs {:?} without",
        p95(&dead),
        p95(&base)
    );
    assert!(
        dead.last().unwrap() < &Duration::from_millis(500),
        "{dead:?}"
    );

    // The spans that could not be delivered are counted, none as exported.
    let dropped = r#"healthgate_trace_spans_dropped_total{reason="export_failed"}"#;
    let overflowed = r#"healthgate_trace_spans_dropped_total{reason="queue_full"}"#;
    with_dead.wait_until("dropped spans counted", Duration::from_secs(40), |hg| {
        hg.metric(dropped).is_some_and(|n| n > 0.0)
    });
    assert!(
        with_dead.metric(overflowed).is_some_and(|n| n > 0.0),
        "400 requests while exports hang overflow a queue of 16"
    );
    assert_eq!(
        with_dead.metric("healthgate_trace_spans_exported_total"),
        Some(0.0)
    );
    // Without an endpoint nothing is exported or dropped.
    assert_eq!(without.metric(dropped), Some(0.0));
}
