//! Standalone mode: policies come from a YAML file (the same documents `kubectl apply` takes, one
//! or several separated by `---`) or a directory of such files, and URLs from environment
//! variables. They are re-read as one set when anything changes; a broken edit is reported and
//! the last good set keeps running.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::api::{CaFrom, HealthPolicy, UrlFrom};
use crate::engine::{Engine, PolicyKey};
use crate::policy::{Policy, UrlResolver, validate};

const API_VERSION: &str = "healthgate.dev/v1alpha1";
/// Polling rather than inotify: it also sees ConfigMap volume updates, which swap a symlink.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);
/// A policy of the maximum 64 dependencies is a few tens of KiB; a file far larger is not a
/// policy, and is rejected from its size alone, before it is read.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// Parser budget: generous for any real policy, small enough that an alias bomb or a deeply
/// nested document is rejected in microseconds instead of being expanded.
const MAX_YAML_ALIASES: usize = 100;
const MAX_YAML_DEPTH: usize = 32;
const MAX_YAML_NODES: usize = 5_000;
const MAX_YAML_EVENTS: usize = 10_000;
/// Policies in one file; a file of more is not hand-written, and a directory scales further.
const MAX_DOCUMENTS: usize = 100;
/// Files in a policy directory: with [`MAX_POLICY_BYTES`] each, what one reload may read.
const MAX_FILES: usize = 2_000;

/// Policies as loaded, in file order.
pub type PolicySet = Vec<(PolicyKey, Policy)>;

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

    fn resolve_ca(&self, from: &CaFrom) -> Result<String, String> {
        let Some(file) = &from.file else {
            return Err("secretKeyRef is resolved only in Kubernetes mode; \
                 in standalone mode use file"
                .into());
        };
        // A CA bundle is a few KiB; the policy file's limit is plenty and stops a wrong path
        // (a disk image, /dev/zero) from being read whole.
        // A FIFO or a device would block or never end; a CA bundle is a regular file.
        let metadata = std::fs::metadata(file).map_err(|e| format!("reading {file}: {e}"))?;
        if !metadata.is_file() {
            return Err(format!("{file} is not a regular file"));
        }
        let mut text = String::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_POLICY_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| format!("reading {file}: {e}"))?;
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(format!("{file} is larger than {MAX_POLICY_BYTES} bytes"));
        }
        Ok(text)
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

/// Every policy under `path`: a file of one or more documents, or a directory of `*.yaml` and
/// `*.yml` files (not recursive; names starting with `.` are skipped, as are ConfigMap volumes'
/// `..data` links). Problems anywhere fail the whole set, each named with its file in a directory.
pub fn load(path: &Path) -> Result<PolicySet, PolicyFileError> {
    let fail = |problems: Vec<String>| PolicyFileError {
        path: path.to_path_buf(),
        problems,
    };
    let files = policy_files(path).map_err(|problem| fail(vec![problem]))?;
    let in_directory = path.is_dir();
    let mut policies: Vec<(PolicyKey, Policy, String)> = Vec::new();
    let mut problems = Vec::new();
    for file in &files {
        let label = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = |p: String| {
            if in_directory {
                format!("{label}: {p}")
            } else {
                p
            }
        };
        let loaded = read_limited(file).and_then(|bytes| {
            String::from_utf8(bytes).map_err(|e| format!("cannot read: not UTF-8: {e}"))
        });
        match loaded {
            Err(problem) => problems.push(prefix(problem)),
            Ok(text) => match parse_all(&text, file) {
                Ok(found) => policies.extend(found.into_iter().map(|(k, p)| (k, p, label.clone()))),
                Err(found) => problems.extend(found.into_iter().map(prefix)),
            },
        }
    }
    problems.extend(set_problems(&policies, in_directory));
    if problems.is_empty() {
        Ok(policies.into_iter().map(|(k, p, _)| (k, p)).collect())
    } else {
        Err(fail(problems))
    }
}

/// The files a policy path stands for, sorted.
fn policy_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read the directory: {e}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    if files.is_empty() {
        return Err("no *.yaml or *.yml policy files in the directory".into());
    }
    if files.len() > MAX_FILES {
        return Err(format!(
            "{} policy files, at most {MAX_FILES} are read",
            files.len()
        ));
    }
    files.sort();
    Ok(files)
}

/// What only the whole set can break: two documents naming the same policy, and cycles of
/// `type: policy` dependencies.
fn set_problems(policies: &[(PolicyKey, Policy, String)], in_directory: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut first: std::collections::BTreeMap<&PolicyKey, &str> = Default::default();
    for (key, _, file) in policies {
        if let Some(earlier) = first.insert(key, file) {
            first.insert(key, earlier);
            problems.push(if in_directory {
                format!("{file}: policy {key} is already defined in {earlier}")
            } else {
                format!("policy {key} is defined twice")
            });
        }
    }
    let by_key: std::collections::BTreeMap<&PolicyKey, &Policy> =
        policies.iter().map(|(k, p, _)| (k, p)).collect();
    for (key, policy, file) in policies {
        if let Some(error) = crate::engine::cycle_error(key, policy, |k| by_key.get(k).copied()) {
            problems.push(if in_directory {
                format!("{file}: {error}")
            } else {
                error.to_string()
            });
        }
    }
    problems
}

/// Reads the file unless it is over [`MAX_POLICY_BYTES`]; the size is checked before reading
/// and the read is capped too, in case the file grows in between.
fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if size > MAX_POLICY_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// A budget breach gets one line naming the limits; the parser's source excerpt of an alias
/// bomb shows the aliases, not why they are refused.
fn yaml_error(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    match text.lines().next() {
        Some(first) if first.contains("budget breached") => format!(
            "not valid YAML: over the parser's limits (at most {MAX_YAML_ALIASES} aliases, \
             {MAX_YAML_NODES} nodes with aliases expanded, nesting depth {MAX_YAML_DEPTH}): {first}"
        ),
        // The parser's source excerpt and message can quote the offending line, a password
        // included; the position says where to look.
        _ => {
            let message = error.without_snippet().to_string();
            let first = message.lines().next().unwrap_or_default();
            let first = crate::secret::without_rejected_value(first);
            match error.location() {
                Some(at) => format!(
                    "not valid YAML at line {} column {}: {}",
                    at.line(),
                    at.column(),
                    crate::secret::redact(&first)
                ),
                None => format!("not valid YAML: {}", crate::secret::redact(&first)),
            }
        }
    }
}

fn too_large(size: u64) -> String {
    format!("file is {size} bytes, over the limit of {MAX_POLICY_BYTES} bytes for a policy")
}

/// Parses and validates a policy document; `path` names the policy when metadata.name is absent.
/// The one policy in `text` (tests and callers that take exactly one).
pub fn parse(text: &str, path: &Path) -> Result<(PolicyKey, Policy), Vec<String>> {
    let mut all = parse_all(text, path)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        n => Err(vec![format!("{n} policies where one was expected")]),
    }
}

/// Every policy in one file: one YAML document, or several separated by `---`. The parser's
/// node budget is ten policies' worth for the whole file (a real policy is a few hundred
/// nodes), so an alias bomb still stops within a few thousand expansions' time.
pub fn parse_all(text: &str, path: &Path) -> Result<PolicySet, Vec<String>> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_aliases: MAX_YAML_ALIASES,
            max_depth: MAX_YAML_DEPTH,
            max_nodes: MAX_YAML_NODES * 10,
            max_events: MAX_YAML_EVENTS * 10,
            max_recorded_anchor_events: MAX_YAML_EVENTS,
            max_documents: MAX_DOCUMENTS,
        },
    };
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| vec![yaml_error(&e)])?;
    let documents: Vec<serde_json::Value> =
        documents.into_iter().filter(|d| !d.is_null()).collect();
    if documents.is_empty() {
        return Err(vec!["no policy: the file has no YAML document".into()]);
    }
    let several = documents.len() > 1;
    let mut policies = Vec::new();
    let mut problems = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        match parse_document(document, path) {
            Ok(policy) => policies.push(policy),
            Err(found) if several => problems.extend(
                found
                    .into_iter()
                    .map(|p| format!("document {}: {p}", index + 1)),
            ),
            Err(found) => problems.extend(found),
        }
    }
    if problems.is_empty() {
        Ok(policies)
    } else {
        Err(problems)
    }
}

fn parse_document(
    document: serde_json::Value,
    path: &Path,
) -> Result<(PolicyKey, Policy), Vec<String>> {
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
            problems.push(format!(
                "{}: {}",
                e.path(),
                crate::secret::without_rejected_value(&e.inner().to_string())
            ));
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

/// What a poll looks at: each policy file's size, modification time and inode (a ConfigMap
/// volume swaps a symlink, which changes the inode). Reading every file each second would cost
/// a directory of many policies more than it is worth.
#[derive(Clone, Debug, PartialEq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

/// What the last poll saw, so an unchanged set is neither parsed nor reported twice: the files'
/// stamps, or why they could not be listed.
type Seen = Option<Result<Vec<(PathBuf, Stamp)>, String>>;

fn stamps(path: &Path) -> Result<Vec<(PathBuf, Stamp)>, String> {
    use std::os::unix::fs::MetadataExt;
    policy_files(path)?
        .into_iter()
        .map(|file| {
            let metadata = std::fs::metadata(&file).map_err(|e| format!("cannot read: {e}"))?;
            let stamp = Stamp {
                len: metadata.len(),
                modified: metadata.modified().ok(),
                inode: metadata.ino(),
            };
            Ok((file, stamp))
        })
        .collect()
}

/// One poll, run on a blocking thread: reading and parsing a large or hostile file must not
/// occupy a runtime worker that answers probes.
enum Poll {
    Unchanged,
    Unreadable(String),
    Changed(Result<PolicySet, PolicyFileError>),
}

fn poll(path: &Path, last: &mut Seen) -> Poll {
    let now = stamps(path);
    if last.as_ref() == Some(&now) {
        return Poll::Unchanged;
    }
    *last = Some(now.clone());
    match now {
        Err(e) => Poll::Unreadable(e),
        Ok(_) => Poll::Changed(load(path)),
    }
}

/// Re-applies the set whenever a file changes, appears or goes, until cancelled.
pub async fn watch(
    path: PathBuf,
    engine: Engine,
    mut keys: Vec<PolicyKey>,
    cancel: CancellationToken,
) {
    let mut last: Seen = Some(stamps(&path));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_POLL) => {}
        }
        let polled = tokio::task::spawn_blocking({
            let path = path.clone();
            move || {
                let result = poll(&path, &mut last);
                (result, last)
            }
        })
        .await;
        let result = match polled {
            Ok((result, seen)) => {
                last = seen;
                result
            }
            Err(e) => {
                // `last` moved into the task that failed; re-reading everything next time is safe.
                error!(path = %path.display(), error = %e, "policy reload failed");
                last = None;
                continue;
            }
        };
        match result {
            Poll::Unchanged => {}
            Poll::Unreadable(e) => {
                error!(path = %path.display(), error = %e, "policy file unreadable; keeping the last good policy");
            }
            Poll::Changed(Ok(policies)) => {
                let new_keys: Vec<PolicyKey> = policies.iter().map(|(k, _)| k.clone()).collect();
                for gone in keys.iter().filter(|k| !new_keys.contains(k)) {
                    engine.remove(gone);
                    info!(path = %path.display(), policy = %gone, "policy removed");
                }
                for (key, policy) in policies {
                    let changes = engine.apply(&key, policy);
                    info!(path = %path.display(), policy = %key, started = ?changes.started, restarted = ?changes.restarted, stopped = ?changes.stopped, "policy file reloaded");
                }
                keys = new_keys;
            }
            Poll::Changed(Err(e)) => {
                error!(path = %path.display(), problems = ?e.problems, "policy file invalid; keeping the last good policy");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_must_be_regular_files() {
        let from = |file: &str| CaFrom {
            secret_key_ref: None,
            file: Some(file.into()),
        };
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let pem = pem.to_str().unwrap();
        assert_eq!(
            EnvUrls.resolve_ca(&from(pem)).unwrap(),
            "-----BEGIN CERTIFICATE-----\n"
        );
        let cases = [
            ("/dev/zero", "/dev/zero is not a regular file".to_string()),
            (
                dir.path().to_str().unwrap(),
                format!("{} is not a regular file", dir.path().display()),
            ),
        ];
        for (file, message) in cases {
            assert_eq!(EnvUrls.resolve_ca(&from(file)), Err(message));
        }
        assert!(
            EnvUrls
                .resolve_ca(&from("/nope.pem"))
                .unwrap_err()
                .starts_with("reading /nope.pem: ")
        );
    }

    const POLICY: &str = "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {name: p}\nspec:\n  dependencies: [{name: a, type: tcp, tcp: {address: 'h:1'}}]\n";

    fn problems(text: &str) -> Vec<String> {
        parse(text, Path::new("p.yaml")).err().unwrap_or_default()
    }

    #[test]
    fn an_ordinary_policy_with_a_few_aliases_parses() {
        let text = "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {name: p}\nspec:\n  defaults: &d {interval: 1s}\n  dependencies:\n    - {name: a, type: tcp, tcp: &t {address: 'h:1'}}\n    - {name: b, type: tcp, tcp: *t}\n";
        assert!(problems(POLICY).is_empty());
        assert!(problems(text).is_empty(), "{:?}", problems(text));
    }

    #[test]
    fn an_alias_bomb_is_rejected_by_the_parser_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let refs = vec![format!("*a{}", level - 1); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        text.push_str(POLICY);
        let problems = problems(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("not valid YAML"), "{problems:?}");
        assert!(
            problems[0].contains("over the parser's limits"),
            "{problems:?}"
        );
        assert_eq!(problems[0].lines().count(), 1, "{problems:?}");
    }

    #[test]
    fn deep_nesting_is_rejected_by_the_parser_budget() {
        let text = format!("{POLICY}deep: {}{}\n", "[".repeat(200), "]".repeat(200));
        let problems = problems(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("not valid YAML"), "{problems:?}");
    }

    #[test]
    fn a_file_over_the_size_limit_is_rejected_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_POLICY_BYTES + 1).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(
            e.problems,
            vec![format!(
                "file is {} bytes, over the limit of {MAX_POLICY_BYTES} bytes for a policy",
                MAX_POLICY_BYTES + 1
            )]
        );
        // The reload poll reports it once, then leaves the unchanged file alone.
        let mut last: Seen = None;
        assert!(matches!(poll(&path, &mut last), Poll::Changed(Err(_))));
        assert!(matches!(poll(&path, &mut last), Poll::Unchanged));
        std::fs::write(&path, POLICY).unwrap();
        assert!(matches!(poll(&path, &mut last), Poll::Changed(Ok(_))));
        assert!(matches!(poll(&path, &mut last), Poll::Unchanged));
    }
}
