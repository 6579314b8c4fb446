//! Clients shared by every checker: one sqlx pool per PostgreSQL or MySQL URL and one Redis
//! `ConnectionManager` per Redis URL (redis and redisQueue checks of the same server share it),
//! one HTTP client, one gRPC channel per address. All are created lazily, so building them never
//! blocks on a dependency, and all reconnect by themselves when a dependency comes back.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tonic::codegen::http::Uri;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tonic::transport::{Channel, Endpoint};

use super::SharedClient;
use super::client_tls::ClientTls;
use super::guard::{self, TargetGuard};
use crate::policy::Policy;
use crate::secret::SecretUrl;

/// A check needs one connection at a time; the second covers a check overlapping pool upkeep.
const CHECK_POOL_SIZE: u32 = 2;
/// Idle connections are recycled so a failed-over database is not probed over a stale socket.
const CHECK_POOL_IDLE: Duration = Duration::from_secs(300);
/// No connect retries inside one check: the checker already retries every interval, and a
/// retry's backoff (100 ms, then 200 ms) hid the first attempt's error behind the check timeout,
/// so a wrong password read as `timeout` under ~350 ms. A failed connection is retried on the
/// next check.
const REDIS_RETRIES: usize = 0;

pub type RedisClient = Result<ConnectionManager, String>;

#[derive(Default)]
pub struct Connections {
    postgres: Mutex<HashMap<SecretUrl, PgPool>>,
    mysql: Mutex<HashMap<SecretUrl, MySqlPool>>,
    redis: Mutex<HashMap<SecretUrl, RedisClient>>,
    grpc: Mutex<HashMap<String, Result<Channel, String>>>,
    http: Mutex<Option<reqwest::Client>>,
    guard: Option<Arc<TargetGuard>>,
}

impl Connections {
    /// With a guard, every probe built from these connections asks it before connecting.
    pub fn new(guard: Option<TargetGuard>) -> Self {
        Self {
            guard: guard.map(Arc::new),
            ..Self::default()
        }
    }

    pub fn guard(&self) -> Option<Arc<TargetGuard>> {
        self.guard.clone()
    }

    pub fn postgres(&self, url: &SecretUrl, timeout: Duration) -> Result<PgPool, String> {
        shared_pool(&self.postgres, url, |options| {
            postgres_pool(options, timeout)
        })
    }

    pub fn mysql(&self, url: &SecretUrl, timeout: Duration) -> Result<MySqlPool, String> {
        shared_pool(&self.mysql, url, |options| mysql_pool(options, timeout))
    }

    pub fn redis(&self, url: &SecretUrl) -> RedisClient {
        let mut clients = self.redis.lock().expect("connections lock");
        clients
            .entry(url.clone())
            .or_insert_with(|| redis_manager(url))
            .clone()
    }

    pub fn grpc(&self, address: &str, timeout: Duration) -> Result<Channel, String> {
        let mut channels = self.grpc.lock().expect("connections lock");
        channels
            .entry(address.to_string())
            .or_insert_with(|| {
                let endpoint = Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| format!("invalid gRPC address {address:?}: {e}"))?
                    .connect_timeout(timeout);
                Ok(match &self.guard {
                    Some(guard) => endpoint.connect_with_connector_lazy(GrpcConnector {
                        guard: Some(guard.clone()),
                        tls: None,
                    }),
                    None => endpoint.connect_lazy(),
                })
            })
            .clone()
    }

    pub fn http_client(&self) -> reqwest::Client {
        self.http
            .lock()
            .expect("connections lock")
            .get_or_insert_with(|| {
                http_builder()
                    .build()
                    .expect("a client without custom TLS roots always builds")
            })
            .clone()
    }

    /// Drops clients no policy uses any more, closing their connections.
    pub fn retain<'a>(&self, policies: impl Iterator<Item = &'a Policy>) {
        let mut urls = HashSet::new();
        let mut addresses = HashSet::new();
        for dep in policies.flat_map(|p| p.dependencies.iter()) {
            match dep.target.shared_client() {
                Some(SharedClient::Url(url)) => {
                    urls.insert(url.clone());
                }
                Some(SharedClient::Address(address)) => {
                    addresses.insert(address.to_string());
                }
                None => {}
            }
        }
        // Dropping the last handle of a pool or manager closes its connections.
        self.postgres
            .lock()
            .expect("connections lock")
            .retain(|url, _| urls.contains(url));
        self.mysql
            .lock()
            .expect("connections lock")
            .retain(|url, _| urls.contains(url));
        self.redis
            .lock()
            .expect("connections lock")
            .retain(|url, _| urls.contains(url));
        self.grpc
            .lock()
            .expect("connections lock")
            .retain(|address, _| addresses.contains(address));
    }

    /// Closes every pool; used once at shutdown.
    pub async fn close(&self) {
        let pools: Vec<PgPool> = self
            .postgres
            .lock()
            .expect("connections lock")
            .drain()
            .map(|(_, p)| p)
            .collect();
        for pool in pools {
            pool.close().await;
        }
        let pools: Vec<MySqlPool> = self
            .mysql
            .lock()
            .expect("connections lock")
            .drain()
            .map(|(_, p)| p)
            .collect();
        for pool in pools {
            pool.close().await;
        }
        self.redis.lock().expect("connections lock").clear();
        self.grpc.lock().expect("connections lock").clear();
    }
}

/// The pool every check of `url` shares, made on first use from the URL's connect options.
fn shared_pool<O, P>(
    pools: &Mutex<HashMap<SecretUrl, P>>,
    url: &SecretUrl,
    build: impl FnOnce(O) -> P,
) -> Result<P, String>
where
    O: std::str::FromStr<Err = sqlx::Error>,
    P: Clone,
{
    let mut pools = pools.lock().expect("connections lock");
    if let Some(pool) = pools.get(url) {
        return Ok(pool.clone());
    }
    let options: O = url
        .expose()
        .parse()
        .map_err(|e: sqlx::Error| url.scrub(&e.to_string()))?;
    let pool = build(options);
    pools.insert(url.clone(), pool.clone());
    Ok(pool)
}

/// A check's PostgreSQL pool, shared or pinned to an address (see [`super::guard::ClientSource`]).
/// Lazy: it connects on the first check.
pub fn postgres_pool(options: PgConnectOptions, timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(CHECK_POOL_SIZE)
        .min_connections(0)
        .acquire_timeout(timeout)
        .idle_timeout(CHECK_POOL_IDLE)
        // `SELECT 1` is the test; a ping before it would double the statements per check.
        .test_before_acquire(false)
        .connect_lazy_with(options.application_name("healthgate"))
}

/// A check's MySQL pool, shared or pinned; the same sizing as [`postgres_pool`], for the same
/// reasons. Lazy: it connects on the first check.
pub fn mysql_pool(options: MySqlConnectOptions, timeout: Duration) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(CHECK_POOL_SIZE)
        .min_connections(0)
        .acquire_timeout(timeout)
        .idle_timeout(CHECK_POOL_IDLE)
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

/// A check's Redis connection manager, shared or pinned. Lazy: it connects on the first command.
pub fn redis_manager(url: &SecretUrl) -> RedisClient {
    let client = redis::Client::open(url.expose()).map_err(|e| url.scrub(&e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(REDIS_RETRIES)
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| url.scrub(&e.to_string()))
}

/// Every HTTP check's client settings, guarded or not.
pub fn http_builder() -> reqwest::ClientBuilder {
    // Several crates here enable rustls with ring; naming the provider removes the ambiguity
    // that otherwise makes reqwest panic. An error means one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("healthgate/", env!("CARGO_PKG_VERSION")))
        // A health endpoint that redirects is answering; following it hides that. It also keeps
        // the target guard's job to one host: a redirect is never a second connection.
        .redirect(reqwest::redirect::Policy::none())
}

/// A gRPC channel of its own for a check with `tls` settings (not shared: the settings are
/// part of the check). Lazy, like the shared ones.
pub fn grpc_tls_channel(
    address: &str,
    timeout: Duration,
    guard: Option<Arc<TargetGuard>>,
    tls: &ClientTls,
) -> Result<Channel, String> {
    let config = tls.config(&[b"h2"])?;
    // The scheme only tells tonic where to connect: the connector below does the TLS.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("invalid gRPC address {address:?}: {e}"))?
        .connect_timeout(timeout);
    Ok(endpoint.connect_with_connector_lazy(GrpcConnector {
        guard,
        tls: Some(Arc::new(config)),
    }))
}

/// tonic's connector for a guarded or TLS gRPC channel. Guarded, it resolves the channel's host
/// on every (re)connect, asks the guard about every address and connects to those addresses
/// only. With TLS it then does the handshake itself (SNI and verification by the host name),
/// offering ALPN h2, so the guard and the TLS settings apply to the same connection.
#[derive(Clone)]
struct GrpcConnector {
    guard: Option<Arc<TargetGuard>>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type GrpcStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

impl tonic::codegen::Service<Uri> for GrpcConnector {
    type Response = TokioIo<GrpcStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (guard, tls) = (self.guard.clone(), self.tls.clone());
        Box::pin(async move {
            let host = uri.host().ok_or("gRPC address without a host")?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = match &guard {
                Some(guard) => {
                    let addresses = match guard::resolve(guard, host, port).await {
                        Ok(addresses) => addresses,
                        Err(guard::ResolveError::Blocked(b)) => return Err(Box::new(b) as BoxError),
                        Err(other) => return Err(other.to_string().into()),
                    };
                    TcpStream::connect(&addresses[..]).await?
                }
                None => TcpStream::connect((host.trim_matches(['[', ']']), port)).await?,
            };
            // tonic's own connector sets it too: health RPCs are tiny and latency-bound.
            stream.set_nodelay(true)?;
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Either::Left(stream)));
            };
            let name =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await?;
            Ok(TokioIo::new(Either::Right(stream)))
        })
    }
}
