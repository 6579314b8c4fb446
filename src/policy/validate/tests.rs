use super::*;
use crate::policy::Target;

struct Env(&'static [(&'static str, &'static str)]);

impl UrlResolver for Env {
    fn resolve(&self, from: &UrlFrom) -> Result<String, String> {
        let name = from
            .env
            .as_deref()
            .ok_or("secretKeyRef is not available here")?;
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| format!("environment variable {name} is not set"))
    }

    /// Files named in these tests: `garbage.pem` holds no certificate, others do not exist.
    fn resolve_ca(&self, from: &CaFrom) -> Result<String, String> {
        match from.file.as_deref() {
            Some("garbage.pem") => Ok("not a certificate".into()),
            Some(other) => Err(format!("reading {other}: No such file or directory")),
            None => Err("secretKeyRef is not available here".into()),
        }
    }
}

/// Resolves every Secret reference to a fixed value (a CA bundle for `caFrom`), for documents
/// written for Kubernetes mode.
struct AnySecret;

impl UrlResolver for AnySecret {
    fn resolve(&self, from: &UrlFrom) -> Result<String, String> {
        let key = from.secret_key_ref.as_ref().map_or("", |r| r.key.as_str());
        Ok(match key {
            "url" => "mysql://orders:example-password@orders-db:3306/orders".into(),
            _ => "Bearer example-token-value".into(),
        })
    }

    fn resolve_ca(&self, _: &CaFrom) -> Result<String, String> {
        Ok(include_str!("testdata/ca.pem").into())
    }
}

#[test]
fn the_more_checks_example_is_valid() {
    let text = include_str!("../../../examples/more-checks.yaml");
    let policy: crate::api::HealthPolicy = serde_saphyr::from_str(text).expect("parses");
    let valid = validate(&policy.spec, &AnySecret).expect("examples/more-checks.yaml is valid");
    let kinds: Vec<&str> = valid
        .dependencies
        .iter()
        .map(|d| d.target.kind().as_str())
        .collect();
    assert_eq!(
        kinds,
        ["tls", "dns", "dns", "http", "http", "grpc", "mysql"]
    );
}

const ENV: Env = Env(&[("REDIS_URL", "redis://:hunter22@127.0.0.1:6379/0")]);

fn spec(yaml: &str) -> HealthPolicySpec {
    serde_saphyr::from_str(yaml).expect("test YAML parses")
}

fn errors(yaml: &str) -> Vec<String> {
    match validate(&spec(yaml), &ENV) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

const FULL: &str = r#"
defaults: {interval: 5s, timeout: 1s, failureThreshold: 1, successThreshold: 1}
maxStaleness: 30s
statusCodes: {ok: 200, degraded: 207, down: 503}
dependencies:
  - name: postgres
    type: postgres
    critical: true
    interval: 2s
    degradedLatency: 250ms
    postgres: {url: "postgres://app@127.0.0.1:5432/demo"}
  - name: redis
    type: redis
    redis: {urlFrom: {env: REDIS_URL}}
  - name: jobs
    type: redisQueue
    redisQueue: {url: "redis://127.0.0.1:6379/0", key: jobs, kind: list, degradedAbove: 10000, downAbove: 100000}
  - {name: search, type: http, critical: false, http: {url: "http://127.0.0.1:9200/_health", expectStatus: "200-299"}}
  - {name: smtp, type: tcp, tcp: {address: "127.0.0.1:25"}}
  - {name: billing, type: grpc, grpc: {address: "127.0.0.1:50051", service: ""}}
  - {name: api-cert, type: tls, critical: false, tls: {address: "api.example.com:443", degradedBefore: 14d, downBefore: 0s}}
  - {name: db-name, type: dns, critical: false, dns: {name: db.example.com, recordType: A, expect: ["10.0.0.5"], nameserver: "10.0.0.10:53"}}
  - {name: orders, type: mysql, mysql: {url: "mysql://app@127.0.0.1:3306/orders"}}
"#;

#[test]
fn the_documented_example_is_valid_and_defaulted() {
    let policy = validate(&spec(FULL), &ENV).expect("valid");
    assert_eq!(policy.dependencies.len(), 9);
    let pg = &policy.dependencies[0];
    assert_eq!(pg.schedule.interval, Duration::from_secs(2));
    assert_eq!(pg.schedule.timeout, Duration::from_secs(1));
    assert_eq!(
        pg.schedule.degraded_latency,
        Some(Duration::from_millis(250))
    );
    assert!(pg.critical);
    assert!(!policy.dependencies[3].critical);
    match &policy.dependencies[1].target {
        Target::Redis { url } => assert_eq!(url.expose(), "redis://:hunter22@127.0.0.1:6379/0"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(policy.max_staleness, Duration::from_secs(30));
    assert_eq!(
        policy.status_codes,
        StatusCodes {
            ok: 200,
            degraded: 207,
            down: 503
        }
    );
}

#[test]
fn an_empty_spec_gets_defaults() {
    let policy = validate(
        &spec("dependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]"),
        &ENV,
    )
    .expect("valid");
    assert_eq!(policy.max_staleness, DEFAULT_MAX_STALENESS);
    assert_eq!(policy.status_codes, StatusCodes::default());
}

#[test]
fn the_largest_allowed_durations_are_valid() {
    // A timeout above the interval is allowed: runs never overlap, the period just stretches.
    let policy = validate(
        &spec("maxStaleness: 3h\ndefaults: {interval: 1h, timeout: 5m}\ndependencies: [{name: a, type: tcp, interval: 300ms, timeout: 500ms, tcp: {address: 'h:1'}}, {name: b, type: tcp, tcp: {address: 'h:2'}}]"),
        &ENV,
    )
    .expect("valid");
    assert_eq!(policy.dependencies[1].schedule.interval, MAX_INTERVAL);
    let unset = validate(
        &spec("defaults: {interval: 1h, timeout: 5m}\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]"),
        &ENV,
    )
    .expect("valid");
    assert!(unset.max_staleness <= MAX_MAX_STALENESS);
}

#[test]
fn unset_max_staleness_grows_with_slow_intervals() {
    let policy = validate(
        &spec("dependencies: [{name: a, type: tcp, interval: 1m, tcp: {address: 'h:1'}}]"),
        &ENV,
    )
    .expect("valid");
    assert_eq!(policy.max_staleness, Duration::from_secs(122));
}

#[test]
fn every_problem_is_reported_with_its_field_path() {
    let cases: &[(&str, &[&str])] = &[
        (
            "dependencies: [{name: a, type: redisQueue, redisQueue: {url: 'redis://h', key: q, degradedAbove: 10, downAbove: 5}}]",
            &[
                "spec.dependencies[0].redisQueue.downAbove: 5 must be greater than degradedAbove (10)",
            ],
        ),
        (
            "dependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}, {name: a, type: tcp, tcp: {address: 'h:2'}}]",
            &[
                "spec.dependencies[1].name: duplicate name \"a\", already used by spec.dependencies[0]",
            ],
        ),
        (
            "dependencies: [{name: a, type: postgres, redis: {url: 'redis://h'}}]",
            &[
                "spec.dependencies[0].postgres: required for type postgres",
                "spec.dependencies[0].redis: not allowed for type postgres",
            ],
        ),
        (
            "dependencies: [{name: Bad_Name, type: tcp, tcp: {address: 'h:1'}}]",
            &["spec.dependencies[0].name: \"Bad_Name\" must be a DNS label"],
        ),
        (
            "dependencies: [{name: a, type: tcp, interval: 5, tcp: {address: 'h:1'}}]",
            &["spec.dependencies[0].interval: \"5\": missing or unknown unit"],
        ),
        (
            "dependencies: [{name: a, type: tcp, interval: 10ms, tcp: {address: 'h:1'}}]",
            &["spec.dependencies[0].interval: must be at least 100ms"],
        ),
        (
            "dependencies: [{name: a, type: tcp, failureThreshold: 0, tcp: {address: 'h:1'}}]",
            &["spec.dependencies[0].failureThreshold: 0 is out of range 1-100"],
        ),
        (
            "defaults: {successThreshold: 101}\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &["spec.defaults.successThreshold: 101 is out of range 1-100"],
        ),
        (
            "defaults: {failureThreshold: 2, failureWindow: {failures: 2, of: 4}}\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &["spec.defaults.failureWindow: set failureThreshold or failureWindow, not both"],
        ),
        (
            "dependencies: [{name: a, type: tcp, successThreshold: 2, successWindow: {successes: 2, of: 3}, tcp: {address: 'h:1'}}]",
            &[
                "spec.dependencies[0].successWindow: set successThreshold or successWindow, not both",
            ],
        ),
        (
            "dependencies: [{name: a, type: tcp, failureWindow: {failures: 6, of: 5}, tcp: {address: 'h:1'}}]",
            &["spec.dependencies[0].failureWindow.failures: 6 is out of range 1-5 (at most `of`)"],
        ),
        (
            "dependencies: [{name: a, type: tcp, successWindow: {successes: 1, of: 65}, tcp: {address: 'h:1'}}]",
            &["spec.dependencies[0].successWindow.of: 65 is out of range 1-64"],
        ),
        (
            "dependencies: [{name: a, type: tcp, failureWindow: {failures: 0, of: 0}, tcp: {address: 'h:1'}}]",
            &[
                "spec.dependencies[0].failureWindow.of: 0 is out of range 1-64",
                "spec.dependencies[0].failureWindow.failures: 0 is out of range 1-1 (at most `of`)",
            ],
        ),
        (
            "dependencies: [{name: a, type: tcp, retryInterval: 10ms, tcp: {address: 'h:1'}}]",
            &["spec.dependencies[0].retryInterval: must be at least 100ms"],
        ),
        (
            "dependencies: [{name: a, type: tcp, retryInterval: 10s, tcp: {address: 'h:1'}}]",
            &[
                "spec.dependencies[0].retryInterval: retryInterval 10s must not be longer than the interval 5s",
            ],
        ),
        (
            // The defaults' retry is fine for their interval; the dependency's shorter interval
            // breaks the pair, so that is the field to edit.
            "defaults: {interval: 10s, retryInterval: 5s}\ndependencies: [{name: a, type: tcp, interval: 2s, tcp: {address: 'h:1'}}]",
            &[
                "spec.dependencies[0].interval: retryInterval 5s must not be longer than the interval 2s",
            ],
        ),
        (
            "maintenance: [{start: '2026-12-06T02:00:00Z', end: '2026-12-06T01:00:00Z'}, {start: tomorrow, end: '2026-12-06T03:00:00Z', timeZone: UTC}]\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &[
                "spec.maintenance[0].end: must be after start",
                "spec.maintenance[1].timeZone: only for a schedule",
                "spec.maintenance[1].start: \"tomorrow\" is not an RFC 3339 time",
            ],
        ),
        (
            "maintenance: [{schedule: '0 25 * * *', duration: 0s, timeZone: Mars/Olympus, dependencies: [a, nope]}]\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &[
                "spec.maintenance[0].schedule: hour field: 25 is out of range 0-23",
                "spec.maintenance[0].duration: must be above 0 and at most 168h",
                "spec.maintenance[0].timeZone: \"Mars/Olympus\" is not an IANA time zone",
                "spec.maintenance[0].dependencies[1]: no dependency is named \"nope\"",
            ],
        ),
        (
            "maintenance: [{schedule: '@daily', duration: 1h, timeZone: '../../../etc/passwd'}]\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &["spec.maintenance[0].timeZone: \"../../../etc/passwd\" is not an IANA time zone"],
        ),
        (
            "maintenance: [{schedule: '@daily', start: '2026-12-06T02:00:00Z'}]\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &["spec.maintenance[0]: set start and end, or schedule and duration"],
        ),
        (
            "dependencies: [{name: a, type: tcp, degradedLatency: 2s, tcp: {address: 'h:1'}}]",
            &[
                "spec.dependencies[0].degradedLatency: degradedLatency 2s must be less than the timeout 1s",
            ],
        ),
        (
            "dependencies: [{name: a, type: tls, tls: {address: 'h:443', degradedBefore: 2w, downBefore: 30d}}]",
            &[
                "spec.dependencies[0].tls.degradedBefore: \"2w\": missing or unknown unit, expected a duration such as 250ms, 5s or 1m30s, or whole days such as 14d",
                "spec.dependencies[0].tls.downBefore: downBefore 30d must be less than degradedBefore 14d",
            ],
        ),
        (
            "dependencies: [{name: a, type: tls, tls: {address: 'h:443', degradedBefore: 0s}}]",
            &[
                "spec.dependencies[0].tls.degradedBefore: downBefore 0s must be less than degradedBefore 0s",
            ],
        ),
        (
            "dependencies: [{name: a, type: tls, tls: {address: 'bad host!:443', caFrom: {file: garbage.pem}}}]",
            &[
                "spec.dependencies[0].tls.caFrom.file: no PEM CERTIFICATE block found",
                "spec.dependencies[0].tls.address: host \"bad host!\" is not a DNS name or an IP address",
            ],
        ),
        (
            "dependencies: [{name: a, type: tls, tls: {address: 'h:443', caFrom: {file: /nope.pem}}}, {name: b, type: tls, tls: {address: 'h:443', caFrom: {}}}]",
            &[
                "spec.dependencies[0].tls.caFrom.file: reading /nope.pem: No such file",
                "spec.dependencies[1].tls.caFrom: set exactly one of file or secretKeyRef",
            ],
        ),
        (
            "dependencies: [{name: a, type: dns, dns: {name: 'bad name', recordType: SRV, expect: ['10 5 5432 db', 'db'], nameserver: ns1.example.test}}]",
            &[
                "spec.dependencies[0].dns.name: \"bad name\" is not a DNS name",
                "spec.dependencies[0].dns.expect[1]: \"db\" is not \"priority weight port target\"",
                "spec.dependencies[0].dns.nameserver: \"ns1.example.test\" is not an IP address or IP:port",
            ],
        ),
        (
            "dependencies: [{name: a, type: dns, dns: {name: db.example.test, recordType: AAAA, expect: [10.0.0.1]}}]",
            &["spec.dependencies[0].dns.expect[0]: \"10.0.0.1\" is not an IPv6 address"],
        ),
        (
            "dependencies: [{name: a, type: http, http: {url: 'http://h/', tls: {insecureSkipVerify: true, caFrom: {file: garbage.pem}}}}]",
            &[
                "spec.dependencies[0].http.tls.caFrom.file: no PEM CERTIFICATE block found",
                "spec.dependencies[0].http.tls: only an https URL uses TLS settings",
                "spec.dependencies[0].http.tls: set caFrom or insecureSkipVerify, not both",
            ],
        ),
        (
            "dependencies: [{name: a, type: grpc, grpc: {address: 'h:1', tls: {caFrom: {file: /nope.pem}}}}]",
            &["spec.dependencies[0].grpc.tls.caFrom.file: reading /nope.pem"],
        ),
        (
            "dependencies: [{name: a, type: http, http: {url: 'http://h/', body: x, headers: [{name: 'bad name', value: v}, {name: X-Token, valueFrom: {env: NOPE}}, {name: X-A}, {name: X-B, value: \"a\\nb\"}], bodyMatches: '[', assert: [{jsonPointer: status, equals: UP}, {header: h, matches: '('}, {header: h}]}}]",
            &[
                "spec.dependencies[0].http.body: a body needs a method other than GET or HEAD",
                "spec.dependencies[0].http.headers[0].name: \"bad name\" is not an HTTP header name",
                "spec.dependencies[0].http.headers[1].valueFrom.env: environment variable NOPE is not set",
                "spec.dependencies[0].http.headers[2]: set exactly one of value or valueFrom",
                "spec.dependencies[0].http.headers[3].value: not a valid HTTP header value",
                "spec.dependencies[0].http.bodyMatches: not a valid regular expression",
                "spec.dependencies[0].http.assert[0].jsonPointer: \"status\" must be empty or start with '/' (RFC 6901)",
                "spec.dependencies[0].http.assert[1].matches: not a valid regular expression",
                "spec.dependencies[0].http.assert[2]: set exactly one of equals, oneOf (not empty) or matches",
            ],
        ),
        (
            "dependencies: [{name: a, type: mysql, mysql: {url: 'postgres://h/db'}}]",
            &["spec.dependencies[0].mysql.url: scheme \"postgres\" is not one of mysql, mariadb"],
        ),
        (
            "dependencies: [{name: a, type: tcp, tcp: {address: 'nohost'}}]",
            &["spec.dependencies[0].tcp.address: \"nohost\" must be host:port"],
        ),
        (
            "dependencies: [{name: a, type: grpc, grpc: {address: 'h:99999'}}]",
            &["spec.dependencies[0].grpc.address: \"h:99999\" must be host:port"],
        ),
        (
            "dependencies: [{name: a, type: http, http: {url: 'ftp://h/x'}}]",
            &["spec.dependencies[0].http.url: scheme \"ftp\" is not one of http, https"],
        ),
        (
            "dependencies: [{name: a, type: http, http: {url: 'http://h/', expectStatus: '299-200'}}]",
            &["spec.dependencies[0].http.expectStatus: range \"299-200\""],
        ),
        (
            "dependencies: [{name: a, type: redis, redis: {urlFrom: {env: NOPE}}}]",
            &["spec.dependencies[0].redis.urlFrom.env: environment variable NOPE is not set"],
        ),
        (
            "dependencies: [{name: a, type: redis, redis: {urlFrom: {secretKeyRef: {name: s, key: k}}}}]",
            &[
                "spec.dependencies[0].redis.urlFrom.secretKeyRef: secretKeyRef is not available here",
            ],
        ),
        (
            "dependencies: [{name: a, type: redis, redis: {}}]",
            &["spec.dependencies[0].redis.url: required (or set urlFrom)"],
        ),
        (
            "dependencies: [{name: a, type: redisQueue, redisQueue: {url: 'redis://h', key: q, group: g}}]",
            &["spec.dependencies[0].redisQueue.group: only valid with kind: stream"],
        ),
        (
            "maxStaleness: 5s\ndependencies: [{name: a, type: tcp, interval: 5s, tcp: {address: 'h:1'}}]",
            &[
                "spec.maxStaleness: 5s must exceed every dependency's interval + timeout (the slowest is 6s)",
            ],
        ),
        (
            "dependencies: []",
            &["spec.dependencies: at least one dependency is required"],
        ),
        (
            "defaults: {interval: 999999999h, timeout: 999999999h}\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &[
                "spec.defaults.interval: must be at most 1h",
                "spec.defaults.timeout: must be at most 5m",
            ],
        ),
        (
            "dependencies: [{name: a, type: tcp, interval: 61m, timeout: 5m1s, tcp: {address: 'h:1'}}]",
            &[
                "spec.dependencies[0].interval: must be at most 1h",
                "spec.dependencies[0].timeout: must be at most 5m",
            ],
        ),
        (
            "maxStaleness: 999999h\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &["spec.maxStaleness: 999999h must be at most 3h"],
        ),
        (
            "statusCodes: {ok: 503, down: 200}\ndependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]",
            &[
                "spec.statusCodes.ok: 503 is out of range 200-399",
                "spec.statusCodes.down: 200 is out of range 400-599",
            ],
        ),
    ];
    for (yaml, expected) in cases {
        let got = errors(yaml);
        assert_eq!(got.len(), expected.len(), "{yaml}\n got: {got:#?}");
        for (got, want) in got.iter().zip(expected.iter()) {
            assert!(
                got.starts_with(want),
                "{yaml}\n got:  {got}\n want: {want}…"
            );
        }
    }
}

#[test]
fn errors_never_quote_a_password() {
    let got = errors(
        "dependencies: [{name: a, type: postgres, postgres: {url: 'mysql://app:s3cret@h/db'}}, {name: b, type: http, http: {url: 'http://u:s3cret@[bad/'}}]",
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|e| !e.contains("s3cret")), "{got:?}");
}

#[test]
fn windows_and_retry_interval_are_inherited_and_overridden_per_side() {
    let policy = validate(
        &spec(
            "defaults: {interval: 10s, retryInterval: 1s, failureWindow: {failures: 3, of: 5}, successThreshold: 2}
dependencies:
  - {name: inherits, type: tcp, tcp: {address: 'h:1'}}
  - {name: consecutive, type: tcp, failureThreshold: 2, retryInterval: 500ms, tcp: {address: 'h:1'}}
  - {name: recovers, type: tcp, successWindow: {successes: 2, of: 3}, tcp: {address: 'h:1'}}",
        ),
        &ENV,
    )
    .expect("valid");
    let [inherits, consecutive, recovers] = &policy.dependencies[..] else {
        panic!("three dependencies");
    };
    let window = |count, of| Window { count, of };
    assert_eq!(inherits.schedule.failing, window(3, 5));
    assert_eq!(inherits.schedule.recovering, Window::consecutive(2));
    assert_eq!(
        inherits.schedule.retry_interval,
        Some(Duration::from_secs(1))
    );
    // A threshold at the dependency replaces the defaults' window on that side only.
    assert_eq!(consecutive.schedule.failing, Window::consecutive(2));
    assert_eq!(consecutive.schedule.recovering, Window::consecutive(2));
    assert_eq!(
        consecutive.schedule.retry_interval,
        Some(Duration::from_millis(500))
    );
    assert_eq!(recovers.schedule.failing, window(3, 5));
    assert_eq!(recovers.schedule.recovering, window(2, 3));
}

#[test]
fn pod_selectors_are_checked_with_their_field_paths() {
    const DEP: &str = "dependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]";
    let cases: &[(&str, &[&str])] = &[
        ("podSelector: {matchLabels: {app: shop}}", &[]),
        (
            "podSelector: {matchExpressions: [{key: tier, operator: In, values: [web, api]}, {key: canary, operator: DoesNotExist}]}",
            &[],
        ),
        (
            "podSelector: {}",
            &[
                "spec.podSelector: an empty selector would gate every pod of the namespace; name the pods' labels",
            ],
        ),
        (
            "podSelector: {matchExpressions: [{key: tier, operator: In}]}",
            &["spec.podSelector.matchExpressions[0].values: operator In needs at least one value"],
        ),
        (
            "podSelector: {matchExpressions: [{key: tier, operator: Exists, values: [x]}]}",
            &["spec.podSelector.matchExpressions[0].values: operator Exists takes no values"],
        ),
        (
            "podSelector: {matchExpressions: [{key: tier, operator: Equals, values: [x]}]}",
            &[
                "spec.podSelector.matchExpressions[0].operator: \"Equals\" is not one of In, NotIn, Exists, DoesNotExist",
            ],
        ),
    ];
    for (selector, expected) in cases {
        let yaml = format!("{selector}\n{DEP}");
        assert_eq!(errors(&yaml), *expected, "{selector}");
    }
    let policy = validate(
        &spec(&format!(
            "podSelector: {{matchLabels: {{app: shop}}, matchExpressions: [{{key: tier, operator: NotIn, values: [batch]}}]}}\n{DEP}"
        )),
        &ENV,
    )
    .expect("valid");
    assert_eq!(
        policy.pod_selector.map(|s| s.to_string()).as_deref(),
        Some("app=shop,tier notin (batch)"),
        "the watch's label selector"
    );
}
