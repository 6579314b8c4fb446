//! The standalone binary end to end: the example API, metrics labels, policy errors, reload,
//! the `check` command and credential hygiene.

mod support;

use std::process::Command;
use std::time::Duration;

use support::healthgate::{BIN, Healthgate, request};
use support::policy;
use support::services::{PG_PASSWORD, Postgres, Redis, free_port};

fn policy(dependencies: &str) -> String {
    policy::fast("app", dependencies)
}

fn redis_dep(name: &str, url: &str) -> String {
    policy::redis(name, &policy::inline(url))
}

fn tcp_dep(name: &str, port: u16, critical: bool) -> String {
    policy::tcp(name, &format!("127.0.0.1:{port}"), critical)
}

#[test]
fn users_api_answers_200_404_400_503_and_metrics_use_route_templates() {
    let mut pg = Postgres::start();
    let redis = Redis::start();
    let hg = Healthgate::start(
        &policy(&redis_dep("redis", &redis.url())),
        &[("DATABASE_URL", &pg.url())],
        &[],
    );
    hg.wait_until("users table migrated", Duration::from_secs(15), |hg| {
        hg.get("/api/users/alice").status == 404
    });
    pg.psql("INSERT INTO users (id, email, created_at) VALUES ('alice', 'alice@example.com', '2026-01-02T03:04:05.123456Z')");

    let found = hg.get("/api/users/alice");
    assert_eq!(found.status, 200, "{}", found.body);
    let user = found.json();
    assert_eq!(user["id"], "alice");
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["created_at"], "2026-01-02T03:04:05.123456Z");

    let missing = hg.get("/api/users/bob");
    assert_eq!(
        (missing.status, missing.json()["error"].as_str()),
        (404, Some("user not found"))
    );

    let long = format!("/api/users/{}", "x".repeat(65));
    for bad in [
        "/api/users/",
        "/api/users/bad%20id",
        "/api/users/a.b",
        "/api/users/a/b",
        long.as_str(),
    ] {
        let reply = hg.get(bad);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(
            reply.json()["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid user id"),
            "{bad}"
        );
    }
    let post = request(hg.port, "POST", "/api/users/alice", Duration::from_secs(5)).unwrap();
    assert_eq!(post.status, 405);
    let unknown = hg.get("/no/such/path");
    assert_eq!(
        (unknown.status, unknown.json()["error"].as_str()),
        (404, Some("not found"))
    );

    // A query that fails for a reason other than availability is a 500, and is counted.
    pg.psql("ALTER TABLE users RENAME TO users_moved");
    let broken = hg.get("/api/users/alice");
    assert_eq!(broken.status, 500, "{}", broken.body);
    pg.psql("ALTER TABLE users_moved RENAME TO users");

    pg.stop();
    let unavailable = hg.get("/api/users/alice");
    assert_eq!(unavailable.status, 503, "{}", unavailable.body);
    assert_eq!(unavailable.json()["error"], "database unavailable");
    assert!(
        unavailable.elapsed < Duration::from_secs(3),
        "503 took {:?}",
        unavailable.elapsed
    );

    let metrics = hg.get("/metrics").body;
    for (status, min) in [
        ("200", 1.0),
        ("404", 1.0),
        ("400", 5.0),
        ("405", 1.0),
        ("500", 1.0),
        ("503", 1.0),
    ] {
        let series = format!(
            r#"http_requests_total{{method="{}",route="/api/users/{{id}}",status="{status}"}}"#,
            if status == "405" { "POST" } else { "GET" }
        );
        let value = hg
            .metric(&series)
            .unwrap_or_else(|| panic!("missing {series}\n{metrics}"));
        assert!(value >= min, "{series} = {value}");
    }
    assert!(
        hg.metric(r#"http_requests_total{method="GET",route="unmatched",status="404"}"#)
            .is_some_and(|v| v >= 1.0)
    );
    assert!(metrics.contains(r#"http_request_duration_seconds_bucket{method="GET",route="/api/users/{id}",status="200",le="0.005"}"#));
    assert!(
        !metrics.contains("route=\"/api/users/alice\"") && !metrics.contains("/no/such/path"),
        "raw paths in labels"
    );
    assert!(
        metrics.contains(r#"db_pool_connections{pool="app",state="idle"}"#),
        "{metrics}"
    );
    let access = hg
        .logs()
        .into_iter()
        .find(|l| l.contains("\"path\":\"/api/users/bob\""))
        .expect("access log line");
    let line: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(line["route"], "/api/users/{id}");
    assert_eq!(line["status"], 404);
    assert_eq!(line["method"], "GET");
    assert!(line["duration_ms"].is_f64());
}

#[test]
fn invalid_policies_fail_fast_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {name: bad}\nspec:\n  \
             dependencies:\n    - {name: q, type: redisQueue, redisQueue: {url: 'redis://h', key: q, degradedAbove: 10, downAbove: 5}}\n    \
             - {name: q, type: tcp, interval: '5', tcp: {address: 'h:1'}, colour: blue}\n",
            &[
                "spec.dependencies[1].colour: unknown field",
                "spec.dependencies[0].redisQueue.downAbove: 5 must be greater than degradedAbove (10)",
                "spec.dependencies[1].name: duplicate name \"q\"",
                "spec.dependencies[1].interval: \"5\": missing or unknown unit",
            ],
        ),
        (
            "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {name: bad}\nspec:\n  dependencies:\n    - {name: t, type: tcp, failureThreshold: many, tcp: {address: 'h:1'}}\n",
            &[
                "spec.dependencies[0].failureThreshold: invalid type: string (value not shown), expected i32",
            ],
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nspec: {dependencies: []}\n",
            &[
                "apiVersion: expected \"healthgate.dev/v1alpha1\"",
                "kind: expected \"HealthPolicy\"",
            ],
        ),
        ("spec: [unclosed\n", &["not valid YAML"]),
    ];
    for (index, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{index}.yaml"));
        std::fs::write(&path, text).unwrap();
        for command in ["serve", "check"] {
            let started = std::time::Instant::now();
            let out = Command::new(BIN)
                .args([command, "--policy", path.to_str().unwrap()])
                .args(if command == "serve" {
                    vec!["--listen", "127.0.0.1:0"]
                } else {
                    vec![]
                })
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} case {index}: {stderr}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{command} did not fail fast"
            );
            for want in *expected {
                assert!(
                    stderr.contains(want),
                    "{command} case {index}: missing {want:?} in\n{stderr}"
                );
            }
        }
    }
}

#[test]
fn editing_the_policy_file_adds_and_removes_checkers_and_survives_a_broken_edit() {
    let redis = Redis::start();
    let hg = Healthgate::start(&policy(&redis_dep("redis", &redis.url())), &[], &[]);
    hg.wait_ready_status(200, Duration::from_secs(10));
    let redis_runs = |hg: &Healthgate| {
        hg.metric(r#"healthgate_check_results_total{name="redis",namespace="",policy="app",reason="ok",result="ok",type="redis"}"#)
    };

    // Add a dependency: it appears; the untouched redis checker keeps running (its counter
    // keeps growing rather than restarting from zero).
    let before = redis_runs(&hg).unwrap();
    hg.write_policy(&policy(
        &(redis_dep("redis", &redis.url()) + &tcp_dep("redis-port", redis.port, true)),
    ));
    hg.wait_until("the new checker", Duration::from_secs(5), |hg| {
        hg.get("/ready").json()["checks"]["redis-port"]["status"] == "ok"
    });
    assert!(
        redis_runs(&hg).unwrap() >= before,
        "the redis checker was restarted"
    );
    let reload_log = hg
        .logs()
        .into_iter()
        .find(|l| l.contains("policy file reloaded"))
        .expect("reload logged");
    assert!(
        reload_log.contains("\"started\":[\"redis-port\"]")
            && reload_log.contains("\"stopped\":[]"),
        "{reload_log}"
    );

    // Remove one: it leaves /ready and its metric series disappear.
    hg.write_policy(&policy(&tcp_dep("redis-port", redis.port, true)));
    hg.wait_until("redis removed", Duration::from_secs(5), |hg| {
        hg.get("/ready").json()["checks"].get("redis").is_none()
    });
    hg.wait_until("series removed", Duration::from_secs(2), |hg| {
        redis_runs(hg).is_none()
    });
    assert!(!hg.get("/metrics").body.contains(r#"name="redis""#));

    // A broken edit is reported and the last good policy keeps running.
    hg.write_policy(&policy("    - {name: BAD NAME, type: tcp}\n"));
    hg.wait_until(
        "the broken edit is reported",
        Duration::from_secs(5),
        |hg| {
            hg.logs().iter().any(|l| {
                l.contains("policy file invalid") && l.contains("spec.dependencies[0].name")
            })
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let ready = hg.get("/ready");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["checks"]["redis-port"]["status"], "ok");
    // Start-up, reloads, a broken edit, checker starts and stops: all valid, strict JSON.
    hg.assert_logs_are_json();
}

#[test]
fn check_command_exit_codes_and_wait() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let run = |name: &str, deps: &str, extra: &[&str]| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, policy(deps)).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--policy", path.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{name}: stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code(), report)
    };
    let redis = Redis::start();
    let (code, report) = run("ok", &redis_dep("redis", &redis.url()), &[]);
    assert_eq!(
        (code, report["status"].as_str()),
        (Some(0), Some("ok")),
        "{report}"
    );
    let (code, report) = run(
        "degraded",
        &(redis_dep("redis", &redis.url()) + &tcp_dep("mail", closed, false)),
        &[],
    );
    assert_eq!(
        (code, report["status"].as_str()),
        (Some(1), Some("degraded")),
        "{report}"
    );
    let (code, report) = run("down", &tcp_dep("mail", closed, true), &[]);
    assert_eq!(
        (code, report["status"].as_str()),
        (Some(2), Some("down")),
        "{report}"
    );

    // --wait keeps checking until the dependency comes up (an init container's use).
    let late = free_port();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        std::net::TcpListener::bind(("127.0.0.1", late)).map(|l| {
            std::thread::sleep(Duration::from_secs(5));
            drop(l)
        })
    });
    let started = std::time::Instant::now();
    let (code, report) = run("wait", &tcp_dep("late", late, true), &["--wait", "20s"]);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400)
            && started.elapsed() < Duration::from_secs(10)
    );
    starter.join().unwrap().unwrap();
}

#[test]
fn credentials_never_appear_in_logs_ready_or_metrics() {
    const REDIS_PASSWORD: &str = "redis-Secret-41d2";
    const WRONG_PASSWORD: &str = "wrong-Secret-9a8b";
    const HTTP_PASSWORD: &str = "http-Secret-77c3";
    let pg = Postgres::start();
    let redis = Redis::start_with_password(Some(REDIS_PASSWORD));
    let closed = free_port();
    let wrong_pg = pg.url().replace(PG_PASSWORD, WRONG_PASSWORD);
    let wrong_redis = redis.url().replace(REDIS_PASSWORD, WRONG_PASSWORD);
    let deps = format!(
        "    - {{name: pg, type: postgres, postgres: {{urlFrom: {{env: PG_URL}}}}}}\n    \
         - {{name: pg-wrong, type: postgres, critical: false, postgres: {{url: '{wrong_pg}'}}}}\n    \
         - {{name: cache, type: redis, redis: {{urlFrom: {{env: REDIS_URL}}}}}}\n    \
         - {{name: cache-wrong, type: redis, critical: false, redis: {{url: '{wrong_redis}'}}}}\n    \
         - {{name: web, type: http, critical: false, http: {{url: 'http://user:{HTTP_PASSWORD}@127.0.0.1:{closed}/health?token={HTTP_PASSWORD}'}}}}\n"
    );
    let env = [
        ("PG_URL", pg.url()),
        ("REDIS_URL", redis.url()),
        ("DATABASE_URL", pg.url()),
        ("RUST_LOG", "debug".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hg = Healthgate::start(&policy(&deps), &env, &[]);
    hg.wait_until("all checks ran", Duration::from_secs(15), |hg| {
        let body = hg.get("/ready").json();
        ["pg", "pg-wrong", "cache", "cache-wrong", "web"]
            .iter()
            .all(|n| body["checks"][n]["checked_at"].is_string())
    });
    let ready = hg.get("/ready");
    let body = ready.json();
    assert_eq!(body["checks"]["pg"]["status"], "ok", "{body}");
    assert_eq!(body["checks"]["cache"]["status"], "ok", "{body}");
    assert_eq!(body["checks"]["pg-wrong"]["status"], "down");
    assert!(
        body["checks"]["pg-wrong"]["error"]
            .as_str()
            .unwrap()
            .contains("password authentication failed"),
        "{body}"
    );
    assert_eq!(body["checks"]["cache-wrong"]["status"], "down");
    hg.get("/api/users/x");

    // A policy file whose URL is malformed must not echo the password either.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), policy(&format!("    - {{name: p, type: postgres, postgres: {{url: 'mysql://app:{WRONG_PASSWORD}@h/db'}}}}\n"))).unwrap();
    let rejected = Command::new(BIN)
        .args(["check", "--policy", bad.path().to_str().unwrap()])
        .output()
        .unwrap();
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .env("DATABASE_URL", pg.url())
        .output()
        .unwrap();

    let everything = [
        hg.logs().join("\n"),
        ready.body,
        hg.get("/metrics").body,
        String::from_utf8_lossy(&rejected.stderr).into_owned(),
        String::from_utf8_lossy(&rejected.stdout).into_owned(),
        String::from_utf8_lossy(&help.stdout).into_owned(),
    ]
    .join("\n");
    assert!(everything.contains("pg-wrong"), "the outputs were captured");
    for secret in [PG_PASSWORD, REDIS_PASSWORD, WRONG_PASSWORD, HTTP_PASSWORD] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
}

#[test]
fn database_down_at_start_up_is_retried_until_it_comes_up() {
    let mut pg = Postgres::start();
    pg.stop();
    let closed = free_port();
    let hg = Healthgate::start(
        &policy(&tcp_dep("mail", closed, false)),
        &[("DATABASE_URL", &pg.url())],
        &[],
    );
    // Probes are served while the database is down; the API says why it cannot answer.
    assert_eq!(hg.get("/health").status, 200);
    let reply = hg.get("/api/users/alice");
    assert_eq!(
        (reply.status, reply.json()["error"].as_str()),
        (503, Some("database unavailable"))
    );
    hg.wait_until("a retried migration logged", Duration::from_secs(5), |hg| {
        hg.logs()
            .iter()
            .any(|l| l.contains("database migration failed; retrying"))
    });
    pg.restart();
    hg.wait_until("the migration to succeed", Duration::from_secs(20), |hg| {
        hg.get("/api/users/alice").status == 404
    });
    assert_eq!(pg.psql("SELECT count(*) FROM users"), "0");
}

#[test]
fn every_flag_can_come_from_the_environment() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy(&redis_dep("redis", &redis.url()))).unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("HEALTHGATE_POLICY", &path)
        .env("HEALTHGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("HEALTHGATE_DRAIN_DELAY", "0s")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        match support::healthgate::http_get(port, "/ready", Duration::from_secs(2)) {
            Ok(reply) if reply.status == 200 => break reply.status,
            _ if std::time::Instant::now() > deadline => {
                panic!("not ready on the port from HEALTHGATE_LISTEN")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(status, 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = std::time::Instant::now();
    assert!(child.wait().unwrap().success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "HEALTHGATE_DRAIN_DELAY=0s was not applied"
    );
}
