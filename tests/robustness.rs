//! Probes keep being answered when everything around healthgate misbehaves (issue 14): a stderr
//! nobody reads, pathological policy reloads on one CPU, keep-alive clients across SIGTERM,
//! half-open and half-sent connections; and the values and errors that used to mislead.
//!
//! The latency bounds are the issue's acceptance criteria, measured against the real binary by
//! a client on the same (2-core, shared) machine. Where one slow outlier from the scheduler
//! would fail a test on a loaded CI machine, the test allows a handful and says so; the old
//! code fails them by orders of magnitude (seconds-long stalls, timeouts, lost requests).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::healthgate::{Healthgate, Launch, bin, http_get};
use support::policy;
use support::services::{Postgres, Redis};

/// One test at a time: the latency bounds must not measure a neighbouring test's 2,000
/// connections or 5,000 probes on the same two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn redis_policy(redis: &Redis) -> String {
    policy::fast(
        "app",
        &policy::redis("redis", &policy::inline(&redis.url())),
    )
}

/// Lines of the access log (target healthgate::access) for `route`.
fn access_lines(hg: &Healthgate, route: &str) -> usize {
    let needle = format!("\"route\":\"{route}\"");
    hg.logs()
        .iter()
        .filter(|l| l.contains("\"target\":\"healthgate::access\"") && l.contains(&needle))
        .count()
}

#[test]
fn probes_stay_fast_when_nobody_reads_stderr() {
    let _serial = serial();
    let redis = Redis::start();
    // Probe access lines at DEBUG are on, so every probe writes a line: the 64 KiB pipe is full
    // after a few hundred, and from then on a blocking write would stall the worker threads.
    let hg = Healthgate::start_with(
        &redis_policy(&redis),
        &[("RUST_LOG", "info,healthgate::access=debug")],
        &[],
        Launch {
            stderr_unread: true,
            ..Launch::default()
        },
    );
    hg.wait_ready_status(200, Duration::from_secs(10));

    // Fill the sink first (8,192 queued lines plus the pipe's 64 KiB), so every timed probe
    // below meets a full queue; the old code stopped answering here, after ~300 probes.
    for i in 0..9_000 {
        let reply = http_get(hg.port, "/health", Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("warm-up probe {i} got no answer: {e}"));
        assert_eq!(reply.status, 200);
    }
    const PROBES: usize = 5_000;
    const BOUND: Duration = Duration::from_millis(10);
    let mut latencies = Vec::with_capacity(PROBES);
    for i in 0..PROBES {
        let path = if i % 2 == 0 { "/ready" } else { "/health" };
        let reply = http_get(hg.port, path, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("probe {i} ({path}) got no answer: {e}"));
        assert_eq!(reply.status, 200, "probe {i} ({path})");
        latencies.push(reply.elapsed);
    }
    latencies.sort();
    let over: Vec<_> = latencies.iter().filter(|l| **l > BOUND).collect();
    let max = latencies[PROBES - 1];
    let p99 = latencies[PROBES * 99 / 100];
    println!(
        "{PROBES} probes with stderr unread: p50 {:?}, p99 {p99:?}, max {max:?}, over {BOUND:?}: {}",
        latencies[PROBES / 2],
        over.len()
    );
    // Each within 10 ms; up to 5 of 5,000 may be preempted by other processes on a shared
    // 2-core machine, but none may stall (the old code stopped answering at all).
    assert!(
        over.len() <= 5 && max < Duration::from_millis(100),
        "{} probes over {BOUND:?}, max {max:?}",
        over.len()
    );
    let dropped = hg
        .metric("healthgate_log_lines_dropped_total")
        .expect("the dropped-lines counter is exported");
    assert!(
        dropped >= PROBES as f64,
        "every timed probe's line met a full queue and was dropped ({dropped})"
    );
}

#[test]
fn probe_routes_are_not_access_logged_at_info_but_are_counted() {
    let _serial = serial();
    let redis = Redis::start();
    let hg = Healthgate::start(&redis_policy(&redis), &[], &[]);
    hg.wait_ready_status(200, Duration::from_secs(10));
    for _ in 0..20 {
        hg.get("/health");
        hg.get("/ready");
        hg.get("/ready/ns/name");
    }
    hg.get("/api/users/alice");
    hg.get("/nowhere");
    hg.wait_until(
        "the other routes' access lines",
        Duration::from_secs(5),
        |hg| access_lines(hg, "/api/users/{id}") == 1 && access_lines(hg, "unmatched") == 1,
    );
    for route in ["/health", "/ready", "/ready/{namespace}/{name}"] {
        assert_eq!(access_lines(&hg, route), 0, "{route} is logged at INFO");
    }
    for route in ["/health", "/ready", "/ready/{namespace}/{name}"] {
        let counted: f64 = hg
            .get("/metrics")
            .body
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "http_requests_total{{method=\"GET\",route=\"{route}\""
                ))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(counted >= 20.0, "{route} counted {counted} times");
    }
    assert_eq!(
        hg.metric("healthgate_log_lines_dropped_total"),
        Some(0.0),
        "a read stderr drops nothing"
    );
}

/// A YAML alias bomb: ten levels of ten aliases, 10^10 nodes once expanded.
fn alias_bomb() -> String {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..10 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    text
}

#[test]
fn ready_stays_fast_on_one_cpu_while_hostile_policy_files_are_reloaded() {
    let _serial = serial();
    let redis = Redis::start();
    let good = redis_policy(&redis);
    // One CPU, as under a 1-CPU limit: whatever the reload does competes with the probes.
    let hg = Healthgate::start_with(
        &good,
        &[],
        &[],
        Launch {
            wrapper: &["taskset", "-c", "0"],
            ..Launch::default()
        },
    );
    hg.wait_ready_status(200, Duration::from_secs(10));

    // Every file is written before measuring and renamed into place during it, so the
    // measurement sees healthgate's reloads, not this test writing 50 MB.
    let staged = |name: &str, text: &str| {
        let path = hg.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let bomb = staged("bomb.yaml", &format!("{}{good}", alias_bomb()));
    // 50 MB: a valid policy padded with comment lines.
    let line = format!("# {}\n", "x".repeat(98));
    let huge = staged(
        "huge.yaml",
        &format!("{good}{}", line.repeat(50 * 1024 * 1024 / line.len())),
    );
    // An ordinary edit still applies afterwards (a schedule change keeps the last result, so
    // /ready stays 200 throughout).
    assert!(good.contains("interval: 300ms"));
    let edited = staged(
        "edited.yaml",
        &good.replace("interval: 300ms", "interval: 400ms"),
    );
    let logged = |hg: &Healthgate, what: &[&str]| {
        hg.logs().iter().any(|l| what.iter().all(|w| l.contains(w)))
    };

    let port = hg.port;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = http_get(port, "/ready", Duration::from_secs(5)).expect("/ready");
                assert_eq!(reply.status, 200, "the last good policy keeps running");
                latencies.push(reply.elapsed);
                std::thread::sleep(Duration::from_millis(2));
            }
            latencies
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::rename(bomb, hg.policy_path()).unwrap();
    hg.wait_until("the alias bomb rejected", Duration::from_secs(10), |hg| {
        logged(hg, &["policy file invalid", "over the parser's limits"])
    });
    std::fs::rename(huge, hg.policy_path()).unwrap();
    hg.wait_until("the 50 MB file rejected", Duration::from_secs(10), |hg| {
        logged(hg, &["policy file invalid", "over the limit of"])
    });
    std::fs::rename(edited, hg.policy_path()).unwrap();
    hg.wait_until("the good edit applied", Duration::from_secs(10), |hg| {
        logged(hg, &["policy file reloaded"])
    });
    stop.store(true, Ordering::Relaxed);
    let mut latencies = prober.join().unwrap();
    latencies.sort();
    let max = *latencies.last().unwrap();
    let over = latencies
        .iter()
        .filter(|l| **l >= Duration::from_millis(20))
        .count();
    println!(
        "/ready on one CPU during hostile reloads: {} requests, p50 {:?}, p99 {:?}, max {max:?}, slowest five {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        &latencies[latencies.len() - 5..]
    );
    // Max under 20 ms, allowing two requests of ~1,000 to be preempted by other processes on
    // that one shared core, and none near the old code's stalls (162 ms and 229 ms there).
    assert!(
        over <= 2 && max < Duration::from_millis(100),
        "/ready max {max:?}, {over} requests at 20 ms or more"
    );
}

/// A keep-alive HTTP/1.1 client that honours `Connection: close`.
struct KeepAlive {
    port: u16,
    stream: Option<TcpStream>,
}

enum Outcome {
    /// Answered; `true` if the server asked to close the connection.
    Answered(bool),
    /// The server no longer accepts connections: the end of the run, not a lost request.
    Refused,
    /// The request was written on an open connection and never answered.
    Lost(String),
}

impl KeepAlive {
    fn request(&mut self, path: &str) -> Outcome {
        if self.stream.is_none() {
            match TcpStream::connect(("127.0.0.1", self.port)) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    self.stream = Some(stream);
                }
                Err(_) => return Outcome::Refused,
            }
        }
        let stream = self.stream.as_mut().unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let answer = stream
            .write_all(request.as_bytes())
            .and_then(|()| read_response(stream));
        match answer {
            Ok(close) => {
                if close {
                    self.stream = None;
                }
                Outcome::Answered(close)
            }
            Err(e) => {
                self.stream = None;
                Outcome::Lost(e.to_string())
            }
        }
    }
}

/// Reads one response with a Content-Length body; returns whether it says `Connection: close`.
fn read_response(stream: &mut TcpStream) -> std::io::Result<bool> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("EOF after {} bytes of response", head.len()),
            ));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no content-length: {head}")))?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(head.contains("\r\nconnection: close\r\n"))
}

#[test]
fn keep_alive_clients_lose_no_request_across_sigterm() {
    let _serial = serial();
    let redis = Redis::start();
    let mut hg = Healthgate::start(&redis_policy(&redis), &[], &["--drain-delay", "1500ms"]);
    hg.wait_ready_status(200, Duration::from_secs(10));
    let port = hg.port;
    let clients: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = KeepAlive { port, stream: None };
                let (mut answered, mut closes, mut lost) = (0, 0, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    match client.request(if i % 2 == 0 { "/health" } else { "/ready" }) {
                        Outcome::Answered(close) => {
                            answered += 1;
                            closes += usize::from(close);
                        }
                        Outcome::Refused => break,
                        Outcome::Lost(e) => lost.push(e),
                    }
                    // Think time, as a real client has: the connection is idle most of the time.
                    std::thread::sleep(Duration::from_millis(2 + (i as u64 % 5) * 4));
                }
                (answered, closes, lost)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    hg.signal(Signal::SIGTERM);
    let (mut answered, mut closes, mut lost) = (0, 0, Vec::new());
    for client in clients {
        let (a, c, l) = client.join().unwrap();
        answered += a;
        closes += c;
        lost.extend(l);
    }
    println!(
        "keep-alive across SIGTERM: {answered} answered, {closes} with Connection: close, {} lost",
        lost.len()
    );
    assert!(lost.is_empty(), "requests lost: {lost:?}");
    assert!(answered > 500, "{answered} answered");
    assert!(
        closes >= 16,
        "draining responses say Connection: close ({closes})"
    );
    let status = hg.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

/// Time until the server closes `stream` (EOF or reset), at most `limit`.
fn closed_after(mut stream: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            // A 408 or other bytes before the close.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
}

#[test]
fn half_open_connections_are_closed_after_the_header_read_timeout() {
    let _serial = serial();
    let redis = Redis::start();
    let hg = Healthgate::start(
        &redis_policy(&redis),
        &[],
        &["--header-read-timeout", "1s", "--max-connections", "3"],
    );
    hg.wait_ready_status(200, Duration::from_secs(10));
    let partial: [&[u8]; 3] = [
        b"",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        // Half an HTTP/2 preface: still in protocol detection, before hyper's own timeout.
        b"PRI * HTTP/2.0\r\n",
    ];
    let opened = Instant::now();
    let streams: Vec<TcpStream> = partial
        .iter()
        .map(|bytes| {
            let mut stream = TcpStream::connect(("127.0.0.1", hg.port)).unwrap();
            stream.write_all(bytes).unwrap();
            stream
        })
        .collect();
    // The three hold every slot: a probe waits for one to be freed by the timeout.
    std::thread::sleep(Duration::from_millis(100));
    let probe = http_get(hg.port, "/health", Duration::from_secs(5)).expect("probe answered");
    assert_eq!(probe.status, 200);
    assert!(
        probe.elapsed >= Duration::from_millis(700),
        "the probe waited for a slot ({:?})",
        probe.elapsed
    );
    for (stream, bytes) in streams.into_iter().zip(partial) {
        let closed = closed_after(stream, Duration::from_secs(5))
            .map(|_| opened.elapsed())
            .unwrap_or_else(|| panic!("{:?} still open after 5 s", String::from_utf8_lossy(bytes)));
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
            "{:?} closed after {closed:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let timeouts = hg
        .metric(r#"healthgate_http_connection_errors_total{kind="header_timeout"}"#)
        .unwrap();
    assert!(timeouts >= 3.0, "{timeouts} header timeouts counted");
}

#[test]
fn clients_hanging_up_mid_request_are_counted_not_logged_as_errors() {
    let _serial = serial();
    let redis = Redis::start();
    let hg = Healthgate::start(&redis_policy(&redis), &[], &["--max-connections", "4096"]);
    hg.wait_ready_status(200, Duration::from_secs(10));
    const CONNECTIONS: usize = 2_000;
    let streams: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", hg.port)).unwrap();
            stream
                .write_all(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
                .unwrap();
            stream
        })
        .collect();
    hg.wait_until("every connection open", Duration::from_secs(10), |hg| {
        hg.metric("healthgate_http_connections")
            .is_some_and(|open| open >= CONNECTIONS as f64)
    });
    drop(streams);
    hg.wait_until("every hang-up counted", Duration::from_secs(15), |hg| {
        hg.metric(r#"healthgate_http_connection_errors_total{kind="incomplete"}"#)
            .is_some_and(|n| n >= CONNECTIONS as f64)
    });
    let errors: Vec<String> = hg
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        errors.is_empty(),
        "{} ERROR lines: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert_eq!(hg.get("/health").status, 200);
}

#[test]
fn out_of_bounds_durations_and_no_dependencies_are_rejected_with_field_paths() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {name: bad}\nspec:\n  \
         maxStaleness: 999999999h\n  defaults: {interval: 999999999h, timeout: 999999999h}\n  \
         dependencies: []\n",
    )
    .unwrap();
    // `check`, not `serve`: a build that accepts the file exits too instead of serving forever.
    let out = std::process::Command::new(bin())
        .args(["check", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for problem in [
        "spec.defaults.interval: must be at most 1h",
        "spec.defaults.timeout: must be at most 5m",
        "spec.dependencies: at least one dependency is required",
        "spec.maxStaleness: 999999999h must be at most 3h",
    ] {
        assert!(stderr.contains(problem), "missing {problem:?} in\n{stderr}");
    }
}

#[test]
fn a_wrong_password_is_an_auth_failure_even_with_a_short_timeout() {
    let _serial = serial();
    const REDIS_PASSWORD: &str = "redis-Right-5f2a";
    const WRONG: &str = "wrong-Pass-91c3";
    let redis = Redis::start_with_password(Some(REDIS_PASSWORD));
    let pg = Postgres::start();
    let wrong_redis = redis.url().replace(REDIS_PASSWORD, WRONG);
    let wrong_pg = pg.url().replace(support::services::PG_PASSWORD, WRONG);
    let deps = policy::redis("cache", &policy::inline(&redis.url()))
        + &policy::redis("cache-wrong", &policy::inline(&wrong_redis))
        + &policy::redis(
            "cache-none",
            &policy::inline(&format!("redis://127.0.0.1:{}/0", redis.port)),
        )
        + &policy::postgres("pg-wrong", &policy::inline(&wrong_pg));
    let hg = Healthgate::start(
        &policy::document("app", "interval: 300ms, timeout: 200ms", &deps),
        &[],
        &[],
    );
    hg.wait_until("every check ran twice", Duration::from_secs(10), |hg| {
        hg.metric(r#"healthgate_check_results_total{name="cache-wrong",namespace="",policy="app",reason="auth",result="down",type="redis"}"#)
            .is_some_and(|n| n >= 2.0)
            && hg.get("/ready").json()["checks"]["pg-wrong"]["reason"].is_string()
    });
    let body = hg.get("/ready").json();
    assert_eq!(body["checks"]["cache"]["status"], "ok", "{body}");
    for name in ["cache-wrong", "cache-none", "pg-wrong"] {
        assert_eq!(body["checks"][name]["status"], "down", "{name}: {body}");
        assert_eq!(body["checks"][name]["reason"], "auth", "{name}: {body}");
    }
    let text = body.to_string() + &hg.logs().join("\n") + &hg.get("/metrics").body;
    assert!(
        !text.contains(WRONG) && !text.contains(REDIS_PASSWORD),
        "a password leaked"
    );
}
