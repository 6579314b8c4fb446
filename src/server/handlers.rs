use serde_json::json;
use warp::http::{Method, StatusCode, header};
use warp::reply::{Reply, Response};

use super::AppState;
use super::exposure::Refusal;
use super::users::Lookup;
use crate::engine::{PolicyKey, Report};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn json_response(status: u16, body: &impl serde::Serialize) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    warp::reply::with_status(warp::reply::json(body), code).into_response()
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn readable(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn method_not_allowed() -> Response {
    let mut response = error(405, "method not allowed; use GET");
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    response
}

pub fn not_found() -> Response {
    error(404, "not found")
}

/// Liveness: the process answers and its runtime schedules tasks. Touches no dependency, so a
/// database outage never gets healthy pods restarted.
pub fn health(method: &Method) -> Response {
    if !readable(method) {
        return method_not_allowed();
    }
    // Fixed bytes: the kubelet calls this every few seconds per pod, and it has nothing to say
    // that would need serialising.
    let mut response = Response::new(LIVENESS_BODY.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

const LIVENESS_BODY: &str = r#"{"probe":"liveness","status":"ok"}"#;

/// Readiness from the cache only: no dependency I/O, so it answers even when one hangs. The
/// status code is the same for every caller; how much of the body they see is `--details`.
pub async fn ready(
    state: &AppState,
    method: &Method,
    authorization: Option<&str>,
    policy: Option<PolicyKey>,
) -> Response {
    if !readable(method) {
        return method_not_allowed();
    }
    if !state.is_synced() {
        return json_response(
            503,
            &json!({ "status": "down", "starting": true, "checks": {} }),
        );
    }
    let view = state
        .exposure
        .ready_view(authorization, policy.clone())
        .await;
    if policy.is_none() && !state.is_draining() {
        let rendered = state.engine.render_all(view);
        let mut response = warp::reply::Response::new(rendered.body.into());
        *response.status_mut() =
            StatusCode::from_u16(rendered.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        return response;
    }
    let report = match policy {
        None => Report::render_all(&state.engine.snapshot_all()),
        Some(key) => match state.engine.snapshot(&key) {
            Some(snapshot) => Report::render(&snapshot),
            None => return error(404, "no such policy"),
        },
    };
    let mut body = report.to_json(view);
    if state.is_draining() {
        body["status"] = json!("down");
        body["draining"] = json!(true);
        return json_response(report.codes.down, &body);
    }
    json_response(report.status_code(), &body)
}

pub async fn metrics(state: &AppState, method: &Method, authorization: Option<&str>) -> Response {
    if !readable(method) {
        return method_not_allowed();
    }
    match state.exposure.metrics_refusal(authorization).await {
        Some(Refusal::NoToken) => {
            let mut response = error(401, "a bearer token is required for /metrics");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        Some(Refusal::NotAllowed) => return error(403, "this token may not read /metrics"),
        None => {}
    }
    state.engine.refresh_metrics();
    state.users.record_pool_metrics(&state.metrics.pool);
    // With thousands of checks the text runs to megabytes and takes hundreds of milliseconds:
    // off the runtime's workers, so it never delays a check or a probe.
    let metrics = state.metrics.clone();
    let text = match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(text) => text,
        Err(_) => return error(500, "rendering metrics failed"),
    };
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    response
}

pub async fn user(state: &AppState, method: &Method, id: &str) -> Response {
    if !readable(method) {
        return method_not_allowed();
    }
    match state.users.lookup(id).await {
        Lookup::Found(body) => {
            let mut response = body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Lookup::NotFound => error(404, "user not found"),
        Lookup::InvalidId => error(
            400,
            &format!(
                "invalid user id: expected 1-{} characters from A-Z a-z 0-9 _ -",
                super::users::MAX_ID_LEN
            ),
        ),
        Lookup::Unavailable => error(503, "database unavailable"),
        Lookup::Failed => error(500, "internal error"),
    }
}
