//! The write budget on a real API server: 100 dependencies (10 policies × 10) flapping every
//! second would ask for ~10 status writes and ~100 Events per second; the leader sends at most
//! `--api-write-burst` + `--api-write-qps` × seconds, coalescing the rest, and status still
//! converges once the flapping stops. Prints the measured writes per second (README).

mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::healthgate::Healthgate;
use support::kube_env::{condition_status, env};
use support::policy;

const QPS: f64 = 10.0;
const BURST: f64 = 50.0;
const FLAPPING: Duration = Duration::from_secs(20);

fn writes(hg: &Healthgate) -> f64 {
    hg.metric("healthgate_status_writes_total").unwrap_or(0.0)
        + hg.metric("healthgate_events_total").unwrap_or(0.0)
}

/// A TCP endpoint that accepts everything, and disappears and returns every 500 ms while
/// `flapping` is set.
struct Endpoint {
    address: SocketAddr,
    flapping: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    fn start() -> Self {
        let first = open("127.0.0.1:0".parse().unwrap());
        let address = first.local_addr().unwrap();
        let flapping = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (flapping, stop) = (flapping.clone(), stop.clone());
            move || {
                let mut listener = Some(first);
                let mut toggled = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let flap_now = flapping.load(Ordering::Relaxed)
                        && toggled.elapsed() >= Duration::from_millis(500);
                    if flap_now || (listener.is_none() && !flapping.load(Ordering::Relaxed)) {
                        toggled = Instant::now();
                        listener = match listener.take() {
                            Some(_) => None,
                            None => Some(open(address)),
                        };
                    }
                    // Accept and close, so a full backlog never fails a check.
                    while let Some(Ok(_)) = listener.as_ref().map(TcpListener::accept) {}
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Self {
            address,
            flapping,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open(address: SocketAddr) -> TcpListener {
    let listener = TcpListener::bind(address).expect("binding the endpoint");
    listener.set_nonblocking(true).unwrap();
    listener
}

fn all_ready(env: &support::kube_env::Env<'_>, what: &str) {
    for p in 0..10 {
        env.wait_policy(&format!("p{p}"), what, |p| {
            condition_status(p, "Ready").as_deref() == Some("True")
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_fleet_stays_within_the_write_budget() {
    let env = env("budget").await;
    let endpoint = Endpoint::start();
    let deps: String = (0..10)
        .map(|i| policy::tcp(&format!("dep-{i}"), &endpoint.address.to_string(), true))
        .collect();
    let hg = env.start_with(
        "hg-0",
        &[],
        &[
            "--api-write-qps",
            &QPS.to_string(),
            "--api-write-burst",
            &BURST.to_string(),
        ],
    );
    for p in 0..10 {
        env.apply(&policy::fast(&format!("p{p}"), &deps));
    }
    all_ready(&env, "Ready");

    endpoint.flapping.store(true, Ordering::Relaxed);
    let before = writes(&hg);
    let started = Instant::now();
    std::thread::sleep(FLAPPING);
    let spent = writes(&hg) - before;
    let seconds = started.elapsed().as_secs_f64();
    endpoint.flapping.store(false, Ordering::Relaxed);

    eprintln!(
        "100 dependencies flapping every second for {seconds:.1} s: {spent} status writes + Events, {:.1}/s (budget {QPS}/s after a burst of {BURST})",
        spent / seconds
    );
    assert!(spent > 0.0, "nothing was written while flapping");
    assert!(
        spent <= BURST + QPS * seconds + 1.0,
        "{spent} writes in {seconds:.1} s exceed the budget"
    );
    // Coalesced, not lost: once the flapping stops every policy converges to Ready.
    all_ready(&env, "Ready after the flapping");
}
