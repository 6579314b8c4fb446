//! A real Kubernetes control plane (etcd + kube-apiserver) for integration tests, in the spirit of
//! controller-runtime's envtest. See tests/k8s/README.md.
//!
//! ```ignore
//! mod support;
//! use support::apiserver;
//!
//! #[tokio::test]
//! async fn example() {
//!     let server = apiserver::server();          // started once per test binary
//!     server.apply_crds().await;                 // crds/*.yaml, waits for Established
//!     let ns = server.namespace("example").await;
//!     let client = server.client().await;        // admin (system:masters)
//!     let out = server.kubectl(&["get", "hp", "-n", &ns]);
//!     let sa = server.service_account(&ns, "healthgate").await; // RBAC-limited identity
//!     let as_sa = sa.client().await;
//! }
//! ```
//!
//! Every test binary that includes `mod support;` compiles this module whether it uses it or
//! not, hence the blanket dead-code allowance.
#![allow(dead_code)]

use std::{
    fs, io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};

/// Repository root; the harness finds the build script, `crds/` and `examples/` from here.
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// State directories are `$TMPDIR/healthgate-k8s-*`, each with the owning test process's pid.
const STATE_DIR_PREFIX: &str = "healthgate-k8s-";
const OWNER_FILE: &str = "owner.pid";

/// The audit log in the state directory (with [`ApiServer::start_audited`]).
const AUDIT_LOG: &str = "audit.log";
/// Who did what to HealthPolicies (and their status), at Metadata level: user, verb, URI with
/// its label selector, response code, timestamps. Only the final stage, once per request; every
/// other resource is left out so the log stays small.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources:
      - group: healthgate.dev
        resources: [healthpolicies, healthpolicies/status]
  - level: None
";

/// Field manager used for the harness's server-side applies.
const FIELD_MANAGER: &str = "healthgate-tests";

/// How long kube-apiserver may take to report ready. Cold starts on a loaded 2-core machine
/// (cargo compiling next to it) take ~10-20 s; this leaves room without hiding a hang.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

static SHARED: OnceLock<Result<ApiServer, String>> = OnceLock::new();

/// The control plane shared by all tests of this test binary, started on first use.
///
/// Panics (failing the test, never skipping it) when the binaries cannot be built or the
/// control plane does not come up; every later test in the binary fails with the same message.
pub fn server() -> &'static ApiServer {
    let shared = SHARED.get_or_init(|| {
        let started = ApiServer::start();
        if started.is_ok() {
            // Statics are never dropped; stop the processes and remove the state directory when
            // the test binary exits normally. PDEATHSIG covers abnormal exits.
            // SAFETY: registering a plain `extern "C" fn` with no captured state.
            #[allow(unsafe_code)] // The harness sets PDEATHSIG in the child; see SAFETY above.
            unsafe {
                nix::libc::atexit(stop_shared_server)
            };
        }
        started
    });
    match shared {
        Ok(server) => server,
        Err(err) => panic!("Kubernetes test control plane unavailable: {err}"),
    }
}

extern "C" fn stop_shared_server() {
    if let Some(Ok(server)) = SHARED.get() {
        server.stop();
    }
}

/// A running etcd + kube-apiserver pair with its certificates, tokens and kubeconfig.
pub struct ApiServer {
    dir: PathBuf,
    bin_dir: PathBuf,
    url: String,
    kubeconfig: PathBuf,
    admin_token: String,
    children: Mutex<Vec<(&'static str, Child)>>,
    /// kube-apiserver's arguments and port, to start it again after [`ApiServer::stop_apiserver`].
    api_args: Vec<String>,
    api_port: u16,
    // Held only for its lifetime: the thread behind it spawned the children (see `Keeper`).
    _keeper: Keeper,
    counter: AtomicU64,
}

impl ApiServer {
    /// Builds the binaries if needed and starts a dedicated control plane. Most tests should use
    /// the shared [`server()`]; this is for tests that need to stop or break their own server.
    pub fn start() -> Result<ApiServer, String> {
        Self::start_with(false)
    }

    /// A dedicated control plane whose kube-apiserver writes an audit log (JSON lines) of every
    /// request on HealthPolicies and their status, with the caller's identity: read it with
    /// [`ApiServer::audit_events`]. The shared [`server()`] never audits (no cost to other tests).
    pub fn start_audited() -> Result<ApiServer, String> {
        Self::start_with(true)
    }

    fn start_with(audit: bool) -> Result<ApiServer, String> {
        let bin_dir = build_binaries()?;
        let mut last_err = String::new();
        // A free port found by binding :0 can be taken by another process before etcd or the
        // API server binds it; such a race is retried with new ports, anything else is not.
        for _ in 0..3 {
            match Self::start_once(&bin_dir, audit) {
                Ok(server) => return Ok(server),
                Err(StartError::PortTaken(e)) => last_err = e,
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_err)
    }

    fn start_once(bin_dir: &Path, audit: bool) -> Result<ApiServer, StartError> {
        sweep_stale_state_dirs();
        let dir = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .map_err(|e| fatal(format!("creating a state directory: {e}")))?
            .keep();
        fs::write(dir.join(OWNER_FILE), std::process::id().to_string())
            .map_err(|e| fatal(format!("writing {OWNER_FILE}: {e}")))?;
        let keeper = Keeper::new();
        let mut server = ApiServer {
            dir: dir.clone(),
            bin_dir: bin_dir.to_path_buf(),
            url: String::new(),
            kubeconfig: dir.join("admin.kubeconfig"),
            admin_token: random_hex(16).map_err(fatal)?,
            children: Mutex::new(Vec::new()),
            api_args: Vec::new(),
            api_port: 0,
            _keeper: keeper,
            counter: AtomicU64::new(0),
        };
        // On any error below, dropping `server` stops whatever was started.
        generate_pki(&dir).map_err(fatal)?;
        fs::write(
            dir.join("tokens.csv"),
            format!(
                "{},admin,admin-uid,\"system:masters\"\n",
                server.admin_token
            ),
        )
        .map_err(|e| fatal(format!("writing the token file: {e}")))?;

        let [etcd_client, etcd_peer, api_port] = free_ports().map_err(fatal)?;
        server.url = format!("https://127.0.0.1:{api_port}");

        let etcd_log = dir.join("etcd.log");
        let mut etcd = Command::new(bin_dir.join("etcd"));
        etcd.args([
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
            // Throwaway data: skipping fsync makes writes, and so the whole suite, much faster.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ]);
        server.spawn("etcd", etcd, &etcd_log)?;
        server.wait_for_port("etcd", etcd_client, &etcd_log, Duration::from_secs(30))?;

        let api_log = dir.join("kube-apiserver.log");
        let p = |name: &str| dir.join(name).display().to_string();
        server.api_port = api_port;
        server.api_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", p("apiserver-certs")),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".to_string(),
            format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            // Only a range to allocate ClusterIPs from; nothing routes to it.
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            // Without kube-controller-manager no namespace gets a `default` ServiceAccount, and
            // this admission plugin would reject every Pod for lack of one (envtest does the same).
            "--disable-admission-plugins=ServiceAccount".to_string(),
            // Saves CPU and startup time on small machines; fairness is not under test.
            "--enable-priority-and-fairness=false".to_string(),
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ];
        if audit {
            fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY)
                .map_err(|e| fatal(format!("writing the audit policy: {e}")))?;
            server.api_args.extend([
                format!("--audit-policy-file={}", p("audit-policy.yaml")),
                format!("--audit-log-path={}", p(AUDIT_LOG)),
                "--audit-log-format=json".to_string(),
                // Written before the response is sent, so a test reads every request it saw answered.
                "--audit-log-mode=blocking".to_string(),
            ]);
        }
        let mut api = Command::new(bin_dir.join("kube-apiserver"));
        api.args(&server.api_args);
        server.spawn("kube-apiserver", api, &api_log)?;
        server
            .write_kubeconfig(&server.kubeconfig, "admin", &server.admin_token.clone())
            .map_err(fatal)?;
        server.wait_ready(api_port, &api_log)?;
        Ok(server)
    }

    /// The audit log so far, one JSON object per event (only with [`ApiServer::start_audited`]).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(self.dir.join(AUDIT_LOG)).unwrap_or_default();
        // A line still being written has no newline yet; it is read next time.
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("audit log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// `https://127.0.0.1:PORT` of the API server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kubeconfig of the admin user (group `system:masters`), for kubectl and kube clients.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Directory with the certificates (`ca.crt`), logs (`etcd.log`, `kube-apiserver.log`) and
    /// kubeconfigs of this control plane; removed when it stops.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// A client acting as the admin. Made fresh on each call: a kube `Client` is bound to the
    /// tokio runtime it was created on, and every `#[tokio::test]` has its own.
    pub async fn client(&self) -> Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Runs the matching kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.kubeconfig, args, None)
    }

    /// Runs kubectl as the admin with `stdin` as standard input (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(&self.kubeconfig, args, Some(stdin))
    }

    /// Runs kubectl as the admin and returns its stdout, panicking with its stderr on failure.
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

    /// Runs kubectl with any kubeconfig (e.g. one from [`ServiceAccountAccess`]).
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ))
            .args(args)
            .env_remove("KUBECONFIG")
            // A developer's ~/.kube/kuberc (aliases, default flags) must not change what runs.
            .env("KUBECTL_KUBERC", "false");
        super::run_with_stdin(&mut cmd, stdin)
    }

    /// Creates a fresh namespace `{prefix}-{n}` and returns its name. Namespaces are not deleted:
    /// without kube-controller-manager they would stay Terminating, and the whole control plane
    /// is thrown away when the test binary ends.
    pub async fn namespace(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }

    /// Applies every CRD in `crds/` (server-side apply, so it is idempotent across tests) and
    /// waits until each is Established. Returns the CRDs as the server stored them.
    pub async fn apply_crds(&self) -> Vec<CustomResourceDefinition> {
        let api = Api::<CustomResourceDefinition>::all(self.client().await);
        let mut applied = Vec::new();
        for path in crd_files() {
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let crds: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{} is not a list of CRDs: {e}", path.display()));
            for crd in crds {
                let name = crd.metadata.name.clone().expect("a CRD has a name");
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .unwrap_or_else(|e| panic!("applying CRD {name} from {}: {e}", path.display()));
                let established = tokio::time::timeout(
                    Duration::from_secs(30),
                    await_condition(api.clone(), &name, conditions::is_crd_established()),
                )
                .await
                .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
                .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"))
                .unwrap_or_else(|| panic!("CRD {name} disappeared"));
                applied.push(established);
            }
        }
        assert!(!applied.is_empty(), "no CRDs found in {REPO}/crds");
        applied
    }

    /// Ensures ServiceAccount `ns/name` exists and returns a token for it (TokenRequest API),
    /// with a kubeconfig and client helpers to act as it. RBAC applies to it in full: it can do
    /// nothing until a Role/ClusterRole is bound to it.
    pub async fn service_account(&self, ns: &str, name: &str) -> ServiceAccountAccess {
        let api = Api::<ServiceAccount>::namespaced(self.client().await, ns);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("creating ServiceAccount {ns}/{name}: {e}"),
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"))
            .status
            .expect("a TokenRequest response carries a status")
            .token;
        let kubeconfig = self.dir.join(format!("sa-{ns}-{name}.kubeconfig"));
        self.write_kubeconfig(&kubeconfig, &format!("{ns}-{name}"), &token)
            .unwrap_or_else(|e| panic!("{e}"));
        ServiceAccountAccess {
            username: format!("system:serviceaccount:{ns}:{name}"),
            token,
            kubeconfig,
        }
    }

    /// Writes a kubeconfig for this server that authenticates with a bearer `token`.
    pub fn write_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<(), String> {
        // JSON is valid YAML, and serde_json quotes every path and token correctly.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "healthgate-test", "cluster": {
                "server": self.url,
                "certificate-authority": self.dir.join("ca.crt"),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {
                "cluster": "healthgate-test", "user": user, "namespace": "default",
            }}],
            "current-context": user,
        });
        fs::write(path, serde_json::to_vec_pretty(&config).expect("JSON"))
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Stops kube-apiserver and etcd and removes the state directory (kept, with its logs, when
    /// `HEALTHGATE_K8S_KEEP` is set). Idempotent.
    pub fn stop(&self) {
        // try_lock: this also runs from atexit, where a thread that died holding the lock must
        // not deadlock the exit; such a thread's children still die by PDEATHSIG.
        let mut children = match self.children.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        // API server first, so it does not spend its last moments retrying a dead etcd.
        while let Some((_, mut child)) = children.pop() {
            // Their state is disposable, so there is nothing for a graceful shutdown to save.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("HEALTHGATE_K8S_KEEP").is_some() {
            eprintln!("apiserver harness: kept state in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// Kills kube-apiserver and leaves etcd running: clients see the API server vanish, as in
    /// a control-plane upgrade. Use on a dedicated [`ApiServer::start`] instance only.
    pub fn stop_apiserver(&self) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = children.iter().position(|(n, _)| *n == "kube-apiserver") {
            let (_, mut child) = children.remove(index);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts kube-apiserver again on the same port with the same state, and waits until ready.
    pub fn start_apiserver(&self) {
        let log = self.dir.join("kube-apiserver.log");
        let mut api = Command::new(self.bin_dir.join("kube-apiserver"));
        api.args(&self.api_args);
        let started = self
            .spawn("kube-apiserver", api, &log)
            .and_then(|()| self.wait_ready(self.api_port, &log));
        if let Err(StartError::PortTaken(e) | StartError::Fatal(e)) = started {
            panic!("restarting kube-apiserver: {e}");
        }
    }

    fn spawn(&self, name: &'static str, mut cmd: Command, log: &Path) -> Result<(), StartError> {
        let out =
            fs::File::create(log).map_err(|e| fatal(format!("creating {}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| fatal(e.to_string()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let parent = std::process::id();
        // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid).
        #[allow(unsafe_code)] // The harness sets PDEATHSIG in the child; see SAFETY above.
        unsafe {
            cmd.pre_exec(move || {
                // Dies with the thread that spawned it (the keeper, which lives as long as the
                // test process), so a SIGKILLed or crashed test binary leaves no server behind.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(io::Error::from)?;
                // The parent may have died between fork and prctl; then no signal would come.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(io::Error::other("test process exited during spawn"));
                }
                Ok(())
            });
        }
        let child = self._keeper.spawn(cmd).map_err(|e| {
            fatal(format!(
                "starting {name} from {}: {e}",
                self.bin_dir.display()
            ))
        })?;
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, child));
        Ok(())
    }

    /// The exit status of `name` if it has already exited.
    fn exited(&self, name: &str) -> Option<ExitStatus> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    fn died(&self, name: &str, status: ExitStatus, log: &Path) -> StartError {
        let tail = log_tail(log);
        let msg = format!("{name} exited with {status} during startup; last log lines:\n{tail}");
        if tail.contains("address already in use") {
            StartError::PortTaken(msg)
        } else {
            StartError::Fatal(msg)
        }
    }

    fn wait_for_port(
        &self,
        name: &str,
        port: u16,
        log: &Path,
        timeout: Duration,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Some(status) = self.exited(name) {
                return Err(self.died(name, status, log));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(fatal(format!(
                    "{name} did not listen on {addr} within {timeout:?}; last log lines:\n{}",
                    log_tail(log)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&self, port: u16, log: &Path) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        self.wait_for_port("kube-apiserver", port, log, READY_TIMEOUT)?;
        loop {
            if let Some(status) = self.exited("kube-apiserver") {
                return Err(self.died("kube-apiserver", status, log));
            }
            // Through kubectl on purpose: this proves the kubeconfig, CA and admin token work too.
            let out = self.kubectl(&["get", "--raw=/readyz", "--request-timeout=5s"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let last = String::from_utf8_lossy(&out.stderr);
                return Err(fatal(format!(
                    "kube-apiserver not ready within {READY_TIMEOUT:?}; last /readyz error: {last}\n\
                     last log lines:\n{}",
                    log_tail(log)
                )));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An identity whose permissions are exactly what RBAC grants it.
pub struct ServiceAccountAccess {
    /// `system:serviceaccount:NS:NAME`, as RBAC subjects and SubjectAccessReviews name it.
    pub username: String,
    /// Bearer token from the TokenRequest API (valid for an hour).
    pub token: String,
    /// A kubeconfig using that token, for kubectl or the controller binary.
    pub kubeconfig: PathBuf,
}

impl ServiceAccountAccess {
    /// A kube client authenticated as the ServiceAccount.
    pub async fn client(&self) -> Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Runs kubectl as the ServiceAccount.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        server().kubectl_with(&self.kubeconfig, args, None)
    }
}

/// Builds a kube client from a kubeconfig file (as the controller itself would load it).
pub async fn client_from_kubeconfig(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading kubeconfig {}: {e}", path.display()));
    Client::try_from(config).expect("building a kube client")
}

/// `crds/*.yaml`, sorted.
pub fn crd_files() -> Vec<PathBuf> {
    yaml_files(&Path::new(REPO).join("crds"))
}

/// `*.yaml`/`*.yml` files of a directory, sorted; panics if the directory is unreadable.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

enum StartError {
    PortTaken(String),
    Fatal(String),
}

fn fatal(msg: impl Into<String>) -> StartError {
    StartError::Fatal(msg.into())
}

/// Spawns processes from one long-lived thread.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Test
/// threads and tokio blocking threads come and go, so spawning from them would kill the servers
/// mid-run; this thread lives until its `Keeper` is dropped (never, for the shared server).
pub(super) struct Keeper {
    tx: Mutex<mpsc::Sender<(Command, mpsc::Sender<io::Result<Child>>)>>,
}

impl Keeper {
    pub(super) fn new() -> Keeper {
        let (tx, rx) = mpsc::channel::<(Command, mpsc::Sender<io::Result<Child>>)>();
        thread::Builder::new()
            .name("k8s-process-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the process keeper thread");
        Keeper { tx: Mutex::new(tx) }
    }

    pub(super) fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((cmd, reply_tx))
            .map_err(|_| io::Error::other("process keeper thread is gone"))?;
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("process keeper thread is gone"))?
    }
}

/// Runs scripts/build-k8s.sh (a no-op when its stamp matches) and returns the binary directory.
pub(super) fn build_binaries() -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                Path::new(REPO).join(t)
            }
        })
        .unwrap_or_else(|| Path::new(REPO).join("target"));
    let bin_dir = target.join("k8s-bin");
    let script = Path::new(REPO).join("scripts/build-k8s.sh");
    // stdout/stderr are inherited so a first build's progress shows up in `cargo test` output.
    let status = Command::new("bash")
        .arg(&script)
        .env("K8S_BIN_DIR", &bin_dir)
        .env("BUILD_K8S_QUIET", "1")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!(
            "{} failed ({status}); the Kubernetes integration tests need kube-apiserver, etcd \
             and kubectl from it (see tests/k8s/README.md)",
            script.display()
        ));
    }
    for bin in ["kube-apiserver", "etcd", "kubectl"] {
        if !bin_dir.join(bin).is_file() {
            return Err(format!("{} did not produce {bin}", script.display()));
        }
    }
    Ok(bin_dir)
}

/// A CA, a serving certificate for 127.0.0.1/localhost signed by it, and the ServiceAccount
/// token signing key pair, made with the openssl CLI. EC P-256 keys: generated in milliseconds.
fn generate_pki(dir: &Path) -> Result<(), String> {
    let d = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    let (ca_key, ca_crt) = (d("ca.key"), d("ca.crt"));
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-days",
        "30",
        "-subj",
        "/CN=healthgate-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca)?;

    let (key, csr, crt) = (d("serving.key"), d("serving.csr"), d("serving.crt"));
    let mut req = vec!["req", "-new"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=kube-apiserver"]);
    openssl(&req)?;
    let ext = d("serving.ext");
    // rustls (webpki) accepts only end-entity certificates with a SAN matching the URL's host.
    fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .map_err(|e| format!("writing {ext}: {e}"))?;
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
        &ext,
        "-out",
        &crt,
    ])?;

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
    openssl(&["pkey", "-in", &sa_key, "-pubout", "-out", &sa_pub])?;
    Ok(())
}

pub(super) fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running openssl (needed to make test certificates): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Three distinct free loopback ports. All listeners are held until every port is picked, so the
/// three differ; they can still be taken by others before use (see `StartError::PortTaken`).
fn free_ports() -> Result<[u16; 3], String> {
    let bind = || TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"));
    let listeners = [bind()?, bind()?, bind()?];
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string());
    Ok([
        port(&listeners[0])?,
        port(&listeners[1])?,
        port(&listeners[2])?,
    ])
}

pub(super) fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes state directories left by test processes that were SIGKILLed (their servers died by
/// PDEATHSIG, but nothing could delete the files). Directories of live processes are kept.
fn sweep_stale_state_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(STATE_DIR_PREFIX));
        let owner = fs::read_to_string(path.join(OWNER_FILE)).ok();
        if let Some(pid) = owner.as_deref().map(str::trim).filter(|_| is_ours)
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

pub(super) fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
