//! A real single-node Kubernetes for the "as deployed" tests: containerd + runc + the CNI bridge
//! plugin from Debian, and etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a
//! kubelet v1.34.4 from tests/k8s. Images come from local OCI archives (scripts/image.sh and
//! scripts/node-images.sh), never from a registry. See tests/k8s/README.md, "The node".
//!
//! ```ignore
//! let node = node::node();                    // started once per test binary, Ready and untainted
//! node.kubectl_ok(&["apply", "-k", "tests/node/controller"]);
//! let client = node.client().await;           // admin
//! ```
//!
//! Networking stays on this machine: pods get addresses on a bridge the harness creates
//! ([`BRIDGE`], [`NODE_IP`]/24) with no default route, no masquerade and no IP forwarding, so a
//! pod can reach only the node's bridge address and other pods. The API server listens on the
//! bridge address only. There is no kube-proxy, so Service ClusterIPs do not route; tests reach
//! pods through their EndpointSlices, and pods reach the API server at [`NODE_IP`]:[`API_PORT`]
//! (the overlays set `KUBERNETES_SERVICE_HOST/PORT` to it).
//!
//! The bridge name, subnet and API port are fixed, so one node runs per machine at a time: a
//! second test process waits on a lock. Teardown (also after failed tests, and at the next start
//! after a SIGKILLed run) deletes the pods, stops every process, unmounts, removes the kubelet's
//! cgroups and deletes the bridge.
#![allow(dead_code)]

use std::{
    fs, io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use kube::Client;

use super::apiserver::{Keeper, build_binaries, client_from_kubeconfig, log_tail, openssl};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The node's bridge; pods get addresses in [`NODE_IP`]/24 on it.
pub const BRIDGE: &str = "hgtestbr0";
/// The bridge's (and so the node's) address. The kubelet refuses a loopback node IP and this
/// kernel has no `dummy` links, so the bridge doubles as the node's interface.
pub const NODE_IP: &str = "10.77.7.1";
const SUBNET: &str = "10.77.7.0/24";
/// kube-apiserver's port on [`NODE_IP`]. Fixed so the committed overlays can name it.
pub const API_PORT: u16 = 16443;
pub const NODE_NAME: &str = "test-node";
/// Cluster-IP range the API server allocates from; nothing routes to it (no kube-proxy).
const SERVICE_CIDR: &str = "10.0.0.0/24";

/// Image names as the archives carry them (podman writes the full reference).
pub const HEALTHGATE_IMAGE: &str = "localhost/healthgate:dev";
pub const APP_IMAGE: &str = "localhost/hg-app:1";
const PAUSE_IMAGE: &str = "localhost/pause:3.10";

const STATE_DIR_PREFIX: &str = "healthgate-node-";
const OWNER_FILE: &str = "owner.pid";
/// Serialises nodes across processes (fixed bridge, subnet and port).
const LOCK_FILE: &str = "/run/lock/healthgate-test-node.lock";

/// Node Ready measured at ~4.5 s on an idle 2-core machine; the release build, image builds and
/// other test binaries may share the CPU, so allow much more without hiding a hang.
const START_TIMEOUT: Duration = Duration::from_secs(180);

static SHARED: OnceLock<Result<Node, String>> = OnceLock::new();

/// The node shared by all tests of this test binary, started on first use. Panics (failing the
/// test, never skipping it) when it cannot start; later tests fail with the same message.
pub fn node() -> &'static Node {
    let shared = SHARED.get_or_init(|| {
        let started = Node::start();
        if started.is_ok() {
            // Statics are never dropped; tear the node down when the test binary exits normally.
            // SAFETY: registering a plain `extern "C" fn` with no captured state.
            #[allow(unsafe_code)] // The only way to run teardown after the last test.
            unsafe {
                nix::libc::atexit(stop_shared_node)
            };
        }
        started
    });
    match shared {
        Ok(node) => node,
        Err(err) => panic!("test node unavailable: {err}"),
    }
}

extern "C" fn stop_shared_node() {
    if let Some(Ok(node)) = SHARED.get() {
        node.stop();
    }
}

pub struct Node {
    dir: PathBuf,
    bin_dir: PathBuf,
    kubeconfig: PathBuf,
    children: Mutex<Vec<(&'static str, Child)>>,
    keeper: Keeper,
    /// Held for the node's lifetime; the lock is released when the file closes.
    _lock: fs::File,
    counter: AtomicU64,
    /// Seconds from the start of `start()` until the node was Ready and untainted.
    pub startup: Duration,
}

impl Node {
    fn start() -> Result<Node, String> {
        let began = Instant::now();
        run_script("scripts/install-node-deps.sh")?;
        let bin_dir = build_binaries()?;
        for bin in ["kubelet", "kube-controller-manager", "kube-scheduler"] {
            if !bin_dir.join(bin).is_file() {
                return Err(format!("scripts/build-k8s.sh did not produce {bin}"));
            }
        }
        run_script("scripts/node-images.sh")?;
        run_script("scripts/image.sh")?;
        let prepared = began.elapsed();

        let lock = take_lock()?;
        sweep_stale_nodes();
        let dir = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .map_err(|e| format!("creating a state directory: {e}"))?
            .keep();
        fs::write(dir.join(OWNER_FILE), std::process::id().to_string())
            .map_err(|e| format!("writing {OWNER_FILE}: {e}"))?;
        let mut node = Node {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            bin_dir,
            children: Mutex::new(Vec::new()),
            keeper: Keeper::new(),
            _lock: lock,
            counter: AtomicU64::new(0),
            startup: Duration::ZERO,
        };
        // On any error below, dropping `node` tears down whatever was started.
        let up = Instant::now();
        node.bring_up()?;
        node.startup = up.elapsed();
        eprintln!(
            "node harness: images and binaries ready in {prepared:.1?}, node Ready in {:.1?}",
            node.startup
        );
        Ok(node)
    }

    fn bring_up(&self) -> Result<(), String> {
        let dir = &self.dir;
        let p = |name: &str| dir.join(name).display().to_string();
        for sub in [
            "logs",
            "pki",
            "cni/conf",
            "cni/ipam",
            "containerd/run",
            "kubelet",
            "pod-logs",
        ] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| format!("creating {sub}: {e}"))?;
        }
        generate_pki(&dir.join("pki"))?;
        let tokens = Tokens::new()?;
        fs::write(dir.join("pki/tokens.csv"), tokens.csv())
            .map_err(|e| format!("writing tokens: {e}"))?;
        for (name, user, token) in tokens.users() {
            self.write_kubeconfig(&dir.join(format!("{name}.kubeconfig")), user, token)?;
        }

        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;

        fs::write(dir.join("containerd/config.toml"), containerd_config(dir))
            .map_err(|e| format!("writing containerd config: {e}"))?;
        fs::write(dir.join("cni/conf/10-hgtest.conflist"), cni_config(dir))
            .map_err(|e| format!("writing CNI config: {e}"))?;
        let mut containerd = Command::new("containerd");
        containerd.arg(format!("--config={}", p("containerd/config.toml")));
        self.spawn("containerd", containerd)?;
        self.wait_until("containerd", Duration::from_secs(60), || {
            self.ctr(&["version"]).status.success()
        })?;

        let etcd_ports = free_ports::<2>()?;
        let mut etcd = Command::new(self.bin_dir.join("etcd"));
        etcd.args([
            "--name=default".to_string(),
            format!("--data-dir={}", p("etcd")),
            format!("--listen-client-urls=http://127.0.0.1:{}", etcd_ports[0]),
            format!("--advertise-client-urls=http://127.0.0.1:{}", etcd_ports[0]),
            format!("--listen-peer-urls=http://127.0.0.1:{}", etcd_ports[1]),
            format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                etcd_ports[1]
            ),
            format!(
                "--initial-cluster=default=http://127.0.0.1:{}",
                etcd_ports[1]
            ),
            // Throwaway data: no fsync.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ]);
        self.spawn("etcd", etcd)?;

        let mut api = Command::new(self.bin_dir.join("kube-apiserver"));
        api.args([
            format!("--etcd-servers=http://127.0.0.1:{}", etcd_ports[0]),
            // The bridge address only: pods must reach it, nothing beyond this machine may.
            format!("--bind-address={NODE_IP}"),
            format!("--advertise-address={NODE_IP}"),
            format!("--secure-port={API_PORT}"),
            format!("--cert-dir={}", p("apiserver-certs")),
            format!("--tls-cert-file={}", p("pki/serving.crt")),
            format!("--tls-private-key-file={}", p("pki/serving.key")),
            format!("--client-ca-file={}", p("pki/ca.crt")),
            format!("--token-auth-file={}", p("pki/tokens.csv")),
            // Node + NodeRestriction: the kubelet gets exactly a real node's rights.
            "--authorization-mode=Node,RBAC".to_string(),
            "--enable-admission-plugins=NodeRestriction".to_string(),
            format!("--service-account-issuer=https://{NODE_IP}:{API_PORT}"),
            format!("--service-account-key-file={}", p("pki/sa.pub")),
            format!("--service-account-signing-key-file={}", p("pki/sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!(
                "--kubelet-client-certificate={}",
                p("pki/kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", p("pki/kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP".to_string(),
            "--enable-priority-and-fairness=false".to_string(),
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ]);
        self.spawn("kube-apiserver", api)?;
        self.wait_until("kube-apiserver /readyz", START_TIMEOUT, || {
            self.kubectl(&["get", "--raw=/readyz", "--request-timeout=5s"])
                .status
                .success()
        })?;

        for archive in ["pause.oci.tar", "hg-app.oci.tar", "healthgate-dev.oci.tar"] {
            let path = image_dir().join(archive);
            let out = self.ctr(&["images", "import", &path.display().to_string()]);
            if !out.status.success() {
                return Err(format!(
                    "ctr images import {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }

        let [kcm_port, sched_port] = free_ports::<2>()?;
        let mut kcm = Command::new(self.bin_dir.join("kube-controller-manager"));
        kcm.args([
            format!("--kubeconfig={}", p("kcm.kubeconfig")),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={kcm_port}"),
            "--leader-elect=false".to_string(),
            format!("--service-account-private-key-file={}", p("pki/sa.key")),
            format!("--root-ca-file={}", p("pki/ca.crt")),
            "--allocate-node-cidrs=false".to_string(),
            // Pod deletion by the test's teardown must not wait on a slow garbage collector.
            "--concurrent-gc-syncs=5".to_string(),
            "--v=1".to_string(),
        ]);
        self.spawn("kube-controller-manager", kcm)?;
        let mut sched = Command::new(self.bin_dir.join("kube-scheduler"));
        sched.args([
            format!("--kubeconfig={}", p("scheduler.kubeconfig")),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={sched_port}"),
            "--leader-elect=false".to_string(),
            "--v=1".to_string(),
        ]);
        self.spawn("kube-scheduler", sched)?;

        fs::write(dir.join("kubelet-config.yaml"), kubelet_config(dir))
            .map_err(|e| format!("writing kubelet config: {e}"))?;
        let mut kubelet = Command::new(self.bin_dir.join("kubelet"));
        kubelet.args([
            format!("--config={}", p("kubelet-config.yaml")),
            format!("--kubeconfig={}", p("kubelet.kubeconfig")),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            format!("--root-dir={}", p("kubelet")),
            format!("--cert-dir={}", p("kubelet/pki")),
            "--v=1".to_string(),
        ]);
        self.spawn("kubelet", kubelet)?;

        self.wait_until(
            "node Ready, untainted, default ServiceAccount",
            START_TIMEOUT,
            || self.node_ready(),
        )
    }

    fn node_ready(&self) -> bool {
        let out = self.kubectl(&["get", "node", NODE_NAME, "-o", "json"]);
        let Ok(node) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        // kcm's node lifecycle controller removes the not-ready taint; until then nothing schedules.
        let untainted = node["spec"]["taints"]
            .as_array()
            .is_none_or(|t| t.is_empty());
        ready
            && untainted
            && self
                .kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .status
                .success()
    }

    /// The admin kubeconfig (group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://NODE_IP:API_PORT`.
    pub fn url(&self) -> String {
        format!("https://{NODE_IP}:{API_PORT}")
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    pub async fn client(&self) -> Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with_stdin(args, Some(stdin))
    }

    /// Runs kubectl as the admin and returns stdout, panicking with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
    }

    fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ))
            .args(args)
            .current_dir(REPO)
            .env_remove("KUBECONFIG")
            .env("KUBECTL_KUBERC", "false");
        super::run_with_stdin(&mut cmd, stdin)
    }

    /// Runs `ctr` against the node's containerd, in the CRI's `k8s.io` namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg(format!("--address={}", self.containerd_socket().display()))
            .args(["--namespace", "k8s.io"])
            .args(args);
        super::run_with_stdin(&mut cmd, None)
    }

    /// Host PID of a running container's first process, from containerd.
    pub fn container_pid(&self, container_id: &str) -> u32 {
        let id = container_id
            .rsplit_once("://")
            .map_or(container_id, |(_, id)| id);
        let out = self.ctr(&["tasks", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let mut cols = line.split_whitespace();
                (cols.next() == Some(id)).then(|| cols.next()?.parse().ok())?
            })
            .unwrap_or_else(|| {
                panic!(
                    "no running task {id} in:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/run/containerd.sock")
    }

    /// A fresh namespace `{prefix}-{n}`.
    pub fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", self.counter.fetch_add(1, Ordering::Relaxed));
        self.kubectl_ok(&["create", "namespace", &name]);
        // kcm creates the default ServiceAccount a moment later; pods are rejected until then.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .kubectl(&["get", "serviceaccount", "default", "-n", &name])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "no default ServiceAccount in {name}"
            );
            thread::sleep(Duration::from_millis(100));
        }
        name
    }

    /// Log file of a node process (`kubelet`, `containerd`, `kube-apiserver`, ...).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    fn write_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<(), String> {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test-node", "cluster": {
                "server": self.url(),
                "certificate-authority": self.dir.join("pki/ca.crt"),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {
                "cluster": "test-node", "user": user, "namespace": "default",
            }}],
            "current-context": user,
        });
        fs::write(path, serde_json::to_vec_pretty(&config).expect("JSON"))
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    fn spawn(&self, name: &'static str, mut cmd: Command) -> Result<(), String> {
        let log = self.log_path(name);
        let out = fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let parent = std::process::id();
        // SAFETY: only async-signal-safe syscalls (prctl, getppid) between fork and exec.
        #[allow(unsafe_code)] // The harness sets PDEATHSIG in the child; see SAFETY above.
        unsafe {
            cmd.pre_exec(move || {
                // Dies with the keeper thread, so a killed test binary leaves no node process
                // running; the next start sweeps what they leave behind (see sweep_stale_nodes).
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(io::Error::from)?;
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(io::Error::other("test process exited during spawn"));
                }
                Ok(())
            });
        }
        let child = self
            .keeper
            .spawn(cmd)
            .map_err(|e| format!("starting {name}: {e}"))?;
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, child));
        Ok(())
    }

    /// Polls `ready` until true; fails early with the log of a node process that exited.
    fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some((name, status)) = self.exited() {
                return Err(format!(
                    "{name} exited with {status} while waiting for {what}; last log lines:\n{}",
                    log_tail(&self.log_path(name))
                ));
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = ["kubelet", "containerd", "kube-apiserver"]
                    .iter()
                    .map(|n| format!("--- {n}:\n{}", log_tail(&self.log_path(n))))
                    .collect();
                return Err(format!(
                    "{what}: not within {timeout:?}\n{}",
                    logs.join("\n")
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn exited(&self) -> Option<(&'static str, std::process::ExitStatus)> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children
            .iter_mut()
            .find_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (*n, s)))
    }

    /// Deletes every pod (so the kubelet stops the sandboxes and CNI releases their addresses),
    /// stops all node processes, unmounts, removes the kubelet's cgroups and the bridge, and
    /// removes the state directory (kept with its logs when `HEALTHGATE_K8S_KEEP` is set).
    pub fn stop(&self) {
        let mut children = match self.children.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // A thread that died holding the lock must not hang the exit; the next start sweeps.
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if children.is_empty() {
            return;
        }
        let began = Instant::now();
        let kubelet_alive = children
            .iter_mut()
            .any(|(n, c)| *n == "kubelet" && c.try_wait().ok().flatten().is_none());
        if kubelet_alive {
            // Controllers first, orphaning their pods: nothing recreates them, and they are
            // then deleted with a 1 s grace period instead of their own (30 s for apps that
            // ignore SIGTERM as PID 1, like busybox httpd).
            let _ = self.kubectl(&[
                "delete",
                "deployments,replicasets,statefulsets,daemonsets,jobs",
                "--all",
                "--all-namespaces",
                "--cascade=orphan",
                "--timeout=30s",
            ]);
            let _ = self.kubectl(&[
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--grace-period=1",
                "--timeout=60s",
            ]);
        }
        // kubelet first, containerd last: each depends on the ones after it.
        while let Some((_, mut child)) = children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
        clean_host(Some(&self.dir));
        eprintln!("node harness: torn down in {:.1?}", began.elapsed());
        if std::env::var_os("HEALTHGATE_K8S_KEEP").is_some() {
            eprintln!("node harness: kept state in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a node leaves on the host besides its own processes: container processes and shims
/// (only if pods could not be deleted), mounts under its state directory `dir` (the kubelet's
/// bind mount of its root, pod volumes, containerd's snapshots), cgroups and the bridge. Without
/// `dir`, only what any node leaves (called while holding the node lock, so none is running).
fn clean_host(dir: Option<&Path>) {
    if let Some(dir) = dir {
        let socket = dir.join("containerd/run/containerd.sock");
        let socket = socket.display().to_string();
        let shims = processes_where(|cmdline| {
            cmdline.contains("containerd-shim") && cmdline.contains(&socket)
        });
        shims.into_iter().for_each(kill);
    }
    kubepods_processes().into_iter().for_each(kill);
    if let Some(dir) = dir {
        unmount_under(dir);
    }
    remove_kubepods_cgroups();
    remove_pod_netns();
    let _ = Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(Stdio::null())
        .status();
}

/// Pod network namespaces whose sandboxes were never stopped (containerd names them `cni-*`
/// under /run/netns). Only a CRI runtime makes these, and on these machines only the test node
/// runs one; the caller holds the node lock, so no other node's are live.
fn remove_pod_netns() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("cni-") {
            let _ = Command::new("ip")
                .args(["netns", "delete", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn processes_where(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| matches(&String::from_utf8_lossy(&c).replace('\0', " ")))
        })
        .collect()
}

/// Every process in the kubelet's cgroup tree: only containers this node started live there.
fn kubepods_processes() -> Vec<u32> {
    let mut pids = Vec::new();
    for root in kubepods_cgroups() {
        for dir in walk_dirs(&root) {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn kubepods_cgroups() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join("kubepods"))
        .filter(|p| p.is_dir())
        .collect()
}

/// `root` and every directory below it, deepest first.
fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk_dirs(&entry.path()));
            }
        }
    }
    out.push(root.to_path_buf());
    out
}

fn remove_kubepods_cgroups() {
    for root in kubepods_cgroups() {
        for dir in walk_dirs(&root) {
            // A cgroup with a process still exiting refuses; retry briefly.
            for _ in 0..20 {
                if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first; the kubelet's root (bind-mounted onto itself) may be mounted twice.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        // Lazy: a mount still busy for a moment (an exiting shim) must not block teardown.
        let _ = Command::new("umount")
            .args(["--lazy", &point])
            .stderr(Stdio::null())
            .status();
    }
}

/// Cleans up after nodes whose test process died without tearing down (SIGKILL, OOM): their
/// processes died by PDEATHSIG, their containers, mounts, cgroups and bridge did not.
fn sweep_stale_nodes() {
    let mut stale = Vec::new();
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(STATE_DIR_PREFIX));
            let owner = fs::read_to_string(path.join(OWNER_FILE)).ok();
            let dead = owner
                .as_deref()
                .map(str::trim)
                .is_none_or(|pid| !Path::new("/proc").join(pid).exists());
            if ours && dead {
                stale.push(path);
            }
        }
    }
    for dir in &stale {
        clean_host(Some(dir));
        let _ = fs::remove_dir_all(dir);
    }
    // Holding the lock means no node is running, so a leftover bridge or cgroup is stale too.
    clean_host(None);
}

fn take_lock() -> Result<fs::File, String> {
    if let Some(parent) = Path::new(LOCK_FILE).parent() {
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .map_err(|e| format!("opening {LOCK_FILE}: {e}"))?;
    // Blocks until another process's node is torn down.
    file.lock()
        .map_err(|e| format!("locking {LOCK_FILE}: {e}"))?;
    Ok(file)
}

fn run_script(script: &str) -> Result<(), String> {
    let path = Path::new(REPO).join(script);
    let status = Command::new("bash")
        .arg(&path)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running {script}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{script} failed ({status})"))
    }
}

fn image_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                Path::new(REPO).join(t)
            }
        })
        .unwrap_or_else(|| Path::new(REPO).join("target"))
        .join("image")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr().map_err(|e| e.to_string())?.port();
    }
    Ok(ports)
}

/// Bearer tokens of the node's identities. kcm and the scheduler are in `system:masters` (a test
/// shortcut instead of their RBAC roles); the kubelet is a real node identity for the Node
/// authorizer and NodeRestriction.
struct Tokens {
    admin: String,
    kcm: String,
    scheduler: String,
    kubelet: String,
}

impl Tokens {
    fn new() -> Result<Self, String> {
        let t = || super::apiserver::random_hex(16);
        Ok(Tokens {
            admin: t()?,
            kcm: t()?,
            scheduler: t()?,
            kubelet: t()?,
        })
    }

    fn csv(&self) -> String {
        format!(
            "{},admin,admin-uid,\"system:masters\"\n\
             {},kube-controller-manager,kcm-uid,\"system:masters\"\n\
             {},kube-scheduler,scheduler-uid,\"system:masters\"\n\
             {},system:node:{NODE_NAME},kubelet-uid,\"system:nodes\"\n",
            self.admin, self.kcm, self.scheduler, self.kubelet
        )
    }

    fn users(&self) -> [(&'static str, &'static str, &str); 4] {
        [
            ("admin", "admin", &self.admin),
            ("kcm", "kube-controller-manager", &self.kcm),
            ("scheduler", "kube-scheduler", &self.scheduler),
            ("kubelet", "kubelet", &self.kubelet),
        ]
    }
}

/// CA; API server serving certificate for the bridge address, the `kubernetes` Service's first
/// ClusterIP and its DNS names; the API server's client certificate for kubelet logs/exec; the
/// ServiceAccount signing key. EC P-256, as in the API server harness.
fn generate_pki(dir: &Path) -> Result<(), String> {
    let d = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_key, ca_crt) = (d("ca.key"), d("ca.crt"));
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-days",
        "30",
        "-subj",
        "/CN=healthgate-node-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca)?;

    let sign = |name: &str, subj: &str, ext: &str| -> Result<(), String> {
        let (key, csr, crt, extf) = (
            d(&format!("{name}.key")),
            d(&format!("{name}.csr")),
            d(&format!("{name}.crt")),
            d(&format!("{name}.ext")),
        );
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", subj]);
        openssl(&req)?;
        fs::write(&extf, ext).map_err(|e| format!("writing {extf}: {e}"))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &extf,
            "-out",
            &crt,
        ])
    };
    sign(
        "serving",
        "/CN=kube-apiserver",
        &format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:{NODE_IP},IP:10.0.0.1,IP:127.0.0.1,\
             DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
             DNS:kubernetes.default.svc.cluster.local\n"
        ),
    )?;
    sign(
        "kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )?;
    let (sa_key, sa_pub) = (d("sa.key"), d("sa.pub"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-out",
        &sa_key,
    ])?;
    openssl(&["pkey", "-in", &sa_key, "-pubout", "-out", &sa_pub])
}

fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    // restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so the CRI's oom_score_adj of
    // -998 for sandboxes fails inside runc ("can't get final child's PID from pipe: EOF");
    // clamping to containerd's own score is what rootless setups do.
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{d}/containerd/run/containerd.sock"
[ttrpc]
  address = "{d}/containerd/run/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/conf"
"#
    )
}

fn cni_config(dir: &Path) -> String {
    // isGateway false and no routes: the bridge already has NODE_IP (set by the harness), pods
    // reach it on-link, and with no default route and no forwarding nothing leaves the bridge.
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "hgtest",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": false,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": SUBNET, "gateway": NODE_IP}]],
                "dataDir": dir.join("cni/ipam"),
            },
        }],
    }))
    .expect("JSON")
}

fn kubelet_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines mount cgroup v1 (plus a v2 `unified` mount) and have no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://{d}/containerd/run/containerd.sock
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzPort: 0
podLogsDirectory: {d}/pod-logs
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {d}/pki/ca.crt}}
authorization: {{mode: AlwaysAllow}}
# The images were imported locally and cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
resolvConf: ""
"#
    )
}
