//! Any request path and method through the real route table: always an answer (no rejection,
//! no panic), and only the documented status codes.
#![no_main]

use std::sync::{Arc, OnceLock};

use healthgate::engine::Engine;
use healthgate::first_sync::Synced;
use healthgate::metrics::Metrics;
use healthgate::server::users::Users;
use healthgate::server::{AppState, routes};
use libfuzzer_sys::fuzz_target;

fn state() -> &'static (tokio::runtime::Runtime, AppState) {
    static STATE: OnceLock<(tokio::runtime::Runtime, AppState)> = OnceLock::new();
    STATE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let engine = Engine::new(metrics.checks.clone());
        let users = Users::new(None).unwrap();
        (runtime, AppState::new(engine, users, metrics, Synced::open()))
    })
}

fuzz_target!(|input: (u8, &str)| {
    let (method, path) = input;
    // warp::test panics on a URI that does not parse; real clients cannot send one either.
    if !path.starts_with('/') || path.parse::<warp::http::Uri>().is_err() {
        return;
    }
    let method = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"][usize::from(method) % 6];
    let (runtime, state) = state();
    let response = runtime.block_on(
        warp::test::request()
            .method(method)
            .path(path)
            .reply(&routes(state.clone())),
    );
    let status = response.status().as_u16();
    assert!(
        [200, 207, 400, 404, 405, 503].contains(&status),
        "{method} {path:?} → {status}"
    );
});
