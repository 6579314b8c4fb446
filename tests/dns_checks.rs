//! `type: dns` against a real DNS server: dnsmasq on a free loopback port, authoritative for
//! `healthgate.test`, stopped, frozen and restarted by the test.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::dns::Dnsmasq;
use support::healthgate::{BIN, Healthgate};

const RECORDS: &[&str] = &[
    "--host-record=db.healthgate.test,10.0.0.5,fd00::5",
    "--host-record=db.healthgate.test,10.0.0.6",
    "--host-record=v4only.healthgate.test,10.0.0.7",
    "--srv-host=_postgresql._tcp.healthgate.test,db.healthgate.test,5432,10,5",
    "--cname=alias.healthgate.test,db.healthgate.test",
];

fn policy(deps: &str) -> String {
    format!(
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: names}}\nspec:\n  \
         defaults: {{interval: 300ms, timeout: 500ms}}\n  dependencies:\n{deps}"
    )
}

fn dep(name: &str, nameserver: &str, fields: &str) -> String {
    format!(
        "    - {{name: {name}, type: dns, critical: false, dns: {{nameserver: '{nameserver}', {fields}}}}}\n"
    )
}

fn checks(hg: &Healthgate) -> Value {
    hg.get("/ready").json()["checks"].clone()
}

fn wait_for(hg: &Healthgate, what: &str, expected: &[(&str, &str, &str)]) -> Value {
    hg.wait_until(what, Duration::from_secs(15), |hg| {
        let checks = checks(hg);
        expected.iter().all(|(name, status, reason)| {
            checks[name]["status"] == *status && checks[name]["reason"] == *reason
        })
    });
    checks(hg)
}

#[test]
fn dns_checks_match_answers_and_report_each_failure() {
    let dns = Dnsmasq::start(RECORDS);
    let ns = dns.address();
    let deps = [
        dep("a", &ns, "name: db.healthgate.test, expect: [10.0.0.6, 10.0.0.5]"),
        dep("a-any", &ns, "name: db.healthgate.test."),
        dep("a-wrong", &ns, "name: db.healthgate.test, expect: [10.0.0.5, 10.0.0.9]"),
        dep("aaaa", &ns, "name: db.healthgate.test, recordType: AAAA, expect: ['fd00:0::5']"),
        // An A lookup of an alias follows the CNAME; only the A records are the answer.
        dep("via-alias", &ns, "name: alias.healthgate.test, expect: [10.0.0.5, 10.0.0.6]"),
        dep("cname", &ns, "name: alias.healthgate.test, recordType: CNAME, expect: [db.healthgate.test]"),
        dep(
            "srv",
            &ns,
            "name: _postgresql._tcp.healthgate.test, recordType: SRV, expect: ['10 5 5432 db.healthgate.test']",
        ),
        dep("nxdomain", &ns, "name: missing.healthgate.test"),
        dep("no-aaaa", &ns, "name: v4only.healthgate.test, recordType: AAAA"),
        dep("refused", &ns, "name: example.com"),
    ]
    .concat();
    let hg = Healthgate::start(&policy(&deps), &[], &[]);
    let ok = [
        ("a", "ok", "ok"),
        ("a-any", "ok", "ok"),
        ("aaaa", "ok", "ok"),
        ("via-alias", "ok", "ok"),
        ("cname", "ok", "ok"),
        ("srv", "ok", "ok"),
    ];
    let mut expected = ok.to_vec();
    expected.extend([
        ("a-wrong", "down", "unexpected_answer"),
        ("nxdomain", "down", "dns"),
        ("no-aaaa", "down", "dns"),
        ("refused", "down", "dns"),
    ]);
    let c = wait_for(&hg, "every dns check has its result", &expected);
    let text = |name: &str, field: &str| c[name][field].as_str().unwrap_or("").to_string();
    assert_eq!(
        text("a", "detail"),
        "A db.healthgate.test: 10.0.0.5, 10.0.0.6"
    );
    assert_eq!(
        text("srv", "detail"),
        "SRV _postgresql._tcp.healthgate.test: 10 5 5432 db.healthgate.test"
    );
    assert_eq!(
        text("cname", "detail"),
        "CNAME alias.healthgate.test: db.healthgate.test"
    );
    assert_eq!(
        text("a-wrong", "error"),
        "A db.healthgate.test: missing 10.0.0.9; unexpected 10.0.0.6"
    );
    assert_eq!(
        text("nxdomain", "error"),
        "NXDOMAIN: missing.healthgate.test does not exist"
    );
    assert_eq!(
        text("no-aaaa", "error"),
        "no AAAA records for v4only.healthgate.test"
    );
    assert_eq!(
        text("refused", "error"),
        "A example.com: the nameserver answered Query Refused"
    );

    // No cache: every check is a query the server sees.
    let before = dns.queries_for("A", "db.healthgate.test");
    std::thread::sleep(Duration::from_millis(1500));
    let after = dns.queries_for("A", "db.healthgate.test");
    assert!(after >= before + 6, "queries for db: {before} then {after}");
}

#[test]
fn a_frozen_stopped_and_restarted_nameserver() {
    let mut dns = Dnsmasq::start(RECORDS);
    let deps = dep(
        "db",
        &dns.address(),
        "name: db.healthgate.test, expect: [10.0.0.5, 10.0.0.6]",
    );
    let hg = Healthgate::start(&policy(&deps), &[], &[]);
    wait_for(&hg, "db resolves", &[("db", "ok", "ok")]);

    dns.pause();
    let c = wait_for(
        &hg,
        "a frozen server times out",
        &[("db", "down", "timeout")],
    );
    assert_eq!(c["db"]["error"], "no answer within 500ms", "{c}");
    dns.resume();
    wait_for(&hg, "resumed", &[("db", "ok", "ok")]);

    dns.stop();
    // UDP to a closed port: the kernel's ICMP port-unreachable, or silence until the timeout.
    hg.wait_until("a stopped server is down", Duration::from_secs(15), |hg| {
        let check = &checks(hg)["db"];
        check["status"] == "down" && (check["reason"] == "connect" || check["reason"] == "timeout")
    });
    dns.restart();
    wait_for(&hg, "restarted on the same port", &[("db", "ok", "ok")]);
}

#[test]
fn check_command_runs_a_dns_policy() {
    let dns = Dnsmasq::start(RECORDS);
    let dir = tempfile::tempdir().unwrap();
    let run = |fields: &str| {
        let path = dir.path().join("policy.yaml");
        let deps = dep("db", &dns.address(), fields).replace("critical: false", "critical: true");
        std::fs::write(&path, policy(&deps)).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--policy", path.to_str().unwrap()])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), report)
    };
    let (code, report) = run("name: db.healthgate.test, expect: [10.0.0.5, 10.0.0.6]");
    assert_eq!(
        (code, report["status"].as_str()),
        (Some(0), Some("ok")),
        "{report}"
    );
    let (code, report) = run("name: gone.healthgate.test");
    assert_eq!(
        (code, report["checks"]["db"]["reason"].as_str()),
        (Some(2), Some("dns")),
        "{report}"
    );
}
