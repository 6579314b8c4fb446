//! Who sees what (`--details`): every caller gets the probe's status code and each check's
//! status; only an authorized caller also gets the details a target put into them (errors,
//! latencies, depths). Kubernetes mode authorizes a bearer token the way kube-rbac-proxy does —
//! TokenReview for who it is, SubjectAccessReview for `get` on `healthpolicies/status` — and
//! remembers each answer briefly, so a probe storm is not an API storm. A token file does the
//! same without an API server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::controller::Scope;
use crate::engine::{PolicyKey, View};

/// `--details`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Details {
    /// Everyone gets status only.
    Never,
    /// Status for everyone; details for a caller whose bearer token is authorized.
    Authorized,
    /// Everyone gets details (a process nobody else can reach, or a trusted network).
    Always,
}

/// What a caller asks to see.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `/ready` (everything served) or `/ready/{namespace}/{name}`.
    Ready(Option<PolicyKey>),
    Metrics,
}

/// A protected route refused: 401 without a bearer token, 403 with one that may not read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoToken,
    NotAllowed,
}

/// Answers cached this long: a revoked permission or token is honoured within it.
const REMEMBER: Duration = Duration::from_secs(10);
/// A review the API server did not answer is retried sooner.
const REMEMBER_FAILURE: Duration = Duration::from_secs(2);
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct tokens remembered at most; beyond that expired answers are dropped first, then all.
const MAX_REMEMBERED: usize = 1024;

#[derive(Clone)]
pub struct Exposure {
    details: Details,
    /// `/metrics` needs an authorized caller too (`--protect-metrics`).
    protect_metrics: bool,
    authorizer: Option<Arc<Authorizer>>,
}

/// Shows the settings, never a token or digest.
impl std::fmt::Debug for Exposure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposure")
            .field("details", &self.details)
            .field("protect_metrics", &self.protect_metrics)
            .field(
                "token_file",
                &self.authorizer.as_ref().is_some_and(|a| a.token.is_some()),
            )
            .field(
                "kubernetes",
                &self
                    .authorizer
                    .as_ref()
                    .is_some_and(|a| a.kubernetes.is_some()),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--details authorized needs a way to authorize callers: --details-token-file FILE (or Kubernetes mode)"
    )]
    NoAuthorizer,
    #[error(
        "--protect-metrics needs a way to authorize callers: --details-token-file FILE (or Kubernetes mode)"
    )]
    NoMetricsAuthorizer,
    #[error("--details-token-file {path}: {problem}")]
    TokenFile { path: String, problem: String },
}

impl Exposure {
    /// Everyone sees everything: standalone's default, and the in-process tests'.
    pub fn always() -> Self {
        Self {
            details: Details::Always,
            protect_metrics: false,
            authorizer: None,
        }
    }

    pub fn new(
        details: Details,
        protect_metrics: bool,
        token_file: Option<&Path>,
        kubernetes: Option<(kube::Client, Scope)>,
    ) -> Result<Self, Error> {
        let token = token_file.map(read_token).transpose()?;
        let authorizer = match (token, kubernetes) {
            (None, None) => None,
            (token, kubernetes) => Some(Arc::new(Authorizer {
                token,
                kubernetes: kubernetes.map(|(client, scope)| Reviewer {
                    client,
                    scope,
                    remembered: Mutex::default(),
                }),
            })),
        };
        if authorizer.is_none() {
            if details == Details::Authorized {
                return Err(Error::NoAuthorizer);
            }
            if protect_metrics {
                return Err(Error::NoMetricsAuthorizer);
            }
        }
        Ok(Self {
            details,
            protect_metrics,
            authorizer,
        })
    }

    /// How much of `/ready` this caller sees. Only an `Authorization: Bearer` header costs a
    /// review; anonymous probes are answered at once.
    pub async fn ready_view(&self, authorization: Option<&str>, policy: Option<PolicyKey>) -> View {
        match self.details {
            Details::Always => View::Full,
            Details::Never => View::StatusOnly,
            Details::Authorized => {
                if self.allows(authorization, Resource::Ready(policy)).await {
                    View::Full
                } else {
                    View::StatusOnly
                }
            }
        }
    }

    /// Why `/metrics` may not be served to this caller, if it may not.
    pub async fn metrics_refusal(&self, authorization: Option<&str>) -> Option<Refusal> {
        if !self.protect_metrics {
            return None;
        }
        match authorization {
            None => Some(Refusal::NoToken),
            Some(_) if self.allows(authorization, Resource::Metrics).await => None,
            Some(_) => Some(Refusal::NotAllowed),
        }
    }

    async fn allows(&self, authorization: Option<&str>, resource: Resource) -> bool {
        let (Some(authorizer), Some(token)) = (&self.authorizer, authorization.and_then(bearer))
        else {
            return false;
        };
        // Boxed: a review is a Kubernetes API call, a future several kilobytes large, and
        // unboxed it would be built and moved on every probe request that never reaches it.
        Box::pin(authorizer.allows(token, resource)).await
    }
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn read_token(path: &Path) -> Result<[u8; 32], Error> {
    let problem = |problem: String| Error::TokenFile {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(problem("the file is empty".into()));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

struct Authorizer {
    /// SHA-256 of the token file's token: compared as digests, so in constant time.
    token: Option<[u8; 32]>,
    kubernetes: Option<Reviewer>,
}

impl Authorizer {
    async fn allows(&self, token: &str, resource: Resource) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(expected) = &self.token
            && digest
                .iter()
                .zip(expected)
                .fold(0, |diff, (a, b)| diff | (a ^ b))
                == 0
        {
            return true;
        }
        match &self.kubernetes {
            Some(reviewer) => reviewer.allows(token, digest, resource).await,
            None => false,
        }
    }
}

struct Reviewer {
    client: kube::Client,
    scope: Scope,
    /// By token digest and resource: concurrent callers with one token share one review.
    remembered: Mutex<HashMap<ReviewKey, Arc<Remembered>>>,
}

/// A token's SHA-256 digest and what it asked for.
type ReviewKey = ([u8; 32], Resource);

#[derive(Default)]
struct Remembered {
    answer: OnceCell<(bool, Instant)>,
}

impl Remembered {
    fn expired(&self, now: Instant) -> bool {
        self.answer.get().is_some_and(|(_, until)| *until <= now)
    }
}

impl Reviewer {
    async fn allows(&self, token: &str, digest: [u8; 32], resource: Resource) -> bool {
        let now = Instant::now();
        let entry = {
            let mut remembered = self.remembered.lock().expect("review cache lock");
            if remembered.len() >= MAX_REMEMBERED {
                remembered.retain(|_, entry| !entry.expired(now));
                if remembered.len() >= MAX_REMEMBERED {
                    remembered.clear();
                }
            }
            let entry = remembered.entry((digest, resource.clone())).or_default();
            if entry.expired(now) {
                *entry = Arc::default();
            }
            entry.clone()
        };
        let (allowed, _) = *entry
            .answer
            .get_or_init(|| async {
                match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token, &resource)).await {
                    Ok(Ok(allowed)) => (allowed, Instant::now() + REMEMBER),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not review a caller's token; showing status only");
                        (false, Instant::now() + REMEMBER_FAILURE)
                    }
                    Err(_) => {
                        tracing::warn!(timeout_ms = REVIEW_TIMEOUT.as_millis() as u64, "token review timed out; showing status only");
                        (false, Instant::now() + REMEMBER_FAILURE)
                    }
                }
            })
            .await;
        allowed
    }

    async fn review(&self, token: &str, resource: &Resource) -> Result<bool, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let Some(status) = reviewed.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(false);
        };
        let Some(user) = status.user else {
            return Ok(false);
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                resource_attributes: self.resource_attributes(resource),
                non_resource_attributes: (*resource == Resource::Metrics).then(|| {
                    NonResourceAttributes {
                        path: Some("/metrics".into()),
                        verb: Some("get".into()),
                    }
                }),
            },
            ..Default::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(reviewed.status.is_some_and(|s| s.allowed))
    }

    /// `get` on `healthpolicies/status` of what the caller asks for: one policy, or for the
    /// aggregate `/ready` everything this instance serves (its policy, its namespace, or every
    /// namespace with `--all-namespaces`).
    fn resource_attributes(&self, resource: &Resource) -> Option<ResourceAttributes> {
        let (namespace, name) = match resource {
            Resource::Metrics => return None,
            Resource::Ready(Some(key)) => (Some(key.namespace.clone()), Some(key.name.clone())),
            Resource::Ready(None) => match &self.scope {
                Scope::Namespace(namespace) => (Some(namespace.clone()), None),
                Scope::AllNamespaces => (None, None),
                Scope::Policy { namespace, name } => (Some(namespace.clone()), Some(name.clone())),
            },
        };
        Some(ResourceAttributes {
            group: Some("healthgate.dev".into()),
            resource: Some("healthpolicies".into()),
            subresource: Some("status".into()),
            verb: Some("get".into()),
            namespace,
            name,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(token: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{token}\n")).unwrap();
        file
    }

    #[tokio::test]
    async fn a_token_file_authorizes_exactly_its_token() {
        let file = token_file("s3cret-token");
        let exposure = Exposure::new(Details::Authorized, true, Some(file.path()), None).unwrap();
        let view = |header: Option<&'static str>| exposure.ready_view(header, None);
        assert_eq!(view(Some("Bearer s3cret-token")).await, View::Full);
        assert_eq!(view(Some("bearer  s3cret-token ")).await, View::Full);
        assert_eq!(view(Some("Bearer s3cret-tokeN")).await, View::StatusOnly);
        assert_eq!(view(Some("Basic s3cret-token")).await, View::StatusOnly);
        assert_eq!(view(Some("Bearer ")).await, View::StatusOnly);
        assert_eq!(view(None).await, View::StatusOnly);
        assert_eq!(exposure.metrics_refusal(None).await, Some(Refusal::NoToken));
        assert_eq!(
            exposure.metrics_refusal(Some("Bearer x")).await,
            Some(Refusal::NotAllowed)
        );
        assert_eq!(
            exposure.metrics_refusal(Some("Bearer s3cret-token")).await,
            None
        );
    }

    #[tokio::test]
    async fn never_and_always_ignore_tokens() {
        let file = token_file("t");
        let never = Exposure::new(Details::Never, false, Some(file.path()), None).unwrap();
        assert_eq!(
            never.ready_view(Some("Bearer t"), None).await,
            View::StatusOnly
        );
        assert_eq!(
            never.metrics_refusal(None).await,
            None,
            "metrics open unless protected"
        );
        let always = Exposure::new(Details::Always, false, None, None).unwrap();
        assert_eq!(always.ready_view(None, None).await, View::Full);
    }

    #[test]
    fn authorized_without_a_way_to_authorize_is_refused_at_start() {
        let err = Exposure::new(Details::Authorized, false, None, None).unwrap_err();
        assert!(err.to_string().contains("--details-token-file"), "{err}");
        let err = Exposure::new(Details::Always, true, None, None).unwrap_err();
        assert!(err.to_string().contains("--protect-metrics"), "{err}");
        let empty = token_file("  ");
        let err = Exposure::new(Details::Authorized, false, Some(empty.path()), None).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
