//! The observability tools the tests drive: promtool and a real Prometheus (Debian package),
//! the rotel OTLP collector and the Python OTLP sink (a virtualenv), and the dashboard
//! type-check project (npm). All are installed by `scripts/install-test-tools.sh`.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use std::os::unix::process::CommandExt;

use super::healthgate::{Reply, http_get};
use super::services::{REPO, free_port};

/// Runs the install script once per test binary.
pub fn ensure_tools() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let status = Command::new(format!("{REPO}/scripts/install-test-tools.sh"))
            .status()
            .expect("running scripts/install-test-tools.sh");
        assert!(
            status.success(),
            "scripts/install-test-tools.sh failed: {status}"
        );
    });
}

/// A program from the tools virtualenv (rotel-agent, python).
pub fn venv_bin(name: &str) -> PathBuf {
    ensure_tools();
    let tools = std::env::var_os("HEALTHGATE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/test-tools"));
    let path = tools.join("venv/bin").join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// grpc-health-probe, built from its Go module into the tools directory.
pub fn grpc_health_probe() -> PathBuf {
    ensure_tools();
    let tools = std::env::var_os("HEALTHGATE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/test-tools"));
    let path = tools.join("bin/grpc-health-probe");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The rotel collector binary, shipped inside the `rotel` Python package.
pub fn rotel_agent() -> PathBuf {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("locating rotel-agent");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.exists(), "rotel-agent not found: {}", path.display());
    path
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `promtool` with `args`, feeding `stdin`.
pub fn promtool(args: &[&str], stdin: Option<&str>, dir: Option<&Path>) -> Output {
    ensure_tools();
    let mut cmd = Command::new("promtool");
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = super::run_with_stdin(&mut cmd, stdin);
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A child process killed (with its group) on drop, whose output goes to a log file.
pub struct Daemon {
    pub name: &'static str,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0);
        // SAFETY: only async-signal-safe prctl between fork and exec.
        #[allow(unsafe_code)] // The harness sets PDEATHSIG in the child; see SAFETY above.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name,
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("{} exited with {status}:\n{}", self.name, self.log());
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn urlencode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// A real Prometheus server on loopback with its own config and a throwaway TSDB.
pub struct Prometheus {
    pub port: u16,
    dir: tempfile::TempDir,
    daemon: Daemon,
}

/// Short enough that a test sees several samples within seconds; `rate()` needs two.
pub const SCRAPE_INTERVAL: &str = "1s";

impl Prometheus {
    /// Scrapes each of `targets` (`host:port`) as job `healthgate`, with `extra_labels` on
    /// every series (as Kubernetes service discovery would add `namespace`, `pod`). Scraped
    /// labels win over them (`honor_labels`), as in manifests/monitoring/servicemonitor.yaml.
    pub fn start(targets: &[String], extra_labels: &[(&str, &str)]) -> Self {
        ensure_tools();
        let dir = tempfile::Builder::new()
            .prefix("healthgate-prom-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let labels: String = extra_labels
            .iter()
            .map(|(k, v)| format!("          {k}: {v:?}\n"))
            .collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n\
             scrape_configs:\n  - job_name: healthgate\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n        labels:\n{labels}",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), &config).unwrap();
        let check = promtool(
            &["check", "config", "prometheus.yml"],
            None,
            Some(dir.path()),
        );
        assert_eq!(check.code, 0, "{config}\n{}{}", check.stdout, check.stderr);
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn");
        let log = dir.path().join("prometheus.log");
        let mut prom = Self {
            port,
            daemon: Daemon::spawn("prometheus", cmd, log),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            prom.daemon.assert_running();
            if http_get(port, "/-/ready", Duration::from_secs(2)).is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                prom.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prom
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    fn api(&self, path: &str) -> serde_json::Value {
        let reply: Reply = http_get(self.port, path, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
        serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("prometheus {path}: not JSON ({e}): {}", reply.body))
    }

    /// An instant query; the whole API answer (`status`, `data`, `error`).
    pub fn query(&self, promql: &str) -> serde_json::Value {
        self.api(&format!("/api/v1/query?query={}", urlencode(promql)))
    }

    /// A range query over the last `seconds`, as a dashboard panel runs it.
    pub fn query_range(&self, promql: &str, seconds: u64, step: u64) -> serde_json::Value {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.api(&format!(
            "/api/v1/query_range?query={}&start={}&end={end}&step={step}",
            urlencode(promql),
            end - seconds
        ))
    }

    /// The label sets of the series matching `selector` (what Grafana's `label_values` reads).
    pub fn series(&self, selector: &str) -> Vec<serde_json::Value> {
        let answer = self.api(&format!("/api/v1/series?match[]={}", urlencode(selector)));
        assert_eq!(answer["status"], "success", "{selector}: {answer}");
        answer["data"].as_array().cloned().unwrap_or_default()
    }

    /// The health of every scrape target (`up`, `down`, `unknown`).
    pub fn target_health(&self) -> Vec<String> {
        let targets = self.api("/api/v1/targets");
        targets["data"]["activeTargets"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|t| t["health"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A real OTLP collector: rotel-agent receiving OTLP over gRPC and HTTP and forwarding to the
/// Python sink (tests/otlp/sink.py), which writes every span it gets to a JSON-lines file.
pub struct Collector {
    pub grpc_port: u16,
    pub http_port: u16,
    dir: tempfile::TempDir,
    rotel: Daemon,
    sink: Daemon,
}

impl Collector {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("healthgate-otlp-")
            .tempdir()
            .unwrap();
        let sink_port = free_port();
        let spans = dir.path().join("spans.jsonl");
        let mut cmd = Command::new(venv_bin("python"));
        cmd.arg(Path::new(REPO).join("tests/otlp/sink.py"))
            .arg(sink_port.to_string())
            .arg(&spans);
        let mut sink = Daemon::spawn("otlp sink", cmd, dir.path().join("sink.log"));
        wait_for("the OTLP sink", Duration::from_secs(30), || {
            sink.assert_running();
            sink.log().contains("listening")
        });
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut cmd = Command::new(rotel_agent());
        cmd.arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .args(["--exporter", "otlp"])
            .args([
                "--otlp-exporter-endpoint",
                &format!("http://127.0.0.1:{sink_port}"),
            ])
            .args(["--otlp-exporter-protocol", "grpc"])
            // Forward quickly: tests wait for what they sent.
            .args(["--batch-timeout", "100ms"]);
        let mut rotel = Daemon::spawn("rotel-agent", cmd, dir.path().join("rotel.log"));
        wait_for("rotel-agent's OTLP ports", Duration::from_secs(30), || {
            rotel.assert_running();
            [grpc_port, http_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        Self {
            grpc_port,
            http_port,
            dir,
            rotel,
            sink,
        }
    }

    /// Every span the sink has received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("spans.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON span"))
            .collect()
    }

    /// Waits until a received span satisfies `matches`, and returns it.
    pub fn wait_for_span(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(span) = self.spans().into_iter().find(|s| matches(s)) {
                return span;
            }
            self.rotel.assert_running();
            self.sink.assert_running();
            assert!(
                Instant::now() < deadline,
                "no span for {what} after {timeout:?}; received:\n{}\nrotel:\n{}",
                self.spans()
                    .iter()
                    .map(|s| format!("{} {}", s["name"], s["attributes"]))
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.rotel.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// Grafana dashboard queries, as Grafana would send them to Prometheus.

/// A panel query as Grafana would send it, or a variable's `label_values(selector, label)`.
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
}

pub fn panel_queries(dashboard: &serde_json::Value) -> Vec<PanelQuery> {
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        panels.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
    }
    panels
        .into_iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            targets.into_iter().map(move |t| PanelQuery {
                panel: format!("{} [{}]", p["title"].as_str().unwrap(), t["refId"]),
                expr: t["expr"].as_str().expect("a PromQL expr").to_string(),
            })
        })
        .collect()
}

/// Substitutes the dashboard variables and Grafana's interval macros as Grafana does for a
/// Prometheus data source whose scrape interval is [`SCRAPE_INTERVAL`].
pub fn substitute(expr: &str, namespace: &str, policy: &str) -> String {
    let scrape: u64 = SCRAPE_INTERVAL.trim_end_matches('s').parse().unwrap();
    // $__rate_interval = max($__interval + scrape interval, 4 × scrape interval).
    let rate_interval = format!("{}s", (4 * scrape).max(scrape + scrape));
    let out = expr
        .replace("$__rate_interval", &rate_interval)
        .replace("$__interval", &format!("{scrape}s"))
        .replace("$namespace", namespace)
        .replace("$policy", policy);
    assert!(!out.contains('$'), "unsubstituted variable in {out}");
    out
}

/// Samples with a number in a range-query answer (NaN from an idle histogram is not data).
pub fn numeric_samples(answer: &serde_json::Value) -> usize {
    answer["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                .filter(|v| {
                    v[1].as_str()
                        .is_some_and(|x| x.parse::<f64>().is_ok_and(f64::is_finite))
                })
                .count()
        })
        .unwrap_or(0)
}
