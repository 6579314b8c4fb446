//! Wiring and lifecycle of the commands: what `main` runs.
//!
//! Shutdown has one path: a signal sets the server draining (/ready → 503, and every response
//! says `Connection: close`), after the drain delay the listener closes, in-flight requests
//! finish and idle connections close, then checkers stop and pools close.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checks::TargetGuard;
use crate::cli::{CheckArgs, GuardArgs, ServeArgs};
use crate::engine::{Engine, Report};
use crate::health::Overall;
use crate::metrics::Metrics;
use crate::secret::SecretUrl;
use crate::server::exposure::Details;
use crate::server::users::Users;
use crate::server::{self, AppState, Exposure};
use crate::standalone;
use crate::{controller, first_sync};

/// Exit codes shared by `serve` and `check`.
pub const EXIT_OK: u8 = 0;
pub const EXIT_DEGRADED: u8 = 1;
pub const EXIT_DOWN_OR_INVALID: u8 = 2;

/// How often `check --wait` re-reads the cache.
const WAIT_POLL: Duration = Duration::from_millis(200);

pub async fn serve(args: ServeArgs) -> ExitCode {
    let ServeArgs {
        policy,
        listen,
        database_url,
        drain_delay,
        shutdown_timeout,
        header_read_timeout,
        max_connections,
        details,
        details_token_file,
        protect_metrics,
        metrics_listen,
        grpc_listen,
        guard,
        kube,
    } = args;
    let source = match policy {
        Some(path) => match standalone::load(&path) {
            Ok(policies) => Source::File { path, policies },
            Err(e) => {
                eprintln!("{e}");
                error!(path = %e.path.display(), problems = ?e.problems, "invalid policy file");
                return ExitCode::from(EXIT_DOWN_OR_INVALID);
            }
        },
        None => match controller::connect(*kube).await {
            Ok((client, settings, api_server)) => Source::Kubernetes {
                client,
                settings: Box::new(settings),
                api_server,
            },
            Err(e) => {
                eprintln!("{e}");
                error!(error = %e, "cannot start in Kubernetes mode; pass --policy FILE for standalone mode");
                return ExitCode::from(EXIT_DOWN_OR_INVALID);
            }
        },
    };
    let users = match Users::new(database_url.map(SecretUrl::new)) {
        Ok(users) => users,
        Err(e) => {
            eprintln!("{e}");
            error!(error = %e, "invalid database URL");
            return ExitCode::from(EXIT_DOWN_OR_INVALID);
        }
    };
    let exposure = match exposure(
        &source,
        details,
        protect_metrics,
        details_token_file.as_deref(),
    ) {
        Ok(exposure) => exposure,
        Err(e) => {
            eprintln!("{e}");
            error!(error = %e, "invalid detail exposure settings");
            return ExitCode::from(EXIT_DOWN_OR_INVALID);
        }
    };
    let (listener, metrics_listener, grpc_listener) =
        match bind_all(listen, metrics_listen, grpc_listen).await {
            Ok(listeners) => listeners,
            Err((address, purpose, e)) => {
                error!(listen = %address, error = %e, "cannot listen for {purpose}");
                return ExitCode::from(EXIT_DOWN_OR_INVALID);
            }
        };

    let target_guard = source.target_guard(guard);
    match &target_guard {
        Some(g) => info!(guard = ?g, "target guard on"),
        None => info!("target guard off (standalone mode without --deny-cidr or --allow-cidr)"),
    }
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::with_guard(metrics.checks.clone(), target_guard);
    let background = CancellationToken::new();
    let stop_accepting = CancellationToken::new();

    // The policy source: a file, or the Kubernetes controller. Either way `background` stops it.
    let (watcher, synced) = match source {
        Source::File { path, policies } => {
            let keys = policies.iter().map(|(key, _)| key.clone()).collect();
            for (key, policy) in policies {
                engine.apply(&key, policy);
            }
            let watcher = tokio::spawn(standalone::watch(
                path,
                engine.clone(),
                keys,
                background.clone(),
            ));
            (watcher, first_sync::Synced::open())
        }
        Source::Kubernetes {
            client, settings, ..
        } => {
            let (opener, synced) = first_sync::gate();
            let watcher = tokio::spawn(controller::run(
                client,
                engine.clone(),
                metrics.controller.clone(),
                *settings,
                opener,
                background.clone(),
            ));
            (watcher, synced)
        }
    };
    let state =
        AppState::new(engine.clone(), users.clone(), metrics, synced).with_exposure(exposure);
    let migration = tokio::spawn({
        let users = users.clone();
        let cancel = background.clone();
        async move { users.migrate_until_ready(cancel).await }
    });
    let signals = tokio::spawn(drain_on_signal(
        state.clone(),
        drain_delay,
        stop_accepting.clone(),
    ));

    info!(%listen, "serving");
    let limits = server::Limits {
        header_read_timeout,
        max_connections: max_connections as usize,
    };
    let main_surface = match metrics_listener {
        Some(_) => server::Surface::WithoutMetrics,
        None => server::Surface::All,
    };
    let metrics_server = metrics_listener.map(|listener| {
        info!(listen = %metrics_listen.expect("bound from it"), "serving /metrics");
        tokio::spawn(server::serve(
            listener,
            state.clone(),
            server::Surface::MetricsOnly,
            limits,
            stop_accepting.clone().cancelled_owned(),
        ))
    });
    let grpc_server = grpc_listener.map(|listener| {
        info!(listen = %grpc_listen.expect("bound from it"), "serving gRPC health");
        tokio::spawn(server::grpc_health::serve(
            listener,
            state.clone(),
            stop_accepting.clone(),
        ))
    });
    let server = tokio::spawn(server::serve(
        listener,
        state,
        main_surface,
        limits,
        stop_accepting.clone().cancelled_owned(),
    ));
    stop_accepting.cancelled().await;
    // The servers stop accepting at once; in-flight requests get `shutdown_timeout` to finish.
    let servers = async {
        let _ = server.await;
        for extra in [metrics_server, grpc_server].into_iter().flatten() {
            let _ = extra.await;
        }
    };
    if tokio::time::timeout(shutdown_timeout, servers)
        .await
        .is_err()
    {
        warn!(
            timeout_ms = shutdown_timeout.as_millis() as u64,
            "in-flight requests did not finish in time"
        );
    }
    background.cancel();
    let _ = tokio::join!(watcher, migration);
    signals.abort();
    engine.shutdown().await;
    users.close().await;
    info!("stopped");
    ExitCode::from(EXIT_OK)
}

type Listeners = (TcpListener, Option<TcpListener>, Option<TcpListener>);

/// Every listener before anything starts, so a taken port stops healthgate at once; the error
/// names the address and what it was for.
async fn bind_all(
    main: SocketAddr,
    metrics: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
) -> Result<Listeners, (SocketAddr, &'static str, std::io::Error)> {
    async fn bind(
        address: SocketAddr,
        purpose: &'static str,
    ) -> Result<TcpListener, (SocketAddr, &'static str, std::io::Error)> {
        TcpListener::bind(address)
            .await
            .map_err(|e| (address, purpose, e))
    }
    let main = bind(main, "HTTP").await?;
    let metrics = match metrics {
        Some(address) => Some(bind(address, "/metrics").await?),
        None => None,
    };
    let grpc = match grpc {
        Some(address) => Some(bind(address, "gRPC health").await?),
        None => None,
    };
    Ok((main, metrics, grpc))
}

/// `--details` and friends. Kubernetes mode defaults to `authorized`: its port is reachable by
/// anyone in the cluster and its policies' errors name other teams' hosts. Standalone defaults to
/// `always`: the file's author runs the process and reads its answers.
fn exposure(
    source: &Source,
    details: Option<Details>,
    protect_metrics: bool,
    token_file: Option<&Path>,
) -> Result<Exposure, server::exposure::Error> {
    let kubernetes = match source {
        Source::File { .. } => None,
        Source::Kubernetes {
            client, settings, ..
        } => Some((client.clone(), settings.scope.clone())),
    };
    let details = details.unwrap_or(match kubernetes {
        Some(_) => Details::Authorized,
        None => Details::Always,
    });
    Exposure::new(details, protect_metrics, token_file, kubernetes)
}

/// Where policies come from: `--policy FILE` (standalone) or the Kubernetes API.
enum Source {
    File {
        path: PathBuf,
        policies: standalone::PolicySet,
    },
    Kubernetes {
        client: kube::Client,
        settings: Box<controller::Settings>,
        api_server: Vec<SocketAddr>,
    },
}

impl Source {
    /// Kubernetes mode always guards: policy authors are not the operator. A policy file is the
    /// operator's own, so standalone mode guards only when asked to by a flag, and then allows
    /// loopback (the file's author can reach it anyway).
    fn target_guard(&self, flags: GuardArgs) -> Option<TargetGuard> {
        let GuardArgs {
            deny_cidr,
            allow_cidr,
        } = flags;
        match self {
            Source::File { .. } => standalone_guard(GuardArgs {
                deny_cidr,
                allow_cidr,
            }),
            Source::Kubernetes {
                settings,
                api_server,
                ..
            } => Some(TargetGuard::new(
                api_server.clone(),
                deny_cidr,
                allow_cidr,
                // A single policy is the sidecar case: loopback is the app's own pod.
                matches!(settings.scope, controller::Scope::Policy { .. }),
            )),
        }
    }
}

fn standalone_guard(flags: GuardArgs) -> Option<TargetGuard> {
    flags
        .given()
        .then(|| TargetGuard::new(Vec::new(), flags.deny_cidr, flags.allow_cidr, true))
}

/// First SIGTERM/SIGINT: drain, then stop accepting. A second signal skips the rest of the drain.
async fn drain_on_signal(
    state: AppState,
    drain_delay: Duration,
    stop_accepting: CancellationToken,
) {
    shutdown_signal().await;
    state.start_draining();
    info!(
        drain_delay_ms = drain_delay.as_millis() as u64,
        "shutdown requested; /ready now reports draining"
    );
    tokio::select! {
        _ = tokio::time::sleep(drain_delay) => {}
        _ = shutdown_signal() => warn!("second signal; skipping the rest of the drain delay"),
    }
    stop_accepting.cancel();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub async fn check(args: CheckArgs) -> ExitCode {
    let CheckArgs {
        policy,
        wait,
        guard,
    } = args;
    let policies = match standalone::load(&policy) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_DOWN_OR_INVALID);
        }
    };
    // Every checker gets one full attempt before the first verdict.
    let first_round = policies
        .iter()
        .flat_map(|(_, p)| &p.dependencies)
        .map(|d| d.schedule.timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_millis(100);
    let engine = Engine::with_guard(Metrics::new().checks, standalone_guard(guard));
    for (key, policy) in policies {
        engine.apply(&key, policy);
    }
    let started = Instant::now();
    let deadline = started + wait.unwrap_or_default().max(first_round);
    let report = loop {
        let snapshots = engine.snapshot_all();
        let report = Report::render_all(&snapshots);
        let settled = snapshots.iter().all(|(_, s)| s.all_checked())
            && (wait.is_none() || report.overall == Overall::Ok);
        if settled || Instant::now() >= deadline {
            break report;
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    engine.shutdown().await;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("a report serialises")
    );
    ExitCode::from(match report.overall {
        Overall::Ok => EXIT_OK,
        Overall::Degraded => EXIT_DEGRADED,
        Overall::Down => EXIT_DOWN_OR_INVALID,
    })
}
