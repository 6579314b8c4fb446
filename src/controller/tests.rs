//! The controller's decisions without a cluster: reconcile against a Secret cache filled by hand,
//! and the status writer against a scripted API (tower-test) that checks what is written. The
//! same behaviour is proven on a real kube-apiserver in tests/controller_k8s.rs.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::api::HealthPolicySpec;
use crate::engine::Engine;
use crate::health::State;
use crate::metrics::Metrics;

fn policy(yaml: &str) -> Arc<HealthPolicy> {
    let spec: HealthPolicySpec = serde_saphyr::from_str(yaml).expect("a spec");
    let mut policy = HealthPolicy::new("p", spec);
    policy.meta_mut().namespace = Some("ns".into());
    policy.meta_mut().generation = Some(1);
    policy.meta_mut().resource_version = Some("41".into());
    Arc::new(policy)
}

const REDIS_FROM_SECRET: &str = "dependencies:
  - {name: cache, type: redis, redis: {urlFrom: {secretKeyRef: {name: creds, key: url}}}}
";

fn secret(url: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("creds".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        data: Some([("url".to_string(), ByteString(url.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

fn context() -> (Arc<Context>, reflector::store::Writer<Secret>) {
    let (secrets, writer) = reflector::store();
    let ctx = Context {
        engine: Engine::new(Metrics::new().checks),
        metrics: Metrics::new().controller,
        secrets,
        secrets_synced: watch::channel(true).1,
        observed: watch::Sender::new(ObservedMap::new()),
    };
    (Arc::new(ctx), writer)
}

fn key() -> PolicyKey {
    PolicyKey::new("ns", "p")
}

#[tokio::test]
async fn reconcile_runs_a_valid_policy_and_keeps_it_through_a_broken_secret() {
    let (ctx, mut secrets) = context();
    let p = policy(REDIS_FROM_SECRET);

    // The Secret is missing: invalid, with the field path, and nothing runs yet.
    reconcile::reconcile(p.clone(), ctx.clone()).await.unwrap();
    let observed = ctx.observed.borrow().get(&key()).cloned().unwrap();
    let problems = observed.invalid.expect("invalid without the Secret");
    assert_eq!(
        problems[0].path,
        "spec.dependencies[0].redis.urlFrom.secretKeyRef"
    );
    assert!(observed.applied.is_none() && ctx.engine.snapshot(&key()).is_none());

    // The Secret appears: the policy runs.
    secrets.apply_watcher_event(&Event::Apply(secret("redis://127.0.0.1:1/0")));
    reconcile::reconcile(p.clone(), ctx.clone()).await.unwrap();
    let observed = ctx.observed.borrow().get(&key()).cloned().unwrap();
    assert!(observed.invalid.is_none() && observed.applied.is_some());
    assert!(ctx.engine.snapshot(&key()).is_some());

    // A broken rotation: reported, and the last good checkers keep running.
    secrets.apply_watcher_event(&Event::Apply(secret("not a url password=hunter2")));
    reconcile::reconcile(p, ctx.clone()).await.unwrap();
    let observed = ctx.observed.borrow().get(&key()).cloned().unwrap();
    let problems = observed.invalid.expect("invalid after a bad rotation");
    assert!(!problems[0].message.contains("hunter2"), "{problems:?}");
    assert!(observed.applied.is_some() && ctx.engine.snapshot(&key()).is_some());

    // Forgetting a policy stops it and drops what reconcile knew.
    ctx.forget(&key());
    assert!(ctx.observed.borrow().is_empty() && ctx.engine.snapshot(&key()).is_none());
    ctx.engine.shutdown().await;
}

/// Answers the next request on the scripted API with `reply`, returning the request.
async fn answer(
    handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
    reply: Value,
) -> (http::Method, String, Value) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5s")
        .expect("the service is alive");
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    (method, path, body)
}

#[tokio::test]
async fn the_leader_writes_status_and_one_event_per_transition() {
    let (ctx, _) = context();
    let p = policy("dependencies:\n  - {name: db, type: tcp, tcp: {address: '127.0.0.1:1'}}\n");
    let applied = crate::policy::validate(
        &p.spec,
        &secrets::SecretUrls {
            store: &ctx.secrets,
            namespace: "ns",
        },
    )
    .unwrap();
    ctx.engine
        .serve_fixed(&key(), applied.clone(), &[("db", State::Down)]);
    ctx.observed.send_modify(|all| {
        all.insert(
            key(),
            Observed {
                generation: Some(1),
                reference: p.object_ref(&()),
                applied: Some(applied),
                invalid: None,
            },
        );
    });
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Apply((*p).clone()));

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "ns");
    let (_leading, leader) = watch::channel(true);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(writer::run(
        client,
        ctx.clone(),
        store,
        leader,
        writer::Budget {
            identity: "hg-0".into(),
            writes: budget::WriteBudget::new(10.0, 10),
        },
        cancel.clone(),
    ));

    let (method, path, body) = answer(&mut handle, serde_json::to_value(&*p).unwrap()).await;
    assert_eq!(method, http::Method::PATCH);
    assert_eq!(
        path,
        "/apis/healthgate.dev/v1alpha1/namespaces/ns/healthpolicies/p/status"
    );
    // Conditional on the version the watch delivered: a relabel to another shard in between
    // makes the API server refuse it (proved against a real one in tests/controller_shard.rs).
    assert_eq!(body["metadata"]["resourceVersion"], "41");
    let status = &body["status"];
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("CriticalDependencyDown"))
    );
    assert_eq!(status["dependencies"][0]["state"], "down");
    assert_eq!(status["dependencies"][0]["reason"], "connect");

    let (method, path, event) = answer(&mut handle, json!({})).await;
    assert_eq!(method, http::Method::POST);
    assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/ns/events");
    assert_eq!(event["reason"], "DependencyDown");
    assert_eq!(event["note"], "db is down (connect)");
    assert_eq!(event["reportingInstance"], "hg-0");
    assert_eq!(ctx.metrics.status_writes.get(), 1);

    // Nothing changed: no further write within a few ticks.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), handle.next_request()).await;
    assert!(quiet.is_err(), "an unchanged status was written again");
    cancel.cancel();
    task.await.unwrap();
    ctx.engine.shutdown().await;
}
