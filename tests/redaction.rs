//! Canary passwords through every URL form and every error path, against real servers: the
//! canary never appears in anything healthgate prints — `check` output, logs at debug level
//! (what client libraries log included), validation errors, YAML errors.

mod support;

use std::process::Command;

use support::healthgate::BIN;
use support::policy;
use support::services::{Postgres, Redis, free_port};

/// A password nobody would type, different for every case so one leak names its case.
fn canary(case: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("Cy{case}n{nanos:x}q")
}

/// Runs `healthgate check` on `document` at debug level; returns everything it printed.
fn check_output(document: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, document).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--policy"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .output()
        .expect("running healthgate check");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn dependency(kind: &str, url: &str) -> String {
    let block = if kind == "http" {
        format!("{{url: '{url}'}}")
    } else {
        format!("{{url: '{}'}}", url.replace('\'', "''"))
    };
    policy::dep(
        "dep",
        &format!("type: {kind}, timeout: 1s, {kind}: {block}"),
    )
}

#[test]
fn no_canary_in_any_output() {
    let pg = Postgres::start();
    let redis = Redis::start_with_password(Some("the-real-one"));
    let closed = free_port();
    let plain = redis.port; // a server that does not speak TLS
    // (kind, URL with the canary as {c})
    let forms: Vec<(&str, String)> = vec![
        // Userinfo: refused, unknown host, bad port, authentication failure, TLS failure.
        (
            "postgres",
            format!("postgres://app:{{c}}@127.0.0.1:{closed}/app"),
        ),
        (
            "postgres",
            "postgres://app:{c}@host.invalid:5432/app".to_string(),
        ),
        (
            "postgres",
            "postgres://app:{c}@127.0.0.1:99999/app".to_string(),
        ),
        (
            "postgres",
            format!("postgres://app:{{c}}@127.0.0.1:{}/app", pg.port),
        ),
        (
            "postgres",
            format!(
                "postgres://app:{{c}}@127.0.0.1:{}/app?sslmode=require",
                pg.port
            ),
        ),
        ("redis", format!("redis://:{{c}}@127.0.0.1:{closed}/0")),
        (
            "redis",
            format!("redis://default:{{c}}@127.0.0.1:{}/0", redis.port),
        ),
        ("redis", format!("rediss://:{{c}}@127.0.0.1:{plain}/0")),
        ("redis", "redis://:{c}@127.0.0.1:99999/0".to_string()),
        ("http", format!("http://user:{{c}}@127.0.0.1:{closed}/")),
        ("http", format!("https://user:{{c}}@127.0.0.1:{plain}/")),
        // Query parameters, any case, percent-encoded key; parseable or not.
        (
            "postgres",
            "postgres://127.0.0.1:99999/demo?user=app&password={c}".to_string(),
        ),
        (
            "postgres",
            format!(
                "postgres://127.0.0.1:{}/app?user=app&PASSWORD={{c}}",
                pg.port
            ),
        ),
        (
            "postgres",
            format!(
                "postgres://127.0.0.1:{}/app?user=app&pass%77ord={{c}}",
                pg.port
            ),
        ),
        (
            "http",
            format!("http://127.0.0.1:{closed}/health?token={{c}}"),
        ),
        // A libpq keyword string, which is not a URL at all.
        (
            "postgres",
            "host=127.0.0.1 user=app password={c} dbname=app".to_string(),
        ),
        // A token as the user of an HTTP URL.
        ("http", format!("https://{{c}}@127.0.0.1:{plain}/")),
    ];
    let mut leaks = Vec::new();
    for (case, (kind, form)) in forms.iter().enumerate() {
        let c = canary(case);
        let url = form.replace("{c}", &c);
        let output = check_output(&policy::fast("canary", &dependency(kind, &url)));
        if output.contains(&c) {
            leaks.push(format!("{kind} {form}:\n{output}"));
        }
    }

    // Documents that do not even deserialize or parse, with the URL on the offending line.
    let c = canary(100);
    let documents = [
        // The URL written where the block belongs.
        policy::fast(
            "canary",
            &policy::dep(
                "dep",
                &format!("type: postgres, postgres: \"postgres://app:{c}@db/app\""),
            ),
        ),
        // An unclosed quote on the URL line.
        policy::fast(
            "canary",
            &format!(
                "    - name: dep\n      type: redis\n      redis: {{url: \"redis://:{c}@cache:6379/0}}\n"
            ),
        ),
        // An unknown field whose value is the URL.
        policy::fast(
            "canary",
            &policy::dep(
                "dep",
                &format!("type: redis, redis: {{uri: 'redis://:{c}@cache/0'}}"),
            ),
        ),
    ];
    for document in &documents {
        let output = check_output(document);
        assert!(
            !output.is_empty(),
            "check printed nothing for a broken document"
        );
        if output.contains(&c) {
            leaks.push(format!("broken document:\n{document}\n→\n{output}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "canaries leaked:\n\n{}",
        leaks.join("\n\n")
    );
}
