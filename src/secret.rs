//! Connection URLs carry credentials. [`SecretUrl`] keeps the raw text out of every `Debug`,
//! `Display` and serialisation path; only [`SecretUrl::expose`] hands it to a driver, and
//! [`SecretUrl::scrub`] removes it from driver error messages before they are shown anywhere.

use std::fmt;

const MASK: &str = "***";

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The raw URL, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password (and any `password=` query value) replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// Removes the credential from text that may quote the URL, such as a driver error.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.0, &self.redacted());
        for secret in credentials(&self.0) {
            // Short secrets would mangle unrelated words; a 1-2 character password is not worth it.
            if secret.len() >= 3 {
                out = out.replace(&secret, MASK);
            }
        }
        out
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Redacts a URL that may not even parse: whatever sits between `scheme://` and the last `@` of
/// the authority is a credential and is masked wholesale when parsing fails.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some(MASK));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let masked = is_secret_param(&k);
                    (
                        k.into_owned(),
                        if masked { MASK.into() } else { v.into_owned() },
                    )
                })
                .collect();
            if pairs.iter().any(|(k, _)| is_secret_param(k)) {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => match (raw.find("://"), raw.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}{MASK}{}", &raw[..scheme_end + 3], &raw[at..])
            }
            _ if raw.contains('@') => MASK.into(),
            _ => raw.into(),
        },
    }
}

fn is_secret_param(key: &str) -> bool {
    matches!(
        key.to_ascii_lowercase().as_str(),
        "password" | "pass" | "pwd" | "token" | "sslpassword"
    )
}

/// The credential substrings of a URL, raw and percent-decoded, as a driver might print them.
fn credentials(raw: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(raw) else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    if let Some(password) = parsed.password() {
        secrets.push(password.to_string());
        if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
            secrets.push(decoded.into_owned());
        }
    }
    for (k, v) in parsed.query_pairs() {
        if is_secret_param(&k) {
            secrets.push(v.into_owned());
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/demo",
                "postgres://app:***@db:5432/demo",
            ),
            (
                "redis://:hunter22@cache:6379/0",
                "redis://:***@cache:6379/0",
            ),
            ("postgres://app@db/demo", "postgres://app@db/demo"),
            (
                "postgres://db/demo?password=s3cret&sslmode=disable",
                "postgres://db/demo?password=***&sslmode=disable",
            ),
            ("not a url user:pw@host", "***"),
            ("http://u:pw@[bad/", "http://***@[bad/"),
        ];
        for (raw, expected) in cases {
            assert_eq!(redact_url(raw), expected, "{raw}");
        }
    }

    #[test]
    fn debug_and_display_never_show_the_password() {
        let url = SecretUrl::new("postgres://app:s3cret@db/demo");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!format!("{url}").contains("s3cret"));
    }

    #[test]
    fn scrub_removes_raw_and_decoded_passwords() {
        let url = SecretUrl::new("postgres://app:p%40ss%2Fword@db/demo");
        let message = "auth failed for postgres://app:p%40ss%2Fword@db/demo (password p@ss/word)";
        let scrubbed = url.scrub(message);
        assert!(
            !scrubbed.contains("p@ss/word") && !scrubbed.contains("p%40ss"),
            "{scrubbed}"
        );
    }
}
