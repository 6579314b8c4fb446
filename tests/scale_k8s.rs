//! Many HealthPolicies on a real API server (issue 16, item 3): a benchmark, not a timed test.
//!
//! N policies (one `tcp` dependency each, every one on its own loopback listener so no two
//! checks share a probe run) are created first; then healthgate starts as its ServiceAccount
//! under the Role from manifests/base and the test measures:
//!
//! 1. start → every policy's status written by healthgate (`observedGeneration == generation`
//!    and a Ready condition), seen through a watch, and start → `/ready` lists all N (engine);
//! 2. edit → checker live: an edit adding a dependency (on a new listener) to one policy while
//!    the others run, until `/ready/{namespace}/{name}` shows its first result (polled every 5 ms);
//! 3. status writes and Events per second in steady state and while some listeners flap, with
//!    the delay from a listener going away to the status saying so;
//! 4. the controller's RSS and CPU over the steady window.
//!
//! By default (CI) it runs a small fleet and asserts only that every number is produced and
//! sane. `HEALTHGATE_SCALE=full` runs 1,000 policies (`HEALTHGATE_SCALE_POLICIES` overrides),
//! prints a Markdown table and writes it to `HEALTHGATE_SCALE_OUT` if set; see
//! scripts/scale-policies.sh. Timing targets are reported, never asserted.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use healthgate::HealthPolicy;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use support::healthgate::Healthgate;
use support::kube_env::env;
use tokio::sync::watch;

const MANAGER: &str = "scale-bench";
/// Generous: a full run creates 1,000 objects and starts 1,000 checkers on a shared 2-core box.
const PATIENCE: Duration = Duration::from_secs(300);

/// How big a run is, from the environment.
struct Scale {
    full: bool,
    policies: usize,
    edits: usize,
    flapping: usize,
    /// The check interval of every policy: the engine runs a start budget of checks at once and
    /// the rest at their phase, so first results may take up to one interval.
    interval: String,
    steady: Duration,
    flap_window: Duration,
    /// How long a flapping listener stays away, and then back.
    flap_half: Duration,
    write_qps: String,
    write_burst: String,
}

impl Scale {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let full = var("HEALTHGATE_SCALE").as_deref() == Some("full");
        let policies = var("HEALTHGATE_SCALE_POLICIES")
            .map(|v| v.parse().expect("HEALTHGATE_SCALE_POLICIES is a number"))
            .unwrap_or(if full { 1000 } else { 20 });
        Self {
            full,
            policies,
            edits: if full { 50 } else { 3 },
            flapping: if full { 100 } else { 5 }.min(policies),
            interval: var("HEALTHGATE_SCALE_INTERVAL").unwrap_or_else(|| "2s".into()),
            steady: Duration::from_secs(if full { 30 } else { 5 }),
            flap_window: Duration::from_secs(if full { 30 } else { 8 }),
            flap_half: Duration::from_secs(3),
            // The defaults of --api-write-qps and --api-write-burst, stated so the table says them.
            write_qps: var("HEALTHGATE_SCALE_WRITE_QPS").unwrap_or_else(|| "10".into()),
            write_burst: var("HEALTHGATE_SCALE_WRITE_BURST").unwrap_or_else(|| "50".into()),
        }
    }
}

/// Loopback TCP listeners served by their own runtime, so the test's blocking polls never
/// starve an accept. A listener in a flapping group closes while the group is down and binds
/// the same port again when it is back.
struct Listeners {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Listeners {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("listeners")
            .enable_all()
            .build()
            .unwrap();
        Self {
            runtime: Some(runtime),
        }
    }

    /// A new listener; with `down`, it is away while `down` holds true.
    fn open(&self, down: Option<watch::Receiver<bool>>) -> SocketAddr {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let address = std.local_addr().unwrap();
        let runtime = self.runtime.as_ref().unwrap();
        runtime.spawn(async move {
            let mut listener = Some(tokio::net::TcpListener::from_std(std).unwrap());
            let Some(mut down) = down else {
                let listener = listener.unwrap();
                // Accept and close: the check only connects.
                loop {
                    drop(listener.accept().await);
                }
            };
            loop {
                let current = match listener.take() {
                    Some(l) => l,
                    None => bind_again(address).await,
                };
                loop {
                    tokio::select! {
                        accepted = current.accept() => drop(accepted),
                        _ = down.wait_for(|d| *d) => break,
                    }
                }
                drop(current);
                if down.wait_for(|d| !*d).await.is_err() {
                    return;
                }
            }
        });
        address
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn bind_again(address: SocketAddr) -> tokio::net::TcpListener {
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn dependency(name: &str, address: SocketAddr) -> Value {
    json!({"name": name, "type": "tcp", "tcp": {"address": address.to_string()}})
}

fn document(name: &str, interval: &str, dependencies: &[Value]) -> Value {
    json!({
        "apiVersion": "healthgate.dev/v1alpha1", "kind": "HealthPolicy",
        "metadata": {"name": name},
        "spec": {"defaults": {"interval": interval, "timeout": "1s"}, "dependencies": dependencies},
    })
}

/// What the test's own watch has seen of one policy's status.
#[derive(Default)]
struct Seen {
    /// When healthgate's status first acknowledged the current generation with a Ready condition.
    acknowledged: Option<Instant>,
    /// Changes of the first dependency's state in status, in order.
    states: Vec<(Instant, String)>,
}

type Watched = Arc<Mutex<HashMap<String, Seen>>>;

/// Follows every policy in `api` and records what healthgate writes into their status.
fn watch_status(api: Api<HealthPolicy>) -> (Watched, tokio::task::JoinHandle<()>) {
    let seen: Watched = Arc::default();
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(policy)) = stream.try_next().await {
                let now = Instant::now();
                let value = serde_json::to_value(&policy).unwrap();
                let name = value["metadata"]["name"].as_str().unwrap().to_string();
                let status = &value["status"];
                let acknowledged = status["observedGeneration"] == value["metadata"]["generation"]
                    && status["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready"));
                let state = status["dependencies"][0]["state"]
                    .as_str()
                    .map(String::from);
                let mut seen = seen.lock().unwrap();
                let entry = seen.entry(name).or_default();
                if acknowledged && entry.acknowledged.is_none() {
                    entry.acknowledged = Some(now);
                }
                if let Some(state) = state
                    && entry.states.last().map(|(_, s)| s) != Some(&state)
                {
                    entry.states.push((now, state));
                }
            }
        }
    });
    (seen, task)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start at field 3 (state).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// A `/proc/PID/status` field in MiB (VmRSS, VmHWM).
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib / 1024.0
}

fn counter(hg: &Healthgate, name: &str) -> f64 {
    hg.metric(name).unwrap_or(0.0)
}

/// Percentile `p` (0–100) of sorted samples, nearest rank.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// How many distinct policies of `ns` `/ready` lists, and how many of their checks have a result.
fn ready_listing(hg: &Healthgate, ns: &str) -> (usize, usize) {
    let Ok(reply) = hg.try_get("/ready") else {
        return (0, 0);
    };
    let Ok(body) = serde_json::from_str::<Value>(&reply.body) else {
        return (0, 0);
    };
    let Some(checks) = body["checks"].as_object() else {
        return (0, 0);
    };
    let prefix = format!("{ns}/");
    let mut policies = std::collections::HashSet::new();
    let mut checked = 0;
    for (key, check) in checks {
        if let Some(rest) = key.strip_prefix(&prefix) {
            policies.insert(rest.split('/').next().unwrap_or_default().to_string());
            if check["status"] != "unknown" {
                checked += 1;
            }
        }
    }
    (policies.len(), checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_policies_on_a_real_api_server() {
    let scale = Scale::from_env();
    let n = scale.policies;
    let env = env("scale").await;
    let listeners = Listeners::new();
    let (flap, flap_rx) = watch::channel(false);
    let names: Vec<String> = (0..n).map(|i| format!("p{i:04}")).collect();
    let addresses: Vec<SocketAddr> = (0..n)
        .map(|i| listeners.open((i < scale.flapping).then(|| flap_rx.clone())))
        .collect();

    // Create the fleet before the controller starts: a restart or a new install sees them all
    // in its first list.
    let api: Api<HealthPolicy> = Api::namespaced(env.server.client().await, &env.ns);
    let created = Instant::now();
    futures::stream::iter(names.iter().zip(&addresses))
        .map(|(name, address)| {
            let api = api.clone();
            let doc = document(name, &scale.interval, &[dependency("d0", *address)]);
            async move {
                api.patch(
                    name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&doc),
                )
                .await
                .unwrap_or_else(|e| panic!("creating {name}: {e}"))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let creating = created.elapsed();
    let (seen, watch_task) = watch_status(api.clone());

    // 1. Start → all reconciled.
    let started = Instant::now();
    let hg = env.start_with(
        "hg-0",
        &[],
        &[
            "--api-write-qps",
            &scale.write_qps,
            "--api-write-burst",
            &scale.write_burst,
        ],
    );
    let pid = hg.pid();
    let (mut engine_listed, mut engine_checked) = (None, None);
    let mut all_acknowledged = None;
    tokio::task::block_in_place(|| {
        while engine_listed.is_none() || engine_checked.is_none() || all_acknowledged.is_none() {
            let (listed, checked) = ready_listing(&hg, &env.ns);
            if engine_listed.is_none() && listed == n {
                engine_listed = Some(started.elapsed());
            }
            if engine_checked.is_none() && checked == n {
                engine_checked = Some(started.elapsed());
            }
            if all_acknowledged.is_none() {
                let seen = seen.lock().unwrap();
                let times: Vec<Instant> = seen.values().filter_map(|s| s.acknowledged).collect();
                if times.len() == n {
                    all_acknowledged = times.iter().max().map(|t| t.duration_since(started));
                }
            }
            assert!(
                started.elapsed() < PATIENCE,
                "after {PATIENCE:?}: /ready lists {listed}/{n} policies, {checked} checked, {} statuses acknowledged\nlogs:\n{}",
                seen.lock()
                    .unwrap()
                    .values()
                    .filter(|s| s.acknowledged.is_some())
                    .count(),
                hg.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (engine_listed, engine_checked, all_acknowledged) = (
        engine_listed.unwrap(),
        engine_checked.unwrap(),
        all_acknowledged.unwrap(),
    );

    // 2. Edit → checker live, while the others run.
    let mut samples = Vec::with_capacity(scale.edits);
    for i in 0..scale.edits {
        let p = (i * 7919 + 13) % n;
        let extra = listeners.open(None);
        let dependency_name = format!("e{i}");
        let doc = document(
            &names[p],
            &scale.interval,
            &[
                dependency("d0", addresses[p]),
                dependency(&dependency_name, extra),
            ],
        );
        let path = format!("/ready/{}/{}", env.ns, names[p]);
        let edited = Instant::now();
        api.patch(
            &names[p],
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap();
        tokio::task::block_in_place(|| {
            loop {
                let live = hg.try_get(&path).is_ok_and(|r| {
                    serde_json::from_str::<Value>(&r.body).is_ok_and(|b| {
                        b["checks"][&dependency_name]["status"]
                            .as_str()
                            .is_some_and(|s| s != "unknown")
                    })
                });
                if live {
                    break;
                }
                assert!(
                    edited.elapsed() < Duration::from_secs(60),
                    "edit {i} of {} not live after 60 s",
                    names[p]
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        samples.push(edited.elapsed());
    }
    samples.sort();

    // 3 and 4. Steady state: writes, CPU and memory.
    let writes = |hg: &Healthgate| counter(hg, "healthgate_status_writes_total");
    let events = |hg: &Healthgate| counter(hg, "healthgate_events_total");
    let (steady_writes, steady_events, steady_cpu, steady_seconds, rss) =
        tokio::task::block_in_place(|| {
            let (w0, e0, c0, t0) = (writes(&hg), events(&hg), cpu_seconds(pid), Instant::now());
            std::thread::sleep(scale.steady);
            let seconds = t0.elapsed().as_secs_f64();
            (
                writes(&hg) - w0,
                events(&hg) - e0,
                cpu_seconds(pid) - c0,
                seconds,
                memory_mib(pid, "VmRSS"),
            )
        });

    // Flapping: the first listeners go away and come back, all at once.
    let (flap_writes, flap_events, flap_seconds, down_delays, converged) =
        tokio::task::block_in_place(|| {
            let (w0, e0, t0) = (writes(&hg), events(&hg), Instant::now());
            let mut downs = Vec::new();
            let mut back = Instant::now();
            while t0.elapsed() < scale.flap_window {
                downs.push(Instant::now());
                flap.send_replace(true);
                std::thread::sleep(scale.flap_half);
                flap.send_replace(false);
                back = Instant::now();
                if t0.elapsed() + scale.flap_half < scale.flap_window {
                    std::thread::sleep(scale.flap_half);
                }
            }
            let seconds = t0.elapsed().as_secs_f64();
            let (w, e) = (writes(&hg) - w0, events(&hg) - e0);
            // Listener away → status says down, for the first flap of every flapping policy.
            let first_down = downs[0];
            let mut delays: Vec<Duration> = {
                let seen = seen.lock().unwrap();
                names[..scale.flapping]
                    .iter()
                    .filter_map(|name| {
                        seen.get(name)?
                            .states
                            .iter()
                            .find(|(at, state)| *at > first_down && state == "down")
                            .map(|(at, _)| at.duration_since(first_down))
                    })
                    .collect()
            };
            delays.sort();
            // Coalesced, not lost: every flapping policy's status ends ok again.
            let converged = loop {
                let all_ok = {
                    let seen = seen.lock().unwrap();
                    names[..scale.flapping].iter().all(|name| {
                        seen.get(name)
                            .and_then(|s| s.states.last())
                            .is_some_and(|(_, state)| state == "ok")
                    })
                };
                if all_ok {
                    break back.elapsed();
                }
                assert!(
                    back.elapsed() < PATIENCE,
                    "flapping policies not ok again after {PATIENCE:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            (w, e, seconds, delays, converged)
        });
    let peak = memory_mib(pid, "VmHWM");
    watch_task.abort();

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let down_seen = down_delays.len();
    let rows: Vec<(String, String)> = vec![
        (
            "policies (1 tcp dependency each, own listener)".into(),
            n.to_string(),
        ),
        (
            "check interval / timeout".into(),
            format!("{} / 1s", scale.interval),
        ),
        (
            "write budget (--api-write-qps / --api-write-burst)".into(),
            format!("{}/s after {}", scale.write_qps, scale.write_burst),
        ),
        (
            "creating the policies (server-side apply, 16 at a time)".into(),
            ms(creating),
        ),
        (
            "start → /ready lists all policies (engine)".into(),
            ms(engine_listed),
        ),
        (
            "start → every check has a first result (engine)".into(),
            ms(engine_checked),
        ),
        (
            "start → every status acknowledged (observedGeneration + Ready, via watch)".into(),
            ms(all_acknowledged),
        ),
        (
            format!(
                "edit → new checker live, {} edits: p50 / p99 / max",
                samples.len()
            ),
            format!(
                "{} / {} / {}",
                ms(percentile(&samples, 50)),
                ms(percentile(&samples, 99)),
                ms(*samples.last().unwrap())
            ),
        ),
        (
            format!("steady state ({steady_seconds:.0} s): status writes/s, Events/s"),
            format!(
                "{:.1} / {:.1}",
                steady_writes / steady_seconds,
                steady_events / steady_seconds
            ),
        ),
        (
            format!(
                "{} listeners flapping ({}s away, {}s back) for {flap_seconds:.0} s: status writes/s, Events/s",
                scale.flapping,
                scale.flap_half.as_secs(),
                scale.flap_half.as_secs()
            ),
            format!(
                "{:.1} / {:.1}",
                flap_writes / flap_seconds,
                flap_events / flap_seconds
            ),
        ),
        (
            format!(
                "listener away → status says down ({down_seen}/{} policies): p50 / max",
                scale.flapping
            ),
            if down_delays.is_empty() {
                "never".into()
            } else {
                format!(
                    "{} / {}",
                    ms(percentile(&down_delays, 50)),
                    ms(*down_delays.last().unwrap())
                )
            },
        ),
        (
            "listeners back for good → every flapping policy's status ok again".into(),
            ms(converged),
        ),
        (
            "controller RSS in steady state / peak (VmHWM)".into(),
            format!("{rss:.1} MiB / {peak:.1} MiB"),
        ),
        (
            format!("controller CPU over the steady window ({cores} cores)"),
            format!("{:.1} % of one core", steady_cpu / steady_seconds * 100.0),
        ),
    ];
    let mut table = String::from("| measurement | value |\n|---|---|\n");
    for (what, value) in &rows {
        table.push_str(&format!("| {what} | {value} |\n"));
    }
    eprintln!("\n{table}");
    if let Ok(out) = std::env::var("HEALTHGATE_SCALE_OUT")
        && !out.is_empty()
    {
        std::fs::write(&out, &table).unwrap_or_else(|e| panic!("writing {out}: {e}"));
    }

    // Sane, not fast: the numbers exist and describe what happened.
    assert_eq!(samples.len(), scale.edits);
    assert!(
        steady_cpu >= 0.0 && rss > 1.0 && peak >= rss,
        "{rss} {peak}"
    );
    assert!(
        flap_writes > 0.0,
        "nothing written while {} listeners flapped",
        scale.flapping
    );
    assert!(down_seen > 0, "no flapping policy's status ever said down");
    if !scale.full {
        assert!(steady_writes >= 0.0 && steady_events >= 0.0);
    }
    drop(hg);
}
