//! Sharding: N Deployments split the HealthPolicies between them by one label, so that no policy
//! is served (checked, reconciled, written) by two of them and none is served by two leaders.
//!
//! The rule is a partition on the value of [`SHARD_LABEL`]: `--shard NAME` serves exactly the
//! policies labelled `healthgate.dev/shard=NAME`, and a deployment without `--shard` serves
//! exactly the policies *without* the label. Any set of deployments with distinct `--shard`
//! values (plus at most one without) therefore owns disjoint sets, whatever else `--selector`
//! narrows. A policy moved to another shard by relabelling leaves the old shard's watch (the API
//! server sends a delete when an object stops matching a label selector) and enters the new one.
//!
//! Each shard needs its own leader, or one shard's policies would have no status writer: the
//! Lease name defaults to `healthgate-shard-NAME`, and `--lease-name` cannot be combined with
//! `--shard` so that two shards cannot share one by a copied flag.

/// The label that assigns a HealthPolicy to a shard.
pub const SHARD_LABEL: &str = "healthgate.dev/shard";
/// The Lease of an unsharded deployment (and of `--policy-name` sidecars).
pub const DEFAULT_LEASE: &str = "healthgate";
/// A shard name becomes a label value and part of Lease names: a DNS label (RFC 1123) is valid
/// as both. 63 characters is the label-value limit.
const MAX_SHARD_LEN: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error(
        "--shard {0:?}: a shard name must be 1-63 lowercase letters, digits or '-', starting and \
         ending with a letter or digit"
    )]
    BadName(String),
    #[error(
        "--selector {0:?} names the label {SHARD_LABEL}; use --shard NAME to pick a shard (it \
         sets that part of the selector and the shard's own Lease)"
    )]
    SelectorNamesShardLabel(String),
}

/// What a deployment watches and which leader it elects, resolved from the flags.
#[derive(Debug, PartialEq, Eq)]
pub struct Sharding {
    /// The label selector on HealthPolicies (`None`: every policy in scope).
    pub selector: Option<String>,
    pub lease_name: String,
}

/// Resolves `--shard`, `--selector` and `--lease-name` (clap has already refused `--shard` with
/// `--lease-name` or `--policy-name`). `one_policy` is `--policy-name`: a sidecar names its
/// policy itself, so no shard requirement is added for it.
pub fn resolve(
    shard: Option<&str>,
    selector: Option<&str>,
    lease_name: Option<&str>,
    one_policy: bool,
) -> Result<Sharding, ShardError> {
    if let Some(shard) = shard {
        check_name(shard)?;
    }
    let selector = selector.map(str::trim).filter(|s| !s.is_empty());
    if let Some(selector) = selector
        && names_shard_label(selector)
    {
        return Err(ShardError::SelectorNamesShardLabel(selector.to_string()));
    }
    let requirement = match (shard, one_policy) {
        (Some(shard), _) => Some(format!("{SHARD_LABEL}={shard}")),
        (None, false) => Some(format!("!{SHARD_LABEL}")),
        (None, true) => None,
    };
    let selector = match (selector, requirement) {
        (Some(user), Some(shard)) => Some(format!("{user},{shard}")),
        (user, shard) => shard.or(user.map(String::from)),
    };
    let lease_name = match (lease_name, shard) {
        (Some(name), _) => name.to_string(),
        (None, Some(shard)) => format!("{DEFAULT_LEASE}-shard-{shard}"),
        (None, None) => DEFAULT_LEASE.to_string(),
    };
    Ok(Sharding {
        selector,
        lease_name,
    })
}

/// Annotation the leader puts on its Lease: what its deployment serves ([`serves`]), so that a
/// deployment electing on the same Lease while serving other policies can tell.
pub const SERVES_ANNOTATION: &str = "healthgate.dev/serves";

/// What a deployment serves, as one comparable line: scope and label selector.
pub fn serves(scope: &super::Scope, selector: Option<&str>) -> String {
    let scope = match scope {
        super::Scope::Namespace(ns) => format!("namespace {ns}"),
        super::Scope::AllNamespaces => "all namespaces".to_string(),
        super::Scope::Policy { namespace, name } => format!("policy {namespace}/{name}"),
    };
    match selector {
        Some(selector) => format!("{scope}, selector {selector}"),
        None => scope,
    }
}

/// What another holder of our Lease serves, if that differs from what we serve: then one leader
/// writes status for its own policies only, and ours get none. A holder from before this
/// annotation existed (none) is given the benefit of the doubt.
pub fn clash<'a>(
    holder: Option<&str>,
    their_serves: Option<&'a str>,
    identity: &str,
    ours: &str,
) -> Option<&'a str> {
    let other_holder = holder.is_some_and(|h| !h.is_empty() && h != identity);
    their_serves.filter(|theirs| other_holder && *theirs != ours)
}

fn check_name(shard: &str) -> Result<(), ShardError> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !shard.is_empty()
        && shard.len() <= MAX_SHARD_LEN
        && shard.chars().all(|c| alnum(c) || c == '-')
        && shard.starts_with(alnum)
        && shard.ends_with(alnum);
    if valid {
        Ok(())
    } else {
        Err(ShardError::BadName(shard.to_string()))
    }
}

/// Whether the selector has a requirement on [`SHARD_LABEL`] itself (not on a longer key that
/// merely starts with it, such as `healthgate.dev/shard-group`).
fn names_shard_label(selector: &str) -> bool {
    let key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    selector.match_indices(SHARD_LABEL).any(|(at, _)| {
        let before = selector[..at].chars().next_back();
        let after = selector[at + SHARD_LABEL.len()..].chars().next();
        !before.is_some_and(key_char) && !after.is_some_and(key_char)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(selector: Option<&str>, lease: &str) -> Result<Sharding, ShardError> {
        Ok(Sharding {
            selector: selector.map(String::from),
            lease_name: lease.to_string(),
        })
    }

    /// (`--shard`, `--selector`, `--lease-name`, `--policy-name` given) → expected.
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        bool,
        Result<Sharding, ShardError>,
    );

    #[test]
    fn flags_resolve_to_a_partition_on_the_shard_label() {
        let bad_selector = |s: &str| Err(ShardError::SelectorNamesShardLabel(s.into()));
        let unsharded = "!healthgate.dev/shard";
        let cases: Vec<Case> = vec![
            // Unsharded: only the policies without the label.
            (None, None, None, false, ok(Some(unsharded), "healthgate")),
            (
                None,
                Some("team=pay"),
                None,
                false,
                ok(Some("team=pay,!healthgate.dev/shard"), "healthgate"),
            ),
            (
                None,
                Some("  "),
                None,
                false,
                ok(Some(unsharded), "healthgate"),
            ),
            (None, None, Some("mine"), false, ok(Some(unsharded), "mine")),
            // A shard: its label value, its own Lease.
            (
                Some("a"),
                None,
                None,
                false,
                ok(Some("healthgate.dev/shard=a"), "healthgate-shard-a"),
            ),
            (
                Some("eu-1"),
                Some("team=pay"),
                None,
                false,
                ok(
                    Some("team=pay,healthgate.dev/shard=eu-1"),
                    "healthgate-shard-eu-1",
                ),
            ),
            // A sidecar names its one policy: no shard requirement.
            (None, None, None, true, ok(None, "healthgate")),
            (None, Some("x=y"), None, true, ok(Some("x=y"), "healthgate")),
            // The shard label belongs to --shard.
            (
                None,
                Some("healthgate.dev/shard=a"),
                None,
                false,
                bad_selector("healthgate.dev/shard=a"),
            ),
            (
                Some("a"),
                Some("x=1, !healthgate.dev/shard"),
                None,
                false,
                bad_selector("x=1, !healthgate.dev/shard"),
            ),
            (
                None,
                Some("healthgate.dev/shard in (a,b)"),
                None,
                false,
                bad_selector("healthgate.dev/shard in (a,b)"),
            ),
            // A longer key that starts or ends like it is another label.
            (
                None,
                Some("healthgate.dev/shard-group=x"),
                None,
                false,
                ok(
                    Some("healthgate.dev/shard-group=x,!healthgate.dev/shard"),
                    "healthgate",
                ),
            ),
            (
                None,
                Some("my.healthgate.dev/shard=x"),
                None,
                false,
                ok(
                    Some("my.healthgate.dev/shard=x,!healthgate.dev/shard"),
                    "healthgate",
                ),
            ),
        ];
        for (shard, selector, lease, one, expected) in cases {
            assert_eq!(
                resolve(shard, selector, lease, one),
                expected,
                "{shard:?} {selector:?} {lease:?} {one}"
            );
        }
    }

    #[test]
    fn a_lease_held_for_other_policies_is_a_clash() {
        let ns = super::super::Scope::Namespace("shop".into());
        let ours = serves(&ns, Some("team=x,!healthgate.dev/shard"));
        assert_eq!(
            ours,
            "namespace shop, selector team=x,!healthgate.dev/shard"
        );
        let theirs = serves(&ns, Some("team=y,!healthgate.dev/shard"));
        let cases = [
            (Some("y-0"), Some(theirs.as_str()), Some(theirs.as_str())),
            (Some("x-1"), Some(ours.as_str()), None),
            // Our own, a free Lease, or a holder that does not say.
            (Some("x-0"), Some(theirs.as_str()), None),
            (None, Some(theirs.as_str()), None),
            (Some(""), Some(theirs.as_str()), None),
            (Some("y-0"), None, None),
        ];
        for (holder, their_serves, expected) in cases {
            assert_eq!(
                clash(holder, their_serves, "x-0", &ours),
                expected,
                "{holder:?}"
            );
        }
    }

    #[test]
    fn shard_names_are_dns_labels() {
        for good in ["a", "0", "eu-west-1", &"x".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a.b", "a b", &"x".repeat(64)] {
            let err = resolve(Some(bad), None, None, false).unwrap_err();
            assert_eq!(err, ShardError::BadName(bad.into()));
            assert!(err.to_string().starts_with("--shard "), "{err}");
        }
    }
}
