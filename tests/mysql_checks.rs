//! `type: mysql` against a real MariaDB server the test starts: ok, frozen (SIGSTOP) →
//! timeout, stopped → connect then timeout, restarted on the same port → ok; a wrong password and a database
//! the user may not use → auth; the password never shows.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::healthgate::{BIN, Healthgate};
use support::mariadb::{MYSQL_PASSWORD, Mariadb};

fn policy(deps: &str) -> String {
    format!(
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: sql}}\nspec:\n  \
         defaults: {{interval: 300ms, timeout: 700ms}}\n  dependencies:\n{deps}"
    )
}

fn checks(hg: &Healthgate) -> Value {
    hg.get("/ready").json()["checks"].clone()
}

fn wait_for(hg: &Healthgate, what: &str, name: &str, status: &str, reason: &str) -> Value {
    hg.wait_until(what, Duration::from_secs(20), |hg| {
        let check = &checks(hg)[name];
        check["status"] == status && check["reason"] == reason
    });
    checks(hg)[name].clone()
}

#[test]
fn mysql_check_follows_the_server_through_freeze_stop_and_restart() {
    let mut db = Mariadb::start();
    let wrong = db.url().replace(MYSQL_PASSWORD, "not-the-password");
    let other_db = format!("mysql://app:{MYSQL_PASSWORD}@127.0.0.1:{}/mysql", db.port);
    let deps = format!(
        "    - {{name: db, type: mysql, mysql: {{urlFrom: {{env: HG_MYSQL_URL}}}}}}\n    \
         - {{name: wrong-password, type: mysql, critical: false, mysql: {{url: '{wrong}'}}}}\n    \
         - {{name: other-db, type: mysql, critical: false, mysql: {{url: '{other_db}'}}}}\n"
    );
    let hg = Healthgate::start(&policy(&deps), &[("HG_MYSQL_URL", &db.url())], &[]);
    let ok = wait_for(&hg, "db ok", "db", "ok", "ok");
    assert!(
        ok["detail"].as_str().unwrap().starts_with("pool size="),
        "{ok}"
    );
    let wrong = wait_for(
        &hg,
        "wrong password refused",
        "wrong-password",
        "down",
        "auth",
    );
    assert!(
        wrong["error"].as_str().unwrap().contains("Access denied"),
        "{wrong}"
    );
    let other = wait_for(&hg, "other database refused", "other-db", "down", "auth");
    assert!(
        other["error"].as_str().unwrap().contains("Access denied"),
        "{other}"
    );

    db.pause();
    let frozen = wait_for(&hg, "a frozen server times out", "db", "down", "timeout");
    // The check's timeout and sqlx's pool acquire timeout are both 700 ms; either may fire first.
    assert!(
        frozen["error"] == "no answer within 700ms"
            || frozen["error"] == "pool timed out while waiting for an open connection",
        "{frozen}"
    );
    db.resume();
    wait_for(&hg, "resumed", "db", "ok", "ok");

    db.stop();
    // A check that meets its pooled connection closed reports connect; one that finds the pool
    // empty (sqlx noticed the close when the connection came back) waits for the pool, which
    // retries the refused connection until the timeout. Which comes first depends on where in
    // its interval the check was when the server stopped; later checks all time out.
    hg.wait_until("a stopped server is down", Duration::from_secs(20), |hg| {
        let check = &checks(hg)["db"];
        check["status"] == "down" && (check["reason"] == "connect" || check["reason"] == "timeout")
    });
    wait_for(&hg, "still stopped", "db", "down", "timeout");
    db.restart();
    wait_for(&hg, "restarted on the same port", "db", "ok", "ok");

    let everything = [
        hg.get("/ready").body,
        hg.get("/metrics").body,
        hg.logs().join("\n"),
    ];
    for output in everything {
        assert!(
            !output.contains(MYSQL_PASSWORD),
            "the password leaked: {output}"
        );
    }
}

#[test]
fn check_command_runs_a_mysql_policy() {
    let db = Mariadb::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let deps = "    - {name: db, type: mysql, mysql: {urlFrom: {env: HG_MYSQL_URL}}}\n";
    std::fs::write(&path, policy(deps)).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--policy", path.to_str().unwrap()])
        .env("HG_MYSQL_URL", db.url())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (out.status.code(), report["status"].as_str()),
        (Some(0), Some("ok")),
        "{report}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(MYSQL_PASSWORD));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(MYSQL_PASSWORD));
}
