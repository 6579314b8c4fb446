//! Real PostgreSQL and Redis servers for tests: started from the system binaries on free
//! loopback ports in temporary directories, so a test can stop, hang (SIGSTOP) and restart them.
//! Each server lives in its own process group, so a signal reaches every backend process too.
#![allow(dead_code)]

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The password of the `app` role, so tests can prove it never leaks.
pub const PG_PASSWORD: &str = "pg-Secret-7c1f9e";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// Installs the Debian packages once per test binary when a server binary is missing.
pub fn ensure_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let status = Command::new(format!("{REPO}/scripts/install-deps.sh"))
            .status()
            .expect("running scripts/install-deps.sh");
        assert!(status.success(), "scripts/install-deps.sh failed: {status}");
    });
}

fn pg_bin() -> PathBuf {
    ensure_installed();
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL server binary")
}

/// Postgres refuses to run as root; as root the server runs as the `postgres` system user.
fn server_user() -> Option<User> {
    if nix::unistd::geteuid().is_root() {
        Some(
            User::from_name("postgres")
                .ok()
                .flatten()
                .expect("the postgres system user exists"),
        )
    } else {
        None
    }
}

pub fn own_process_group(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: only async-signal-safe prctl between fork and exec.
    #[allow(unsafe_code)] // The harness sets PDEATHSIG in the child; see SAFETY above.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
    }
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .is_some_and(|stat| {
                    // The command name may contain spaces; fields resume after its closing paren.
                    stat.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                        == Some(parent)
                })
        })
        .collect()
}

pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal_group(child: &Child, signal: Signal) {
    let _ = killpg(Pid::from_raw(child.id() as i32), signal);
}

pub struct Postgres {
    dir: tempfile::TempDir,
    /// The address it listens on besides the loopback one the harness itself uses.
    host: String,
    pub port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// A fresh cluster with role `app` (password [`PG_PASSWORD`], scram over TCP) and database `app`.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// Like [`Postgres::start`], also listening on `host` (e.g. the test node's bridge address,
    /// so pods can reach it) and accepting logins from its /24.
    pub fn start_on(host: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("healthgate-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        copy_template(&data);
        if host != "127.0.0.1" {
            let hba = data.join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            rules.push_str(&format!("host all all {host}/24 scram-sha-256\n"));
            std::fs::write(&hba, rules).expect("writing pg_hba.conf");
        }
        let mut pg = Self {
            dir,
            host: host.to_string(),
            port: free_port(),
            child: None,
        };
        pg.launch();
        pg
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://app:{PG_PASSWORD}@{}:{}/app",
            self.host, self.port
        )
    }

    fn launch(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(pg_bin().join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string()])
            .arg("-c")
            .arg(format!("listen_addresses={}", self.listen_addresses()))
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args([
                "-c",
                "fsync=off",
                "-c",
                "log_statement=all",
                "-c",
                "logging_collector=off",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("postgres.log")).expect("log file"));
        if let Some(user) = server_user() {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        own_process_group(&mut cmd);
        self.child = Some(cmd.spawn().expect("starting postgres"));
        wait_for_port(self.port, Duration::from_secs(30));
        // The port opens slightly before the server accepts logins.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_psql("SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not accept logins:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn listen_addresses(&self) -> String {
        if self.host == "127.0.0.1" {
            self.host.clone()
        } else {
            format!("127.0.0.1,{}", self.host)
        }
    }

    /// Fast shutdown: rolls back and disconnects clients, like a real restart.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.signal_all(Signal::SIGCONT);
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Freezes the postmaster and every backend: connections stay open, nothing answers.
    /// Backends call setsid(), so a process-group signal would miss them; each is signalled.
    pub fn pause(&self) {
        self.signal_all(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal_all(Signal::SIGCONT);
    }

    fn signal_all(&self, signal: Signal) {
        let postmaster = self.child.as_ref().expect("postgres running").id();
        // The postmaster first, so it forks no new backend while the others are signalled.
        let _ = nix::sys::signal::kill(Pid::from_raw(postmaster as i32), signal);
        for pid in children_of(postmaster) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
        }
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(pg_bin().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "app",
                "-d",
                "app",
            ])
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    /// Statements the server executed so far (log_statement=all), e.g. to prove that probes
    /// do not cause queries.
    pub fn statements_logged(&self, needle: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("statement:") && l.contains(needle))
            .count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal_all(Signal::SIGCONT);
            self.signal_all(Signal::SIGKILL);
            let _ = self.child.take().map(|mut c| c.wait());
        }
    }
}

/// initdb takes seconds; it runs once per test binary and each server copies the result.
fn copy_template(data: &Path) {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("healthgate-pgtemplate-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        prepare_for_server_user(dir.path());
        let mut cmd = Command::new(pg_bin().join("initdb"));
        cmd.arg("-D").arg(&path).args([
            "-U",
            "app",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]);
        cmd.arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--no-sync"]);
        if let Some(user) = server_user() {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let out = cmd.output().expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    });
    prepare_for_server_user(data.parent().unwrap());
    let out = Command::new("cp")
        .arg("-a")
        .arg(template.path().join("data"))
        .arg(data)
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "copying the template cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure_app_database(data);
}

/// `app` needs a database of its own name; created in single-user mode so no server is needed.
fn ensure_app_database(data: &Path) {
    let mut cmd = Command::new(pg_bin().join("postgres"));
    cmd.args(["--single", "-D"]).arg(data).arg("postgres");
    if let Some(user) = server_user() {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let out = super::run_with_stdin(&mut cmd, Some("CREATE DATABASE app OWNER app;\n"));
    assert!(
        out.status.success(),
        "creating database app: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn prepare_for_server_user(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(user) = server_user() {
        std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    }
}

pub struct Redis {
    dir: tempfile::TempDir,
    /// The address it listens on besides loopback (see [`Redis::start_on`]).
    host: String,
    pub port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    pub fn start_with_password(password: Option<&str>) -> Self {
        Self::start_on_with_password("127.0.0.1", password)
    }

    /// A Redis that also listens on `host`, e.g. the test node's bridge address for pods.
    pub fn start_on(host: &str) -> Self {
        Self::start_on_with_password(host, None)
    }

    fn start_on_with_password(host: &str, password: Option<&str>) -> Self {
        ensure_installed();
        let dir = tempfile::Builder::new()
            .prefix("healthgate-redis-")
            .tempdir()
            .expect("temp dir");
        let mut redis = Self {
            dir,
            host: host.to_string(),
            port: free_port(),
            password: password.map(String::from),
            child: None,
        };
        redis.launch();
        redis
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@{}:{}/0", self.host, self.port),
            None => format!("redis://{}:{}/0", self.host, self.port),
        }
    }

    fn launch(&mut self) {
        // Protected mode would refuse password-less clients from the extra (bridge) address.
        let (bind, protected) = if self.host == "127.0.0.1" {
            (self.host.clone(), "yes")
        } else {
            (format!("127.0.0.1 {}", self.host), "no")
        };
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            &bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            protected,
        ])
        .arg("--dir")
        .arg(self.dir.path());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("redis.log")).expect("log file"))
            .stderr(Stdio::null());
        own_process_group(&mut cmd);
        self.child = Some(cmd.spawn().expect("starting redis-server"));
        wait_for_port(self.port, Duration::from_secs(10));
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, Signal::SIGCONT);
            signal_group(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn pause(&self) {
        signal_group(self.child.as_ref().expect("redis running"), Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        signal_group(self.child.as_ref().expect("redis running"), Signal::SIGCONT);
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .expect("connect to test redis")
    }

    /// Runs a command and returns its reply, for seeding queues.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Total commands the server processed (INFO stats), to prove probes cause none.
    pub fn commands_processed(&self) -> u64 {
        let info: String = self.cmd(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO stats has total_commands_processed")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
