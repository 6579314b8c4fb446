//! Command-line interface. Every flag also reads an environment variable, so the same binary is
//! configured the same way from a shell, a systemd unit or a Kubernetes manifest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::checks::Cidr;
use crate::policy::duration;
use crate::server::exposure::Details;

#[derive(Debug, Parser)]
#[command(
    name = "healthgate",
    version,
    about = "Declarative dependency health checks and readiness probes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the checkers and serve /health, /ready, /metrics and the example API.
    Serve(ServeArgs),
    /// Check a policy once (or until ready) and print the /ready JSON. Exit 0 ok, 1 degraded,
    /// 2 down or invalid.
    Check(CheckArgs),
    /// Print the HealthPolicy CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Policy file (standalone mode). Without it healthgate watches HealthPolicies in Kubernetes.
    #[arg(long, env = "HEALTHGATE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Address to serve HTTP on.
    #[arg(long, env = "HEALTHGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// PostgreSQL URL of the service's own database (for /api/users).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// After SIGTERM, how long /ready answers 503 before the listener closes, so load balancers
    /// stop sending traffic first.
    #[arg(long, env = "HEALTHGATE_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// After the listener closes, how long in-flight requests may take before healthgate exits anyway.
    #[arg(long, env = "HEALTHGATE_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a complete request head, counted from connecting or
    /// from the end of the previous response; a connection over it is closed. It also closes
    /// idle keep-alive connections, so keep it above scrapers' intervals (Prometheus: 15s).
    #[arg(long, env = "HEALTHGATE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,
    /// Open HTTP connections at most; further clients wait in the listen backlog until one
    /// closes. Below the usual 1024 open-file limit, with room for the dependency connections.
    #[arg(long, env = "HEALTHGATE_MAX_CONNECTIONS", default_value = "512", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Who sees details (errors, latencies, depths) in /ready: never, authorized (a bearer token
    /// that Kubernetes authorizes for `get healthpolicies/status`, or the --details-token-file
    /// token) or always. Status codes and per-check status never change with it.
    /// Default: authorized in Kubernetes mode, always in standalone mode.
    #[arg(long, env = "HEALTHGATE_DETAILS", value_enum)]
    pub details: Option<Details>,
    /// A file holding a bearer token that is authorized to see details (and /metrics with
    /// --protect-metrics).
    #[arg(long, env = "HEALTHGATE_DETAILS_TOKEN_FILE")]
    pub details_token_file: Option<PathBuf>,
    /// /metrics needs an authorized bearer token too (Kubernetes: `get` on the non-resource URL
    /// /metrics, as Prometheus is usually granted).
    #[arg(long, env = "HEALTHGATE_PROTECT_METRICS")]
    pub protect_metrics: bool,
    /// Serve /metrics on this address instead of --listen (which then answers 404 for it).
    #[arg(long, env = "HEALTHGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve grpc.health.v1 (Check and Watch) on this address, for kubelet `grpc:` probes:
    /// service "" is the /ready answer, "NAMESPACE/NAME" (standalone "NAME") one policy's. Off
    /// unless set.
    #[arg(long, env = "HEALTHGATE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub kube: Box<KubeArgs>,
}

/// The target guard: where checks may connect. On in Kubernetes mode; in standalone mode (and
/// `check`) only when one of these flags is given, since the policy file is the operator's own.
/// Deny wins over allow; link-local and the API server's address are always denied.
#[derive(Debug, Default, clap::Args)]
pub struct GuardArgs {
    /// Address ranges no check may connect to, e.g. `10.0.0.0/8,fd00::/8` (repeatable).
    #[arg(
        long,
        env = "HEALTHGATE_DENY_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub deny_cidr: Vec<Cidr>,
    /// When set, the only address ranges checks may connect to (loopback included), minus
    /// `--deny-cidr` and the defaults (repeatable).
    #[arg(
        long,
        env = "HEALTHGATE_ALLOW_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_cidr: Vec<Cidr>,
}

impl GuardArgs {
    pub fn given(&self) -> bool {
        !self.deny_cidr.is_empty() || !self.allow_cidr.is_empty()
    }
}

/// Kubernetes mode (no `--policy`): which HealthPolicies to serve and who this replica is.
#[derive(Debug, Default, clap::Args)]
pub struct KubeArgs {
    /// Namespace whose HealthPolicies (and Secrets) to watch. Default: the pod's own namespace.
    #[arg(long, env = "HEALTHGATE_NAMESPACE", conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Watch HealthPolicies in every namespace (needs the ClusterRole).
    #[arg(long, env = "HEALTHGATE_ALL_NAMESPACES")]
    pub all_namespaces: bool,
    /// Serve only this HealthPolicy (in --namespace), e.g. as a sidecar gating its own pod.
    #[arg(
        long,
        env = "HEALTHGATE_POLICY_NAME",
        conflicts_with = "all_namespaces"
    )]
    pub policy_name: Option<String>,
    /// Label selector on HealthPolicies, e.g. `team=payments`. ANDed with the shard rule: with
    /// `--shard` only that shard's policies, without it only policies with no
    /// `healthgate.dev/shard` label (see README, "Sharding").
    #[arg(long, env = "HEALTHGATE_SELECTOR")]
    pub selector: Option<String>,
    /// Serve only the HealthPolicies labelled `healthgate.dev/shard=NAME`, electing the leader on
    /// Lease `healthgate-shard-NAME`. Deployments with distinct shards own disjoint policies.
    #[arg(
        long,
        env = "HEALTHGATE_SHARD",
        value_name = "NAME",
        conflicts_with_all = ["lease_name", "policy_name"]
    )]
    pub shard: Option<String>,
    /// This replica's identity for leader election and Events (the Downward API's pod name).
    /// Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The pod's own namespace, where the leader Lease lives. Default: the ServiceAccount's
    /// namespace file, then the kubeconfig's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Name of the leader-election Lease; replicas with the same name share one leader.
    /// Default: `healthgate`, or `healthgate-shard-NAME` with `--shard` (which it cannot be
    /// combined with: two shards sharing a Lease would leave one of them without a leader).
    #[arg(long, env = "HEALTHGATE_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// Status writes plus Events per second this replica may send the API server (after the
    /// burst); a flapping fleet coalesces into fewer writes instead of queueing them.
    #[arg(long, env = "HEALTHGATE_API_WRITE_QPS", default_value_t = 10.0)]
    pub api_write_qps: f64,
    /// Writes allowed at once before the QPS limit applies.
    #[arg(long, env = "HEALTHGATE_API_WRITE_BURST", default_value_t = 50)]
    pub api_write_burst: u32,
    /// Pod gate (`healthgate.dev/ready` condition) patches per second the leader may send after
    /// the burst; what waits is recomputed, so a flap coalesces instead of queueing.
    #[arg(long, env = "HEALTHGATE_POD_GATE_QPS", default_value_t = 50.0)]
    pub pod_gate_qps: f64,
    /// Pod gate patches allowed at once before --pod-gate-qps applies (a scale-up, a failover).
    #[arg(long, env = "HEALTHGATE_POD_GATE_BURST", default_value_t = 200)]
    pub pod_gate_burst: u32,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy file to check.
    #[arg(long, env = "HEALTHGATE_POLICY")]
    pub policy: PathBuf,
    /// Keep checking until the policy is ok or this long has passed (for init containers).
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub guard: GuardArgs,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match duration::parse(text)? {
        Duration::ZERO => Err("must be greater than 0".into()),
        positive => Ok(positive),
    }
}
