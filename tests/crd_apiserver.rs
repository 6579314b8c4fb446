//! The HealthPolicy CRD proven on a real kube-apiserver (see tests/k8s/README.md): the server,
//! not our own code, decides here what is structural, valid and printable.

mod support;

use std::{fs, path::Path};

use healthgate::api::{HealthPolicy, HealthPolicySpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    core::Request,
};
use serde_json::{Value, json};
use support::apiserver::{self, REPO};

const CRD_NAME: &str = "healthpolicies.healthgate.dev";
const API_VERSION: &str = "healthgate.dev/v1alpha1";

/// The full example from the issue: every dependency type and every optional setting.
fn full_spec() -> Value {
    json!({
        "defaults": {"interval": "5s", "timeout": "1s", "failureThreshold": 1, "successThreshold": 1,
                     "retryInterval": "1s"},
        "maxStaleness": "30s",
        "statusCodes": {"ok": 200, "degraded": 207, "down": 503},
        "dependencies": [
            {"name": "postgres", "type": "postgres", "critical": true, "interval": "2s",
             "postgres": {"url": "postgres://app@127.0.0.1:5432/demo"}},
            {"name": "redis", "type": "redis", "redis": {"urlFrom": {"env": "REDIS_URL"}}},
            {"name": "jobs", "type": "redisQueue",
             "redisQueue": {"url": "redis://127.0.0.1:6379/0", "key": "jobs", "kind": "list",
                            "degradedAbove": 10000, "downAbove": 100000}},
            {"name": "search", "type": "http", "critical": false,
             "http": {"url": "http://127.0.0.1:9200/_health", "expectStatus": "200-299"}},
            {"name": "smtp", "type": "tcp", "tcp": {"address": "127.0.0.1:25"},
             "failureWindow": {"failures": 3, "of": 5}, "successWindow": {"successes": 2, "of": 3}},
            {"name": "billing", "type": "grpc", "grpc": {"address": "127.0.0.1:50051", "service": ""}},
        ],
    })
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "HealthPolicy", "metadata": {"name": name}, "spec": spec})
}

/// POST with `fieldValidation=Strict`, as `kubectl create` does: unknown fields are errors
/// rather than silently pruned.
async fn create_strict(client: &Client, ns: &str, obj: &Value) -> Result<Value, kube::Error> {
    let mut req = Request::new(format!(
        "/apis/healthgate.dev/v1alpha1/namespaces/{ns}/healthpolicies"
    ))
    .create(
        &PostParams::default(),
        serde_json::to_vec(obj).expect("JSON"),
    )
    .expect("building the request");
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    *req.uri_mut() = format!("{uri}{sep}fieldValidation=Strict")
        .parse()
        .expect("valid URI");
    client.request::<Value>(req).await
}

/// The server's rejection of `obj`, failing the test if the server accepted it.
async fn rejection(client: &Client, ns: &str, obj: &Value) -> kube::core::Status {
    match create_strict(client, ns, obj).await {
        Ok(stored) => panic!("server accepted an invalid policy:\n{stored:#}"),
        Err(kube::Error::Api(status)) => *status,
        Err(e) => panic!("expected an API rejection, got {e}"),
    }
}

fn read_crd_file() -> CustomResourceDefinition {
    let path = Path::new(REPO).join("crds/healthpolicy.yaml");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn squash_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn crd_file_is_the_generated_crd() {
    // Everything below tests crds/healthpolicy.yaml; make sure it is what the types generate.
    let file = serde_json::to_value(read_crd_file()).expect("JSON");
    let generated = serde_json::to_value(HealthPolicy::crd()).expect("JSON");
    assert_eq!(
        file, generated,
        "crds/healthpolicy.yaml is stale: run `cargo run --bin crdgen > crds/healthpolicy.yaml`"
    );
}

#[tokio::test]
async fn crd_is_established_structural_and_has_printer_columns() {
    let server = apiserver::server();
    let applied = server.apply_crds().await;
    assert!(
        applied
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(CRD_NAME))
    );

    let crd = Api::<CustomResourceDefinition>::all(server.client().await)
        .get(CRD_NAME)
        .await
        .expect("the CRD is stored");
    let conditions = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
    assert_eq!(
        condition("Established").map(|c| c.status.as_str()),
        Some("True"),
        "{conditions:?}"
    );
    assert_eq!(
        condition("NamesAccepted").map(|c| c.status.as_str()),
        Some("True"),
        "{conditions:?}"
    );
    // The API server sets NonStructuralSchema (and refuses to serve v1 CRDs' unknown fields
    // correctly) when a schema is not structural; pruning and CEL both need a structural one.
    assert!(condition("NonStructuralSchema").is_none(), "{conditions:?}");
    assert!(condition("KubernetesAPIApprovalPolicyConformant").is_none_or(|c| c.status == "True"));

    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "HealthPolicy");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["hp".to_string()][..])
    );
    let accepted = crd
        .status
        .as_ref()
        .and_then(|s| s.accepted_names.clone())
        .expect("accepted names");
    assert_eq!(
        accepted.short_names.as_deref(),
        Some(&["hp".to_string()][..])
    );

    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1alpha1")
        .expect("v1alpha1");
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource enabled"
    );
    let columns: Vec<(&str, &str)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.type_.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Ready", "string"),
            ("Degraded", "string"),
            ("Dependencies", "string"),
            ("Maintenance", "string"),
            ("Age", "date")
        ]
    );
    // The CEL rules survived the server's compilation and cost estimation (a rule over budget or
    // with a type error makes the whole CRD invalid, so it would not be stored at all).
    let schema = serde_json::to_value(&version.schema).expect("JSON");
    let rules = schema
        .to_string()
        .matches("x-kubernetes-validations")
        .count();
    assert!(
        rules >= 3,
        "expected CEL rules in the stored schema, found {rules}"
    );
}

#[tokio::test]
async fn valid_policies_are_accepted_unchanged() {
    let server = apiserver::server();
    server.apply_crds().await;
    let ns = server.namespace("valid").await;
    let client = server.client().await;

    let full = policy("full", full_spec());
    let stored = create_strict(&client, &ns, &full)
        .await
        .expect("the issue's example is valid");
    // Nothing pruned or defaulted away: every field is in the schema.
    assert_eq!(stored["spec"], full["spec"]);

    let minimal = policy(
        "minimal",
        json!({"dependencies": [{"name": "db", "type": "tcp", "tcp": {"address": "db:5432"}}]}),
    );
    create_strict(&client, &ns, &minimal)
        .await
        .expect("a single dependency is enough");

    // Boundaries the rules must still accept.
    let boundaries = json!({
        "defaults": {"failureThreshold": 100, "successThreshold": 100, "degradedLatency": "1m30s"},
        "statusCodes": {"ok": 399, "degraded": 599, "down": 400},
        "dependencies": [
            {"name": "q", "type": "redisQueue",
             "redisQueue": {"urlFrom": {"secretKeyRef": {"name": "redis", "key": "url"}},
                            "key": "jobs", "kind": "stream", "group": "workers",
                            "degradedAbove": 0, "downAbove": 1}},
            {"name": "a-1", "type": "http", "http": {"url": "https://x", "expectStatus": "200-299,301"}},
        ],
    });
    create_strict(&client, &ns, &policy("boundaries", boundaries))
        .await
        .expect("boundary values are valid");

    // Issue 11's kinds and settings, stored as written (nothing defaulted in).
    let checks = json!({
        "dependencies": [
            {"name": "cert", "type": "tls", "tls": {"address": "api.example.com:443",
             "caFrom": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}},
             "degradedBefore": "14d", "downBefore": "36h"}},
            {"name": "name", "type": "dns", "dns": {"name": "_pg._tcp.example.com", "recordType": "SRV",
             "expect": ["10 5 5432 db.example.com"], "nameserver": "10.0.0.10:53"}},
            {"name": "api", "type": "http", "http": {"url": "https://api/health", "method": "POST",
             "body": "{}", "headers": [{"name": "Authorization",
             "valueFrom": {"secretKeyRef": {"name": "token", "key": "t"}}}, {"name": "X-A", "value": "b"}],
             "bodyMatches": "UP", "assert": [{"jsonPointer": "/status", "oneOf": ["UP", "OK"]},
             {"header": "content-type", "matches": "json"}],
             "tls": {"caFrom": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}}}},
            {"name": "rpc", "type": "grpc", "grpc": {"address": "rpc:443", "tls": {"insecureSkipVerify": true}}},
        ],
    });
    let checks = policy("checks", checks);
    let stored = create_strict(&client, &ns, &checks)
        .await
        .expect("the tls, dns and http settings are valid");
    assert_eq!(stored["spec"], checks["spec"]);

    // The typed API round-trips: what the Rust types write is what they read back.
    let typed: HealthPolicySpec =
        serde_json::from_value(full_spec()).expect("the example fits the Rust types");
    let api = Api::<HealthPolicy>::namespaced(client, &ns);
    let hp = HealthPolicy {
        metadata: ObjectMeta {
            name: Some("typed".into()),
            ..Default::default()
        },
        spec: typed.clone(),
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &hp)
        .await
        .expect("typed create");
    assert_eq!(created.spec, typed);
    assert_eq!(api.get("typed").await.expect("typed get").spec, typed);
}

#[tokio::test]
async fn invalid_policies_are_rejected_naming_the_field() {
    let server = apiserver::server();
    server.apply_crds().await;
    let ns = server.namespace("invalid").await;
    let client = server.client().await;

    let dep = |extra: Value| {
        let mut d = json!({"name": "db", "type": "tcp", "tcp": {"address": "db:5432"}});
        d.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        d
    };
    let queue = |degraded: i64, down: i64| {
        json!({"dependencies": [{"name": "jobs", "type": "redisQueue", "redisQueue":
            {"url": "redis://r", "key": "jobs", "degradedAbove": degraded, "downAbove": down}}]})
    };
    // (case, spec, substrings the server's message must contain: the field path, then the reason)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "wrong type: string threshold",
            json!({"defaults": {"failureThreshold": "three"}, "dependencies": [dep(json!({}))]}),
            vec!["spec.defaults.failureThreshold", "must be of type integer"],
        ),
        (
            "wrong type: string critical",
            json!({"dependencies": [dep(json!({"critical": "yes"}))]}),
            vec!["spec.dependencies[0].critical", "must be of type boolean"],
        ),
        (
            "wrong type: dependencies not a list",
            json!({"dependencies": "db"}),
            vec!["spec.dependencies", "must be of type array"],
        ),
        (
            "unknown field in spec",
            json!({"dependencies": [dep(json!({}))], "retries": 3}),
            vec!["unknown field \"spec.retries\""],
        ),
        (
            "unknown field in a check block (typo)",
            json!({"dependencies": [{"name": "db", "type": "tcp", "tcp": {"adress": "db:5432", "address": "db:5432"}}]}),
            vec!["unknown field \"spec.dependencies[0].tcp.adress\""],
        ),
        (
            "threshold below range",
            json!({"defaults": {"failureThreshold": 0}, "dependencies": [dep(json!({}))]}),
            vec![
                "spec.defaults.failureThreshold",
                "greater than or equal to 1",
            ],
        ),
        (
            "threshold above range",
            json!({"dependencies": [dep(json!({"successThreshold": 101}))]}),
            vec![
                "spec.dependencies[0].successThreshold",
                "less than or equal to 100",
            ],
        ),
        (
            "down status code that keeps pods ready",
            json!({"statusCodes": {"down": 200}, "dependencies": [dep(json!({}))]}),
            vec!["spec.statusCodes.down", "greater than or equal to 400"],
        ),
        (
            "negative queue threshold",
            queue(-1, 10),
            vec![
                "spec.dependencies[0].redisQueue.degradedAbove",
                "greater than or equal to 0",
            ],
        ),
        (
            "unknown dependency type",
            json!({"dependencies": [{"name": "db", "type": "mongodb", "tcp": {"address": "db:27017"}}]}),
            vec![
                "spec.dependencies[0].type",
                "Unsupported value: \"mongodb\"",
            ],
        ),
        (
            "duration without unit",
            json!({"dependencies": [dep(json!({"interval": "5"}))]}),
            vec!["spec.dependencies[0].interval", "should match"],
        ),
        (
            "name that is not a DNS label",
            json!({"dependencies": [{"name": "Main_DB", "type": "tcp", "tcp": {"address": "db:5432"}}]}),
            vec!["spec.dependencies[0].name", "should match"],
        ),
        (
            "bad expectStatus range",
            json!({"dependencies": [{"name": "web", "type": "http", "http": {"url": "http://w", "expectStatus": "2xx"}}]}),
            vec!["spec.dependencies[0].http.expectStatus", "should match"],
        ),
        (
            "missing dependencies",
            json!({"maxStaleness": "30s"}),
            vec!["spec.dependencies", "Required value"],
        ),
        (
            "missing required field of a check block",
            json!({"dependencies": [{"name": "jobs", "type": "redisQueue", "redisQueue": {"url": "redis://r"}}]}),
            vec!["spec.dependencies[0].redisQueue.key", "Required value"],
        ),
        (
            "CEL: type-specific block missing",
            json!({"dependencies": [{"name": "db", "type": "postgres"}]}),
            vec![
                "spec.dependencies[0]",
                "exactly the check block named by `type` must be set",
            ],
        ),
        (
            "CEL: block does not match type",
            json!({"dependencies": [{"name": "db", "type": "redis", "postgres": {"url": "postgres://db"}}]}),
            vec![
                "spec.dependencies[0]",
                "exactly the check block named by `type` must be set",
            ],
        ),
        (
            "CEL: a second block besides the one named by type",
            json!({"dependencies": [dep(json!({"http": {"url": "http://db"}}))]}),
            vec![
                "spec.dependencies[0]",
                "exactly the check block named by `type` must be set",
            ],
        ),
        (
            "CEL: downAbove below degradedAbove",
            queue(100, 10),
            vec![
                "spec.dependencies[0].redisQueue",
                "downAbove must be greater than degradedAbove",
            ],
        ),
        (
            "CEL: downAbove equal to degradedAbove",
            queue(10, 10),
            vec![
                "spec.dependencies[0].redisQueue",
                "downAbove must be greater than degradedAbove",
            ],
        ),
        (
            "CEL: duplicate dependency names",
            json!({"dependencies": [dep(json!({})), dep(json!({"tcp": {"address": "other:1"}}))]}),
            vec!["spec.dependencies", "dependency names must be unique"],
        ),
        (
            "CEL: url and urlFrom both set",
            json!({"dependencies": [{"name": "r", "type": "redis",
                "redis": {"url": "redis://r", "urlFrom": {"env": "REDIS_URL"}}}]}),
            vec![
                "spec.dependencies[0].redis",
                "set exactly one of url or urlFrom",
            ],
        ),
        (
            "CEL: caFrom with both file and secretKeyRef",
            json!({"dependencies": [{"name": "c", "type": "tls", "tls": {"address": "h:443",
                "caFrom": {"file": "/ca.pem", "secretKeyRef": {"name": "ca", "key": "k"}}}}]}),
            vec![
                "spec.dependencies[0].tls.caFrom",
                "set exactly one of file or secretKeyRef",
            ],
        ),
        (
            "CEL: caFrom and insecureSkipVerify",
            json!({"dependencies": [{"name": "g", "type": "grpc", "grpc": {"address": "h:443",
                "tls": {"insecureSkipVerify": true, "caFrom": {"file": "/ca.pem"}}}}]}),
            vec![
                "spec.dependencies[0].grpc.tls",
                "set caFrom or insecureSkipVerify, not both",
            ],
        ),
        (
            "CEL: a body with the default method",
            json!({"dependencies": [{"name": "h", "type": "http", "http": {"url": "http://h/", "body": "x"}}]}),
            vec![
                "spec.dependencies[0].http",
                "body needs a method other than GET or HEAD",
            ],
        ),
        (
            "CEL: an assertion with two tests",
            json!({"dependencies": [{"name": "h", "type": "http", "http": {"url": "http://h/",
                "assert": [{"header": "x", "equals": "1", "matches": "1"}]}}]}),
            vec![
                "spec.dependencies[0].http.assert[0]",
                "set exactly one of equals, oneOf or matches",
            ],
        ),
        (
            "CEL: a header with value and valueFrom",
            json!({"dependencies": [{"name": "h", "type": "http", "http": {"url": "http://h/",
                "headers": [{"name": "x", "value": "1", "valueFrom": {"env": "X"}}]}}]}),
            vec![
                "spec.dependencies[0].http.headers[0]",
                "set exactly one of value or valueFrom",
            ],
        ),
        (
            "CEL: group without stream",
            json!({"dependencies": [{"name": "q", "type": "redisQueue",
                "redisQueue": {"url": "redis://r", "key": "q", "kind": "list", "group": "g"}}]}),
            vec![
                "spec.dependencies[0].redisQueue",
                "group is only valid with kind: stream",
            ],
        ),
        (
            "no dependencies",
            json!({"dependencies": []}),
            vec!["spec.dependencies", "should have at least 1 items"],
        ),
        (
            "CEL: interval above 1h",
            json!({"defaults": {"interval": "999999999h"}, "dependencies": [dep(json!({"interval": "61m"}))]}),
            vec![
                "spec.defaults.interval",
                "spec.dependencies[0].interval",
                "must be at most 1h",
            ],
        ),
        (
            "CEL: timeout above 5m",
            json!({"defaults": {"timeout": "999999999h"}, "dependencies": [dep(json!({"timeout": "5m1s"}))]}),
            vec![
                "spec.defaults.timeout",
                "spec.dependencies[0].timeout",
                "must be at most 5m",
            ],
        ),
        (
            "CEL: a threshold and a window for the same side",
            json!({"defaults": {"failureThreshold": 2, "failureWindow": {"failures": 2, "of": 4}},
                   "dependencies": [dep(json!({"successThreshold": 2,
                                                "successWindow": {"successes": 2, "of": 3}}))]}),
            vec![
                "spec.defaults",
                "set failureThreshold or failureWindow, not both",
                "spec.dependencies[0]",
                "set successThreshold or successWindow, not both",
            ],
        ),
        (
            "CEL: a window asking for more checks than it covers",
            json!({"dependencies": [dep(json!({"failureWindow": {"failures": 6, "of": 5},
                                                "successWindow": {"successes": 1, "of": 65}}))]}),
            vec![
                "spec.dependencies[0].failureWindow",
                "failures must be at most of",
                "spec.dependencies[0].successWindow.of",
                "should be less than or equal to 64",
            ],
        ),
        (
            "CEL: a maintenance window both one-off and recurring",
            json!({"maintenance": [{"start": "2026-12-06T02:00:00Z", "schedule": "@daily"}],
                   "dependencies": [dep(json!({}))]}),
            vec![
                "spec.maintenance[0]",
                "set start and end, or schedule and duration",
            ],
        ),
        (
            "CEL: retryInterval above 1h",
            json!({"dependencies": [dep(json!({"retryInterval": "2h"}))]}),
            vec!["spec.dependencies[0].retryInterval", "must be at most 1h"],
        ),
        (
            "CEL: maxStaleness above 3h",
            json!({"maxStaleness": "4h", "dependencies": [dep(json!({}))]}),
            vec!["spec.maxStaleness", "must be at most 3h"],
        ),
    ];

    let mut failures = Vec::new();
    for (i, (case, spec, expected)) in cases.iter().enumerate() {
        let status = rejection(&client, &ns, &policy(&format!("bad-{i}"), spec.clone())).await;
        let missing: Vec<&&str> = expected
            .iter()
            .filter(|e| !status.message.contains(**e))
            .collect();
        if !(400..500).contains(&status.code) || !missing.is_empty() {
            failures.push(format!(
                "{case}: code {} message {:?} lacks {missing:?}",
                status.code, status.message
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "rejections without the expected detail:\n{}",
        failures.join("\n")
    );

    // The unique-names rule is bounded by maxItems so the server accepts its CEL cost; the bound
    // itself is enforced too.
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"name": format!("d{i}"), "type": "tcp", "tcp": {"address": "h:1"}}))
        .collect();
    let status = rejection(
        &client,
        &ns,
        &policy("too-many", json!({"dependencies": many})),
    )
    .await;
    assert!(
        status.message.contains("spec.dependencies") && status.message.contains("64"),
        "{}",
        status.message
    );

    // Nothing invalid got stored.
    let stored = Api::<HealthPolicy>::namespaced(client, &ns)
        .list(&Default::default())
        .await
        .expect("list");
    assert!(stored.items.is_empty(), "{:?}", stored.items);
}

#[tokio::test]
async fn server_side_apply_is_strict_too() {
    let server = apiserver::server();
    server.apply_crds().await;
    let ns = server.namespace("ssa").await;
    let api = Api::<HealthPolicy>::namespaced(server.client().await, &ns);
    let ssa = PatchParams::apply("crd-test").validation_strict();

    let mut bad = policy("ssa", full_spec());
    bad["spec"]["dependencies"][0]["postgres"]["sslmode"] = json!("require");
    let err = api
        .patch("ssa", &ssa, &Patch::Apply(&bad))
        .await
        .expect_err("unknown field must be rejected");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert!(
        status.message.contains("sslmode") && status.message.contains("spec.dependencies"),
        "{}",
        status.message
    );

    let good = policy("ssa", full_spec());
    let applied = api
        .patch("ssa", &ssa, &Patch::Apply(&good))
        .await
        .expect("valid apply");
    assert_eq!(serde_json::to_value(&applied.spec).unwrap(), full_spec());
}

#[tokio::test]
async fn status_writes_do_not_bump_generation_but_spec_writes_do() {
    let server = apiserver::server();
    server.apply_crds().await;
    let ns = server.namespace("status").await;
    let client = server.client().await;
    let api = Api::<HealthPolicy>::namespaced(client.clone(), &ns);

    create_strict(&client, &ns, &policy("gen", full_spec()))
        .await
        .expect("create");
    let created = api.get("gen").await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let status = json!({"status": {
        "observedGeneration": 1,
        "summary": "6/6 ok",
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllHealthy", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "dependencies": [{"name": "postgres", "state": "ok", "latencyMs": 1.5}],
    }});
    let after_status = api
        .patch_status("gen", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status write through /status");
    assert_eq!(
        after_status.metadata.generation,
        Some(1),
        "a status write must not bump generation"
    );
    assert_ne!(
        after_status.metadata.resource_version,
        created.metadata.resource_version
    );
    let stored_status = after_status.status.expect("status stored");
    assert_eq!(stored_status.summary.as_deref(), Some("6/6 ok"));
    assert_eq!(stored_status.dependencies[0].latency_ms, Some(1.5));

    // With the subresource enabled, the main endpoint ignores status (and /status ignores spec).
    let sneaky = json!({"status": {"summary": "hacked"}});
    let after_sneaky = api
        .patch("gen", &PatchParams::default(), &Patch::Merge(&sneaky))
        .await
        .unwrap();
    assert_eq!(
        after_sneaky.status.and_then(|s| s.summary).as_deref(),
        Some("6/6 ok")
    );
    let spec_via_status = json!({"spec": {"maxStaleness": "1h"}});
    let after = api
        .patch_status(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(&spec_via_status),
        )
        .await
        .unwrap();
    assert_eq!(after.spec.max_staleness.as_deref(), Some("30s"));
    assert_eq!(after.metadata.generation, Some(1));

    let spec_change = json!({"spec": {"maxStaleness": "45s"}});
    let after_spec = api
        .patch("gen", &PatchParams::default(), &Patch::Merge(&spec_change))
        .await
        .unwrap();
    assert_eq!(
        after_spec.metadata.generation,
        Some(2),
        "a spec write must bump generation"
    );
    assert_eq!(after_spec.spec.max_staleness.as_deref(), Some("45s"));
    assert_eq!(
        after_spec.status.and_then(|s| s.summary).as_deref(),
        Some("6/6 ok")
    );

    // Status is validated against the schema as well.
    let bad_status = json!({"status": {"observedGeneration": "two"}});
    let err = api
        .patch_status("gen", &PatchParams::default(), &Patch::Merge(&bad_status))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert!(
        status.message.contains("status.observedGeneration"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn kubectl_applies_gets_and_explains() {
    let server = apiserver::server();
    let ns = server.namespace("kubectl").await;

    let out = server.kubectl_ok(&["apply", "-f", &format!("{REPO}/crds/")]);
    assert!(out.contains(CRD_NAME), "{out}");
    server.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{CRD_NAME}"),
    ]);

    // Every example applies as-is (client-side apply validates strictly by default).
    let out = server.kubectl_ok(&["apply", "-n", &ns, "-f", &format!("{REPO}/examples/")]);
    let mut example_policies = Vec::new();
    for file in apiserver::yaml_files(&Path::new(REPO).join("examples")) {
        let text = fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", file.display()));
        for doc in docs.iter().filter(|d| d["kind"] == "HealthPolicy") {
            example_policies.push(doc["metadata"]["name"].as_str().expect("named").to_string());
        }
    }
    assert!(
        !example_policies.is_empty(),
        "examples/ holds no HealthPolicy"
    );
    for name in &example_policies {
        assert!(
            out.contains(&format!("healthpolicy.healthgate.dev/{name}")),
            "{name} not applied:\n{out}"
        );
    }

    // Columns come from the CRD's printer columns; the short name works.
    let table = server.kubectl_ok(&["get", "hp", "-n", &ns]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("a header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "DEGRADED", "DEPENDENCIES", "AGE"],
        "{table}"
    );
    for name in &example_policies {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing:\n{table}"
        );
    }

    // Status written by a controller shows up in those columns.
    let name = &example_policies[0];
    let status = json!({"status": {"summary": "5/6 ok", "conditions": [
        {"type": "Ready", "status": "True", "reason": "Degraded", "message": "",
         "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Degraded", "status": "True", "reason": "NonCriticalDown", "message": "search is down",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    server.kubectl_ok(&[
        "patch",
        "hp",
        name,
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        &format!("-p={status}"),
    ]);
    let table = server.kubectl_ok(&["get", "hp", name, "-n", &ns, "--no-headers"]);
    let row: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(&row[..4], [name.as_str(), "True", "True", "5/6"], "{table}");
    assert_eq!(row[4], "ok", "{table}");

    // An invalid manifest is refused by kubectl apply with the server's field error.
    let mut bad = policy("kubectl-bad", full_spec());
    bad["spec"]["dependencies"][0]["type"] = json!("redis");
    let out = server.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &bad.to_string());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.dependencies[0]")
            && stderr.contains("exactly the check block named by `type` must be set"),
        "{stderr}"
    );
    let mut unknown = policy("kubectl-unknown", full_spec());
    unknown["spec"]["defaults"]["retries"] = json!(3);
    let out = server.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &unknown.to_string());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown field \"spec.defaults.retries\""),
        "{stderr}"
    );

    // kubectl explain shows the doc comments, taken from the schema the server publishes.
    let crd = read_crd_file();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    let deps = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["dependencies"];
    let description = deps["description"]
        .as_str()
        .expect("dependencies has a description");
    let explain = explain_with_retry(server, "healthpolicy.spec.dependencies");
    assert!(
        squash_whitespace(&explain).contains(&squash_whitespace(description)),
        "{explain}"
    );
    for (field, prop) in deps["items"]["properties"]
        .as_object()
        .expect("item properties")
    {
        assert!(
            explain.contains(&format!("  {field}\t")),
            "field {field} missing:\n{explain}"
        );
        let doc = prop["description"]
            .as_str()
            .expect("every field is documented");
        let first_words: String = squash_whitespace(doc)
            .split(' ')
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            squash_whitespace(&explain).contains(&first_words),
            "doc of {field} missing:\n{explain}"
        );
    }
}

/// The server publishes a new CRD's OpenAPI a moment after it is Established.
fn explain_with_retry(server: &apiserver::ApiServer, path: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = server.kubectl(&["explain", path]);
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl explain {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[tokio::test]
async fn service_account_tokens_are_subject_to_rbac() {
    let server = apiserver::server();
    server.apply_crds().await;
    let ns = server.namespace("rbac").await;
    let admin = server.client().await;
    create_strict(&admin, &ns, &policy("p", full_spec()))
        .await
        .expect("create");

    let sa = server.service_account(&ns, "healthgate").await;
    assert_eq!(
        sa.username,
        format!("system:serviceaccount:{ns}:healthgate")
    );
    let as_sa = Api::<HealthPolicy>::namespaced(sa.client().await, &ns);
    let err = as_sa
        .list(&Default::default())
        .await
        .expect_err("no permissions before a binding");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!(status.code, 403, "{}", status.message);

    let rbac = json!([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "hp-reader", "namespace": ns},
         "rules": [{"apiGroups": ["healthgate.dev"], "resources": ["healthpolicies"], "verbs": ["get", "list", "watch"]},
                   {"apiGroups": ["healthgate.dev"], "resources": ["healthpolicies/status"], "verbs": ["patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "hp-reader", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hp-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "healthgate", "namespace": ns}]},
    ]);
    for obj in rbac.as_array().unwrap() {
        let out = server.kubectl_stdin(&["apply", "-f", "-"], &obj.to_string());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = as_sa
        .list(&Default::default())
        .await
        .expect("list allowed by the Role");
    assert_eq!(listed.items.len(), 1);
    let status = json!({"status": {"summary": "ok"}});
    as_sa
        .patch_status("p", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status patch allowed");

    // Everything the Role does not grant stays forbidden, through the API and through kubectl.
    let spec_patch = json!({"spec": {"maxStaleness": "1h"}});
    let err = as_sa
        .patch("p", &PatchParams::default(), &Patch::Merge(&spec_patch))
        .await;
    let Err(kube::Error::Api(status)) = err else {
        panic!("spec patch must be forbidden")
    };
    assert_eq!(status.code, 403);
    let out = sa.kubectl(&[
        "auth",
        "can-i",
        "delete",
        "healthpolicies.healthgate.dev",
        "-n",
        &ns,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    let out = sa.kubectl(&["get", "hp", "-n", &ns, "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "healthpolicy.healthgate.dev/p"
    );
    let out = sa.kubectl(&["get", "hp", "-n", "default"]);
    assert!(!out.status.success(), "another namespace stays forbidden");
}
