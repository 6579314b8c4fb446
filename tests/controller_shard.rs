//! Sharding on a real API server: two shards of two replicas each plus an unsharded replica, each
//! deployment as its own ServiceAccount under the RBAC of `manifests/sharded/`. The API server's
//! audit log says who listed, watched and wrote what; it must show each policy's status written
//! only by its own shard, every watch carrying that shard's selector, and a policy relabelled
//! from shard a to shard b written by a only before the relabel and by b only after it.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use healthgate::HealthPolicy;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, REPO, ServiceAccountAccess};
use support::healthgate::{BIN, Healthgate};
use support::kube_env::{Env, SETTLE, condition_status, env, env_on};
use support::policy;
use support::services::Redis;

const SHARD_LABEL: &str = "healthgate.dev/shard";

/// One deployment: its shard (`None`: the unsharded one), identity and replicas.
struct Deployment {
    shard: Option<&'static str>,
    user: String,
    replicas: Vec<(String, Healthgate)>,
}

impl Deployment {
    fn start(env: &Env, shard: Option<&'static str>, sa: &ServiceAccountAccess, n: usize) -> Self {
        let prefix = shard.unwrap_or("unsharded");
        let replicas = (0..n)
            .map(|i| {
                let pod = format!("{prefix}-{i}");
                let mut args = vec!["--namespace", &env.ns, "--pod-namespace", &env.ns];
                let flag;
                if let Some(shard) = shard {
                    flag = format!("--shard={shard}");
                    args.push(&flag);
                }
                let hg = Healthgate::start_kube(&sa.kubeconfig, &[("POD_NAME", &pod)], &args);
                (pod, hg)
            })
            .collect();
        Deployment {
            shard,
            user: sa.username.clone(),
            replicas,
        }
    }

    fn leaders(&self) -> Vec<&str> {
        self.replicas
            .iter()
            .filter(|(_, hg)| {
                hg.try_get("/metrics")
                    .is_ok_and(|r| r.body.lines().any(|l| l.trim() == "healthgate_leader 1"))
            })
            .map(|(pod, _)| pod.as_str())
            .collect()
    }

    /// Every replica answers for exactly `own` among `all`: /ready 200 or 404, metric series
    /// present or absent.
    fn assert_serves_exactly(&self, ns: &str, all: &[&str], own: &[&str]) {
        for (pod, hg) in &self.replicas {
            hg.wait_until(&format!("{pod} serving exactly {own:?}"), SETTLE, |hg| {
                all.iter().all(|p| {
                    let status = hg
                        .try_get(&format!("/ready/{ns}/{p}"))
                        .map_or(0, |r| r.status);
                    let has_series = hg.try_get("/metrics").is_ok_and(|r| {
                        r.body.lines().any(|l| {
                            l.starts_with("healthgate_dependency_state{")
                                && l.contains(&format!("namespace=\"{ns}\""))
                                && l.contains(&format!("policy=\"{p}\""))
                        })
                    });
                    let mine = own.contains(p);
                    status == if mine { 200 } else { 404 } && has_series == mine
                })
            });
        }
    }

    /// When the replicas logged `message` for policy `p`: the earliest or the latest of them.
    fn logged(&self, ns: &str, p: &str, message: &str, latest: bool) -> DateTime<FixedOffset> {
        let needle = format!("\"policy\":\"{ns}/{p}\"");
        let times = self
            .replicas
            .iter()
            .flat_map(|(_, hg)| hg.logs())
            .filter_map(|l| {
                let line: Value = serde_json::from_str(&l).ok()?;
                (line["message"] == message && l.contains(&needle))
                    .then(|| DateTime::parse_from_rfc3339(line["timestamp"].as_str()?).ok())?
            });
        let time = if latest { times.max() } else { times.min() };
        time.unwrap_or_else(|| panic!("no {message:?} for {p}"))
    }

    /// No replica ever started a checker for any of `foreign`.
    fn assert_never_checked(&self, ns: &str, foreign: &[&str]) {
        for (pod, hg) in &self.replicas {
            for p in foreign {
                let needle = format!("\"policy\":\"{ns}/{p}\"");
                let started: Vec<String> = hg
                    .logs()
                    .into_iter()
                    .filter(|l| l.contains("checker started") && l.contains(&needle))
                    .collect();
                assert!(started.is_empty(), "{pod} checked {p}: {started:#?}");
            }
        }
    }
}

/// `manifests/sharded/` as built: one Deployment per shard plus the unsharded one, each with its
/// own ServiceAccount and `--shard` flag, and selectors (Deployment and Service) that never
/// overlap, so no Service routes to another shard's pods.
fn assert_sharded_manifests(built: &[Value]) {
    let of_kind =
        |kind: &str| -> Vec<&Value> { built.iter().filter(|d| d["kind"] == kind).collect() };
    let deployments = of_kind("Deployment");
    let names: Vec<&str> = deployments
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["healthgate", "healthgate-shard-a", "healthgate-shard-b"]
    );
    for (deployment, shard) in deployments.iter().zip([None, Some("a"), Some("b")]) {
        let pod = &deployment["spec"]["template"]["spec"];
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let shard_args: Vec<&&str> = args.iter().filter(|a| a.starts_with("--shard")).collect();
        match shard {
            Some(shard) => assert_eq!(shard_args, [&format!("--shard={shard}").as_str()]),
            None => assert!(shard_args.is_empty(), "{args:?}"),
        }
        assert_eq!(pod["serviceAccountName"], deployment["metadata"]["name"]);
    }
    let selector = |d: &Value, path: &str| d.pointer(path).cloned().unwrap();
    for (kind, path) in [
        ("Deployment", "/spec/selector/matchLabels"),
        ("Service", "/spec/selector"),
    ] {
        let selectors: Vec<Value> = of_kind(kind).iter().map(|d| selector(d, path)).collect();
        assert_eq!(selectors.len(), 3, "{kind}");
        for (i, one) in selectors.iter().enumerate() {
            for other in &selectors[i + 1..] {
                let instance = |s: &Value| s["app.kubernetes.io/instance"].clone();
                assert!(
                    !instance(one).is_null() && instance(one) != instance(other),
                    "{kind}: {one} vs {other}"
                );
            }
        }
    }
    assert_eq!(of_kind("Namespace").len(), 1);
    assert_eq!(of_kind("CustomResourceDefinition").len(), 1);
}

/// The policies `shard` owns.
fn own<'a>(owner: &BTreeMap<&'a str, Option<&str>>, shard: Option<&str>) -> Vec<&'a str> {
    owner
        .iter()
        .filter(|(_, s)| **s == shard)
        .map(|(p, _)| *p)
        .collect()
}

/// The shard's ServiceAccount bound to its Role from `manifests/sharded/`, moved to `ns`.
async fn shard_identity(
    server: &ApiServer,
    ns: &str,
    built: &[Value],
    name: &str,
) -> ServiceAccountAccess {
    let sa = server.service_account(ns, name).await;
    let mut items: Vec<Value> = built
        .iter()
        .filter(|d| {
            (d["kind"] == "Role" || d["kind"] == "RoleBinding") && d["metadata"]["name"] == name
        })
        .cloned()
        .collect();
    assert_eq!(
        items.len(),
        2,
        "Role and RoleBinding {name} in manifests/sharded"
    );
    for doc in &mut items {
        doc["metadata"]["namespace"] = json!(ns);
        for subject in doc["subjects"].as_array_mut().into_iter().flatten() {
            subject["namespace"] = json!(ns);
        }
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &list.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sa
}

fn labelled(name: &str, shard: Option<&str>, deps: &str) -> String {
    let doc = policy::fast(name, deps);
    match shard {
        Some(shard) => doc.replace(
            &format!("metadata: {{name: {name}}}"),
            &format!("metadata: {{name: {name}, labels: {{{SHARD_LABEL}: '{shard}'}}}}"),
        ),
        None => doc,
    }
}

fn wait_all(env: &Env, policies: &[&str], ready: &str) {
    for p in policies {
        env.wait_policy(p, &format!("Ready {ready}"), |v| {
            condition_status(v, "Ready").as_deref() == Some(ready)
        });
    }
}

/// How long both deployments ran checkers of `p` after it moved from `old` to `new` (negative:
/// how long neither did): from the new owner's first checker start to the old owner's last stop.
fn handover(ns: &str, p: &str, old: &Deployment, new: &Deployment) -> Duration {
    let stopped = old.logged(ns, p, "policy gone; checkers stopped", true);
    let started = new.logged(ns, p, "checker started", false);
    let overlap = stopped - started;
    eprintln!(
        "{p} moved: checkers on both for {} ms (negative: on neither)",
        overlap.num_milliseconds()
    );
    overlap.abs().to_std().unwrap()
}

/// `%2F` → `/` and so on, for the label selector in an audited request URI.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_never_check_or_write_each_others_policies() {
    let server = ApiServer::start_audited().expect("an audited control plane");
    // The unsharded deployment runs as the base's ServiceAccount and Role.
    let env = env_on(&server, "shards").await;
    let built: Vec<Value> = serde_saphyr::from_multiple(
        &server.kubectl_ok(&["kustomize", &format!("{REPO}/manifests/sharded")]),
    )
    .unwrap();
    assert_sharded_manifests(&built);
    let sa_a = shard_identity(&server, &env.ns, &built, "healthgate-shard-a").await;
    let sa_b = shard_identity(&server, &env.ns, &built, "healthgate-shard-b").await;
    // Each shard's Role reads its own leader Lease only.
    for (sa, own, other) in [
        (&sa_a, "healthgate-shard-a", "healthgate-shard-b"),
        (&sa_b, "healthgate-shard-b", "healthgate-shard-a"),
    ] {
        for (lease, allowed) in [(own, "yes"), (other, "no")] {
            let out = server.kubectl(&[
                "auth",
                "can-i",
                "get",
                &format!("leases/{lease}"),
                "-n",
                &env.ns,
                &format!("--as={}", sa.username),
            ]);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                allowed,
                "{lease}"
            );
        }
    }

    let mut redis = Redis::start();
    let deps = policy::redis("cache", &policy::inline(&redis.url()));
    // "mover" starts in shard a, moves to shard b, then (label removed) to the unsharded one.
    let mut owner: BTreeMap<&str, Option<&str>> = BTreeMap::from([
        ("a1", Some("a")),
        ("a2", Some("a")),
        ("b1", Some("b")),
        ("u1", None),
        ("mover", Some("a")),
    ]);
    let all: Vec<&str> = owner.keys().copied().collect();
    for (name, shard) in &owner {
        env.apply(&labelled(name, *shard, &deps));
    }
    let a = Deployment::start(&env, Some("a"), &sa_a, 2);
    let b = Deployment::start(&env, Some("b"), &sa_b, 2);
    let u = Deployment::start(&env, None, &env.sa, 1);
    let deployments = [&a, &b, &u];

    // Each deployment elects its own leader on its own Lease, and every policy gets status.
    wait_all(&env, &all, "True");
    for d in deployments {
        d.replicas[0]
            .1
            .wait_until("one leader per deployment", SETTLE, |_| {
                d.leaders().len() == 1
            });
        d.assert_serves_exactly(&env.ns, &all, &own(&owner, d.shard));
    }
    for (lease, d) in [
        ("healthgate-shard-a", &a),
        ("healthgate-shard-b", &b),
        ("healthgate", &u),
    ] {
        let holder = env.kubectl(&[
            "get",
            "lease",
            lease,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        assert_eq!(vec![holder.as_str()], d.leaders(), "Lease {lease}");
    }

    // An outage and a recovery: every leader has transitions to write.
    redis.stop();
    wait_all(&env, &all, "False");
    redis.restart();
    wait_all(&env, &all, "True");

    // Move "mover" from shard a to shard b: a stops its checkers and series, b takes it.
    let before = env.policy("mover");
    let relabel = format!("{SHARD_LABEL}=b");
    env.kubectl(&["label", "hp", "mover", &relabel, "--overwrite"]);
    owner.insert("mover", Some("b"));
    // A write from shard a still holding the version from before the relabel, as the status
    // writer sends it (server-side apply naming the watched resourceVersion), is refused.
    let stale = Api::<HealthPolicy>::namespaced(sa_a.client().await, &env.ns)
        .patch_status(
            "mover",
            &PatchParams::apply("healthgate").force(),
            &Patch::Apply(json!({
                "apiVersion": "healthgate.dev/v1alpha1",
                "kind": "HealthPolicy",
                "metadata": {"resourceVersion": before["metadata"]["resourceVersion"]},
                "status": before["status"],
            })),
        )
        .await;
    assert!(
        matches!(&stale, Err(kube::Error::Api(s)) if s.code == 409),
        "a stale write after the relabel was not refused: {stale:?}"
    );
    for d in deployments {
        d.assert_serves_exactly(&env.ns, &all, &own(&owner, d.shard));
    }
    for (pod, hg) in &a.replicas {
        let needle = format!("\"policy\":\"{}/mover\"", env.ns);
        assert!(
            hg.logs()
                .iter()
                .any(|l| l.contains("policy gone; checkers stopped") && l.contains(&needle)),
            "{pod} did not log dropping mover"
        );
    }
    // Another outage, so that b (and only b) has transitions of mover to write.
    redis.stop();
    wait_all(&env, &all, "False");
    redis.restart();
    wait_all(&env, &all, "True");

    // Without the label it belongs to the unsharded deployment.
    env.kubectl(&["label", "hp", "mover", &format!("{SHARD_LABEL}-")]);
    owner.insert("mover", None);
    for d in deployments {
        d.assert_serves_exactly(&env.ns, &all, &own(&owner, d.shard));
    }
    redis.stop();
    wait_all(&env, &all, "False");
    redis.restart();
    wait_all(&env, &all, "True");

    // The hand-overs are prompt: both watches see the relabel at the same time. (Loose bound:
    // two cores are shared with the API server, etcd and five healthgates.)
    for (old, new) in [(&a, &b), (&b, &u)] {
        let handover = handover(&env.ns, "mover", old, new);
        assert!(handover < Duration::from_secs(5), "{handover:?}");
    }

    // Nobody ever started a checker outside its shard ("mover" was everyone's in turn).
    a.assert_never_checked(&env.ns, &["b1", "u1"]);
    b.assert_never_checked(&env.ns, &["a1", "a2", "u1"]);
    u.assert_never_checked(&env.ns, &["a1", "a2", "b1"]);

    // The API server's record.
    let audit: Vec<Value> = server
        .audit_events()
        .into_iter()
        .filter(|e| e["objectRef"]["namespace"] == env.ns.as_str())
        .collect();
    let user_of = |e: &Value| {
        e["user"]["username"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let ts = |e: &Value, field: &str| e[field].as_str().expect("a timestamp").to_string();

    // 1. Every list and watch of a deployment's identity carried its own shard's selector.
    for d in deployments {
        let expected = match d.shard {
            Some(shard) => format!("labelSelector={SHARD_LABEL}={shard}"),
            None => format!("labelSelector=!{SHARD_LABEL}"),
        };
        let reads: Vec<&Value> = audit
            .iter()
            .filter(|e| user_of(e) == d.user && (e["verb"] == "list" || e["verb"] == "watch"))
            .collect();
        assert!(!reads.is_empty(), "no list or watch by {}", d.user);
        for read in reads {
            let uri = percent_decode(read["requestURI"].as_str().unwrap());
            assert!(
                uri.contains(&expected),
                "{} read without {expected}: {uri}",
                d.user
            );
        }
    }

    // 2. Status writes: each policy only by its owner; "mover" only by the owner of the period
    // the write falls in. A period starts when its relabel was received and ends when the next
    // one completed, so a write counts for a period only if it could have happened within it.
    let relabels: Vec<&Value> = audit
        .iter()
        .filter(|e| {
            e["verb"] == "patch"
                && e["objectRef"]["name"] == "mover"
                && e["objectRef"]["subresource"].is_null()
                && user_of(e) == "admin"
                && e["stage"] == "ResponseComplete"
        })
        .collect();
    assert_eq!(relabels.len(), 2, "the two relabels in the audit log");
    let periods = [
        (None, Some(ts(relabels[0], "stageTimestamp")), Some("a")),
        (
            Some(ts(relabels[0], "requestReceivedTimestamp")),
            Some(ts(relabels[1], "stageTimestamp")),
            Some("b"),
        ),
        (
            Some(ts(relabels[1], "requestReceivedTimestamp")),
            None,
            None,
        ),
    ];
    let user = |shard: Option<&str>| {
        deployments
            .iter()
            .find(|d| d.shard == shard)
            .map(|d| d.user.clone())
            .unwrap()
    };
    let mut written: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut refused = 0;
    for write in audit.iter().filter(|e| {
        e["verb"] == "patch"
            && e["objectRef"]["subresource"] == "status"
            && e["stage"] == "ResponseComplete"
    }) {
        let policy = write["objectRef"]["name"].as_str().unwrap();
        let by = user_of(write);
        let code = write["responseStatus"]["code"].as_i64().unwrap_or(0);
        if code == 409 {
            refused += 1;
            continue;
        }
        assert_eq!(code, 200, "{write:#}");
        *written.entry((policy.to_string(), by.clone())).or_default() += 1;
        if policy == "mover" {
            let (received, done) = (
                ts(write, "requestReceivedTimestamp"),
                ts(write, "stageTimestamp"),
            );
            let owned = periods.iter().any(|(start, end, shard)| {
                user(*shard) == by
                    && start.as_ref().is_none_or(|start| done > *start)
                    && end.as_ref().is_none_or(|end| received < *end)
            });
            assert!(
                owned,
                "{by} wrote mover outside its time as owner: {write:#}"
            );
        } else {
            assert_eq!(
                by,
                user(owner[policy]),
                "{policy} written by {by}: {write:#}"
            );
        }
    }
    eprintln!("status writes by (policy, user): {written:#?}; refused with 409: {refused}");
    assert!(
        refused >= 1,
        "the stale write above is in the audit log as a 409"
    );
    // Not vacuous: every policy was written, "mover" by each owner in turn.
    for p in &all {
        assert!(
            written.keys().any(|(policy, _)| policy == p),
            "no status write for {p}"
        );
    }
    for shard in [Some("a"), Some("b"), None] {
        assert!(
            written.contains_key(&("mover".to_string(), user(shard))),
            "{shard:?} never wrote mover"
        );
    }
}

/// The mistake `--shard` rules out, made by hand: two deployments split the policies by
/// `--selector` but elect on the same (default) Lease. One leader for both means the other's
/// policies never get status; the standby deployment says so in its log and metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_sharing_a_lease_by_mistake_are_told() {
    let env = env("lease-clash").await;
    let redis = Redis::start();
    let deps = policy::redis("cache", &policy::inline(&redis.url()));
    for team in ["x", "y"] {
        let name = format!("p{team}");
        env.apply(&policy::fast(&name, &deps).replace(
            &format!("metadata: {{name: {name}}}"),
            &format!("metadata: {{name: {name}, labels: {{team: '{team}'}}}}"),
        ));
    }
    let x = env.start_with("x-0", &[], &["--selector", "team=x"]);
    env.wait_policy("px", "Ready from x", |p| {
        condition_status(p, "Ready").as_deref() == Some("True")
    });
    let y = env.start_with("y-0", &[], &["--selector", "team=y"]);
    let clash = |hg: &Healthgate| hg.metric("healthgate_lease_clash");
    y.wait_until("y reports the clash", SETTLE, |y| clash(y) == Some(1.0));
    y.wait_until("y serves py", SETTLE, |y| {
        y.try_get(&format!("/ready/{}/py", env.ns))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(
        y.logs().iter().any(
            |l| l.contains("held by a deployment serving other policies")
                && l.contains("selector team=x")
        ),
        "{:#?}",
        y.logs()
    );
    assert_eq!(clash(&x), Some(0.0));
    // What the warning is about: py is checked by y but nobody writes its status.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        env.policy("py")["status"].is_null(),
        "{:#}",
        env.policy("py")
    );
}

/// Bad shard flags fail at start with an error naming the flag, before any API call.
#[test]
fn shard_flags_are_checked_before_connecting() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("KUBECONFIG", "/nonexistent")
            .env_remove("HEALTHGATE_LEASE_NAME")
            .env_remove("HEALTHGATE_SELECTOR")
            .env_remove("HEALTHGATE_SHARD")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--shard", "a", "--lease-name", "x"],
            &["cannot be used with", "--lease-name", "--shard"],
        ),
        (
            &["--shard", "a", "--policy-name", "p"],
            &["cannot be used with", "--policy-name", "--shard"],
        ),
        (
            &["--shard", "Shard_A"],
            &["--shard \"Shard_A\": a shard name must be"],
        ),
        (
            &["--selector", "healthgate.dev/shard=a"],
            &["--selector", "use --shard NAME"],
        ),
    ];
    for (args, expected) in cases {
        let stderr = run(args);
        for part in *expected {
            assert!(stderr.contains(part), "{args:?}: {part:?} not in {stderr}");
        }
    }
}
