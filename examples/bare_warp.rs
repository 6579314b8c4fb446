//! The benchmark's baseline: a bare warp server answering one static JSON 200 on every path —
//! `{"status":"ok"}`, or the bytes of a file (bench.sh passes /ready's body, so /ready is also
//! compared with a server that sends exactly as many bytes and does nothing else).
//!   bare_warp [ADDR] [BODY_FILE]

use warp::Filter;
use warp::http::header;
use warp::hyper::body::Bytes;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()
        .expect("an address");
    let body = match args.next() {
        Some(path) => Bytes::from(std::fs::read(&path).expect("a readable body file")),
        None => Bytes::from_static(br#"{"status":"ok"}"#),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let ok = warp::any().map(move || {
        let mut response = warp::reply::Response::new(body.clone().into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    });
    warp::serve(ok).incoming(listener).run().await;
}
