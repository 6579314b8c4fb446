//! `type: http`: one request (GET by default) whose status, and optionally body and headers,
//! are checked.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::client_tls::{ClientTls, is_tls_error};
use super::guard::{Blocked, TargetGuard};
use super::http_assert::{self, Condition, Pattern};
use super::http_request::RequestSpec;
use super::{CaField, CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::{HttpCheck, UrlFrom};
use crate::health::Reason;
use crate::policy::validate::{Errors, parse_status_ranges};
use crate::secret::SecretUrl;

/// Enough of a health page to find a marker in, small enough that a huge body costs nothing.
const MAX_BODY_BYTES: usize = 64 * 1024;
const SCHEMES: &[&str] = &["http", "https"];

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpTarget {
    /// An HTTP URL may carry basic-auth credentials or a token in its query.
    pub url: SecretUrl,
    pub expect_status: Vec<(u16, u16)>,
    pub body_contains: Option<String>,
    pub body_matches: Option<Pattern>,
    pub conditions: Vec<Condition>,
    pub request: RequestSpec,
    /// Set when the check has `tls` settings; the probe then has a client of its own.
    pub tls: Option<ClientTls>,
}

impl HttpTarget {
    pub fn accepts(&self, status: u16) -> bool {
        self.expect_status
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl CheckBlock for HttpCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        Some(UrlField {
            inline: Some(&self.url),
            from: None,
            schemes: SCHEMES,
        })
    }

    fn ca_from(&self) -> Option<CaField<'_>> {
        let from = self.tls.as_ref()?.ca_from.as_ref()?;
        Some(CaField {
            from,
            at: "tls.caFrom",
        })
    }

    fn values_from(&self) -> Vec<&UrlFrom> {
        self.headers
            .iter()
            .filter_map(|h| h.value_from.as_ref())
            .collect()
    }

    fn target(&self, resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target> {
        let request = RequestSpec::validate(self, resolved.values, block, errors);
        let body_matches = self.body_matches.as_deref().and_then(|pattern| {
            Pattern::new(pattern)
                .map_err(|e| errors.push(format!("{block}.bodyMatches"), e))
                .ok()
        });
        let conditions = self
            .assertions
            .iter()
            .enumerate()
            .filter_map(|(i, a)| Condition::validate(a, &format!("{block}.assert[{i}]"), errors))
            .collect();
        let expect_status =
            match parse_status_ranges(self.expect_status.as_deref().unwrap_or("200-299")) {
                Ok(ranges) => ranges,
                Err(e) => {
                    errors.push(format!("{block}.expectStatus"), e);
                    Vec::new()
                }
            };
        let tls = self.tls.as_ref().map(|settings| {
            let path = format!("{block}.tls");
            if !self
                .url
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("https:")
            {
                errors.push(&path, "only an https URL uses TLS settings");
            }
            ClientTls::validate(settings, resolved.ca, &path, errors)
        });
        Some(Target::Http(HttpTarget {
            url: resolved.url?,
            expect_status,
            body_contains: self.body_contains.clone(),
            body_matches,
            conditions,
            request,
            tls,
        }))
    }
}

pub struct HttpProbe {
    client: Result<reqwest::Client, String>,
    target: HttpTarget,
    guard: Option<Arc<TargetGuard>>,
}

impl HttpProbe {
    pub fn new(client: reqwest::Client, target: HttpTarget) -> Self {
        Self {
            client: Ok(client),
            target,
            guard: None,
        }
    }

    /// A probe with its own client: for the check's `tls` settings, and with a guard, a
    /// resolver that asks the guard about every address. Its own, because the resolver is told
    /// only the host name and the guard's API-server rule needs the port too. No proxy when
    /// guarded: through one, the guard would judge the proxy's address, not the target's.
    /// Redirects are never followed (see [`super::connections`]), so the URL's own host is the
    /// only one connected to.
    pub fn own(guard: Option<Arc<TargetGuard>>, target: HttpTarget) -> Self {
        let mut builder = super::connections::http_builder();
        if let Some(guard) = &guard {
            let port = reqwest::Url::parse(target.url.expose())
                .ok()
                .and_then(|u| u.port_or_known_default())
                .unwrap_or(80);
            let resolver = GuardedResolver {
                guard: guard.clone(),
                port,
            };
            builder = builder.no_proxy().dns_resolver(Arc::new(resolver));
        }
        let client = match &target.tls {
            Some(tls) => tls
                .config(&[b"http/1.1"])
                .map(|config| builder.use_preconfigured_tls(config)),
            None => Ok(builder),
        }
        .and_then(|builder| {
            builder
                .build()
                .map_err(|e| format!("building the HTTP client: {e}"))
        });
        Self {
            client,
            target,
            guard,
        }
    }

    /// reqwest resolves names through [`GuardedResolver`] but connects to an IP-literal host
    /// without asking any resolver, so those are judged here.
    fn check_literal(&self) -> Result<(), Blocked> {
        let (Some(guard), Ok(url)) = (&self.guard, reqwest::Url::parse(self.target.url.expose()))
        else {
            return Ok(());
        };
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        guard.check(SocketAddr::new(
            ip,
            url.port_or_known_default().unwrap_or(80),
        ))
    }

    pub async fn run(&self) -> Observation {
        let url = &self.target.url;
        if let Err(blocked) = self.check_literal() {
            return Observation::blocked(&blocked);
        }
        let client = match &self.client {
            Ok(client) => client,
            Err(e) => return Observation::down(Reason::Config, e.clone()),
        };
        let request = self.target.request.build(client, url.expose());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                if let Some(blocked) = Blocked::find(&e) {
                    return Observation::blocked(blocked);
                }
                let reason = if e.is_timeout() {
                    Reason::Timeout
                } else if is_tls_error(&e) {
                    Reason::Tls
                } else {
                    Reason::Connect
                };
                return Observation::down(reason, url.scrub(&error_chain(&e.without_url())));
            }
        };
        let status = response.status().as_u16();
        if !self.target.accepts(status) {
            return Observation::down(Reason::Status, format!("unexpected status {status}"));
        }
        let target = &self.target;
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect();
        let needs_body = target.body_contains.is_some()
            || http_assert::needs_body(&target.conditions, target.body_matches.as_ref());
        let mut body = Vec::new();
        while needs_body && body.len() < MAX_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    return Observation::down(
                        Reason::Error,
                        url.scrub(&e.without_url().to_string()),
                    );
                }
            }
        }
        body.truncate(MAX_BODY_BYTES);
        let body = String::from_utf8_lossy(&body);
        if let Some(needle) = &target.body_contains
            && !body.contains(needle.as_str())
        {
            return Observation::down(
                Reason::Body,
                format!("status {status}, body does not contain {needle:?}"),
            );
        }
        let failed = http_assert::failures(
            &target.conditions,
            target.body_matches.as_ref(),
            &headers,
            &body,
        );
        if !failed.is_empty() {
            return Observation::down(
                Reason::Assertion,
                format!("status {status}, {}", failed.join("; ")),
            );
        }
        Observation::ok(format!("status {status}"))
    }
}

/// Resolves with the system resolver, then lets the connection go ahead only if the guard
/// passes every address; reqwest then connects to exactly these addresses.
struct GuardedResolver {
    guard: Arc<TargetGuard>,
    port: u16,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let port = self.port;
        Box::pin(async move {
            let addresses = super::guard::resolve(&guard, name.as_str(), port)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> {
                    match e {
                        super::guard::ResolveError::Blocked(b) => Box::new(b),
                        other => other.to_string().into(),
                    }
                })?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// "error sending request" alone says nothing; its sources say "connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
