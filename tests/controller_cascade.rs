//! Cascade protection with three replicas on a real API server: one replica alone seeing an
//! outage goes down alone; all three seeing it stay in rotation, degraded, and say so (status
//! condition, Events, gauge, /ready); after maxDuration all report down; when the dependency
//! returns all are ok and the condition clears.

mod support;

use std::time::{Duration, Instant};

use support::healthgate::Healthgate;
use support::kube_env::{SETTLE, condition_status, env};
use support::policy;
use support::services::Redis;

fn status(hg: &Healthgate, path: &str) -> u16 {
    hg.try_get(path).map(|r| r.status).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_cap_and_visibility_with_three_replicas() {
    let env = env("cascade3").await;
    // Each replica reaches "the" cache through its own server, so one replica's view can differ.
    let mut caches = [Redis::start(), Redis::start(), Redis::start()];
    let deps = policy::redis("cache", &policy::env("REDIS_URL"));
    let max_duration = Duration::from_secs(12);
    env.apply(&format!(
        "{}  cascadeProtection: {{enabled: true, maxDuration: {}s}}\n",
        policy::fast("p", &deps).replace("timeout: 500ms}", "timeout: 1s, failureThreshold: 2}"),
        max_duration.as_secs()
    ));
    let replicas: Vec<Healthgate> = ["hg-a", "hg-b", "hg-c"]
        .iter()
        .zip(&caches)
        .map(|(name, cache)| env.start_with(name, &[("REDIS_URL", &cache.url())], &[]))
        .collect();
    let path = format!("/ready/{}/p", env.ns);
    for hg in &replicas {
        hg.wait_until("ready", SETTLE, |hg| status(hg, &path) == 200);
    }

    // One replica sees the outage: below minReplicas (2), so it alone leaves rotation.
    caches[1].stop();
    replicas[1].wait_until("b down", SETTLE, |hg| status(hg, &path) == 503);
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(status(&replicas[1], &path), 503, "b alone must stay out");
        assert_eq!(status(&replicas[0], &path), 200);
        assert_eq!(status(&replicas[2], &path), 200);
        std::thread::sleep(Duration::from_millis(200));
    }

    // All three see it: all stay in rotation, degraded, and the checks say protected.
    caches[0].stop();
    caches[2].stop();
    let outage = Instant::now();
    for hg in &replicas {
        hg.wait_until("degraded under protection", SETTLE, |hg| {
            status(hg, &path) == 207
        });
    }
    let engaged = outage.elapsed();
    eprintln!("protection engaged on all three {engaged:?} after the outage");
    let body = replicas[0].get(&path).json();
    assert_eq!(body["checks"]["cache"]["status"], "down");
    assert_eq!(body["checks"]["cache"]["protected"], true, "{body}");
    for hg in &replicas {
        let gauge = format!(
            "healthgate_cascade_protection_active{{name=\"cache\",namespace=\"{}\",policy=\"p\"}}",
            env.ns
        );
        assert_eq!(hg.metric(&gauge), Some(1.0), "{gauge}");
    }
    let policy = env.wait_policy("p", "CascadeProtected True", |p| {
        condition_status(p, "CascadeProtected").as_deref() == Some("True")
    });
    let message = policy["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "CascadeProtected")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.ends_with(": cache"), "{message}");
    assert_eq!(condition_status(&policy, "Ready").as_deref(), Some("True"));
    let events = env.events_with_reason("p", "CascadeProtectionEngaged");
    assert_eq!(events.len(), 1, "{events:#?}");

    // The cap: after maxDuration the fleet reports down anyway.
    for hg in &replicas {
        hg.wait_until("down after maxDuration", SETTLE, |hg| {
            status(hg, &path) == 503
        });
    }
    let capped = outage.elapsed();
    eprintln!("all three down {capped:?} after the outage (maxDuration {max_duration:?})");
    assert!(
        capped >= max_duration,
        "down after {capped:?}, before maxDuration"
    );
    env.wait_policy("p", "CascadeProtected False after the cap", |p| {
        condition_status(p, "CascadeProtected").as_deref() == Some("False")
            && condition_status(p, "Ready").as_deref() == Some("False")
    });

    // The dependency returns: all ok, the condition stays clear, and the release was recorded.
    for cache in &mut caches {
        cache.restart();
    }
    for hg in &replicas {
        hg.wait_until("ok again", SETTLE, |hg| status(hg, &path) == 200);
    }
    let policy = env.wait_policy("p", "Ready again", |p| {
        condition_status(p, "Ready").as_deref() == Some("True")
    });
    assert_eq!(
        condition_status(&policy, "CascadeProtected").as_deref(),
        Some("False")
    );
    assert_eq!(
        env.events_with_reason("p", "CascadeProtectionReleased")
            .len(),
        1
    );
}
