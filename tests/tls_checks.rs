//! `type: tls` against real TLS servers (`openssl s_server` on loopback) presenting certificates
//! the test makes with the openssl CLI: valid, expiring in 3 days, expired, for another host,
//! and signed by a CA the check does not trust.

mod support;

use std::process::Command;
use std::time::Duration;

use support::healthgate::{BIN, Healthgate};
use support::services::free_port;
use support::tls::{TestCa, TlsServer};

const DAY: i64 = 86_400;

fn policy(deps: &str) -> String {
    format!(
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: certs}}\nspec:\n  \
         defaults: {{interval: 300ms, timeout: 2s}}\n  dependencies:\n{deps}"
    )
}

fn dep(name: &str, address: &str, extra: &str) -> String {
    format!(
        "    - {{name: {name}, type: tls, critical: false, tls: {{address: '{address}'{extra}}}}}\n"
    )
}

#[test]
fn tls_checks_judge_chain_hostname_and_expiry() {
    let ca = TestCa::new("healthgate test CA");
    let stranger = TestCa::new("some other CA");
    let names = "DNS:localhost,IP:127.0.0.1";
    // An hour past whole days, so "days left" is not at a boundary while the test runs.
    let valid = ca.leaf("valid", names, 90 * DAY + 3600);
    let soon = ca.leaf("soon", names, 3 * DAY + 3600);
    let expired = ca.leaf("expired", names, -2 * DAY - 3600);
    let other_host = ca.leaf("other", "DNS:other.test", 90 * DAY);
    let servers = [&valid, &soon, &expired, &other_host].map(TlsServer::start);
    let [valid_port, soon_port, expired_port, other_port] = servers.each_ref().map(|s| s.port);
    let ca_file = format!(", caFrom: {{file: '{}'}}", ca.pem().display());
    let stranger_file = format!(", caFrom: {{file: '{}'}}", stranger.pem().display());
    let closed = free_port();

    let deps = [
        dep("valid-name", &format!("localhost:{valid_port}"), &ca_file),
        dep("valid-ip", &format!("127.0.0.1:{valid_port}"), &ca_file),
        dep("soon", &format!("localhost:{soon_port}"), &ca_file),
        dep(
            "soon-wide-down",
            &format!("localhost:{soon_port}"),
            &format!("{ca_file}, degradedBefore: 30d, downBefore: 7d"),
        ),
        dep("expired", &format!("localhost:{expired_port}"), &ca_file),
        dep("wrong-host", &format!("localhost:{other_port}"), &ca_file),
        dep(
            "unknown-ca",
            &format!("localhost:{valid_port}"),
            &stranger_file,
        ),
        dep("system-roots", &format!("localhost:{valid_port}"), ""),
        dep("nothing-listens", &format!("127.0.0.1:{closed}"), &ca_file),
    ]
    .concat();
    let hg = Healthgate::start(&policy(&deps), &[], &[]);
    hg.wait_until("every check ran", Duration::from_secs(20), |hg| {
        let body = hg.get("/ready").json();
        body["checks"]
            .as_object()
            .unwrap()
            .values()
            .all(|c| c["checked_at"].is_string())
    });
    let body = hg.get("/ready").json();
    let check = |name: &str| body["checks"][name].clone();
    let expect = [
        ("valid-name", "ok", "ok"),
        ("valid-ip", "ok", "ok"),
        ("soon", "degraded", "cert_expiry"),
        ("soon-wide-down", "down", "cert_expiry"),
        ("expired", "down", "cert_expiry"),
        ("wrong-host", "down", "tls"),
        ("unknown-ca", "down", "tls"),
        ("system-roots", "down", "tls"),
        ("nothing-listens", "down", "connect"),
    ];
    for (name, status, reason) in expect {
        let c = check(name);
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some(status), Some(reason)),
            "{name}: {c}"
        );
    }

    let text = |name: &str, field: &str| check(name)[field].as_str().unwrap_or("").to_string();
    assert!(
        text("valid-name", "detail").contains("certificate expires in 90 days"),
        "{}",
        check("valid-name")
    );
    assert!(text("soon", "detail").contains("certificate expires in 3 days"));
    assert!(
        text("soon-wide-down", "error").contains("certificate expires in 3 days"),
        "{}",
        check("soon-wide-down")
    );
    assert!(
        text("expired", "error").starts_with("certificate expired 2 days ago (notAfter "),
        "{}",
        check("expired")
    );
    assert!(
        text("wrong-host", "error").contains("not valid for name"),
        "{}",
        check("wrong-host")
    );
    for untrusted in ["unknown-ca", "system-roots"] {
        assert!(
            text(untrusted, "error").contains("UnknownIssuer"),
            "{untrusted}: {}",
            check(untrusted)
        );
    }

    // The gauge carries the certificate's own notAfter, for the ones whose date was read.
    let metrics = hg.get("/metrics").body;
    let expiry = |name: &str| {
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix("healthgate_tls_cert_expiry_timestamp_seconds{")?;
            rest.contains(&format!("name=\"{name}\""))
                .then(|| rest.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() as i64)
        })
    };
    assert_eq!(expiry("valid-name"), Some(valid.not_after));
    assert_eq!(expiry("soon"), Some(soon.not_after));
    assert_eq!(expiry("expired"), Some(expired.not_after));
    assert_eq!(expiry("nothing-listens"), None);
    assert!(
        metrics.contains(r#"reason="cert_expiry",result="degraded",type="tls""#),
        "the results counter labels the kind and reason"
    );
}

#[test]
fn check_command_runs_a_tls_policy() {
    let ca = TestCa::new("healthgate check CA");
    let leaf = ca.leaf("valid", "DNS:localhost,IP:127.0.0.1", 90 * DAY);
    let server = TlsServer::start(&leaf);
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &str| {
        let path = dir.path().join("policy.yaml");
        let deps = dep("site", &format!("localhost:{}", server.port), extra);
        std::fs::write(
            &path,
            policy(&deps.replace("critical: false", "critical: true")),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["check", "--policy", path.to_str().unwrap()])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), report)
    };
    let (code, report) = run(&format!(", caFrom: {{file: '{}'}}", ca.pem().display()));
    assert_eq!(
        (code, report["status"].as_str()),
        (Some(0), Some("ok")),
        "{report}"
    );
    let (code, report) = run("");
    assert_eq!(
        (code, report["checks"]["site"]["reason"].as_str()),
        (Some(2), Some("tls")),
        "{report}"
    );
}

#[test]
fn http_and_grpc_tls_settings_verify_with_a_ca_or_skip_verification() {
    let ca = TestCa::new("healthgate client CA");
    let names = "DNS:localhost,IP:127.0.0.1";
    let leaf = ca.leaf("web", names, 90 * DAY);
    let other = ca.leaf("other", "DNS:other.test", 90 * DAY);
    let (web, wrong) = (TlsServer::start(&leaf), TlsServer::start(&other));
    let (_runtime, grpc) = support::tls::grpc_health_over_tls(&leaf);
    let ca_file = format!("caFrom: {{file: '{}'}}", ca.pem().display());
    let http = |name: &str, port: u16, tls: &str| {
        format!(
            "    - {{name: {name}, type: http, critical: false, http: {{url: 'https://localhost:{port}/'{tls}}}}}\n"
        )
    };
    let grpc_dep = |name: &str, tls: &str| {
        format!(
            "    - {{name: {name}, type: grpc, critical: false, grpc: {{address: 'localhost:{grpc}', service: billing{tls}}}}}\n"
        )
    };
    let deps = [
        http("https-ca", web.port, &format!(", tls: {{{ca_file}}}")),
        http("https-default-roots", web.port, ""),
        http(
            "https-insecure",
            web.port,
            ", tls: {insecureSkipVerify: true}",
        ),
        http(
            "https-wrong-host",
            wrong.port,
            &format!(", tls: {{{ca_file}}}"),
        ),
        http(
            "https-insecure-wrong-host",
            wrong.port,
            ", tls: {insecureSkipVerify: true}",
        ),
        grpc_dep("grpc-tls-ca", &format!(", tls: {{{ca_file}}}")),
        grpc_dep("grpc-tls-system-roots", ", tls: {}"),
        grpc_dep("grpc-tls-insecure", ", tls: {insecureSkipVerify: true}"),
    ]
    .concat();
    let hg = Healthgate::start(&policy(&deps), &[], &[]);
    hg.wait_until("every check ran", Duration::from_secs(20), |hg| {
        let body = hg.get("/ready").json();
        body["checks"]
            .as_object()
            .unwrap()
            .values()
            .all(|c| c["checked_at"].is_string())
    });
    let body = hg.get("/ready").json();
    let expect = [
        ("https-ca", "ok", "ok", ""),
        ("https-default-roots", "down", "tls", "UnknownIssuer"),
        ("https-insecure", "ok", "ok", ""),
        ("https-wrong-host", "down", "tls", "not valid for name"),
        ("https-insecure-wrong-host", "ok", "ok", ""),
        ("grpc-tls-ca", "ok", "ok", ""),
        ("grpc-tls-system-roots", "down", "tls", "UnknownIssuer"),
        ("grpc-tls-insecure", "ok", "ok", ""),
    ];
    for (name, status, reason, error) in expect {
        let c = &body["checks"][name];
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some(status), Some(reason)),
            "{name}: {c}"
        );
        let text = c["error"].as_str().unwrap_or("");
        assert!(
            text.contains(error),
            "{name}: {text:?} should contain {error:?}"
        );
    }
}
