//! The benchmark's baseline: a bare warp server answering a static JSON 200 on every path.
//! `scripts/bench.sh` compares healthgate's endpoints with it in the same run.

use warp::Filter;

#[tokio::main]
async fn main() {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()
        .expect("an address");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let ok = warp::any().map(|| warp::reply::json(&serde_json::json!({ "status": "ok" })));
    warp::serve(ok).incoming(listener).run().await;
}
