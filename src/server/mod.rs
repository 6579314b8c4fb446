//! The embedded HTTP server: probes, metrics and the example API. Every route produces a
//! `(route template, response)` pair so metrics and access logs are labelled by template and
//! count every response, 404s and 500s included.

mod handlers;
pub mod users;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;
use tracing::info;
use warp::Filter;
use warp::http::Method;
use warp::path::{FullPath, Tail};
use warp::reply::Response;

use crate::engine::Engine;
use crate::metrics::Metrics;
use users::Users;

/// Route label for requests no route matched; raw paths never become label values.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Everything the handlers read. Cheap to clone: all shared.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub users: Users,
    pub draining: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(engine: Engine, users: Users) -> Self {
        Self {
            metrics: engine.metrics().clone(),
            engine,
            users,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

type Routed = (&'static str, Response);

/// All routes, instrumented. Never rejects: unknown paths get a JSON 404.
pub fn routes(state: AppState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let s = state.clone();
    let health = warp::path!("health")
        .and(warp::method())
        .map(|m: Method| ("/health", handlers::health(&m)));
    let ready = warp::path!("ready")
        .and(warp::method())
        .map(move |m: Method| ("/ready", handlers::ready(&s, &m, None)));
    let s = state.clone();
    let ready_one = warp::path!("ready" / String / String)
        .and(warp::method())
        .map(move |ns: String, name: String, m: Method| {
            (
                "/ready/{namespace}/{name}",
                handlers::ready(&s, &m, Some((ns, name))),
            )
        });
    let s = state.clone();
    let metrics = warp::path!("metrics")
        .and(warp::method())
        .map(move |m: Method| ("/metrics", handlers::metrics(&s, &m)));
    let s = state.clone();
    let users = warp::path!("api" / "users" / ..)
        .and(warp::path::tail())
        .and(warp::method())
        .then(move |id: Tail, m: Method| {
            let s = s.clone();
            async move { ("/api/users/{id}", handlers::user(&s, &m, id.as_str()).await) }
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
    let metrics = state.metrics.clone();
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(router)
        .map(
            move |started: Instant, method: Method, path: FullPath, (route, response): Routed| {
                let elapsed = started.elapsed();
                let status = response.status().as_u16();
                metrics.record_request(method.as_str(), route, status, elapsed.as_secs_f64());
                info!(
                    target: "healthgate::access",
                    method = %method,
                    route,
                    path = path.as_str(),
                    status,
                    duration_ms = elapsed.as_secs_f64() * 1e3,
                    "request"
                );
                response
            },
        )
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
