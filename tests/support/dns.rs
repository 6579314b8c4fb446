//! A real DNS server for tests: dnsmasq (Debian's dnsmasq-base) authoritative for
//! `healthgate.test` on a free loopback port, with no upstream, so nothing leaves the machine.
//! Like the other servers, a test can stop, freeze (SIGSTOP) and restart it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::services::{ensure_installed, free_port, wait_for_port};

pub const ZONE: &str = "healthgate.test";

pub struct Dnsmasq {
    dir: tempfile::TempDir,
    pub port: u16,
    /// dnsmasq options for the records, e.g. `--host-record=db.healthgate.test,10.0.0.5`.
    records: Vec<String>,
    child: Option<Child>,
}

impl Dnsmasq {
    pub fn start(records: &[&str]) -> Self {
        ensure_installed();
        let mut server = Self {
            dir: tempfile::Builder::new()
                .prefix("healthgate-dns-")
                .tempdir()
                .expect("temp dir"),
            port: free_port(),
            records: records.iter().map(|r| r.to_string()).collect(),
            child: None,
        };
        server.launch();
        server
    }

    /// `127.0.0.1:port`, as a policy's `nameserver`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    fn launch(&mut self) {
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--log-queries",
                // Names in the zone that have no record get NXDOMAIN, not a forwarding attempt.
                &format!("--local=/{ZONE}/"),
                &format!("--port={}", self.port),
            ])
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .arg(format!("--log-facility={}", self.log_path().display()))
            .args(&self.records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq (scripts/install-deps.sh installs dnsmasq-base)");
        self.child = Some(child);
        // dnsmasq serves TCP on the same port as UDP, once both are bound.
        wait_for_port(self.port, Duration::from_secs(10));
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("dnsmasq running");
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
    }

    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Queries dnsmasq logged for `name` (`query[A] db.healthgate.test from 127.0.0.1`).
    pub fn queries_for(&self, record_type: &str, name: &str) -> usize {
        let needle = format!("query[{record_type}] {name} ");
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&needle))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
