//! Runs the real `healthgate` binary as a child process and talks to it over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::services::free_port;

pub const BIN: &str = env!("CARGO_BIN_EXE_healthgate");

/// The binary [`Healthgate::start_with`] runs: [`BIN`], or `HEALTHGATE_TEST_BIN` to run the same
/// tests against another build (an older one, say, to see a regression test fail there).
pub fn bin() -> String {
    std::env::var("HEALTHGATE_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

pub struct Healthgate {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    /// With [`Launch::stderr_unread`]: the pipe's read end, held open and never read.
    _unread_stderr: Option<ChildStderr>,
}

/// How [`Healthgate::start_with`] runs the binary.
#[derive(Default)]
pub struct Launch<'a> {
    /// A command to run healthgate under, e.g. `["taskset", "-c", "0"]`.
    pub wrapper: &'a [&'a str],
    /// Leave stderr a pipe that nobody reads, like a stuck log shipper: once the pipe buffer
    /// is full, every write to it would block. [`Healthgate::logs`] then has stdout only.
    pub stderr_unread: bool,
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Healthgate {
    /// Starts `healthgate serve` with `policy` as its policy file.
    pub fn start(policy: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_with(policy, env, args, Launch::default())
    }

    /// [`Healthgate::start`], run as `launch` says.
    pub fn start_with(
        policy: &str,
        env: &[(&str, &str)],
        args: &[&str],
        launch: Launch<'_>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("healthgate-run-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let mut cmd = match launch.wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args).arg(bin());
                cmd
            }
            None => Command::new(bin()),
        };
        cmd.arg("serve")
            .arg("--policy")
            .arg(dir.path().join("policy.yaml"));
        Self::launch_with(cmd, dir, env, args, launch.stderr_unread)
    }

    /// Starts `healthgate serve --policy PATH` for a path the test prepared itself (a directory
    /// of policy files, a multi-document file).
    pub fn start_path(path: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("healthgate-run-")
            .tempdir()
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg("--policy").arg(path);
        Self::launch(cmd, dir, env, args)
    }

    /// Starts `healthgate serve` in Kubernetes mode (no policy file) with `kubeconfig` as its
    /// KUBECONFIG, e.g. a ServiceAccount's from the apiserver harness.
    pub fn start_kube(kubeconfig: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("healthgate-run-")
            .tempdir()
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .env("KUBECONFIG", kubeconfig)
            // The test machine's own pod identity, if any, must not leak in.
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("HEALTHGATE_POLICY")
            .env_remove("HEALTHGATE_ALLOW_CIDR")
            .env_remove("HEALTHGATE_DENY_CIDR");
        // Every test dependency listens on loopback, which the target guard denies in
        // Kubernetes mode unless allowed; tests of the guard itself pass their own flags.
        let guard_flags = ["--allow-cidr", "--deny-cidr", "--policy-name"];
        if !args.iter().any(|a| guard_flags.contains(a)) {
            cmd.args(["--allow-cidr", "127.0.0.0/8"]);
        }
        Self::launch(cmd, dir, env, args)
    }

    fn launch(cmd: Command, dir: tempfile::TempDir, env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::launch_with(cmd, dir, env, args, false)
    }

    fn launch_with(
        mut cmd: Command,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        args: &[&str],
        stderr_unread: bool,
    ) -> Self {
        let port = free_port();
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            // A test's own RUST_LOG (in `env`) wins over this default.
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe prctl between fork and exec.
        #[allow(unsafe_code)] // The harness sets PDEATHSIG in the child; see SAFETY above.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        if !args.contains(&"--drain-delay") {
            // Tests that do not exercise draining should not wait out the 5 s default.
            cmd.args(["--drain-delay", "200ms"]);
        }
        let mut child = cmd.spawn().expect("starting healthgate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let (read, unread_stderr) = if stderr_unread {
            (None, Some(stderr))
        } else {
            (Some(stderr), None)
        };
        let mut streams = vec![Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>];
        streams.extend(read.map(|s| Box::new(s) as Box<dyn Read + Send>));
        for stream in streams {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut hg = Self {
            port,
            dir,
            child: Some(child),
            logs,
            _unread_stderr: unread_stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while hg.try_get("/health").is_err() {
            if let Some(status) = hg.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "healthgate exited with {status} before listening:\n{}",
                    hg.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "healthgate not listening after 20s:\n{}",
                hg.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        hg
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    pub fn write_policy(&self, policy: &str) {
        // Write-then-rename, as editors and ConfigMap updates do, so a reload never sees half a file.
        let tmp = self.dir.path().join("policy.yaml.tmp");
        std::fs::write(&tmp, policy).unwrap();
        std::fs::rename(tmp, self.policy_path()).unwrap();
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Every stderr line so far is one JSON object that `jq` parses, with unique keys (jq and
    /// serde_json would both silently keep the last of two equal keys, so they are counted).
    pub fn assert_logs_are_json(&self) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "no log lines");
        let input = logs.join("\n") + "\n";
        let out = super::run_with_stdin(Command::new("jq").args(["-c", "type"]), Some(&input));
        assert!(
            out.status.success(),
            "jq rejects the log: {}\n{input}",
            String::from_utf8_lossy(&out.stderr)
        );
        let types = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            types.lines().count(),
            logs.len(),
            "jq saw other lines:\n{input}"
        );
        assert!(types.lines().all(|t| t == "\"object\""), "{types}");
        for line in &logs {
            let keys = object_keys(line);
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(keys.len(), unique.len(), "duplicate keys in {line}");
        }
    }

    pub fn try_get(&self, path: &str) -> std::io::Result<Reply> {
        http_get(self.port, path, Duration::from_secs(5))
    }

    pub fn get(&self, path: &str) -> Reply {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nlogs:\n{}", self.logs().join("\n")))
    }

    /// GET with a bearer token, on this process's port or another of its listeners.
    pub fn get_as(&self, port: u16, path: &str, token: Option<&str>) -> Reply {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        let addr = ([127, 0, 0, 1], port).into();
        request_with(addr, "GET", path, &headers, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nlogs:\n{}", self.logs().join("\n")))
    }

    /// Polls until `done` holds; returns how long it took.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            if done(self) {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nlogs:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_ready_status(&self, status: u16, timeout: Duration) -> Duration {
        self.wait_until(&format!("/ready {status}"), timeout, |hg| {
            hg.try_get("/ready").is_ok_and(|r| r.status == status)
        })
    }

    pub fn signal(&self, signal: Signal) {
        let pid = self.child.as_ref().expect("running").id();
        kill(Pid::from_raw(pid as i32), signal).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "healthgate did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one sample in /metrics, by name and labels (`{a="b",…}` exactly as rendered).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let metrics = self.get("/metrics").body;
        metrics.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for Healthgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection, so each call measures a whole request.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<Reply> {
    request(port, "GET", path, timeout)
}

pub fn request(port: u16, method: &str, path: &str, timeout: Duration) -> std::io::Result<Reply> {
    request_to(([127, 0, 0, 1], port).into(), method, path, timeout)
}

/// [`request`] to any address (e.g. a pod's on the test node's bridge); `timeout` bounds the
/// connect and each read.
pub fn request_to(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<Reply> {
    request_with(addr, method, path, &[], timeout)
}

/// [`request_to`] with extra request headers, e.g. `("Authorization", "Bearer …")`.
pub fn request_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Reply> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Reply {
        status,
        body,
        elapsed: started.elapsed(),
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The top-level keys of a JSON object in order, duplicates kept.
fn object_keys(line: &str) -> Vec<String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                keys.push(key);
            }
            Ok(keys)
        }
    }
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_str(line), Keys)
        .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"))
}
