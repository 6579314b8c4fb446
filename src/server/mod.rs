//! The embedded HTTP server: probes, metrics and the example API. Every route produces a
//! `(route template, response)` pair so metrics and access logs are labelled by template and
//! count every response, 404s and 500s included.

mod conn;
pub mod exposure;
pub mod grpc_health;
mod handlers;
mod metrics;
pub mod users;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_http::HeaderExtractor;
use tokio::net::TcpListener;
use tracing::{Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use warp::Filter;
use warp::http::{Method, header};
use warp::path::{FullPath, Tail};
use warp::reply::Response;

use crate::engine::{Engine, PolicyKey};
use crate::first_sync::Synced;
use crate::metrics::Metrics;
pub use conn::Limits;
pub use exposure::Exposure;
pub use metrics::HttpMetrics;
use users::Users;

/// Route label for requests no route matched; raw paths never become label values.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// Routes the kubelet calls every few seconds per pod: their access-log lines are DEBUG, since
/// at INFO they would be most of the log and say nothing (each is still counted in metrics).
const PROBE_ROUTES: &[&str] = &["/health", "/ready", "/ready/{namespace}/{name}"];

/// Everything the handlers read. Cheap to clone: all shared.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub users: Users,
    pub draining: Arc<AtomicBool>,
    /// Opened by the policy source once it has loaded every policy.
    pub synced: Synced,
    /// Who sees details in /ready and who may read /metrics.
    pub exposure: Exposure,
}

/// Which routes a listener serves: everything, or with `--metrics-listen` /metrics apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    All,
    WithoutMetrics,
    MetricsOnly,
}

impl Surface {
    /// The 404 a route answers on a listener that does not serve it, before any work is done.
    fn refuses(self, route: &str) -> Option<Routed> {
        let serves = match self {
            Surface::All => true,
            Surface::WithoutMetrics => route != "/metrics",
            Surface::MetricsOnly => route == "/metrics",
        };
        (!serves).then(|| (UNMATCHED_ROUTE, handlers::not_found()))
    }
}

impl AppState {
    pub fn new(engine: Engine, users: Users, metrics: Arc<Metrics>, synced: Synced) -> Self {
        Self {
            metrics,
            engine,
            users,
            draining: Arc::new(AtomicBool::new(false)),
            synced,
            exposure: Exposure::always(),
        }
    }

    pub fn with_exposure(self, exposure: Exposure) -> Self {
        Self { exposure, ..self }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.is_synced()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        // The gRPC health server follows engine changes; a drain is one.
        self.engine.invalidate();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

type Routed = (&'static str, Response);

/// All routes, instrumented. Never rejects: unknown paths get a JSON 404.
pub fn routes(state: AppState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    routes_on(state, Surface::All)
}

/// The routes one listener serves; the others answer 404 there, counted as unmatched.
pub fn routes_on(
    state: AppState,
    surface: Surface,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // hyper clones the whole filter tree for every request, so each route holds the state
    // behind one Arc: a clone is a reference count, not five deep copies.
    let state = Arc::new(state);
    let s = state.clone();
    let health = warp::path!("health")
        .and(warp::method())
        .map(move |m: Method| match surface.refuses("/health") {
            Some(refused) => refused,
            None => ("/health", handlers::health(&m)),
        });
    let authorization = || warp::header::optional::<String>("authorization");
    let ready = warp::path!("ready")
        .and(warp::method())
        .and(authorization())
        .then(move |m: Method, auth: Option<String>| {
            let s = s.clone();
            async move {
                if let Some(refused) = surface.refuses("/ready") {
                    return refused;
                }
                (
                    "/ready",
                    handlers::ready(&s, &m, auth.as_deref(), None).await,
                )
            }
        });
    let s = state.clone();
    let ready_one = warp::path!("ready" / String / String)
        .and(warp::method())
        .and(authorization())
        .then(
            move |ns: String, name: String, m: Method, auth: Option<String>| {
                let s = s.clone();
                async move {
                    if let Some(refused) = surface.refuses("/ready/{namespace}/{name}") {
                        return refused;
                    }
                    let policy = Some(PolicyKey::new(ns, name));
                    let response = handlers::ready(&s, &m, auth.as_deref(), policy).await;
                    ("/ready/{namespace}/{name}", response)
                }
            },
        );
    let s = state.clone();
    let metrics = warp::path!("metrics")
        .and(warp::method())
        .and(authorization())
        .then(move |m: Method, auth: Option<String>| {
            let s = s.clone();
            async move {
                if let Some(refused) = surface.refuses("/metrics") {
                    return refused;
                }
                ("/metrics", handlers::metrics(&s, &m, auth.as_deref()).await)
            }
        });
    let s = state.clone();
    let users = warp::path!("api" / "users" / ..)
        .and(warp::path::tail())
        .and(warp::method())
        .then(move |id: Tail, m: Method| {
            let s = s.clone();
            async move {
                if let Some(refused) = surface.refuses("/api/users/{id}") {
                    return refused;
                }
                // Boxed for the same reason as a token review (exposure.rs): a database query
                // is a large future that the probe routes should not carry.
                let user = Box::pin(handlers::user(&s, &m, id.as_str())).await;
                ("/api/users/{id}", user)
            }
        });
    let fallback = warp::any().map(|| (UNMATCHED_ROUTE, handlers::not_found()));

    let router = health
        .or(ready)
        .unify()
        .or(ready_one)
        .unify()
        .or(metrics)
        .unify()
        .or(users)
        .unify()
        .or(fallback)
        .unify();
    let metrics = state.metrics.http.clone();
    let draining = state.draining.clone();
    let routed = warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(router)
        .map(
            move |started: Instant,
                  method: Method,
                  path: FullPath,
                  (route, mut response): Routed| {
                if draining.load(Ordering::Acquire) {
                    // Keep-alive clients reconnect for their next request, so none is left
                    // waiting on a connection when the listener closes.
                    response.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                let elapsed = started.elapsed();
                let status = response.status().as_u16();
                let span = Span::current();
                if !span.is_disabled() {
                    record_response(&span, &method, route, status);
                }
                metrics.record(&method, route, response.status(), elapsed.as_secs_f64());
                macro_rules! access_log {
                    ($level:ident) => {
                        tracing::$level!(
                            target: "healthgate::access",
                            method = %method,
                            route,
                            path = path.as_str(),
                            status,
                            duration_ms = elapsed.as_secs_f64() * 1e3,
                            "request"
                        )
                    };
                }
                if PROBE_ROUTES.contains(&route) {
                    access_log!(debug);
                } else {
                    access_log!(info);
                }
                response
            },
        );
    routed
        .with(warp::trace(|info| {
            if crate::telemetry::exporting() {
                request_span(info)
            } else {
                Span::none()
            }
        }))
        .map(warp::Reply::into_response)
}

/// The server span of one request, with the OpenTelemetry HTTP semantic-convention attributes
/// known before routing; a W3C `traceparent` from the caller makes it part of the caller's trace.
/// Name, route and status are filled in by [`record_response`].
fn request_span(info: warp::trace::Info<'_>) -> Span {
    let (server_address, server_port) = match info.host().map(|h| h.rsplit_once(':')) {
        Some(Some((host, port))) => (Some(host), port.parse::<u16>().ok().map(i64::from)),
        Some(None) => (info.host(), None),
        None => (None, None),
    };
    let span = tracing::info_span!(
        target: "healthgate::http",
        "request",
        otel.name = %info.method(),
        otel.kind = "server",
        otel.status_code = field::Empty,
        http.request.method = %info.method(),
        http.route = field::Empty,
        http.response.status_code = field::Empty,
        url.path = info.path(),
        url.scheme = "http",
        network.protocol.name = "http",
        network.protocol.version = http_version(info.version()),
        server.address = server_address,
        server.port = server_port,
        user_agent.original = info.user_agent(),
        error.type = field::Empty,
    );
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&HeaderExtractor(info.request_headers()));
    // Without a (valid) traceparent the context is empty and the span starts a new trace.
    let _ = span.set_parent(parent);
    span
}

/// Names the server span `METHOD /route` and records the outcome. Only 5xx marks it an error:
/// a 4xx is the client's, per the HTTP semantic conventions for servers.
fn record_response(span: &Span, method: &Method, route: &'static str, status: u16) {
    if route != UNMATCHED_ROUTE {
        // The OpenTelemetry span has started by now (entering starts it), so it is renamed
        // directly: recording `otel.name` only names spans that have not started yet.
        span.context()
            .span()
            .update_name(format!("{method} {route}"));
        span.record("http.route", route);
    }
    // Integers as i64: tracing-opentelemetry turns u64 fields into strings.
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.to_string());
    }
}

fn http_version(version: warp::http::Version) -> &'static str {
    match version {
        warp::http::Version::HTTP_09 => "0.9",
        warp::http::Version::HTTP_10 => "1.0",
        warp::http::Version::HTTP_2 => "2",
        warp::http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish;
/// see [`conn`] for the limits and how connections are drained.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    surface: Surface,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let metrics = state.metrics.http.clone();
    conn::serve(
        listener,
        routes_on(state, surface),
        limits,
        metrics,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests;
