//! Events on a real API server tell the truth: one per transition, each with its own text, and a
//! flapping dependency is one Event series with a rising count, not a storm.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::kube_env::{SETTLE, condition_status, env};
use support::policy;
use support::services::Redis;

fn notes(events: &[Value]) -> Vec<String> {
    let mut notes: Vec<String> = events
        .iter()
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect();
    notes.sort();
    notes
}

fn series_count(event: &Value) -> u64 {
    event["series"]["count"].as_u64().unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dependency_transition_has_its_own_event_and_flaps_are_one_series() {
    let env = env("events").await;
    let mut cache = Redis::start();
    let mut search = Redis::start();
    let _hg = env.start("hg-0");
    env.apply_ready(
        "shop",
        &(policy::redis("cache", &policy::inline(&cache.url()))
            + &policy::dep(
                "search",
                &format!(
                    "type: redis, critical: false, redis: {}",
                    policy::inline(&search.url())
                ),
            )),
    );

    // First an unrelated, non-critical outage; then the critical one.
    search.stop();
    env.wait_policy("shop", "search down", |p| {
        p["status"]["dependencies"][1]["state"] == "down"
    });
    cache.stop();
    env.wait_policy("shop", "cache down", |p| {
        condition_status(p, "Ready").as_deref() == Some("False")
    });
    let down = wait_events(&env, "DependencyDown", 2);
    assert_eq!(
        notes(&down),
        ["cache is down (connect)", "search is down (connect)"],
        "{down:#?}"
    );
    assert!(down.iter().all(|e| series_count(e) == 1), "{down:#?}");

    // The cache flaps: each repeat of the same transition raises one series' count.
    for _ in 0..2 {
        cache.restart();
        env.wait_policy("shop", "cache back", |p| {
            condition_status(p, "Ready").as_deref() == Some("True")
        });
        cache.stop();
        env.wait_policy("shop", "cache down again", |p| {
            condition_status(p, "Ready").as_deref() == Some("False")
        });
    }
    let deadline = Instant::now() + SETTLE;
    let cache_down = loop {
        let events = env.events_with_reason("shop", "DependencyDown");
        let cache_down: Vec<Value> = events
            .into_iter()
            .filter(|e| e["note"] == "cache is down (connect)")
            .collect();
        if cache_down.len() == 1 && series_count(&cache_down[0]) == 3 {
            break cache_down;
        }
        assert!(Instant::now() < deadline, "{cache_down:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(cache_down.len(), 1, "one series, not one Event per flap");
    let recovered = env.events_with_reason("shop", "DependencyRecovered");
    assert_eq!(notes(&recovered), ["cache is ok again"], "{recovered:#?}");
    assert_eq!(series_count(&recovered[0]), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spec_events_carry_the_current_problems() {
    let env = env("invalid-events").await;
    let redis = Redis::start();
    let _hg = env.start("hg-0");
    env.apply_ready("p", &policy::redis("cache", &policy::inline(&redis.url())));
    for secret in ["first-missing", "second-missing"] {
        env.apply(&policy::fast(
            "p",
            &policy::redis("cache", &policy::secret(secret, "url")),
        ));
        let deadline = Instant::now() + SETTLE;
        loop {
            let events = env.events_with_reason("p", "InvalidSpec");
            if events
                .iter()
                .any(|e| e["note"].as_str().unwrap_or_default().contains(secret))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no InvalidSpec Event names {secret}: {events:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(env.events_with_reason("p", "InvalidSpec").len(), 2);
}

fn wait_events(env: &support::kube_env::Env<'_>, reason: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let events = env.events_with_reason("shop", reason);
        if events.len() >= count {
            return events;
        }
        assert!(Instant::now() < deadline, "{events:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
