//! The accept loop and the life of each connection. healthgate runs these itself, rather than
//! through warp's `serve`, for what that lacks: a cap on open connections, a deadline for each
//! request head (a half-open connection was otherwise held forever), client-caused connection
//! errors kept out of the ERROR log, and a drain that never closes a connection under a request
//! the client has already sent.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};
use warp::Filter;
use warp::reply::Response;

use super::HttpMetrics;

/// What one client may hold: set by `--header-read-timeout` and `--max-connections`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a connection may take to deliver a complete request head, counted from its
    /// accept or from the end of its previous response (so it also ends idle keep-alive).
    pub header_read_timeout: Duration,
    /// Open connections at most; beyond it new connections wait in the listen backlog.
    pub max_connections: usize,
}

/// Once the listener has closed, a connection that has read nothing for this long is closed.
/// Connections with traffic close themselves (every response while draining says
/// `Connection: close`); a keep-alive client still sending is never cut off between requests.
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// After an accept error that is not a client's (EMFILE, ENFILE, ENOBUFS), as warp did: those
/// clear only when connections close, and retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `routes` on `listener` until `shutdown` resolves, then closes the listener and drains
/// the open connections.
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    limits: Limits,
    metrics: HttpMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = TowerToHyperService::new(warp::service(routes));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    let mut saturated = false;
    loop {
        if permits.available_permits() == 0 && !saturated {
            warn!(
                max_connections = limits.max_connections,
                "connection limit reached; new connections wait until one closes"
            );
        }
        saturated = permits.available_permits() == 0;
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_client_error(&e) => {
                    debug!(target: "healthgate::http", error = %e, "accept failed");
                    continue;
                }
                Err(e) => {
                    error!(target: "healthgate::http", error = %e, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let task = connection(
            stream,
            service.clone(),
            limits,
            closing.clone(),
            metrics.clone(),
            Some(permit),
        );
        connections.spawn(task);
    }
    // Closing the listener resets connections the kernel completed but nobody accepted, and a
    // client may have written its request on one already: take them (over the cap, if need
    // be), and answer them with `Connection: close`.
    while let Some(Ok((stream, _))) = listener.accept().now_or_never() {
        let permit = permits.clone().try_acquire_owned().ok();
        let task = connection(
            stream,
            service.clone(),
            limits,
            closing.clone(),
            metrics.clone(),
            permit,
        );
        connections.spawn(task);
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}

async fn connection<S, B>(
    stream: TcpStream,
    service: S,
    limits: Limits,
    closing: CancellationToken,
    metrics: HttpMetrics,
    _permit: Option<OwnedSemaphorePermit>,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    metrics.connections.inc();
    let _open = Open(&metrics);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        stream,
        activity: activity.clone(),
    });
    let service = Counted {
        inner: service,
        activity: activity.clone(),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
    // hyper's header-read timeout starts once HTTP/1 is detected; protocol detection and an
    // HTTP/2 connection's first request have no deadline of their own, so the first request
    // must start within the same time.
    let first_deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    let mut draining = false;
    let result = loop {
        let idle_deadline = tokio::time::Instant::from_std(activity.last_read() + DRAIN_IDLE);
        tokio::select! {
            // First, so bytes already received are read before the connection is judged idle.
            biased;
            result = conn.as_mut() => break result,
            _ = tokio::time::sleep_until(first_deadline), if !activity.started() => {
                if !activity.started() {
                    metrics.connection_error("header_timeout");
                    debug!(target: "healthgate::http", kind = "header_timeout", "connection closed: no request head in time");
                    return;
                }
            }
            _ = closing.cancelled(), if !draining => draining = true,
            _ = tokio::time::sleep_until(idle_deadline), if draining => {
                if activity.last_read().elapsed() >= DRAIN_IDLE {
                    // Lets a request in flight finish; an idle connection closes at once.
                    conn.as_mut().graceful_shutdown();
                    break conn.as_mut().await;
                }
            }
        }
    };
    if let Err(e) = result {
        let kind = error_kind(&*e);
        metrics.connection_error(kind);
        // The client's doing (hung up, reset, sent garbage, too slow): not healthgate's error.
        debug!(target: "healthgate::http", kind, error = %e, "connection error");
    }
}

/// Decrements the open-connections gauge however the connection ends.
struct Open<'a>(&'a HttpMetrics);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

fn is_client_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// The `kind` label of a connection error.
fn error_kind(error: &(dyn std::error::Error + 'static)) -> &'static str {
    if let Some(e) = error.downcast_ref::<hyper::Error>() {
        if e.is_incomplete_message() {
            return "incomplete";
        }
        if e.is_timeout() {
            return "header_timeout";
        }
        if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
            return "malformed";
        }
    }
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return match io.kind() {
                ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
                UnexpectedEof => "incomplete",
                _ => "other",
            };
        }
        source = e.source();
    }
    "other"
}

/// What the drain and the first-request deadline need to know about a connection.
struct Activity {
    born: Instant,
    /// Milliseconds after `born` of the last read that returned data.
    last_read_ms: AtomicU64,
    /// A request head has been read and handed to the routes.
    started: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            started: AtomicBool::new(false),
        }
    }

    fn read_now(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    fn last_read(&self) -> Instant {
        self.born + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed))
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }
}

/// The socket, noting when data arrives.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_now();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The routes, noting that a request has started.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R> hyper::service::Service<R> for Counted<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: R) -> Self::Future {
        self.activity.started.store(true, Ordering::Relaxed);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_caused_errors_get_their_kind() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(error_kind(&reset), "reset");
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(error_kind(&eof), "incomplete");
        let other = std::io::Error::other("odd");
        assert_eq!(error_kind(&other), "other");
    }
}
