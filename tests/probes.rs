//! Readiness against real PostgreSQL and Redis servers that the tests stop, hang and restart.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::healthgate::Healthgate;
use support::policy;
use support::services::{Postgres, Redis};

const INTERVAL_MS: u64 = 300;
const TIMEOUT_MS: u64 = 500;
/// Scheduling noise on a loaded 2-core CI machine; bounds are asserted with this much slack.
const SLACK: Duration = Duration::from_millis(1500);

fn policy(dependencies: &str, defaults: &str) -> String {
    policy::document(
        "test",
        &format!("interval: {INTERVAL_MS}ms, timeout: {TIMEOUT_MS}ms{defaults}"),
        dependencies,
    )
}

fn pg_dep(name: &str) -> String {
    policy::postgres(name, &policy::env("PG_URL"))
}

fn redis_dep(name: &str) -> String {
    policy::redis(name, &policy::env("REDIS_URL"))
}

fn bound(failure_threshold: u64) -> Duration {
    Duration::from_millis(INTERVAL_MS * failure_threshold + TIMEOUT_MS) + SLACK
}

#[test]
fn redis_outage_downs_and_recovery_readies_without_restart() {
    let pg = Postgres::start();
    let mut redis = Redis::start();
    let deps = pg_dep("postgres") + &redis_dep("redis");
    let hg = Healthgate::start(
        &policy(&deps, ""),
        &[("PG_URL", &pg.url()), ("REDIS_URL", &redis.url())],
        &[],
    );
    hg.wait_ready_status(200, Duration::from_secs(10));
    let ready = hg.get("/ready").json();
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["checks"]["postgres"]["status"], "ok");
    assert_eq!(ready["checks"]["redis"]["status"], "ok");
    let checked_at = ready["checks"]["redis"]["checked_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(checked_at).is_ok(),
        "{checked_at}"
    );
    let pid = hg.pid();

    redis.stop();
    let took = hg.wait_ready_status(503, bound(1) * 2);
    assert!(took <= bound(1), "503 after {took:?}, bound {:?}", bound(1));
    let down = hg.get("/ready").json();
    assert_eq!(down["status"], "down");
    assert_eq!(down["checks"]["redis"]["status"], "down");
    assert_eq!(down["checks"]["redis"]["reason"], "connect", "{down}");
    assert!(
        down["checks"]["redis"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(down["checks"]["postgres"]["status"], "ok");
    assert_eq!(
        hg.metric(r#"dependency_up{name="redis",namespace="",policy="test"}"#),
        Some(0.0)
    );

    redis.restart();
    hg.wait_ready_status(200, Duration::from_secs(15));
    assert_eq!(hg.pid(), pid, "healthgate was not restarted");
    assert_eq!(
        hg.metric(r#"dependency_up{name="redis",namespace="",policy="test"}"#),
        Some(1.0)
    );

    // A restarted Postgres is picked up too, through the same pool.
    let mut pg = pg;
    pg.restart();
    let restarted = chrono::Utc::now();
    hg.wait_until(
        "an ok postgres check after the restart",
        Duration::from_secs(15),
        |hg| {
            let ready = hg.get("/ready").json();
            let postgres = &ready["checks"]["postgres"];
            postgres["status"] == "ok"
                && postgres["checked_at"]
                    .as_str()
                    .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                    .is_some_and(|at| at > restarted)
        },
    );
    hg.wait_ready_status(200, Duration::from_secs(5));
}

#[test]
fn a_hung_postgres_never_hangs_ready() {
    let pg = Postgres::start();
    let hg = Healthgate::start(
        &policy(&pg_dep("postgres"), ""),
        &[("PG_URL", &pg.url())],
        &[],
    );
    hg.wait_ready_status(200, Duration::from_secs(10));

    pg.pause();
    let mut slowest = Duration::ZERO;
    let took = hg.wait_until("/ready 503 with postgres frozen", bound(1) * 2, |hg| {
        let reply = hg.get("/ready");
        slowest = slowest.max(reply.elapsed);
        reply.status == 503
    });
    // Keep probing while it stays frozen: every answer still comes from the cache.
    for _ in 0..20 {
        let reply = hg.get("/ready");
        slowest = slowest.max(reply.elapsed);
        assert_eq!(reply.status, 503);
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        slowest < Duration::from_millis(50),
        "slowest /ready took {slowest:?}"
    );
    assert!(took <= bound(1), "503 after {took:?}");
    let body = hg.get("/ready").json();
    assert_eq!(body["checks"]["postgres"]["reason"], "timeout", "{body}");

    pg.resume();
    hg.wait_ready_status(200, Duration::from_secs(15));
}

#[test]
fn failure_and_success_thresholds_are_applied() {
    let mut redis = Redis::start();
    let hg = Healthgate::start(
        &policy(
            &redis_dep("redis"),
            ", failureThreshold: 3, successThreshold: 2",
        ),
        &[("REDIS_URL", &redis.url())],
        &[],
    );
    hg.wait_ready_status(200, Duration::from_secs(10));
    let down_results = |hg: &Healthgate| {
        hg.metric(r#"healthgate_check_results_total{name="redis",namespace="",policy="test",reason="connect",result="down",type="redis"}"#)
            .unwrap_or(0.0)
    };

    redis.stop();
    // The first failures are tolerated: still ready, with the error visible.
    hg.wait_until("a tolerated failure", Duration::from_secs(5), |hg| {
        let body = hg.get("/ready").json();
        body["checks"]["redis"]["error"].is_string() && body["status"] == "ok"
    });
    hg.wait_ready_status(503, bound(3) * 2);
    let failures = down_results(&hg);
    assert!(
        failures >= 3.0,
        "down after {failures} failures, threshold 3"
    );

    redis.restart();
    hg.wait_ready_status(200, Duration::from_secs(15));
    let successes_while_down = hg
        .metric(r#"healthgate_check_results_total{name="redis",namespace="",policy="test",reason="ok",result="ok",type="redis"}"#)
        .unwrap();
    // One success before the outage (at least) plus two to recover.
    assert!(successes_while_down >= 3.0, "{successes_while_down}");
}

/// `retryInterval` and `failureWindow` on a real Redis: healthy, it is checked at the interval's
/// pace; once a check fails, at the retry pace, so both the outage and the recovery show long
/// before the interval would allow.
#[test]
fn retry_interval_confirms_an_outage_and_a_recovery_between_intervals() {
    const INTERVAL: Duration = Duration::from_secs(4);
    const RETRY: Duration = Duration::from_millis(200);
    const TIMEOUT: Duration = Duration::from_millis(300);
    let mut redis = Redis::start();
    let hg = Healthgate::start(
        &policy::document(
            "test",
            "interval: 4s, retryInterval: 200ms, timeout: 300ms, \
             failureWindow: {failures: 3, of: 5}, successThreshold: 3",
            &redis_dep("redis"),
        ),
        &[("REDIS_URL", &redis.url())],
        &[],
    );
    hg.wait_ready_status(200, Duration::from_secs(10));
    let checks = |hg: &Healthgate| -> f64 {
        hg.get("/metrics")
            .body
            .lines()
            .filter(|l| {
                l.starts_with("healthgate_check_results_total{") && l.contains(r#"name="redis""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let pace = |hg: &Healthgate| {
        let before = checks(hg);
        std::thread::sleep(Duration::from_secs(2));
        checks(hg) - before
    };
    let healthy = pace(&hg);
    assert!(healthy <= 1.0, "{healthy} checks in 2 s while healthy");

    redis.stop();
    // The first failure comes within an interval; the window's other two at the retry pace.
    // At the interval's pace the third failure would come at least 2 × 3.6 s after the first.
    let bound = INTERVAL + TIMEOUT * 3 + SLACK;
    let took = hg.wait_ready_status(503, bound * 2);
    assert!(took <= bound, "503 after {took:?}, bound {bound:?}");
    let down = pace(&hg);
    assert!(down >= 4.0, "{down} checks in 2 s while down");

    redis.restart();
    // Three passes at the retry pace, plus the client's reconnect backoff (up to 1 s); at the
    // interval's pace three passes take at least 2 × 3.6 s.
    let bound = RETRY * 3 + TIMEOUT + Duration::from_secs(1) + SLACK;
    let took = hg.wait_ready_status(200, bound * 3);
    assert!(took <= bound, "200 after {took:?}, bound {bound:?}");
    std::thread::sleep(RETRY * 2);
    let healthy = pace(&hg);
    assert!(healthy <= 1.0, "{healthy} checks in 2 s after recovery");
}

#[test]
fn queue_depth_degrades_then_downs() {
    let redis = Redis::start();
    let deps = "    - {name: jobs, type: redisQueue, redisQueue: {urlFrom: {env: REDIS_URL}, key: jobs, degradedAbove: 5, downAbove: 10}}\n    \
                - {name: events, type: redisQueue, critical: false, redisQueue: {urlFrom: {env: REDIS_URL}, key: events, kind: stream, group: workers, degradedAbove: 1, downAbove: 2}}\n";
    redis.cmd::<String>(&["XGROUP", "CREATE", "events", "workers", "$", "MKSTREAM"]);
    let hg = Healthgate::start(&policy(deps, ""), &[("REDIS_URL", &redis.url())], &[]);
    hg.wait_ready_status(200, Duration::from_secs(10));
    assert_eq!(
        hg.get("/ready").json()["checks"]["jobs"]["detail"],
        "depth=0"
    );
    // Both queue checks use one Redis URL and so share one multiplexed connection, reused
    // across runs (the other client in the list is this query's own).
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * 3));
    let clients: String = redis.cmd(&["CLIENT", "LIST"]);
    assert_eq!(clients.lines().count(), 2, "{clients}");

    let push = |n: usize| {
        for _ in 0..n {
            redis.cmd::<i64>(&["RPUSH", "jobs", "job"]);
        }
    };
    push(6);
    hg.wait_ready_status(207, Duration::from_secs(5));
    let body = hg.get("/ready").json();
    assert_eq!(body["checks"]["jobs"]["status"], "degraded");
    assert_eq!(body["checks"]["jobs"]["reason"], "queue_depth");
    assert_eq!(body["checks"]["jobs"]["detail"], "depth=6");

    push(5);
    hg.wait_ready_status(503, Duration::from_secs(5));
    redis.cmd::<i64>(&["DEL", "jobs"]);
    hg.wait_ready_status(200, Duration::from_secs(5));

    // Stream consumer-group pending entries: three delivered, none acknowledged.
    for _ in 0..3 {
        redis.cmd::<String>(&["XADD", "events", "*", "k", "v"]);
    }
    redis.cmd::<redis::Value>(&[
        "XREADGROUP",
        "GROUP",
        "workers",
        "c1",
        "COUNT",
        "10",
        "STREAMS",
        "events",
        ">",
    ]);
    hg.wait_until("pending entries counted", Duration::from_secs(5), |hg| {
        hg.get("/ready").json()["checks"]["events"]["detail"] == "depth=3"
    });
    // Non-critical and above downAbove: the service is degraded, not down.
    let body = hg.get("/ready").json();
    assert_eq!(body["checks"]["events"]["status"], "down");
    assert_eq!(body["status"], "degraded");
}

#[test]
fn a_failing_non_critical_dependency_degrades() {
    let redis = Redis::start();
    let closed = support::services::free_port();
    let deps = redis_dep("redis")
        + &format!(
            "    - {{name: smtp, type: tcp, critical: false, tcp: {{address: '127.0.0.1:{closed}'}}}}\n"
        );
    let hg = Healthgate::start(&policy(&deps, ""), &[("REDIS_URL", &redis.url())], &[]);
    // 207 also comes before smtp's first result (a non-critical unknown degrades), and under load
    // redis's first result can come after smtp's, so wait for both before judging the rollup.
    hg.wait_until("smtp and redis checked", Duration::from_secs(10), |hg| {
        let body = hg.get("/ready").json();
        body["checks"]["smtp"]["status"] == "down" && body["checks"]["redis"]["status"] == "ok"
    });
    let body = hg.get("/ready").json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["smtp"]["status"], "down");
    assert_eq!(body["checks"]["smtp"]["critical"], false);
    assert_eq!(body["checks"]["redis"]["status"], "ok");
}

#[test]
fn custom_status_codes_are_used() {
    let closed = support::services::free_port();
    let deps = format!("    - {{name: smtp, type: tcp, tcp: {{address: '127.0.0.1:{closed}'}}}}\n");
    let text = policy(&deps, "").replace(
        "  defaults:",
        "  statusCodes: {ok: 204, degraded: 299, down: 500}\n  defaults:",
    );
    let hg = Healthgate::start(&text, &[], &[]);
    hg.wait_ready_status(500, Duration::from_secs(10));
}

#[test]
fn sigterm_drains_readiness_first_then_exits_cleanly() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let env = [("REDIS_URL", redis.url()), ("DATABASE_URL", pg.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut hg = Healthgate::start(
        &policy(&redis_dep("redis"), ""),
        &env,
        &["--drain-delay", "1500ms"],
    );
    hg.wait_ready_status(200, Duration::from_secs(10));
    hg.wait_until("users table migrated", Duration::from_secs(10), |hg| {
        hg.get("/api/users/nobody").status == 404
    });

    // Clients keep calling during the drain delay, as a load balancer does until it has seen
    // readiness fail; every one of those requests must be served.
    let port = hg.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut served, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match support::healthgate::http_get(port, "/health", Duration::from_secs(5)) {
                        Ok(reply) if reply.status == 200 => served += 1,
                        Ok(reply) => failed.push(format!("status {}", reply.status)),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (served, failed)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(200));
    let signalled = std::time::Instant::now();
    hg.signal(Signal::SIGTERM);
    hg.wait_until("draining /ready", Duration::from_millis(500), |hg| {
        hg.try_get("/ready")
            .is_ok_and(|r| r.status == 503 && r.json()["draining"] == true)
    });
    assert_eq!(
        hg.get("/health").status,
        200,
        "liveness stays up while draining"
    );
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut served, mut failed) = (0, Vec::new());
    for client in clients {
        let (s, f) = client.join().unwrap();
        served += s;
        failed.extend(f);
    }
    assert!(
        served > 10,
        "clients were served during the drain ({served})"
    );
    assert!(
        failed.is_empty(),
        "requests failed during the drain: {failed:?}"
    );

    // A request still in flight when the listener closes: the database hangs, so it takes the
    // 2 s query timeout, well past the end of the drain delay, and must still get its answer.
    pg.pause();
    let slow = std::thread::spawn(move || {
        support::healthgate::http_get(port, "/api/users/someone", Duration::from_secs(10))
    });
    let slow = slow
        .join()
        .unwrap()
        .expect("the in-flight request got a complete response");
    pg.resume();
    assert_eq!(slow.status, 503, "{}", slow.body);
    assert!(
        signalled.elapsed() > Duration::from_millis(1500),
        "the request outlived the drain delay"
    );
    assert!(
        support::healthgate::http_get(port, "/health", Duration::from_secs(1)).is_err(),
        "the listener is closed after the drain delay"
    );

    let status = hg.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    let logs = hg.logs().join("\n");
    assert!(
        logs.contains("shutdown requested") && logs.contains("\"stopped\""),
        "{logs}"
    );
}
