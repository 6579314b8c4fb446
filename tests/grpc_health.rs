//! `--grpc-listen`: healthgate as a grpc.health.v1 server, judged by the real
//! grpc-health-probe (what kubelet-style gRPC checks run) and by a tonic client for Watch and
//! for answer times while a dependency hangs. Real PostgreSQL and Redis, stopped, frozen and
//! restarted.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::healthgate::Healthgate;
use support::policy;
use support::services::{Postgres, Redis, free_port};
use support::tools::grpc_health_probe;
use tokio::runtime::Runtime;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const SERVING: i32 = ServingStatus::Serving as i32;
const NOT_SERVING: i32 = ServingStatus::NotServing as i32;

struct Probe {
    code: i32,
    output: String,
}

/// grpc-health-probe against `address`, for `service` ("" for the server as a whole).
fn probe(address: &str, service: &str) -> Probe {
    let out = Command::new(grpc_health_probe())
        .args(["-addr", address, "-service", service, "-rpc-timeout", "2s"])
        .output()
        .expect("running grpc-health-probe");
    Probe {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn wait_probe(address: &str, service: &str, code: i32, timeout: Duration) -> Probe {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = probe(address, service);
        if answer.code == code {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "grpc-health-probe {service:?}: exit {} after {timeout:?}, wanted {code}: {}",
            answer.code,
            answer.output
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

async fn next_status(stream: &mut Streaming<HealthCheckResponse>, timeout: Duration) -> i32 {
    tokio::time::timeout(timeout, stream.message())
        .await
        .expect("a Watch update in time")
        .expect("the Watch stream is healthy")
        .expect("the Watch stream is open")
        .status
}

#[test]
fn grpc_health_follows_ready_and_never_waits_for_a_dependency() {
    let pg = Postgres::start();
    let mut redis = Redis::start();
    let deps = policy::postgres("postgres", &policy::inline(&pg.url()))
        + &policy::redis("redis", &policy::inline(&redis.url()));
    let address = format!("127.0.0.1:{}", free_port());
    let mut hg = Healthgate::start(
        &policy::document("orders", "interval: 300ms, timeout: 500ms", &deps),
        &[],
        &["--grpc-listen", &address, "--drain-delay", "1500ms"],
    );
    hg.wait_ready_status(200, Duration::from_secs(10));

    // The real probe: the whole server, the policy by name, and an unknown service.
    let all = wait_probe(&address, "", 0, Duration::from_secs(5));
    assert!(all.output.contains("SERVING"), "{}", all.output);
    wait_probe(&address, "orders", 0, Duration::from_secs(5));
    let unknown = probe(&address, "nope");
    assert_ne!(unknown.code, 0, "{}", unknown.output);
    assert!(
        unknown.output.contains("NotFound"),
        "an unknown service is NOT_FOUND: {}",
        unknown.output
    );

    let rt = Runtime::new().unwrap();
    let mut client = rt.block_on(async {
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .expect("connecting to the gRPC health server");
        HealthClient::new(channel)
    });
    let mut watch = rt.block_on(async {
        let mut stream = client.watch(request("")).await.unwrap().into_inner();
        assert_eq!(
            next_status(&mut stream, Duration::from_secs(5)).await,
            SERVING
        );
        stream
    });

    // A critical dependency down: NOT_SERVING (grpc-health-probe exits 4), pushed to Watch.
    redis.stop();
    let down = wait_probe(&address, "", 4, Duration::from_secs(10));
    assert!(down.output.contains("NOT_SERVING"), "{}", down.output);
    wait_probe(&address, "orders", 4, Duration::from_secs(5));
    rt.block_on(async {
        assert_eq!(
            next_status(&mut watch, Duration::from_secs(5)).await,
            NOT_SERVING
        );
    });

    // A frozen PostgreSQL: its checks hang until their timeout, and answers do not notice.
    pg.pause();
    std::thread::sleep(Duration::from_secs(1));
    let mut took: Vec<Duration> = rt.block_on(async {
        let mut took = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            let answer = client.check(request("orders")).await.unwrap().into_inner();
            took.push(started.elapsed());
            assert_eq!(answer.status, NOT_SERVING);
        }
        took
    });
    took.sort();
    let (median, slowest) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!(
        "Check while PostgreSQL is frozen: median {median:?}, slowest {slowest:?} (200 calls)"
    );
    // Lenient on a shared 2-core CI machine, like tests/robustness.rs: a typical answer within
    // 10 ms and none near a check timeout (500 ms).
    assert!(median < Duration::from_millis(10), "median {median:?}");
    assert!(slowest < Duration::from_millis(100), "slowest {slowest:?}");

    pg.resume();
    redis.restart();
    rt.block_on(async {
        assert_eq!(
            next_status(&mut watch, Duration::from_secs(15)).await,
            SERVING,
            "recovery is pushed to Watch"
        );
    });
    wait_probe(&address, "", 0, Duration::from_secs(5));

    // SIGTERM: NOT_SERVING during the drain, then a clean exit although a Watch is open.
    hg.signal(Signal::SIGTERM);
    rt.block_on(async {
        assert_eq!(
            next_status(&mut watch, Duration::from_secs(2)).await,
            NOT_SERVING,
            "draining is pushed to Watch"
        );
    });
    let draining = probe(&address, "");
    assert_eq!(draining.code, 4, "{}", draining.output);
    let status = hg.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit {status:?}\n{}",
        hg.logs().join("\n")
    );
}
