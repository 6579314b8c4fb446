//! Several replicas and a control plane that goes away: leader failover, and checkers that keep
//! serving /ready while the API server is down, with status catching up when it returns.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::apiserver::ApiServer;
use support::healthgate::Healthgate;
use support::kube_env::{SETTLE, condition_status, env, env_on};
use support::policy;
use support::services::Redis;

/// The Lease lasts 10 s and is renewed 3 s before expiry; the issue asks for ~15 s.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

fn is_leader(hg: &Healthgate) -> bool {
    hg.try_get("/metrics")
        .is_ok_and(|r| r.body.lines().any(|l| l.trim() == "healthgate_leader 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_status_when_the_leader_dies() {
    let env = env("ha").await;
    let mut redis = Redis::start();
    let a = env.start("hg-a");
    let b = env.start("hg-b");
    env.apply_ready("p", &policy::redis("cache", &policy::inline(&redis.url())));
    // Both replicas serve their own /ready; exactly one leads.
    let path = format!("/ready/{}/p", env.ns);
    for hg in [&a, &b] {
        hg.wait_until("policy served", SETTLE, |hg| {
            hg.try_get(&path).is_ok_and(|r| r.status == 200)
        });
    }
    a.wait_until("one leader", SETTLE, |a| is_leader(a) != is_leader(&b));
    let holder = env.kubectl(&[
        "get",
        "lease",
        "healthgate",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let (leader, standby, standby_name) = if is_leader(&a) {
        (a, b, "hg-b")
    } else {
        (b, a, "hg-a")
    };
    assert_ne!(holder, standby_name);

    // The leader dies without releasing the Lease.
    leader.signal(Signal::SIGKILL);
    let killed = Instant::now();
    standby.wait_until("standby leads", FAILOVER_BOUND * 2, is_leader);
    let took = killed.elapsed();
    eprintln!("leader failover took {took:?}");
    assert!(took <= FAILOVER_BOUND, "failover took {took:?}");
    let holder = env.kubectl(&[
        "get",
        "lease",
        "healthgate",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, standby_name);

    // The new leader writes status and Events.
    redis.stop();
    env.wait_policy("p", "Ready False from the new leader", |p| {
        condition_status(p, "Ready").as_deref() == Some("False")
    });
    let events = env.events_with_reason("p", "DependencyDown");
    assert!(
        events
            .iter()
            .any(|e| e["reportingInstance"] == standby_name),
        "{events:#?}"
    );
    drop(leader);

    // A graceful stop releases the Lease: the hand-over does not wait for it to expire.
    let mut current = standby;
    let next = env.start("hg-c");
    next.wait_until("hg-c follows", SETTLE, |c| {
        c.try_get("/metrics")
            .is_ok_and(|r| r.body.contains("healthgate_leader 0"))
    });
    current.signal(Signal::SIGTERM);
    let stopped = Instant::now();
    next.wait_until("hg-c leads", FAILOVER_BOUND, is_leader);
    let handover = stopped.elapsed();
    eprintln!("graceful hand-over took {handover:?}");
    assert!(
        handover < Duration::from_secs(5),
        "hand-over took {handover:?}; the Lease was not released"
    );
    assert!(current.wait_exit(SETTLE).success());
    assert!(
        current.logs().iter().any(|l| l.contains("lease released")),
        "{:#?}",
        current.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkers_outlive_the_api_server_and_status_catches_up() {
    let server = ApiServer::start().expect("a dedicated control plane");
    let env = env_on(&server, "outage").await;
    let mut redis = Redis::start();
    let hg = env.start("hg-0");
    env.apply_ready("p", &policy::redis("cache", &policy::inline(&redis.url())));
    let path = format!("/ready/{}/p", env.ns);

    server.stop_apiserver();
    // Checkers keep running without the API server: /ready stays ok, then follows Redis.
    for _ in 0..20 {
        assert_eq!(hg.get(&path).status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    redis.stop();
    hg.wait_until("/ready 503 while the API server is down", SETTLE, |hg| {
        hg.try_get(&path).is_ok_and(|r| r.status == 503)
    });

    server.start_apiserver();
    // Status catches up with what happened meanwhile.
    let policy = env.wait_policy("p", "Ready False after the outage", |p| {
        condition_status(p, "Ready").as_deref() == Some("False")
    });
    assert_eq!(policy["status"]["dependencies"][0]["state"], "down");
    // The watch resumed: an edit made now reaches the checkers.
    redis.restart();
    env.apply(&policy::fast(
        "p",
        &(policy::redis("cache", &policy::inline(&redis.url()))
            + &policy::redis("cache2", &policy::inline(&redis.url()))),
    ));
    hg.wait_until("edit after the outage applied", SETTLE, |hg| {
        hg.try_get(&path)
            .is_ok_and(|r| r.status == 200 && r.json()["checks"]["cache2"]["status"] == "ok")
    });
    env.wait_policy("p", "Ready with generation 2", |p| {
        condition_status(p, "Ready").as_deref() == Some("True")
            && p["status"]["observedGeneration"] == 2
    });
}

/// Cascade protection: a critical dependency down on one replica takes that replica out; down on
/// every replica, both answer degraded (kept in rotation) — only for policies that opt in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_protection_degrades_only_when_every_replica_sees_the_outage() {
    let env = env("cascade").await;
    let mut redis = Redis::start();
    let closed = support::services::free_port();
    let dead_url = format!("redis://127.0.0.1:{closed}/0");
    let deps = policy::redis("cache", "{urlFrom: {env: REDIS_URL}}");
    // Three failures in a row: a check that is merely slow on a loaded machine is no outage.
    let policy = |name: &str| {
        policy::fast(name, &deps).replace("timeout: 500ms}", "timeout: 1s, failureThreshold: 3}")
    };
    env.apply(&format!(
        "{}  cascadeProtection: {{enabled: true}}\n",
        policy("protected")
    ));
    env.apply(&policy("plain"));
    // Replica a reaches Redis, replica b does not (its own network problem).
    let a = env.start_with("hg-a", &[("REDIS_URL", &redis.url())], &[]);
    let b = env.start_with("hg-b", &[("REDIS_URL", &dead_url)], &[]);
    let protected = format!("/ready/{}/protected", env.ns);
    let plain = format!("/ready/{}/plain", env.ns);
    let status = |hg: &Healthgate, path: &str| hg.try_get(path).map(|r| r.status).unwrap_or(0);

    a.wait_until("a ready", SETTLE, |a| status(a, &protected) == 200);
    b.wait_until("b down", SETTLE, |b| status(b, &protected) == 503);
    // Views are exchanged every few seconds; b must stay out: a is better off.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(status(&b, &protected), 503, "b must stay out of rotation");
        assert_eq!(status(&a, &protected), 200);
        std::thread::sleep(Duration::from_millis(100));
    }

    // Now Redis is down for every replica: both stay in rotation, degraded.
    redis.stop();
    let outage = Instant::now();
    for hg in [&a, &b] {
        hg.wait_until("degraded under cascade protection", SETTLE, |hg| {
            status(hg, &protected) == 207
        });
    }
    let took = outage.elapsed();
    eprintln!("cascade protection engaged on both replicas {took:?} after the outage");
    // The kubelet removes an endpoint after periodSeconds × failureThreshold (5 s × 2 in
    // manifests/); protection must engage before that.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let body = b.get(&protected).json();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["cache"]["status"], "down");
    assert_eq!(body["checks"]["cache"]["protected"], true);
    // Opt-in: the policy without protection is down on both.
    assert_eq!(status(&a, &plain), 503);
    assert_eq!(status(&b, &plain), 503);
    // The views are in the API server, one Lease per replica.
    let leases = env.kubectl(&[
        "get",
        "leases",
        "-l",
        "healthgate.dev/view-of=healthgate",
        "-o",
        "name",
    ]);
    assert!(
        leases.contains("healthgate-view-hg-a") && leases.contains("healthgate-view-hg-b"),
        "{leases}"
    );
    // The leader's status says Ready (degraded), not down.
    env.wait_policy("protected", "Ready under protection", |p| {
        condition_status(p, "Ready").as_deref() == Some("True")
            && condition_status(p, "Degraded").as_deref() == Some("True")
    });

    // Redis back: a recovers; b, still cut off, goes back out of rotation.
    redis.restart();
    a.wait_until("a ok again", SETTLE, |a| status(a, &protected) == 200);
    b.wait_until("b out again", SETTLE, |b| status(b, &protected) == 503);
}
