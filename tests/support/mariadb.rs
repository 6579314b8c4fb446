//! A real MariaDB server for the mysql check's tests: a fresh data directory per server, on a
//! free loopback port, stopped, frozen (SIGSTOP) and restarted by the test.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::services::{ensure_installed, free_port, own_process_group, wait_for_port};

/// The password of the `app` user, so tests can prove it never leaks.
pub const MYSQL_PASSWORD: &str = "my-Secret-4b2e8d";
/// Small redo logs: the default 96 MiB per server is disk and time for nothing here.
const LOG_FILE_SIZE: &str = "--innodb-log-file-size=8M";

pub struct Mariadb {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Mariadb {
    /// A server with user `app` (password [`MYSQL_PASSWORD`]) owning database `app`.
    pub fn start() -> Self {
        ensure_installed();
        let dir = tempfile::Builder::new()
            .prefix("healthgate-mariadb-")
            .tempdir()
            .expect("temp dir");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-test-db",
                LOG_FILE_SIZE,
            ])
            .arg("--auth-root-authentication-method=socket")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .output()
            .expect("running mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = Self {
            dir,
            port: free_port(),
            child: None,
        };
        server.launch();
        server.root_sql(&format!(
            "CREATE USER app@'%' IDENTIFIED BY '{MYSQL_PASSWORD}'; CREATE DATABASE app; \
             GRANT ALL ON app.* TO app@'%';"
        ));
        server
    }

    pub fn url(&self) -> String {
        format!("mysql://app:{MYSQL_PASSWORD}@127.0.0.1:{}/app", self.port)
    }

    fn launch(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new("mariadbd");
        cmd.args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
            .args([
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                LOG_FILE_SIZE,
            ])
            .arg(format!("--port={}", self.port))
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        own_process_group(&mut cmd);
        self.child = Some(cmd.spawn().expect("starting mariadbd"));
        wait_for_port(self.port, Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_root_sql("SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadb did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_root_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL as root over the Unix socket (tests' own admin path, not the checked one).
    pub fn root_sql(&self, sql: &str) -> String {
        self.try_root_sql(sql)
            .unwrap_or_else(|e| panic!("mariadb {sql:?} failed: {e}"))
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("mariadb running");
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
    }

    /// Freezes the server: connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// A clean shutdown that closes every client connection, like a real restart.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.signal(Signal::SIGCONT);
            self.signal(Signal::SIGTERM);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
