//! The one place the tests write HealthPolicy YAML: a document and its dependency entries, in
//! the flow style users write. Every helper returns text, so a test can still edit it.
#![allow(dead_code)]

/// Short intervals, so tests see transitions in well under a second.
pub const FAST: &str = "interval: 300ms, timeout: 500ms";

/// A whole policy document named `name`, with `defaults` (flow-mapping body) and `dependencies`
/// (entries from the helpers below).
pub fn document(name: &str, defaults: &str, dependencies: &str) -> String {
    format!(
        "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: {name}}}\nspec:\n  \
         defaults: {{{defaults}}}\n  dependencies:\n{dependencies}"
    )
}

/// [`document`] with [`FAST`] defaults.
pub fn fast(name: &str, dependencies: &str) -> String {
    document(name, FAST, dependencies)
}

/// [`document`] in a namespace (standalone mode uses it for metric labels).
pub fn document_in(namespace: &str, name: &str, defaults: &str, dependencies: &str) -> String {
    document(name, defaults, dependencies).replace(
        &format!("metadata: {{name: {name}}}"),
        &format!("metadata: {{name: {name}, namespace: {namespace}}}"),
    )
}

/// A URL source written inline.
pub fn inline(url: &str) -> String {
    format!("{{url: \"{url}\"}}")
}

/// A URL source read from an environment variable of healthgate.
pub fn env(variable: &str) -> String {
    format!("{{urlFrom: {{env: {variable}}}}}")
}

/// A URL source read from a Secret key.
pub fn secret(name: &str, key: &str) -> String {
    format!("{{urlFrom: {{secretKeyRef: {{name: {name}, key: {key}}}}}}}")
}

/// Any dependency entry: `fields` is the rest of its flow mapping.
pub fn dep(name: &str, fields: &str) -> String {
    format!("    - {{name: {name}, {fields}}}\n")
}

pub fn redis(name: &str, source: &str) -> String {
    dep(name, &format!("type: redis, redis: {source}"))
}

pub fn postgres(name: &str, source: &str) -> String {
    dep(name, &format!("type: postgres, postgres: {source}"))
}

pub fn tcp(name: &str, address: &str, critical: bool) -> String {
    dep(
        name,
        &format!("type: tcp, critical: {critical}, tcp: {{address: '{address}'}}"),
    )
}
