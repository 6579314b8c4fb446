//! Every route in-process with `warp::test`, against an engine fed fixed results: status codes,
//! headers and bodies without a socket, a child process or a dependency. The black-box tests in
//! tests/ prove the same server over real sockets.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use warp::http::Response;
use warp::hyper::body::Bytes;

use super::*;
use crate::engine::PolicyKey;
use crate::health::State;
use crate::standalone;

const POLICY: &str = "apiVersion: healthgate.dev/v1alpha1
kind: HealthPolicy
metadata: {name: app}
spec:
  statusCodes: {degraded: 299}
  dependencies:
    - {name: db, type: tcp, tcp: {address: '127.0.0.1:5432'}}
    - {name: search, type: tcp, critical: false, tcp: {address: '127.0.0.1:9200'}}
";

/// The routes over an engine serving [`POLICY`] with `db` and `search` in the given states.
fn app(db: State, search: State, synced: bool) -> AppState {
    app_from(POLICY, db, search, synced)
}

fn app_from(text: &str, db: State, search: State, synced: bool) -> AppState {
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::new(metrics.checks.clone());
    let (key, policy) = standalone::parse(text, Path::new("app.yaml")).expect("valid policy");
    engine.serve_fixed(&key, policy, &[("db", db), ("search", search)]);
    let synced = if synced {
        Synced::open()
    } else {
        crate::first_sync::gate().1
    };
    AppState::new(engine, Users::new(None).unwrap(), metrics, synced)
}

async fn get(state: &AppState, method: &str, path: &str) -> Response<Bytes> {
    warp::test::request()
        .method(method)
        .path(path)
        .reply(&routes(state.clone()))
        .await
}

fn json(response: &Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).expect("a JSON body")
}

fn header<'a>(response: &'a Response<Bytes>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn health_is_200_whatever_the_dependencies_say() {
    let state = app(State::Down, State::Down, false);
    let response = get(&state, "GET", "/health").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "application/json");
    assert_eq!(json(&response)["probe"], "liveness");
    assert_eq!(get(&state, "HEAD", "/health").await.status(), 200);
}

#[tokio::test]
async fn ready_answers_each_overall_state_with_its_code() {
    // (db, search) → status code, overall status
    let table = [
        (State::Ok, State::Ok, 200, "ok"),
        (State::Ok, State::Down, 299, "degraded"),
        (State::Degraded, State::Ok, 299, "degraded"),
        (State::Down, State::Ok, 503, "down"),
        (State::Unknown, State::Ok, 503, "down"),
    ];
    for (db, search, code, status) in table {
        let state = app(db, search, true);
        let response = get(&state, "GET", "/ready").await;
        assert_eq!(response.status(), code, "db={db:?} search={search:?}");
        assert_eq!(header(&response, "content-type"), "application/json");
        let body = json(&response);
        assert_eq!(body["status"], status);
        assert_eq!(body["checks"]["db"]["status"], db.as_str());
        assert_eq!(body["checks"]["search"]["critical"], false);
    }
    let body = json(&get(&app(State::Down, State::Ok, true), "GET", "/ready").await);
    assert_eq!(body["checks"]["db"]["reason"], "connect");
    assert_eq!(body["checks"]["db"]["error"], "connection refused");
}

#[tokio::test]
async fn ready_is_503_until_synced_and_while_draining() {
    let starting = app(State::Ok, State::Ok, false);
    let response = get(&starting, "GET", "/ready").await;
    assert_eq!(response.status(), 503);
    assert_eq!(json(&response)["starting"], true);

    let draining = app(State::Ok, State::Ok, true);
    draining.start_draining();
    let response = get(&draining, "GET", "/ready").await;
    assert_eq!(response.status(), 503);
    let body = json(&response);
    assert_eq!(
        (body["status"].as_str(), body["draining"].as_bool()),
        (Some("down"), Some(true))
    );
    assert_eq!(
        body["checks"]["db"]["status"], "ok",
        "the checks are still shown"
    );
    assert_eq!(get(&draining, "GET", "/health").await.status(), 200);
}

#[tokio::test]
async fn every_response_says_connection_close_once_draining() {
    let state = app(State::Ok, State::Ok, true);
    for path in ["/health", "/ready", "/metrics", "/nowhere"] {
        let response = get(&state, "GET", path).await;
        assert!(response.headers().get("connection").is_none(), "{path}");
    }
    state.start_draining();
    for path in ["/health", "/ready", "/ready/x/y", "/metrics", "/nowhere"] {
        let response = get(&state, "GET", path).await;
        assert_eq!(header(&response, "connection"), "close", "{path}");
    }
}

#[tokio::test]
async fn ready_of_one_policy_and_of_several() {
    let state = app(State::Ok, State::Ok, true);
    let (_, policy) = standalone::parse(POLICY, Path::new("api.yaml")).unwrap();
    let key = PolicyKey::new("team", "api");
    state
        .engine
        .serve_fixed(&key, policy, &[("db", State::Down), ("search", State::Ok)]);

    let one = get(&state, "GET", "/ready/team/api").await;
    assert_eq!(one.status(), 503);
    assert_eq!(json(&one)["checks"]["db"]["status"], "down");
    let unknown = get(&state, "GET", "/ready/team/nope").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(json(&unknown)["error"], "no such policy");

    // Several policies: names are qualified, and the worst policy decides.
    let all = get(&state, "GET", "/ready").await;
    assert_eq!(all.status(), 503);
    let body = json(&all);
    assert_eq!(body["checks"]["team/api/db"]["status"], "down");
    assert_eq!(body["checks"]["/app/db"]["status"], "ok");
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_every_request() {
    let state = app(State::Ok, State::Ok, true);
    get(&state, "GET", "/ready").await;
    get(&state, "GET", "/no/such/path").await;
    let response = get(&state, "GET", "/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8_lossy(response.body());
    for series in [
        r#"http_requests_total{method="GET",route="/ready",status="200"} 1"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"healthgate_policy_status{namespace="",policy="app",status="ok"} 1"#,
    ] {
        assert!(text.contains(series), "missing {series}:\n{text}");
    }
    assert!(
        !text.contains("/no/such/path"),
        "raw paths never become labels"
    );
}

#[tokio::test]
async fn users_without_a_database_and_bad_ids() {
    let state = app(State::Ok, State::Ok, true);
    let response = get(&state, "GET", "/api/users/alice").await;
    assert_eq!(response.status(), 503);
    assert_eq!(json(&response)["error"], "database unavailable");
    let response = get(&state, "GET", "/api/users/bad%20id").await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods() {
    let state = app(State::Ok, State::Ok, true);
    let response = get(&state, "GET", "/nope").await;
    assert_eq!(response.status(), 404);
    assert_eq!(json(&response)["error"], "not found");
    for path in ["/health", "/ready", "/metrics", "/api/users/alice"] {
        let response = get(&state, "POST", path).await;
        assert_eq!(response.status(), 405, "POST {path}");
        assert_eq!(header(&response, "allow"), "GET, HEAD");
    }
}

/// The same request with an `Authorization` header, over the routes one listener serves.
async fn get_as(
    state: &AppState,
    path: &str,
    authorization: Option<&str>,
    surface: Surface,
) -> Response<Bytes> {
    let mut request = warp::test::request().method("GET").path(path);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.reply(&routes_on(state.clone(), surface)).await
}

fn with_details(state: AppState, details: exposure::Details, token: &str) -> AppState {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), token).unwrap();
    let exposure = Exposure::new(details, true, Some(file.path()), None).unwrap();
    state.with_exposure(exposure)
}

#[tokio::test]
async fn details_are_shown_only_as_configured_and_status_codes_never_change() {
    use exposure::Details;
    let all = Surface::All;
    let namespaced = POLICY.replace("{name: app}", "{name: app, namespace: team}");
    let app = |db| app_from(&namespaced, db, State::Down, true);
    for (db, code) in [(State::Down, 503), (State::Ok, 299)] {
        let never = with_details(app(db), Details::Never, "tok");
        let authorized = with_details(app(db), Details::Authorized, "tok");
        let always = with_details(app(db), Details::Always, "tok");
        let cases = [
            (&never, None, false),
            (&never, Some("Bearer tok"), false),
            (&authorized, None, false),
            (&authorized, Some("Bearer wrong"), false),
            (&authorized, Some("Bearer tok"), true),
            (&always, None, true),
        ];
        for (state, authorization, detailed) in cases {
            for path in ["/ready", "/ready/team/app"] {
                let response = get_as(state, path, authorization, all).await;
                assert_eq!(response.status(), code, "{path} {authorization:?}");
                let body = json(&response);
                let search = &body["checks"]["search"];
                assert_eq!(search["status"], "down", "{body}");
                if detailed {
                    assert_eq!(search["error"], "connection refused", "{body}");
                    assert_eq!(search["critical"], false, "{body}");
                } else {
                    let keys: Vec<&String> = search.as_object().unwrap().keys().collect();
                    assert_eq!(keys, ["status"], "{path} {authorization:?}: {body}");
                    assert!(!String::from_utf8_lossy(response.body()).contains("refused"));
                }
            }
        }
    }
}

#[tokio::test]
async fn protected_metrics_need_the_token_and_metrics_can_live_on_their_own_listener() {
    let state = with_details(
        app(State::Ok, State::Ok, true),
        exposure::Details::Never,
        "tok",
    );
    let anonymous = get_as(&state, "/metrics", None, Surface::All).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(header(&anonymous, "www-authenticate"), "Bearer");
    let wrong = get_as(&state, "/metrics", Some("Bearer nope"), Surface::All).await;
    assert_eq!(wrong.status(), 403);
    let allowed = get_as(&state, "/metrics", Some("Bearer tok"), Surface::All).await;
    assert_eq!(allowed.status(), 200);
    assert!(String::from_utf8_lossy(allowed.body()).contains("healthgate_"));

    let main = Surface::WithoutMetrics;
    let on_main = get_as(&state, "/metrics", Some("Bearer tok"), main).await;
    assert_eq!(on_main.status(), 404);
    assert_eq!(get_as(&state, "/ready", None, main).await.status(), 200);
    let metrics_only = Surface::MetricsOnly;
    assert_eq!(
        get_as(&state, "/ready", None, metrics_only).await.status(),
        404
    );
    assert_eq!(
        get_as(&state, "/health", None, metrics_only).await.status(),
        404
    );
    let scraped = get_as(&state, "/metrics", Some("Bearer tok"), metrics_only).await;
    assert_eq!(scraped.status(), 200);
}
