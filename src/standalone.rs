//! Standalone mode: the policy comes from a YAML file (the same document `kubectl apply` takes)
//! and URLs from environment variables. The file is re-read when it changes; a broken edit is
//! reported and the last good policy keeps running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::api::{HealthPolicy, UrlFrom};
use crate::engine::{Engine, PolicyKey};
use crate::policy::{Policy, UrlResolver, validate};

const API_VERSION: &str = "healthgate.dev/v1alpha1";
/// Polling rather than inotify: it also sees ConfigMap volume updates, which swap a symlink.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Resolves `urlFrom.env` from the process environment; Secrets need Kubernetes mode.
pub struct EnvUrls;

impl UrlResolver for EnvUrls {
    fn resolve(&self, from: &UrlFrom) -> Result<String, String> {
        match (&from.env, &from.secret_key_ref) {
            (Some(name), _) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            (None, Some(_)) => Err("secretKeyRef is resolved only in Kubernetes mode; \
                 in standalone mode use url or urlFrom.env"
                .into()),
            (None, None) => Err("set env or secretKeyRef".into()),
        }
    }
}

/// A policy file that could not be used: every problem found, one per line.
#[derive(Debug)]
pub struct PolicyFileError {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl std::fmt::Display for PolicyFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid policy file {}:", self.path.display())?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyFileError {}

pub fn load(path: &Path) -> Result<(PolicyKey, Policy), PolicyFileError> {
    let fail = |problems: Vec<String>| PolicyFileError {
        path: path.to_path_buf(),
        problems,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
    parse(&text, path).map_err(fail)
}

/// Parses and validates a policy document; `path` names the policy when metadata.name is absent.
pub fn parse(text: &str, path: &Path) -> Result<(PolicyKey, Policy), Vec<String>> {
    let document: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| vec![format!("not valid YAML: {e}")])?;
    let mut problems = Vec::new();
    let api_version = document.get("apiVersion").and_then(|v| v.as_str());
    if api_version != Some(API_VERSION) {
        problems.push(format!(
            "apiVersion: expected {API_VERSION:?}, found {api_version:?}"
        ));
    }
    let kind = document.get("kind").and_then(|v| v.as_str());
    if kind != Some("HealthPolicy") {
        problems.push(format!("kind: expected \"HealthPolicy\", found {kind:?}"));
    }
    let mut unknown = Vec::new();
    let parsed: Result<HealthPolicy, _> = serde_path_to_error::deserialize(
        serde_ignored::Deserializer::new(document, &mut |field: serde_ignored::Path| {
            unknown.push(field_path(&field))
        }),
    );
    // The generated resource type checks apiVersion and kind itself (above), not through serde.
    for field in unknown
        .into_iter()
        .filter(|f| f != "apiVersion" && f != "kind")
    {
        problems.push(format!("{field}: unknown field"));
    }
    let resource = match parsed {
        Ok(resource) => resource,
        Err(e) => {
            problems.push(format!("{}: {}", e.path(), e.inner()));
            return Err(problems);
        }
    };
    let policy = match validate(&resource.spec, &EnvUrls) {
        Ok(policy) if problems.is_empty() => policy,
        Ok(_) => return Err(problems),
        Err(errors) => {
            problems.extend(errors.iter().map(ToString::to_string));
            return Err(problems);
        }
    };
    let name = resource
        .metadata
        .name
        .clone()
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "policy".into());
    let key = PolicyKey::new(
        resource.metadata.namespace.clone().unwrap_or_default(),
        name,
    );
    Ok((key, policy))
}

/// Renders an ignored-field path the way validation errors name fields: `a.b[1].c`.
fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            prefix if prefix.is_empty() => key.clone(),
            prefix => format!("{prefix}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// Re-applies the file whenever its content changes, until cancelled.
pub async fn watch(path: PathBuf, engine: Engine, mut key: PolicyKey, cancel: CancellationToken) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_POLL) => {}
        }
        let current = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                if last.is_some() {
                    error!(path = %path.display(), error = %e, "policy file unreadable; keeping the last good policy");
                    last = None;
                }
                continue;
            }
        };
        if last.as_ref() == Some(&current) {
            continue;
        }
        last = Some(current);
        match load(&path) {
            Ok((new_key, policy)) => {
                if new_key != key {
                    engine.remove(&key);
                    key = new_key;
                }
                let changes = engine.apply(&key, policy);
                info!(path = %path.display(), policy = %key, started = ?changes.started, restarted = ?changes.restarted, stopped = ?changes.stopped, "policy file reloaded");
            }
            Err(e) => {
                error!(path = %path.display(), problems = ?e.problems, "policy file invalid; keeping the last good policy");
            }
        }
    }
}
