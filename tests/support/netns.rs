//! A network namespace of the test's own with nothing but loopback, for tests whose targets must
//! never see a packet leave the machine (169.254.169.254, "other tenants"): addresses are added
//! to `lo`, so even a guard that failed open would only reach listeners of the test.
//!
//! Network namespaces are per thread. [`Netns::enter`] moves the calling thread in for the length
//! of a closure and back out after it: sockets created and processes started inside stay in the
//! namespace for their lifetime, and everything else (kubectl, the shared API server) stays on
//! the host's loopback.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns, unshare};

pub struct Netns {
    ns: File,
    host: File,
}

impl Netns {
    /// A fresh namespace with `lo` up and `addresses` (e.g. `169.254.169.254`) on it.
    pub fn new(addresses: &[&str]) -> Netns {
        let host = File::open("/proc/thread-self/ns/net").expect("the thread's network namespace");
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) (needs root)");
        let ns = File::open("/proc/thread-self/ns/net").expect("the new network namespace");
        let netns = Netns { ns, host };
        // Back to the host first, so a failed set-up below does not leave the thread inside.
        netns.leave();
        netns.enter(|| {
            ip(&["link", "set", "lo", "up"]);
            for address in addresses {
                ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"]);
            }
            let links = ip(&["-o", "link", "show"]);
            assert_eq!(
                links.lines().count(),
                1,
                "the namespace must hold loopback only:\n{links}"
            );
            assert!(links.contains(": lo:"), "{links}");
            let routes = ip(&["route", "show", "table", "all"]);
            assert!(
                routes.lines().all(|r| r.contains("dev lo")),
                "every route must stay on lo:\n{routes}"
            );
        });
        netns
    }

    /// Runs `f` with the calling thread inside the namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        setns(&self.ns, CloneFlags::CLONE_NEWNET).expect("entering the test namespace");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        self.leave();
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn leave(&self) {
        setns(&self.host, CloneFlags::CLONE_NEWNET).expect("returning to the host namespace");
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP listener that counts the connections it accepts and answers each with `reply` (after
/// the request head, or after a short wait when the client sends nothing, as a TCP check does).
pub struct CountingListener {
    pub address: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl CountingListener {
    /// Binds in the calling thread's namespace; call it inside [`Netns::enter`].
    pub fn start(ip: &str, reply: &str) -> CountingListener {
        let reply: Arc<str> = reply.into();
        let listener = TcpListener::bind((ip, 0)).expect("binding a counting listener");
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(reply.as_bytes());
                });
            }
        });
        CountingListener { address, accepted }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }
}

pub const HTTP_OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
