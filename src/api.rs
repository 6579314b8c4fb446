//! The `HealthPolicy` custom resource, v1alpha1.
//!
//! These types are the wire format: what users write in YAML and what the API server stores.
//! They stay close to the YAML (strings for durations, optional overrides) so the schema explains
//! itself in `kubectl explain`; [`crate::policy::validate`] turns them into the checked,
//! fully-defaulted [`crate::policy::Policy`] the engine runs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checks::CheckBlock;
use crate::health::{Reason, State};

/// Durations are written the way Kubernetes users write them: `250ms`, `5s`, `1m30s`, `1h`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// Bounds CEL's cost estimate for the duration rules; `1h59m59s999ms` is 13 characters.
pub const DURATION_MAX_LEN: u32 = 32;
/// The upper bounds of `crate::policy::validate` (MAX_INTERVAL, MAX_TIMEOUT), as CEL rules so the
/// API server rejects what standalone mode rejects. CEL's `duration()` reads this grammar, and
/// a value too large for it fails the rule too.
const MAX_INTERVAL_RULE: &str = "duration(self) <= duration('1h')";
const MAX_TIMEOUT_RULE: &str = "duration(self) <= duration('5m')";
const NOT_BOTH_FAILURE_RULES: &str = "!has(self.failureThreshold) || !has(self.failureWindow)";
const NOT_BOTH_SUCCESS_RULES: &str = "!has(self.successThreshold) || !has(self.successWindow)";
/// A DNS label (RFC 1123), so a dependency name is safe as a metric label and a status key.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Status code ranges for HTTP checks: `200`, `200-299`, `200-299,301`.
pub const STATUS_RANGES_PATTERN: &str =
    r"^[1-5][0-9]{2}(-[1-5][0-9]{2})?(,[1-5][0-9]{2}(-[1-5][0-9]{2})?)*$";
/// Certificate-expiry windows: a duration, or whole days (`14d`).
pub const CERT_WINDOW_PATTERN: &str = r"^([0-9]+d|([0-9]+(ms|s|m|h))+)$";
/// Bounds the quadratic unique-name rule so the API server's CEL cost estimate stays in budget.
pub const MAX_DEPENDENCIES: usize = 64;

/// The CustomResourceDefinition as YAML, exactly as committed in `crds/healthpolicy.yaml`.
pub fn crd_yaml() -> String {
    serde_saphyr::to_string(&HealthPolicy::crd()).expect("a CRD always serializes to YAML")
}

/// Declares the dependencies of a service and how their health decides its readiness.
// The lint reads the repeated `type_ = "string"` of separate printer columns as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "healthgate.dev",
    version = "v1alpha1",
    kind = "HealthPolicy",
    plural = "healthpolicies",
    shortname = "hp",
    namespaced,
    status = "HealthPolicyStatus",
    derive = "PartialEq",
    doc = "HealthPolicy declares a service's dependencies (databases (PostgreSQL, MySQL, MariaDB), caches, queues, HTTP, TCP, gRPC and TLS endpoints, DNS names) and how their health maps to the service's readiness.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Degraded")].status"#
    ),
    printcolumn(name = "Dependencies", type_ = "string", json_path = ".status.summary"),
    printcolumn(
        name = "Maintenance",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Maintenance")].status"#,
        description = "True while a maintenance window is open (kubectl get hp -o wide).",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HealthPolicySpec {
    /// Check settings used by every dependency that does not override them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<CheckDefaults>,

    /// A cached check result older than this counts as "unknown" (a critical unknown makes the
    /// service down). Must exceed every dependency's interval plus timeout, and be at most 3h.
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('3h')").message("must be at most 3h"))]
    pub max_staleness: Option<String>,

    /// HTTP status codes /ready answers with for each overall state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_codes: Option<StatusCodes>,

    /// Readiness-cascade protection (opt-in): when enough of the replicas serving this policy
    /// see the same critical dependency down at once, /ready answers degraded instead of down
    /// (for at most maxDuration), so the Service keeps its endpoints and can still serve what
    /// does not need that dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade_protection: Option<CascadeProtection>,
    /// Planned maintenance: inside a window a failing dependency reports degraded (reason
    /// `maintenance`) instead of down, so it never pulls the pods. At most 16 windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub maintenance: Option<Vec<MaintenanceWindow>>,

    /// Pods this policy gates (Kubernetes mode, needs the pod-gates RBAC component): the leader
    /// sets the pod condition `healthgate.dev/ready` on every pod in the policy's namespace that
    /// matches and lists that condition under `spec.readinessGates` (True while the policy is ok
    /// or degraded, False while it is down). Pods without that readiness gate are left alone.
    /// Must select something: an empty selector is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// The dependencies to check (at least one: a policy without dependencies would always be
    /// ready). Names must be unique within the policy.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(d, self.exists_one(e, e.name == d.name))").message("dependency names must be unique"))]
    pub dependencies: Vec<Dependency>,
}

/// A maintenance window: one-off (`start` and `end`) or recurring (`schedule` and `duration`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.start) == has(self.end) && has(self.schedule) == has(self.duration) && has(self.start) != has(self.schedule)").message("set start and end, or schedule and duration"))]
pub struct MaintenanceWindow {
    /// Start of a one-off window, RFC 3339 (`2026-12-06T02:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub start: Option<String>,
    /// End of a one-off window, RFC 3339; after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub end: Option<String>,
    /// Start times of a recurring window, in cron syntax (minute hour day-of-month month
    /// day-of-week, e.g. `0 2 * * sun`; `@daily` and friends too), in timeZone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub schedule: Option<String>,
    /// How long each recurring window stays open, at most 7d, written like `2h` or `90m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub duration: Option<String>,
    /// IANA time zone of schedule (`Europe/Berlin`). Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// Only these dependencies are in maintenance; unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub dependencies: Option<Vec<String>>,
}

/// Readiness-cascade protection. Replicas publish which critical dependencies they see down
/// (one Lease per replica, ignored once older than 10 s). A critical dependency that enough of
/// the replicas serving this policy see down stops counting as critical, for at most
/// maxDuration; one down on fewer replicas still takes those replicas out of rotation.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CascadeProtection {
    /// Turns the protection on. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Fewest replicas that must see the same critical dependency down before protection
    /// engages; a replica alone is never protected with the default. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Share of the replicas currently serving this policy, in percent, that must see it down.
    /// Default 100 (every replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub quorum_percent: Option<i32>,
    /// After protection has held a dependency this long, the fleet reports it down anyway: a
    /// lasting outage must not be hidden. Default 10m, at most 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_duration: Option<String>,
}

/// Check settings shared by all dependencies of a policy.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(NOT_BOTH_FAILURE_RULES).message("set failureThreshold or failureWindow, not both"))]
#[x_kube(validation = Rule::new(NOT_BOTH_SUCCESS_RULES).message("set successThreshold or successWindow, not both"))]
pub struct CheckDefaults {
    /// Time between two checks of a dependency, 100ms-1h. Default 5s. Each dependency runs at
    /// its own fixed offset within the interval, so checks spread evenly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    #[x_kube(validation = Rule::new(MAX_INTERVAL_RULE).message("must be at most 1h"))]
    pub interval: Option<String>,
    /// How long one check may take before it counts as failed, at most 5m. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    #[x_kube(validation = Rule::new(MAX_TIMEOUT_RULE).message("must be at most 5m"))]
    pub timeout: Option<String>,
    /// While a dependency is failing (its latest check failed, or it is reported down), check it
    /// this often instead of every interval, so an outage is confirmed and a recovery seen
    /// sooner. At least 100ms and at most the interval. Unset: always the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    #[x_kube(validation = Rule::new(MAX_INTERVAL_RULE).message("must be at most 1h"))]
    pub retry_interval: Option<String>,
    /// Consecutive failures before a healthy dependency is reported down. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
    /// Instead of failureThreshold: a healthy dependency is reported down once this many of its
    /// latest checks failed, consecutive or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_window: Option<FailureWindow>,
    /// Consecutive successes before a down dependency is reported healthy again. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
    /// Instead of successThreshold: a down dependency is reported healthy again once this many
    /// of its latest checks passed, consecutive or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_window: Option<SuccessWindow>,
    /// A successful check slower than this reports the dependency as degraded. Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub degraded_latency: Option<String>,
}

/// "At least `failures` of the latest `of` checks failed": the rule for reporting a healthy
/// dependency down. `{failures: 3, of: 5}` ignores a lone failure, which failureThreshold 1 does
/// not, and catches a flapping dependency, which failureThreshold 3 never does.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.failures <= self.of").message("failures must be at most of"))]
pub struct FailureWindow {
    /// Failed checks within the window that report the dependency down (1-64).
    #[schemars(range(min = 1, max = 64))]
    pub failures: i32,
    /// How many of the latest checks the window covers (1-64).
    #[schemars(range(min = 1, max = 64))]
    pub of: i32,
}

/// "At least `successes` of the latest `of` checks passed": the rule for reporting a down
/// dependency healthy again.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.successes <= self.of").message("successes must be at most of"))]
pub struct SuccessWindow {
    /// Passed checks within the window that report the dependency healthy again (1-64).
    #[schemars(range(min = 1, max = 64))]
    pub successes: i32,
    /// How many of the latest checks the window covers (1-64).
    #[schemars(range(min = 1, max = 64))]
    pub of: i32,
}

/// HTTP status codes returned by /ready.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCodes {
    /// Status when every dependency is healthy (200-399, which the kubelet treats as ready). Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 399))]
    pub ok: Option<i32>,
    /// Status when only non-critical dependencies fail or some are degraded. 200-399 keeps the pod
    /// in rotation, 400-599 takes it out. Default 207.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599))]
    pub degraded: Option<i32>,
    /// Status when a critical dependency is down or unknown (400-599). Default 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub down: Option<i32>,
}

/// The kind of a dependency, which selects the check block that must be set.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DependencyType {
    /// PostgreSQL: runs `SELECT 1` on a pooled connection.
    Postgres,
    /// Redis: sends PING.
    Redis,
    /// The depth of a Redis list or stream used as a job queue.
    RedisQueue,
    /// An HTTP GET whose status (and optionally body) is checked.
    Http,
    /// A TCP connect.
    Tcp,
    /// The standard gRPC health check (grpc.health.v1.Health/Check).
    Grpc,
    /// Another HealthPolicy in the same namespace: its aggregated status.
    Policy,
    /// A TLS handshake: certificate chain, hostname and days until the certificate expires.
    Tls,
    /// A DNS lookup, optionally compared with the expected answers.
    Dns,
    /// MySQL or MariaDB: runs `SELECT 1` on a pooled connection.
    Mysql,
}

impl DependencyType {
    pub const ALL: [DependencyType; 10] = [
        Self::Postgres,
        Self::Redis,
        Self::RedisQueue,
        Self::Http,
        Self::Tcp,
        Self::Grpc,
        Self::Policy,
        Self::Tls,
        Self::Dns,
        Self::Mysql,
    ];

    /// The YAML spelling, which is also the name of the matching check block.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::RedisQueue => "redisQueue",
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Grpc => "grpc",
            Self::Policy => "policy",
            Self::Tls => "tls",
            Self::Dns => "dns",
            Self::Mysql => "mysql",
        }
    }
}

/// One dependency of the service and how to check it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(one_block_rule()).message("exactly the check block named by `type` must be set"))]
#[x_kube(validation = Rule::new(NOT_BOTH_FAILURE_RULES).message("set failureThreshold or failureWindow, not both"))]
#[x_kube(validation = Rule::new(NOT_BOTH_SUCCESS_RULES).message("set successThreshold or successWindow, not both"))]
pub struct Dependency {
    /// Unique name of the dependency (a DNS label); used in /ready, metrics and status.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// Kind of check; the block with the same name must be set and no other.
    #[serde(rename = "type")]
    pub kind: DependencyType,
    /// Whether the service is down without this dependency. A failing non-critical dependency
    /// only degrades the service. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<bool>,
    /// Overrides defaults.interval for this dependency (100ms-1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    #[x_kube(validation = Rule::new(MAX_INTERVAL_RULE).message("must be at most 1h"))]
    pub interval: Option<String>,
    /// Overrides defaults.timeout for this dependency (at most 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    #[x_kube(validation = Rule::new(MAX_TIMEOUT_RULE).message("must be at most 5m"))]
    pub timeout: Option<String>,
    /// Overrides defaults.retryInterval for this dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    #[x_kube(validation = Rule::new(MAX_INTERVAL_RULE).message("must be at most 1h"))]
    pub retry_interval: Option<String>,
    /// Overrides the defaults' failure rule (failureThreshold or failureWindow) for this
    /// dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
    /// Overrides the defaults' failure rule (failureThreshold or failureWindow) for this
    /// dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_window: Option<FailureWindow>,
    /// Overrides the defaults' success rule (successThreshold or successWindow) for this
    /// dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
    /// Overrides the defaults' success rule (successThreshold or successWindow) for this
    /// dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_window: Option<SuccessWindow>,
    /// Overrides defaults.degradedLatency for this dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub degraded_latency: Option<String>,
    /// Settings for `type: postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresCheck>,
    /// Settings for `type: redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisCheck>,
    /// Settings for `type: redisQueue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_queue: Option<RedisQueueCheck>,
    /// Settings for `type: http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Settings for `type: tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Settings for `type: grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcCheck>,
    /// Settings for `type: policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyCheck>,
    /// Settings for `type: tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCheck>,
    /// Settings for `type: dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsCheck>,
    /// Settings for `type: mysql`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<MysqlCheck>,
}

impl Dependency {
    /// The check block of `kind` if it is set. The one place that maps kinds to their blocks.
    pub fn block_of(&self, kind: DependencyType) -> Option<&dyn CheckBlock> {
        fn dyn_block<B: CheckBlock>(block: &Option<B>) -> Option<&dyn CheckBlock> {
            block.as_ref().map(|b| b as &dyn CheckBlock)
        }
        match kind {
            DependencyType::Postgres => dyn_block(&self.postgres),
            DependencyType::Redis => dyn_block(&self.redis),
            DependencyType::RedisQueue => dyn_block(&self.redis_queue),
            DependencyType::Http => dyn_block(&self.http),
            DependencyType::Tcp => dyn_block(&self.tcp),
            DependencyType::Grpc => dyn_block(&self.grpc),
            DependencyType::Policy => dyn_block(&self.policy),
            DependencyType::Tls => dyn_block(&self.tls),
            DependencyType::Dns => dyn_block(&self.dns),
            DependencyType::Mysql => dyn_block(&self.mysql),
        }
    }
}

/// The CEL rule that exactly the block named by `type` is set, generated from the kind list so
/// a new kind cannot be missed.
fn one_block_rule() -> String {
    DependencyType::ALL
        .iter()
        .map(|kind| format!("(self.type == '{0}') == has(self.{0})", kind.as_str()))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// Where a connection URL comes from when it is not written inline.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.env) != has(self.secretKeyRef)").message("set exactly one of env or secretKeyRef"))]
pub struct UrlFrom {
    /// Name of an environment variable of the healthgate process that holds the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub env: Option<String>,
    /// A key of a Secret in the policy's namespace that holds the URL (Kubernetes mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// Selects one key of a Secret in the policy's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A PostgreSQL connection to check with `SELECT 1`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.urlFrom)").message("set exactly one of url or urlFrom"))]
pub struct PostgresCheck {
    /// Connection URL, `postgres://user@host:port/db`. Prefer urlFrom for URLs with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Reads the connection URL from an environment variable or a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<UrlFrom>,
}

/// A MySQL or MariaDB connection to check with `SELECT 1`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.urlFrom)").message("set exactly one of url or urlFrom"))]
pub struct MysqlCheck {
    /// Connection URL, `mysql://user@host:port/db` (`mariadb://` too). Prefer urlFrom for URLs
    /// with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Reads the connection URL from an environment variable or a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<UrlFrom>,
}

/// A Redis server to check with PING.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.urlFrom)").message("set exactly one of url or urlFrom"))]
pub struct RedisCheck {
    /// Connection URL, `redis://[:password@]host:port/db`. Prefer urlFrom for URLs with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Reads the connection URL from an environment variable or a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<UrlFrom>,
}

/// How a Redis job queue is stored.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum QueueKind {
    /// A list; depth is LLEN.
    #[default]
    List,
    /// A stream; depth is XLEN, or the consumer group's pending count when `group` is set.
    Stream,
}

/// The depth of a Redis job queue, compared with thresholds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.urlFrom)").message("set exactly one of url or urlFrom"))]
#[x_kube(validation = Rule::new("!has(self.degradedAbove) || !has(self.downAbove) || self.downAbove > self.degradedAbove").message("downAbove must be greater than degradedAbove"))]
#[x_kube(validation = Rule::new("!has(self.group) || self.kind == 'stream'").message("group is only valid with kind: stream"))]
pub struct RedisQueueCheck {
    /// Connection URL of the Redis server holding the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Reads the connection URL from an environment variable or a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<UrlFrom>,
    /// Redis key of the queue.
    #[schemars(length(min = 1, max = 512))]
    pub key: String,
    /// How the queue is stored: list (default) or stream.
    #[serde(default)]
    pub kind: QueueKind,
    /// Consumer group of a stream; its pending-entries count is the depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub group: Option<String>,
    /// Depth above which the dependency is degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub degraded_above: Option<i64>,
    /// Depth above which the dependency is down; must exceed degradedAbove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub down_above: Option<i64>,
}

/// An HTTP endpoint checked with one request (GET by default).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.body) || (has(self.method) && !(self.method in ['GET', 'HEAD']))").message("body needs a method other than GET or HEAD"))]
pub struct HttpCheck {
    /// URL to request (http or https).
    #[schemars(length(min = 1))]
    pub url: String,
    /// Request method. Default GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Request headers, e.g. a token from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<HttpHeader>,
    /// Request body (with POST, PUT, PATCH, DELETE or OPTIONS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// Accepted status codes as ranges, e.g. `200-299` (default) or `200-299,301`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = STATUS_RANGES_PATTERN))]
    pub expect_status: Option<String>,
    /// If set, the response body (first 64 KiB) must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// If set, the response body (first 64 KiB) must match this regular expression (Rust
    /// `regex` syntax, e.g. `"status":\s*"(UP|OK)"`). A mismatch is reason `assertion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub body_matches: Option<String>,
    /// Conditions on the JSON body or the headers of the response; every one must hold, and
    /// each that does not is named in the error (reason `assertion`).
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "assert")]
    #[schemars(length(max = 32))]
    pub assertions: Vec<HttpAssertion>,
    /// How an https URL's certificate is verified. Unset: against the built-in web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// An HTTP request method.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

/// A request header: its value written inline or read from an environment variable or Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("set exactly one of value or valueFrom"))]
pub struct HttpHeader {
    /// Header name, e.g. `Authorization`.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Header value, written inline (shown in the spec: use valueFrom for a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Reads the value from an environment variable or a Secret (Kubernetes mode); a value read
    /// so is never shown and a Secret change takes effect without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<UrlFrom>,
}

/// One condition on the response: a subject (jsonPointer or header) and one test (equals,
/// oneOf or matches).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jsonPointer) != has(self.header)").message("set exactly one of jsonPointer or header"))]
#[x_kube(validation = Rule::new("(has(self.equals) ? 1 : 0) + (has(self.oneOf) ? 1 : 0) + (has(self.matches) ? 1 : 0) == 1").message("set exactly one of equals, oneOf or matches"))]
pub struct HttpAssertion {
    /// A JSON pointer (RFC 6901) into the response body, e.g. `/status` or `/checks/0/state`.
    /// A string is compared as its text, any other value as its JSON (`true`, `42`, `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub json_pointer: Option<String>,
    /// A response header name (any case); a missing header fails the condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// The value must be exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The value must be one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub one_of: Option<Vec<String>>,
    /// The value must match this regular expression (Rust `regex` syntax; unanchored unless
    /// written with `^…$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub matches: Option<String>,
}

/// Certificate verification of an http (https URL) or grpc check.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.caFrom) || !has(self.insecureSkipVerify) || !self.insecureSkipVerify").message("set caFrom or insecureSkipVerify, not both"))]
pub struct ClientTlsSettings {
    /// CA certificates (PEM) to verify the server's chain against instead of the default
    /// roots, from a Secret (Kubernetes mode) or a file (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_from: Option<CaFrom>,
    /// Accept any certificate for any name: the connection is encrypted but the server is not
    /// authenticated. For test environments only. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A TCP endpoint checked by connecting.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TcpCheck {
    /// `host:port` to connect to.
    #[schemars(length(min = 3))]
    pub address: String,
}

/// A gRPC server checked with the standard health protocol (grpc.health.v1), over HTTP/2
/// (plaintext, or TLS with `tls`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct GrpcCheck {
    /// `host:port` of the gRPC server.
    #[schemars(length(min = 3))]
    pub address: String,
    /// Service name to ask about; empty (default) asks about the server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Set to speak TLS (HTTP/2 over TLS, ALPN h2), with these verification settings; `{}`
    /// verifies against the system roots. Unset: plaintext HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Another HealthPolicy this service depends on, e.g. the policy of a service it calls. Its
/// aggregated status is this dependency's: down with reason `upstream` (naming the upstream's
/// failing dependencies) when it is down, degraded when it is degraded. Cycles are rejected.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PolicyCheck {
    /// Name of a HealthPolicy in the same namespace, served by the same healthgate.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A TLS endpoint checked with a handshake: the chain must verify, the certificate must name the
/// host, and it must not expire too soon. Nothing is sent after the handshake.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsCheck {
    /// `host:port` to connect to. The host is sent as SNI (unless it is an IP address) and must
    /// be named by the certificate (a DNS name, or an IP address in its subjectAltName).
    #[schemars(length(min = 3))]
    pub address: String,
    /// CA certificates (PEM) to verify the chain against instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_from: Option<CaFrom>,
    /// A certificate that expires sooner than this reports the dependency as degraded, reason
    /// `cert_expiry`. Units d, h, m, s, ms (`14d`, `36h`). Default 14d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CERT_WINDOW_PATTERN), length(max = DURATION_MAX_LEN))]
    pub degraded_before: Option<String>,
    /// A certificate that expires sooner than this reports the dependency as down, reason
    /// `cert_expiry`; must be less than degradedBefore. Default 0s: down once expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CERT_WINDOW_PATTERN), length(max = DURATION_MAX_LEN))]
    pub down_before: Option<String>,
}

/// Where CA certificates (PEM, one or more) come from: set exactly one field.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.file) != has(self.secretKeyRef)").message("set exactly one of file or secretKeyRef"))]
pub struct CaFrom {
    /// A key of a Secret in the policy's namespace that holds the PEM bundle (Kubernetes mode
    /// only). A change to the Secret takes effect without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// Path of a PEM file readable by healthgate (standalone mode only: in Kubernetes mode a
    /// policy must not read the controller's files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub file: Option<String>,
}

/// A DNS name checked by looking it up. NXDOMAIN, no records of the type, a server error or no
/// answer in time is down; with `expect`, so is any other set of answers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsCheck {
    /// The name to look up, e.g. `db.example.com`. Looked up as written: with the system
    /// nameservers, a name without enough dots is also tried with the search domains (as the
    /// application's own lookups are), with `nameserver` it is not.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The record type to ask for: A (default), AAAA, SRV or CNAME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_type: Option<DnsRecordType>,
    /// The exact set of answers expected, in any order: IP addresses for A and AAAA, names for
    /// CNAME, `priority weight port target` for SRV (e.g. `10 5 5432 db1.example.com`).
    /// A missing or an extra answer is down (reason `unexpected_answer`). Unset: any answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub expect: Option<Vec<String>>,
    /// The nameserver to ask, `IP` or `IP:port` (`[IPv6]:port`), instead of the system's
    /// (/etc/resolv.conf). UDP, and TCP when an answer is truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64))]
    pub nameserver: Option<String>,
}

/// A DNS record type a `dns` check can ask for.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum DnsRecordType {
    /// IPv4 addresses.
    #[default]
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Service records: priority, weight, port and target.
    Srv,
    /// The canonical name an alias points at.
    Cname,
}

/// Observed state of a HealthPolicy, written by the controller's leader.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthPolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Degraded and Invalid conditions, following the Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Short human summary such as `5/6 ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Per-dependency state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<DependencyStatus>,
}

/// Observed state of one dependency.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DependencyStatus {
    /// Dependency name.
    pub name: String,
    /// ok, degraded, down or unknown.
    pub state: State,
    /// Machine-readable reason of the last result (bounded set, e.g. `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Latency of the last check in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// When the state last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_duration_bounds_match_validation() {
        use crate::policy::duration;
        use crate::policy::validate::{MAX_INTERVAL, MAX_MAX_STALENESS, MAX_TIMEOUT};
        let bound = |d| format!("<= duration('{}')", duration::format(d));
        assert!(MAX_INTERVAL_RULE.ends_with(&bound(MAX_INTERVAL)));
        assert!(MAX_TIMEOUT_RULE.ends_with(&bound(MAX_TIMEOUT)));
        let crd = crd_yaml();
        assert!(crd.contains(&bound(MAX_MAX_STALENESS)), "maxStaleness rule");
    }

    #[test]
    fn committed_crd_is_generated_from_these_types() {
        // Regenerate with `cargo run --bin crdgen > crds/healthpolicy.yaml`.
        assert_eq!(
            crd_yaml(),
            include_str!("../crds/healthpolicy.yaml"),
            "crds/healthpolicy.yaml is stale"
        );
    }
}
