//! The target guard (issue 15 item 2) on the real binary: checks aimed at cloud metadata
//! (169.254.169.254), the API server, a denied CIDR or (in Kubernetes mode) loopback report
//! `down` with reason `blocked`, and their listeners accept no connection at all.
//!
//! Every healthgate here runs in a network namespace of the test's own holding only `lo`
//! (support/netns.rs): the "metadata" and "tenant" addresses are on `lo` too, with listeners
//! that count connections, so no packet can leave the machine even if the guard failed open.
//! Kubernetes mode reaches the shared API server through a forwarder on the namespace's
//! loopback, which is then the API server's address as healthgate sees it.

mod support;

use std::io::copy;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use support::healthgate::Healthgate;
use support::kube_env::{SETTLE, env};
use support::netns::{CountingListener, HTTP_OK, Netns};
use support::policy;
use support::services::{Postgres, Redis};

const METADATA: &str = "169.254.169.254";
const TENANT: &str = "10.1.2.3";
/// A second loopback address: allowed or not by the rules under test, unlike 127.0.0.1.
const LOCAL: &str = "127.0.0.2";
/// The password in every URL: it must never show in /ready, status or logs.
const PASSWORD: &str = "s3cr3t-pw";
/// Enough rounds of 300 ms checks that a guard letting a connection through would have shown.
const ROUNDS: Duration = Duration::from_millis(1500);

fn http(name: &str, url: &str) -> String {
    policy::dep(name, &format!("type: http, http: {{url: '{url}'}}"))
}

fn grpc(name: &str, address: &str) -> String {
    policy::dep(name, &format!("type: grpc, grpc: {{address: '{address}'}}"))
}

fn tls(name: &str, address: &str) -> String {
    policy::dep(name, &format!("type: tls, tls: {{address: '{address}'}}"))
}

/// A lookup asked of `nameserver`: the nameserver is the address judged.
fn dns(name: &str, nameserver: &str) -> String {
    policy::dep(
        name,
        &format!("type: dns, dns: {{name: db.example.test, nameserver: '{nameserver}'}}"),
    )
}

fn queue(name: &str, url: &str) -> String {
    policy::dep(
        name,
        &format!("type: redisQueue, redisQueue: {{url: '{url}', key: jobs}}"),
    )
}

/// Waits until every named check has a result with `status`, then returns the /ready body.
fn wait_checks(hg: &Healthgate, path: &str, expected: &[(&str, &str)]) -> Value {
    let started = std::time::Instant::now();
    loop {
        let body: Value = hg
            .try_get(path)
            .ok()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or_default();
        if expected
            .iter()
            .all(|(name, status)| body["checks"][name]["status"] == *status)
        {
            return body;
        }
        assert!(
            started.elapsed() < SETTLE,
            "timed out waiting for {expected:?}:\n{body:#}\nlogs:\n{}",
            hg.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_blocked(body: &Value, name: &str, rule: &str) {
    let check = &body["checks"][name];
    assert_eq!(check["status"], "down", "{name}: {check:#}");
    assert_eq!(check["reason"], "blocked", "{name}: {check:#}");
    let error = check["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(rule) && error.ends_with("blocked by the target guard"),
        "{name}: {error:?} should name {rule:?}"
    );
}

#[test]
fn standalone_flags_block_metadata_denied_cidrs_and_names_without_connecting() {
    let netns = Netns::new(&[METADATA, TENANT]);
    let (metadata, tenant, named, control, redirect) = netns.enter(|| {
        let metadata = CountingListener::start(METADATA, HTTP_OK);
        let redirect_to = format!(
            "HTTP/1.1 302 Found\r\nLocation: http://{METADATA}:{}/latest/meta-data/\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            metadata.port()
        );
        (
            metadata,
            CountingListener::start(TENANT, HTTP_OK),
            // `localhost` is 127.0.0.1 (/etc/hosts); --deny-cidr below denies it by address.
            CountingListener::start("127.0.0.1", HTTP_OK),
            CountingListener::start(LOCAL, HTTP_OK),
            CountingListener::start(LOCAL, &redirect_to),
        )
    });
    // Real servers on an allowed address: guarded postgres and redis checks connect to the
    // address the guard judged, and work.
    let (pg, redis) = netns.enter(|| (Postgres::start_on(LOCAL), Redis::start_on(LOCAL)));
    let m = metadata.port();
    let deps = [
        policy::tcp("meta-tcp", &format!("{METADATA}:{m}"), true),
        http(
            "meta-http",
            &format!("http://{METADATA}:{m}/latest/meta-data/"),
        ),
        // An IPv4-mapped IPv6 literal reaches the same address and must be judged as it.
        http(
            "meta-http-mapped",
            &format!("http://[::ffff:{METADATA}]:{m}/"),
        ),
        grpc("meta-grpc", &format!("{METADATA}:{m}")),
        tls("meta-tls", &format!("{METADATA}:{m}")),
        policy::dep(
            "meta-mysql",
            &format!("type: mysql, mysql: {{url: 'mysql://app:{PASSWORD}@{METADATA}:{m}/app'}}"),
        ),
        dns("meta-dns", &format!("{METADATA}:{m}")),
        policy::postgres(
            "meta-postgres",
            &policy::inline(&format!("postgres://app:{PASSWORD}@{METADATA}:{m}/app")),
        ),
        // sqlx lets `?host=` override the URL's host: the guard must judge that one.
        policy::postgres(
            "meta-postgres-query-host",
            &policy::inline(&format!(
                "postgres://app:{PASSWORD}@{LOCAL}:{}/app?host={METADATA}",
                control.port()
            )),
        ),
        policy::redis(
            "meta-redis",
            &policy::inline(&format!("redis://:{PASSWORD}@{METADATA}:{m}/0")),
        ),
        queue(
            "meta-queue",
            &format!("redis://:{PASSWORD}@{METADATA}:{m}/0"),
        ),
        policy::tcp("tenant-tcp", &format!("{TENANT}:{}", tenant.port()), true),
        http(
            "tenant-http",
            &format!("http://user:{PASSWORD}@{TENANT}:{}/", tenant.port()),
        ),
        dns("tenant-dns", TENANT),
        // Names go through the resolver: judged by the addresses they resolve to.
        policy::tcp("name-tcp", &format!("localhost:{}", named.port()), true),
        http("name-http", &format!("http://localhost:{}/", named.port())),
        grpc("name-grpc", &format!("localhost:{}", named.port())),
        tls("name-tls", &format!("localhost:{}", named.port())),
        // An allowed server redirecting to metadata: redirects are not followed.
        http("redirect", &format!("http://{LOCAL}:{}/", redirect.port())),
        policy::tcp("control-tcp", &format!("{LOCAL}:{}", control.port()), true),
        // Reaches the listener (which speaks no TLS), so it fails, but not blocked.
        tls("control-tls", &format!("{LOCAL}:{}", control.port())),
        http(
            "control-http",
            &format!("http://{LOCAL}:{}/", control.port()),
        ),
        policy::postgres("control-postgres", &policy::inline(&pg.url())),
        policy::redis("control-redis", &policy::inline(&redis.url())),
        queue("control-queue", &redis.url()),
    ]
    .concat();
    let args = [
        "--deny-cidr",
        "10.0.0.0/8",
        // Repeated and comma-separated both work.
        "--deny-cidr",
        "127.0.0.1/32,::1/128",
    ];
    let hg = netns.enter(|| Healthgate::start(&policy::fast("guarded", &deps), &[], &args));

    let blocked = [
        (
            "meta-tcp",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-http",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-http-mapped",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-grpc",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-tls",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-dns",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-mysql",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-postgres",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-postgres-query-host",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-redis",
            "169.254.169.254 is link-local (denied by default)",
        ),
        (
            "meta-queue",
            "169.254.169.254 is link-local (denied by default)",
        ),
        ("tenant-tcp", "10.1.2.3 is in --deny-cidr 10.0.0.0/8"),
        ("tenant-http", "10.1.2.3 is in --deny-cidr 10.0.0.0/8"),
        ("tenant-dns", "10.1.2.3 is in --deny-cidr 10.0.0.0/8"),
        ("name-tcp", "127.0.0.1 is in --deny-cidr 127.0.0.1/32"),
        ("name-http", "127.0.0.1 is in --deny-cidr 127.0.0.1/32"),
        ("name-grpc", "127.0.0.1 is in --deny-cidr 127.0.0.1/32"),
        ("name-tls", "127.0.0.1 is in --deny-cidr 127.0.0.1/32"),
    ];
    let mut expected: Vec<(&str, &str)> = blocked.iter().map(|(n, _)| (*n, "down")).collect();
    expected.extend([
        ("redirect", "down"),
        ("control-tls", "down"),
        ("control-tcp", "ok"),
        ("control-http", "ok"),
        ("control-postgres", "ok"),
        ("control-redis", "ok"),
        ("control-queue", "ok"),
    ]);
    netns.enter(|| wait_checks(&hg, "/ready", &expected));
    std::thread::sleep(ROUNDS);
    let body = netns.enter(|| hg.get("/ready").json());

    for (name, rule) in blocked {
        assert_blocked(&body, name, rule);
    }
    // The 302 is the answer: not followed, so nothing reached the metadata listener through it.
    assert_eq!(body["checks"]["redirect"]["reason"], "status", "{body:#}");
    assert_eq!(
        body["checks"]["redirect"]["error"], "unexpected status 302",
        "{body:#}"
    );
    assert_ne!(
        body["checks"]["control-tls"]["reason"], "blocked",
        "{body:#}"
    );
    assert_eq!(metadata.accepted(), 0, "connections to {METADATA}");
    assert_eq!(tenant.accepted(), 0, "connections to {TENANT}");
    assert_eq!(named.accepted(), 0, "connections to 127.0.0.1");
    // The counters do count: allowed checks connected, several times.
    assert!(
        redirect.accepted() >= 2,
        "redirect: {}",
        redirect.accepted()
    );
    assert!(control.accepted() >= 4, "control: {}", control.accepted());

    let logs = hg.logs().join("\n");
    assert!(!body.to_string().contains(PASSWORD), "{body:#}");
    assert!(!logs.contains(PASSWORD), "a password in the logs");
}

#[test]
fn standalone_without_flags_trusts_its_file() {
    let netns = Netns::new(&[METADATA]);
    let metadata = netns.enter(|| CountingListener::start(METADATA, HTTP_OK));
    let deps = [
        policy::tcp("meta-tcp", &metadata.address.to_string(), true),
        http("meta-http", &format!("http://{}/", metadata.address)),
    ]
    .concat();
    let hg = netns.enter(|| Healthgate::start(&policy::fast("trusted", &deps), &[], &[]));
    let body =
        netns.enter(|| wait_checks(&hg, "/ready", &[("meta-tcp", "ok"), ("meta-http", "ok")]));
    assert_eq!(body["status"], "ok", "{body:#}");
    assert!(metadata.accepted() >= 2, "{}", metadata.accepted());
}

/// Forwards connections accepted on `listener` (inside the namespace) to `target` (on the
/// host's loopback). Call it outside [`Netns::enter`]: the thread, and every socket it opens,
/// stays in the host namespace.
fn forward(listener: TcpListener, target: String) {
    std::thread::spawn(move || {
        for inside in listener.incoming().map_while(Result::ok) {
            let Ok(outside) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut in_read, mut out_write) =
                (inside.try_clone().unwrap(), outside.try_clone().unwrap());
            std::thread::spawn(move || copy(&mut in_read, &mut out_write));
            let (mut out_read, mut in_write) = (outside, inside);
            std::thread::spawn(move || copy(&mut out_read, &mut in_write));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_blocks_metadata_the_api_server_denied_cidrs_and_loopback() {
    let env = env("guard").await;
    let netns = Netns::new(&[METADATA, TENANT]);
    let (api, metadata, tenant, local) = netns.enter(|| {
        (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            CountingListener::start(METADATA, HTTP_OK),
            CountingListener::start(TENANT, HTTP_OK),
            CountingListener::start(LOCAL, HTTP_OK),
        )
    });
    let api_port = api.local_addr().unwrap().port();
    let upstream = env.server.url().trim_start_matches("https://").to_string();
    forward(api, upstream.clone());
    // The ServiceAccount's kubeconfig, pointed at the forwarder: inside the namespace, that is
    // where the API server is.
    let mut kubeconfig: Value =
        serde_json::from_slice(&std::fs::read(&env.sa.kubeconfig).unwrap()).unwrap();
    kubeconfig["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{api_port}").into();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig_path = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig.to_string()).unwrap();

    let deps = [
        policy::tcp("metadata", &metadata.address.to_string(), true),
        http("metadata-http", &format!("http://{}/", metadata.address)),
        policy::tcp("api-server", &format!("127.0.0.1:{api_port}"), true),
        http(
            "api-server-http",
            &format!("https://127.0.0.1:{api_port}/version"),
        ),
        // By name: `localhost` resolves to the API server's address.
        policy::tcp("api-server-by-name", &format!("localhost:{api_port}"), true),
        policy::redis(
            "tenant",
            &policy::inline(&format!("redis://:{PASSWORD}@{}/0", tenant.address)),
        ),
        policy::tcp("loopback", &local.address.to_string(), true),
    ]
    .concat();
    env.apply(&policy::fast("reach", &deps));
    let path = format!("/ready/{}/reach", env.ns);
    let all_down: Vec<(&str, &str)> = [
        "metadata",
        "metadata-http",
        "api-server",
        "api-server-http",
        "api-server-by-name",
        "tenant",
        "loopback",
    ]
    .iter()
    .map(|n| (*n, "down"))
    .collect();

    // A namespace-wide controller: loopback is denied too (it is not the policy's own pod).
    let api_rule = format!("127.0.0.1:{api_port} is the API server");
    {
        let hg = netns.enter(|| {
            Healthgate::start_kube(
                &kubeconfig_path,
                &[("POD_NAME", "hg-0")],
                &[
                    "--namespace",
                    &env.ns,
                    "--pod-namespace",
                    &env.ns,
                    "--deny-cidr",
                    "10.0.0.0/8",
                    // The reasons are details; anonymous callers would see status only.
                    "--details",
                    "always",
                ],
            )
        });
        netns.enter(|| wait_checks(&hg, &path, &all_down));
        std::thread::sleep(ROUNDS);
        let body = netns.enter(|| hg.get(&path).json());
        assert_blocked(
            &body,
            "metadata",
            "169.254.169.254 is link-local (denied by default)",
        );
        assert_blocked(
            &body,
            "metadata-http",
            "169.254.169.254 is link-local (denied by default)",
        );
        assert_blocked(&body, "api-server", &api_rule);
        assert_blocked(&body, "api-server-http", &api_rule);
        assert_blocked(&body, "api-server-by-name", &api_rule);
        assert_blocked(&body, "tenant", "10.1.2.3 is in --deny-cidr 10.0.0.0/8");
        assert_blocked(
            &body,
            "loopback",
            "127.0.0.2 is loopback (allowed only with --policy-name or a matching --allow-cidr)",
        );
        assert!(!body.to_string().contains(PASSWORD), "{body:#}");

        // The status the leader wrote says the same, through the real API server's schema.
        let policy = env.wait_policy("reach", "blocked in status", |p| {
            p["status"]["dependencies"].as_array().is_some_and(|deps| {
                deps.len() == 7 && deps.iter().all(|d| d["reason"] == "blocked")
            })
        });
        // The spec holds the inline URL the author wrote; the status must not repeat it.
        let status = &policy["status"];
        assert!(!status.to_string().contains(PASSWORD), "{status:#}");
        assert!(!hg.logs().join("\n").contains(PASSWORD));
    }
    assert_eq!(metadata.accepted(), 0, "connections to {METADATA}");
    assert_eq!(tenant.accepted(), 0, "connections to {TENANT}");
    assert_eq!(local.accepted(), 0, "connections to {LOCAL}");

    // The sidecar (--policy-name): loopback is its own pod and allowed; the rest stays blocked.
    let hg = netns.enter(|| {
        Healthgate::start_kube(
            &kubeconfig_path,
            &[("POD_NAME", "hg-sidecar")],
            &[
                "--namespace",
                &env.ns,
                "--pod-namespace",
                &env.ns,
                "--policy-name",
                "reach",
                "--deny-cidr",
                "10.0.0.0/8",
                "--details",
                "always",
            ],
        )
    });
    let mut expected = all_down.clone();
    expected.retain(|(n, _)| *n != "loopback");
    expected.push(("loopback", "ok"));
    let body = netns.enter(|| wait_checks(&hg, &path, &expected));
    assert_blocked(
        &body,
        "metadata",
        "169.254.169.254 is link-local (denied by default)",
    );
    assert_blocked(&body, "api-server", &api_rule);
    assert!(local.accepted() >= 1, "{}", local.accepted());
    assert_eq!(metadata.accepted(), 0, "connections to {METADATA}");
}
