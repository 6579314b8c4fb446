//! Every rule a policy must satisfy, in one place. The API server enforces the schema and CEL
//! rules in Kubernetes mode; standalone mode has no API server, so the same rules are checked
//! here too, and this is the only place that resolves URLs. All problems are returned at once,
//! each with the field path a user would edit.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use super::{
    CascadeRules, DEFAULT_INTERVAL, DEFAULT_MAX_STALENESS, DEFAULT_TIMEOUT, DependencySpec, Policy,
    Schedule, StatusCodes, duration,
};
use crate::api::{
    CaFrom, CheckDefaults, Dependency, DependencyType, FailureWindow, HealthPolicySpec,
    MAX_DEPENDENCIES, SuccessWindow, UrlFrom,
};
use crate::checks::{CaBundle, CaField, Resolved, UrlField};
use crate::health::Window;
use crate::secret::SecretUrl;

/// Checking more often than this is a load test, not a health check.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// A dependency checked less often than hourly is not watched; `999999999h` is a typo.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// A check allowed longer than this never reports a hung dependency in time to matter.
/// Not tied to the interval: runs never overlap (the next starts after the last one ended), so
/// a timeout above the interval only stretches that period, and short-interval policies use it.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Results older than this are never trusted. Above twice the slowest possible cycle
/// (MAX_INTERVAL + MAX_TIMEOUT), so the unset default always fits under it.
pub const MAX_MAX_STALENESS: Duration = Duration::from_secs(3 * 3600);
const MAX_THRESHOLD: i32 = 100;

/// A problem in a policy, located by the path of the field to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Turns `urlFrom` into a URL: environment variables in standalone mode, Secrets in Kubernetes.
pub trait UrlResolver {
    fn resolve(&self, from: &UrlFrom) -> Result<String, String>;

    /// The PEM text `caFrom` points at: a file in standalone mode, a Secret in Kubernetes.
    fn resolve_ca(&self, from: &CaFrom) -> Result<String, String>;
}

/// The problems found so far; every rule adds to it and validation goes on.
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let message = message.into();
        self.0.push(FieldError {
            path: path.into(),
            // Messages reach status, Events and logs; none may carry a credential.
            message: crate::secret::redact(&message).into_owned(),
        });
    }
}

pub fn validate(
    spec: &HealthPolicySpec,
    urls: &dyn UrlResolver,
) -> Result<Policy, Vec<FieldError>> {
    let mut errors = Errors(Vec::new());
    let defaults = spec.defaults.clone().unwrap_or_default();
    let base = schedule(
        BUILTIN,
        &Overrides::of_defaults(&defaults),
        "spec.defaults",
        &mut errors,
    );
    let status_codes = status_codes(spec, &mut errors);

    if spec.dependencies.is_empty() {
        // An edit that drops every dependency would otherwise make the service ready forever.
        errors.push(
            "spec.dependencies",
            "at least one dependency is required: a policy without dependencies is always ready",
        );
    }
    if spec.dependencies.len() > MAX_DEPENDENCIES {
        errors.push(
            "spec.dependencies",
            format!(
                "{} dependencies, at most {MAX_DEPENDENCIES} are allowed",
                spec.dependencies.len()
            ),
        );
    }
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    let mut dependencies = Vec::with_capacity(spec.dependencies.len());
    for (index, dep) in spec.dependencies.iter().enumerate() {
        let path = format!("spec.dependencies[{index}]");
        if let Some(first) = first_use.insert(&dep.name, index) {
            first_use.insert(&dep.name, first);
            errors.push(
                format!("{path}.name"),
                format!(
                    "duplicate name {:?}, already used by spec.dependencies[{first}]",
                    dep.name
                ),
            );
        }
        if let Some(dep) = dependency(dep, base, &path, urls, &mut errors) {
            dependencies.push(dep);
        }
    }

    let slowest_cycle = dependencies
        .iter()
        .map(|d| d.schedule.interval + d.schedule.timeout)
        .max()
        .unwrap_or_default();
    let max_staleness = match &spec.max_staleness {
        // Unset: generous enough that a slow-interval dependency is never stale between runs.
        None => DEFAULT_MAX_STALENESS.max(slowest_cycle * 2),
        Some(text) => match duration::parse(text) {
            Err(e) => {
                errors.push("spec.maxStaleness", e);
                DEFAULT_MAX_STALENESS
            }
            Ok(value) => {
                if value > MAX_MAX_STALENESS {
                    errors.push(
                        "spec.maxStaleness",
                        format!(
                            "{text} must be at most {}",
                            duration::format(MAX_MAX_STALENESS)
                        ),
                    );
                } else if value <= slowest_cycle {
                    errors.push(
                        "spec.maxStaleness",
                        format!(
                            "{text} must exceed every dependency's interval + timeout (the slowest is {})",
                            duration::format(slowest_cycle)
                        ),
                    );
                }
                value
            }
        },
    };

    let cascade_protection = cascade_rules(spec, &mut errors);
    let names = spec.dependencies.iter().map(|d| d.name.as_str()).collect();
    let maintenance = maintenance::windows(
        spec.maintenance.as_deref().unwrap_or(&[]),
        &names,
        &mut errors,
    );

    let pod_selector = pod_selector(spec, &mut errors);

    if errors.0.is_empty() {
        Ok(Policy {
            max_staleness,
            status_codes,
            dependencies,
            cascade_protection,
            maintenance,
            pod_selector,
        })
    } else {
        Err(errors.0)
    }
}

/// spec.podSelector as a selector the pod watch and the gate decision share. Empty is refused:
/// in Kubernetes an empty selector selects every pod, and a policy that gates every pod of its
/// namespace by accident should not be one keystroke away.
fn pod_selector(spec: &HealthPolicySpec, errors: &mut Errors) -> Option<kube::core::Selector> {
    let selector = spec.pod_selector.as_ref()?;
    let path = "spec.podSelector";
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{index}]");
        let values = requirement.values.as_ref().map_or(0, Vec::len);
        match requirement.operator.as_str() {
            "In" | "NotIn" if values == 0 => errors.push(
                format!("{at}.values"),
                format!("operator {} needs at least one value", requirement.operator),
            ),
            "Exists" | "DoesNotExist" if values > 0 => errors.push(
                format!("{at}.values"),
                format!("operator {} takes no values", requirement.operator),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(
                format!("{at}.operator"),
                format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
            ),
        }
    }
    let parsed = kube::core::Selector::try_from(selector.clone());
    match parsed {
        Ok(parsed) if parsed.selects_all() => {
            errors.push(
                path,
                "an empty selector would gate every pod of the namespace; name the pods' labels",
            );
            None
        }
        Ok(parsed) => Some(parsed),
        // Already reported above with its field path.
        Err(_) => None,
    }
}

fn cascade_rules(spec: &HealthPolicySpec, errors: &mut Errors) -> Option<CascadeRules> {
    let protection = spec.cascade_protection.as_ref().filter(|c| c.enabled)?;
    let path = "spec.cascadeProtection";
    let mut rules = CascadeRules {
        min_replicas: CascadeRules::DEFAULT_MIN_REPLICAS,
        quorum_percent: CascadeRules::DEFAULT_QUORUM_PERCENT,
        max_duration: CascadeRules::DEFAULT_MAX_DURATION,
    };
    match protection.min_replicas {
        Some(n) if (1..=1000).contains(&n) => rules.min_replicas = n as u32,
        Some(n) => errors.push(
            format!("{path}.minReplicas"),
            format!("{n} is out of range 1-1000"),
        ),
        None => {}
    }
    match protection.quorum_percent {
        Some(p) if (1..=100).contains(&p) => rules.quorum_percent = p as u32,
        Some(p) => errors.push(
            format!("{path}.quorumPercent"),
            format!("{p} is out of range 1-100"),
        ),
        None => {}
    }
    if let Some(text) = &protection.max_duration {
        match duration::parse(text) {
            Ok(d) if d >= Duration::from_secs(1) && d <= CascadeRules::LONGEST_MAX_DURATION => {
                rules.max_duration = d
            }
            Ok(_) => errors.push(
                format!("{path}.maxDuration"),
                format!("{text} must be between 1s and 24h"),
            ),
            Err(e) => errors.push(format!("{path}.maxDuration"), e),
        }
    }
    Some(rules)
}

/// The values under every policy's `defaults`.
const BUILTIN: Schedule = Schedule {
    interval: DEFAULT_INTERVAL,
    timeout: DEFAULT_TIMEOUT,
    retry_interval: None,
    failing: Window::consecutive(1),
    recovering: Window::consecutive(1),
    degraded_latency: None,
};

/// The schedule fields one level (`spec.defaults` or a dependency) sets.
struct Overrides<'a> {
    interval: Option<&'a str>,
    timeout: Option<&'a str>,
    retry_interval: Option<&'a str>,
    failure_threshold: Option<i32>,
    failure_window: Option<FailureWindow>,
    success_threshold: Option<i32>,
    success_window: Option<SuccessWindow>,
    degraded_latency: Option<&'a str>,
}

impl<'a> Overrides<'a> {
    fn of_defaults(d: &'a CheckDefaults) -> Self {
        Self {
            interval: d.interval.as_deref(),
            timeout: d.timeout.as_deref(),
            retry_interval: d.retry_interval.as_deref(),
            failure_threshold: d.failure_threshold,
            failure_window: d.failure_window,
            success_threshold: d.success_threshold,
            success_window: d.success_window,
            degraded_latency: d.degraded_latency.as_deref(),
        }
    }

    fn of_dependency(d: &'a Dependency) -> Self {
        Self {
            interval: d.interval.as_deref(),
            timeout: d.timeout.as_deref(),
            retry_interval: d.retry_interval.as_deref(),
            failure_threshold: d.failure_threshold,
            failure_window: d.failure_window,
            success_threshold: d.success_threshold,
            success_window: d.success_window,
            degraded_latency: d.degraded_latency.as_deref(),
        }
    }
}

/// Lays `overrides` over `base`. Only the fields set at this level are reported, at
/// `path.<field>`: inherited values were already checked where they were written.
fn schedule(base: Schedule, overrides: &Overrides, path: &str, errors: &mut Errors) -> Schedule {
    let mut schedule = base;
    let mut parse = |name: &str, text: Option<&str>| -> Option<Duration> {
        duration::parse(text?)
            .map_err(|e| errors.push(format!("{path}.{name}"), e))
            .ok()
    };
    let interval = parse("interval", overrides.interval);
    let timeout = parse("timeout", overrides.timeout);
    let degraded_latency = parse("degradedLatency", overrides.degraded_latency);
    let retry_interval = parse("retryInterval", overrides.retry_interval);
    if let Some(interval) = interval {
        if interval < MIN_INTERVAL {
            errors.push(
                format!("{path}.interval"),
                format!("must be at least {}", duration::format(MIN_INTERVAL)),
            );
        } else if interval > MAX_INTERVAL {
            errors.push(
                format!("{path}.interval"),
                format!("must be at most {}", duration::format(MAX_INTERVAL)),
            );
        }
        schedule.interval = interval;
    }
    if let Some(timeout) = timeout {
        if timeout.is_zero() {
            errors.push(format!("{path}.timeout"), "must be greater than 0");
        } else if timeout > MAX_TIMEOUT {
            errors.push(
                format!("{path}.timeout"),
                format!("must be at most {}", duration::format(MAX_TIMEOUT)),
            );
        }
        schedule.timeout = timeout;
    }
    if degraded_latency.is_some() {
        schedule.degraded_latency = degraded_latency;
    }
    if let Some(failing) = rule(
        path,
        ("failureThreshold", overrides.failure_threshold),
        overrides
            .failure_window
            .map(|w| ("failureWindow", "failures", w.failures, w.of)),
        errors,
    ) {
        schedule.failing = failing;
    }
    if let Some(recovering) = rule(
        path,
        ("successThreshold", overrides.success_threshold),
        overrides
            .success_window
            .map(|w| ("successWindow", "successes", w.successes, w.of)),
        errors,
    ) {
        schedule.recovering = recovering;
    }
    if let Some(retry) = retry_interval {
        if retry < MIN_INTERVAL {
            errors.push(
                format!("{path}.retryInterval"),
                format!("must be at least {}", duration::format(MIN_INTERVAL)),
            );
        }
        schedule.retry_interval = Some(retry);
    }
    // Either level can break this pair too; a retry slower than the interval is a typo.
    if let Some(retry) = schedule.retry_interval
        && retry > schedule.interval
        && (retry_interval.is_some() || interval.is_some())
    {
        let field = if retry_interval.is_some() {
            "retryInterval"
        } else {
            "interval"
        };
        errors.push(
            format!("{path}.{field}"),
            format!(
                "retryInterval {} must not be longer than the interval {}",
                duration::format(retry),
                duration::format(schedule.interval)
            ),
        );
    }
    // Either level can break this pair; report it at the field this level set.
    if let Some(latency) = schedule.degraded_latency
        && latency >= schedule.timeout
        && (degraded_latency.is_some() || timeout.is_some())
    {
        let field = if degraded_latency.is_some() {
            "degradedLatency"
        } else {
            "timeout"
        };
        errors.push(
            format!("{path}.{field}"),
            format!(
                "degradedLatency {} must be less than the timeout {}, or no check could ever be degraded",
                duration::format(latency),
                duration::format(schedule.timeout)
            ),
        );
    }
    schedule
}

/// One side of the hysteresis set at this level: a consecutive threshold (N of N) or a window,
/// never both. `None` when this level sets neither (or only invalid values).
fn rule(
    path: &str,
    (threshold_name, threshold): (&str, Option<i32>),
    window: Option<(&str, &str, i32, i32)>,
    errors: &mut Errors,
) -> Option<Window> {
    match (threshold, window) {
        (Some(_), Some((window_name, ..))) => {
            errors.push(
                format!("{path}.{window_name}"),
                format!("set {threshold_name} or {window_name}, not both"),
            );
            None
        }
        (Some(v), None) if (1..=MAX_THRESHOLD).contains(&v) => Some(Window::consecutive(v as u32)),
        (Some(v), None) => {
            errors.push(
                format!("{path}.{threshold_name}"),
                format!("{v} is out of range 1-{MAX_THRESHOLD}"),
            );
            None
        }
        (None, Some((name, count_name, count, of))) => {
            let max = Window::MAX_OF as i32;
            let mut valid = true;
            if !(1..=max).contains(&of) {
                errors.push(
                    format!("{path}.{name}.of"),
                    format!("{of} is out of range 1-{max}"),
                );
                valid = false;
            }
            if !(1..=of.clamp(1, max)).contains(&count) {
                errors.push(
                    format!("{path}.{name}.{count_name}"),
                    format!(
                        "{count} is out of range 1-{} (at most `of`)",
                        of.clamp(1, max)
                    ),
                );
                valid = false;
            }
            valid.then_some(Window {
                count: count as u32,
                of: of as u32,
            })
        }
        (None, None) => None,
    }
}

fn status_codes(spec: &HealthPolicySpec, errors: &mut Errors) -> StatusCodes {
    let defaults = StatusCodes::default();
    let Some(codes) = &spec.status_codes else {
        return defaults;
    };
    let mut code = |name: &str,
                    value: Option<i32>,
                    range: std::ops::RangeInclusive<i32>,
                    fallback: u16,
                    why: &str| {
        match value {
            None => fallback,
            Some(v) if range.contains(&v) => v as u16,
            Some(v) => {
                errors.push(
                    format!("spec.statusCodes.{name}"),
                    format!(
                        "{v} is out of range {}-{} ({why})",
                        range.start(),
                        range.end()
                    ),
                );
                fallback
            }
        }
    };
    StatusCodes {
        ok: code(
            "ok",
            codes.ok,
            200..=399,
            defaults.ok,
            "the kubelet treats only 200-399 as ready",
        ),
        degraded: code(
            "degraded",
            codes.degraded,
            200..=599,
            defaults.degraded,
            "an HTTP status",
        ),
        down: code(
            "down",
            codes.down,
            400..=599,
            defaults.down,
            "the kubelet must see a failure",
        ),
    }
}

fn dependency(
    dep: &Dependency,
    defaults: Schedule,
    path: &str,
    urls: &dyn UrlResolver,
    errors: &mut Errors,
) -> Option<DependencySpec> {
    let before = errors.0.len();
    if dep.name.is_empty() || dep.name.len() > 63 || !is_dns_label(&dep.name) {
        errors.push(
            format!("{path}.name"),
            format!("{:?} must be a DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", dep.name),
        );
    }
    let schedule = schedule(defaults, &Overrides::of_dependency(dep), path, errors);

    for kind in DependencyType::ALL {
        let present = dep.block_of(kind).is_some();
        if kind == dep.kind && !present {
            errors.push(
                format!("{path}.{}", kind.as_str()),
                format!("required for type {}", dep.kind.as_str()),
            );
        } else if kind != dep.kind && present {
            errors.push(
                format!("{path}.{}", kind.as_str()),
                format!("not allowed for type {}", dep.kind.as_str()),
            );
        }
    }

    let target = dep.block_of(dep.kind).and_then(|block| {
        let block_path = format!("{path}.{}", dep.kind.as_str());
        let url = block
            .url()
            .and_then(|field| url(field, &block_path, urls, errors));
        let ca = block
            .ca_from()
            .and_then(|field| ca_bundle(field, &block_path, urls, errors));
        let resolved = Resolved {
            url,
            ca,
            values: urls,
        };
        block.target(resolved, &block_path, errors)
    });
    if errors.0.len() > before {
        return None;
    }
    Some(DependencySpec {
        name: dep.name.clone(),
        critical: dep.critical.unwrap_or(true),
        schedule,
        target: target?,
    })
}

fn url(
    field: UrlField,
    block: &str,
    urls: &dyn UrlResolver,
    errors: &mut Errors,
) -> Option<SecretUrl> {
    let UrlField {
        inline,
        from,
        schemes,
    } = field;
    let (raw, path) = match (inline, from) {
        (Some(_), Some(_)) => {
            errors.push(block, "set exactly one of url or urlFrom, not both");
            return None;
        }
        (None, None) => {
            errors.push(format!("{block}.url"), "required (or set urlFrom)");
            return None;
        }
        (Some(url), None) => (url.to_string(), format!("{block}.url")),
        (None, Some(from)) => {
            let path = match (&from.env, &from.secret_key_ref) {
                (Some(_), None) => format!("{block}.urlFrom.env"),
                (None, Some(_)) => format!("{block}.urlFrom.secretKeyRef"),
                _ => {
                    errors.push(
                        format!("{block}.urlFrom"),
                        "set exactly one of env or secretKeyRef",
                    );
                    return None;
                }
            };
            match urls.resolve(from) {
                Ok(url) => (url, path),
                Err(e) => {
                    errors.push(path, e);
                    return None;
                }
            }
        }
    };
    match url::Url::parse(&raw) {
        Ok(parsed) if schemes.contains(&parsed.scheme()) => Some(SecretUrl::new(raw)),
        Ok(parsed) => {
            errors.push(
                path,
                format!(
                    "scheme {:?} is not one of {}",
                    parsed.scheme(),
                    schemes.join(", ")
                ),
            );
            None
        }
        Err(e) => {
            errors.push(
                path,
                // Unparseable text cannot be redacted reliably (`host=… password=…`, a password
                // in the query), so none of it is quoted: the path says where it is.
                format!("not a valid URL: {e}"),
            );
            None
        }
    }
}

fn ca_bundle(
    field: CaField,
    block: &str,
    urls: &dyn UrlResolver,
    errors: &mut Errors,
) -> Option<CaBundle> {
    let CaField { from, at } = field;
    let path = match (&from.secret_key_ref, &from.file) {
        (Some(_), None) => format!("{block}.{at}.secretKeyRef"),
        (None, Some(_)) => format!("{block}.{at}.file"),
        _ => {
            errors.push(
                format!("{block}.{at}"),
                "set exactly one of file or secretKeyRef",
            );
            return None;
        }
    };
    let parsed = urls
        .resolve_ca(from)
        .and_then(|pem| CaBundle::from_pem(&pem));
    parsed.map_err(|e| errors.push(path, e)).ok()
}

/// `host:port` with a port in 1-65535, for kinds that take an address.
pub fn check_address(address: &str, path: &str, errors: &mut Errors) {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        errors.push(
            path,
            format!("{address:?} must be host:port with a port in 1-65535"),
        );
    }
}

/// Parses `200-299,301` into inclusive ranges.
pub fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let code = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(format!(
                "{s:?} in {text:?} is not an HTTP status code (100-599)"
            )),
        }
    };
    text.split(',')
        .map(|part| {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => (code(part)?, code(part)?),
            };
            if lo > hi {
                return Err(format!("range {part:?} in {text:?} is reversed"));
            }
            Ok((lo, hi))
        })
        .collect()
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    inner_ok
        && bytes.first().is_some_and(|b| *b != b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
}

mod maintenance;
#[cfg(test)]
mod tests;
