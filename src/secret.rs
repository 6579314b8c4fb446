//! Connection URLs carry credentials. [`SecretUrl`] keeps the raw text out of every `Debug`,
//! `Display` and serialisation path; only [`SecretUrl::expose`] hands it to a driver, and
//! [`SecretUrl::scrub`] removes it from driver error messages before they are shown anywhere.
//!
//! [`redact`] is the one routine every free-text output goes through (log lines, including what
//! client libraries log through our subscriber; check errors on /ready, in spans and status;
//! condition messages and Events). It masks credentials by their shape — URL userinfo,
//! `password=` style keys in queries and libpq keyword strings (any case, percent-encoded keys),
//! Redis `AUTH` arguments — and, whatever the shape, every credential of every URL this process
//! has been handed ([`SecretUrl::new`] remembers them), since a library that quotes a password
//! does not say so.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::RwLock;

const MASK: &str = "***";
/// Keys whose value is a credential, compared lower-cased and percent-decoded.
const SECRET_KEYS: &[&str] = &[
    "password",
    "pass",
    "pwd",
    "passwd",
    "token",
    "sslpassword",
    "secret",
    "apikey",
    "api_key",
    "access_token",
];
/// Shorter secrets are not searched for in free text: they would mangle unrelated words.
const MIN_KNOWN_SECRET: usize = 3;
/// Bounds the memory of remembered secrets; rotations add new ones, none are ever needed twice.
const MAX_KNOWN_SECRETS: usize = 4096;

static KNOWN: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

fn remember(secrets: Vec<String>) {
    let secrets: Vec<String> = secrets
        .into_iter()
        .filter(|s| s.len() >= MIN_KNOWN_SECRET)
        .collect();
    if secrets.is_empty() {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    for secret in secrets {
        if known.len() >= MAX_KNOWN_SECRETS {
            break;
        }
        known.insert(secret);
    }
}

/// `text` with every credential masked (see the module docs). Borrowed when nothing matched.
///
/// One masking pass can expose a shape the earlier masks did not see (fuzzing found a `password=`
/// value that, once masked, left a `scheme://user:pass@` behind it), so passes repeat until the
/// text stops changing: redacting redacted text is then a no-op, which is what log layers that
/// redact again rely on.
pub fn redact(text: &str) -> Cow<'_, str> {
    const MAX_PASSES: usize = 16;
    let mut out = redact_once(text);
    for _ in 1..MAX_PASSES {
        let Cow::Owned(changed) = &out else { break };
        match redact_once(changed) {
            Cow::Borrowed(_) => break,
            Cow::Owned(next) if next == *changed => break,
            Cow::Owned(next) => out = Cow::Owned(next),
        }
    }
    out
}

fn redact_once(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    {
        let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
        for secret in known.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
    }
    if out.contains("://") {
        out = Cow::Owned(mask_userinfo(&out));
    }
    if out.contains('=') {
        out = Cow::Owned(mask_key_values(&out));
    }
    if out.to_ascii_lowercase().contains("auth ") {
        out = Cow::Owned(mask_auth(&out));
    }
    out
}

/// A parser or deserializer message without the value it rejected: serde and YAML messages put
/// that value first, in quotes or backticks (`invalid type: string "postgres://…"`), and it may
/// be a credential. The rest (what was expected, the field) stays.
pub fn without_rejected_value(message: &str) -> String {
    for quote in ['"', '`'] {
        if let Some(start) = message.find(quote)
            && let Some(len) = message[start + 1..].find(quote)
        {
            let end = start + 1 + len + 1;
            return format!("{}(value not shown){}", &message[..start], &message[end..]);
        }
    }
    message.to_string()
}

/// `scheme://user:pass@host` → `scheme://user:***@host` wherever it appears in free text; an
/// authority with `@` but no `:` (a token as the user) is masked whole.
fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| {
                c == '/'
                    || c == '?'
                    || c == '#'
                    || c.is_whitespace()
                    || c == '"'
                    || c == '\''
                    || c == '`'
            })
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(MASK),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `password=value` (URL query, libpq keyword string, quoted or not) → `password=***`.
fn mask_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'=' {
            i += 1;
            continue;
        }
        // The key starts after the last character that cannot be in one, which may be wider
        // than a byte (found by fuzzing).
        let key_start = text[..i]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '%' || c == '-'))
            .map_or(0, |(p, c)| p + c.len_utf8());
        let key = percent_encoding::percent_decode_str(&text[key_start..i])
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        i += 1;
        if !SECRET_KEYS.contains(&key.as_str()) {
            continue;
        }
        let value_end = match bytes.get(i) {
            // A quoted value may hold anything up to its closing quote; whatever is glued to
            // that quote is masked with it (found by fuzzing: `'e'd=x'` left a tail behind).
            Some(&quote @ (b'\'' | b'"')) => match text[i + 1..].find(quote as char) {
                Some(p) => {
                    let after = i + 1 + p + 1;
                    text[after..]
                        .find(|c: char| c == '&' || c == ';' || c == ',' || c.is_whitespace())
                        .map_or(text.len(), |q| after + q)
                }
                None => text.len(),
            },
            _ => text[i..]
                .find(|c: char| {
                    c == '&' || c == ';' || c == ',' || c.is_whitespace() || c == '"' || c == '\''
                })
                .map_or(text.len(), |p| i + p),
        };
        out.push_str(&text[copied..i]);
        out.push_str(MASK);
        copied = value_end;
        i = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Redis `AUTH pass` and `AUTH user pass`: the arguments after AUTH are masked.
fn mask_auth(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut masking = 0;
    for word in words {
        if masking > 0 && !word.is_empty() {
            out.push(MASK);
            masking -= 1;
            continue;
        }
        out.push(word);
        if word.eq_ignore_ascii_case("auth") {
            masking = 2;
        }
    }
    out.join(" ")
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        remember(credentials(&url));
        Self(url)
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

/// A credential that is not a URL, such as an HTTP header value read from a Secret. Like
/// [`SecretUrl`], it is remembered for [`redact`] and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretValue(String);

impl SecretValue {
    /// Words this short are scheme names (`Bearer`, `Basic`), not secrets: masking them would
    /// mangle unrelated text.
    const MIN_WORD: usize = 8;

    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        let mut secrets = vec![value.clone()];
        secrets.extend(
            value
                .split_whitespace()
                .filter(|w| w.len() >= Self::MIN_WORD)
                .map(String::from),
        );
        remember(secrets);
        Self(value)
    }

    /// The raw value, for the request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
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
    SECRET_KEYS.contains(&key.to_ascii_lowercase().as_str())
}

/// The credential substrings of a URL, raw and percent-decoded, as a driver might print them.
fn credentials(raw: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(raw) else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    // Over HTTP a user name alone is a token, as in `https://TOKEN@host`; a database user
    // name alone is just a name.
    if matches!(parsed.scheme(), "http" | "https")
        && parsed.password().is_none()
        && !parsed.username().is_empty()
    {
        secrets.push(parsed.username().to_string());
    }
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
    fn redact_masks_every_shape_in_free_text() {
        let cases = [
            (
                "error connecting to postgres://app:Canary1@db:5432/x",
                "error connecting to postgres://app:***@db:5432/x",
            ),
            (
                "postgres://127.0.0.1:99999/demo?user=app&password=Canary2 is bad",
                "postgres://127.0.0.1:99999/demo?user=app&password=*** is bad",
            ),
            (
                "ignoring unrecognized connect parameter PASSWORD=Canary3",
                "ignoring unrecognized connect parameter PASSWORD=***",
            ),
            (
                "host=db user=app password='Can ary4' dbname=x",
                "host=db user=app password=*** dbname=x",
            ),
            ("pass%77ord=Canary5&x=1", "pass%77ord=***&x=1"),
            (
                "sent AUTH default Canary6 to redis",
                "sent AUTH *** *** to redis",
            ),
            (
                "https://Canary7tok@api.example/",
                "https://***@api.example/",
            ),
            ("nothing secret here=1", "nothing secret here=1"),
            // Found by fuzzing: a tail glued to the closing quote, a multi-byte character
            // right before the key.
            ("password='e'd=x' next", "password=*** next"),
            ("\u{99659}password=x y", "\u{99659}password=*** y"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn rejected_values_are_not_quoted() {
        assert_eq!(
            without_rejected_value(
                "invalid type: string \"postgres://a:Canary@h\", expected struct X"
            ),
            "invalid type: string (value not shown), expected struct X"
        );
        assert_eq!(
            without_rejected_value("unknown variant `Canary`, expected one of `a`, `b`"),
            "unknown variant (value not shown), expected one of `a`, `b`"
        );
        assert_eq!(
            without_rejected_value("missing field `x`"),
            "missing field (value not shown)"
        );
    }

    #[test]
    fn redact_masks_known_secrets_in_any_shape() {
        let url = SecretUrl::new("redis://:K9nownSecret@cache:6379/0");
        let text = format!("library said: bad password \"{}\" for user", "K9nownSecret");
        assert_eq!(redact(&text), "library said: bad password \"***\" for user");
        drop(url);
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
