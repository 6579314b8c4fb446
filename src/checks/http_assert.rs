//! The conditions an http check puts on a response beyond its status: JSON pointer and header
//! values (equals, oneOf, matches) and a body regex. Pure: the probe hands in the headers and
//! the body it read, and gets back one message per failing condition.

use std::hash::{Hash, Hasher};

use serde_json::Value;

use crate::api::HttpAssertion;
use crate::policy::validate::Errors;

/// Compiled size limit: a policy's pattern must not cost the checker megabytes.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// A compiled regular expression that compares by its pattern, so targets stay `Eq + Hash`.
#[derive(Clone, Debug)]
pub struct Pattern(regex::Regex);

impl Pattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Pattern)
            .map_err(|e| format!("not a valid regular expression: {e}"))
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

impl Hash for Pattern {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    JsonPointer(String),
    /// Lower-cased.
    Header(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Test {
    Equals(String),
    OneOf(Vec<String>),
    Matches(Pattern),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Condition {
    pub subject: Subject,
    pub test: Test,
}

impl Condition {
    /// Checks one `assert` entry; problems go to `errors` under `path`.
    pub fn validate(assertion: &HttpAssertion, path: &str, errors: &mut Errors) -> Option<Self> {
        let subject = match (&assertion.json_pointer, &assertion.header) {
            (Some(pointer), None) if pointer.is_empty() || pointer.starts_with('/') => {
                Subject::JsonPointer(pointer.clone())
            }
            (Some(pointer), None) => {
                errors.push(
                    format!("{path}.jsonPointer"),
                    format!("{pointer:?} must be empty or start with '/' (RFC 6901)"),
                );
                return None;
            }
            (None, Some(header)) => Subject::Header(header.to_ascii_lowercase()),
            _ => {
                errors.push(path, "set exactly one of jsonPointer or header");
                return None;
            }
        };
        let test = match (&assertion.equals, &assertion.one_of, &assertion.matches) {
            (Some(value), None, None) => Test::Equals(value.clone()),
            (None, Some(values), None) if !values.is_empty() => Test::OneOf(values.clone()),
            (None, None, Some(pattern)) => match Pattern::new(pattern) {
                Ok(pattern) => Test::Matches(pattern),
                Err(e) => {
                    errors.push(format!("{path}.matches"), e);
                    return None;
                }
            },
            _ => {
                errors.push(
                    path,
                    "set exactly one of equals, oneOf (not empty) or matches",
                );
                return None;
            }
        };
        Some(Self { subject, test })
    }

    fn needs_body(&self) -> bool {
        matches!(self.subject, Subject::JsonPointer(_))
    }
}

/// Whether the probe must read the body for these conditions.
pub fn needs_body(conditions: &[Condition], body_matches: Option<&Pattern>) -> bool {
    body_matches.is_some() || conditions.iter().any(Condition::needs_body)
}

/// One message per failing condition, in the order they are written. `headers` are the
/// response's (names in any case), `body` its first bytes as text.
pub fn failures(
    conditions: &[Condition],
    body_matches: Option<&Pattern>,
    headers: &[(String, String)],
    body: &str,
) -> Vec<String> {
    let mut failed = Vec::new();
    if let Some(pattern) = body_matches
        && !pattern.is_match(body)
    {
        failed.push(format!("body does not match {:?}", pattern.0.as_str()));
    }
    let json: Option<Result<Value, String>> = conditions
        .iter()
        .any(Condition::needs_body)
        .then(|| serde_json::from_str(body).map_err(|e| format!("body is not JSON ({e})")));
    for condition in conditions {
        let (name, value) = match &condition.subject {
            Subject::Header(header) => {
                let name = format!("header {header}");
                match headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(header)) {
                    Some((_, value)) => (name, value.clone()),
                    None => {
                        failed.push(format!("{name} is missing"));
                        continue;
                    }
                }
            }
            Subject::JsonPointer(pointer) => {
                let document = match json.as_ref().expect("parsed for JSON conditions") {
                    Ok(document) => document,
                    Err(e) => {
                        failed.push(format!("{pointer}: {e}"));
                        continue;
                    }
                };
                match document.pointer(pointer) {
                    Some(Value::String(text)) => (pointer.clone(), text.clone()),
                    Some(other) => (pointer.clone(), other.to_string()),
                    None => {
                        failed.push(format!("{pointer} is not in the body"));
                        continue;
                    }
                }
            }
        };
        let holds = match &condition.test {
            Test::Equals(expected) => value == *expected,
            Test::OneOf(expected) => expected.contains(&value),
            Test::Matches(pattern) => pattern.is_match(&value),
        };
        if !holds {
            let wanted = match &condition.test {
                Test::Equals(expected) => format!("expected {expected:?}"),
                Test::OneOf(expected) => format!(
                    "expected one of {}",
                    expected
                        .iter()
                        .map(|e| format!("{e:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Test::Matches(pattern) => format!("expected to match {:?}", pattern.0.as_str()),
            };
            failed.push(format!("{name} is {value:?}, {wanted}"));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(subject: Subject, test: Test) -> Condition {
        Condition { subject, test }
    }

    fn pointer(p: &str) -> Subject {
        Subject::JsonPointer(p.into())
    }

    fn header(h: &str) -> Subject {
        Subject::Header(h.into())
    }

    fn equals(v: &str) -> Test {
        Test::Equals(v.into())
    }

    fn matches(p: &str) -> Test {
        Test::Matches(Pattern::new(p).unwrap())
    }

    #[test]
    fn each_failing_condition_is_named() {
        let headers = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("X-Version".to_string(), "2.4.1".to_string()),
        ];
        let body = r#"{"status":"UP","checks":[{"name":"db","up":true}],"replicas":3,"note":null}"#;
        // (conditions, bodyMatches, body, the failures expected)
        type Case<'a> = (Vec<Condition>, Option<&'a str>, &'a str, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                vec![condition(pointer("/status"), equals("UP"))],
                None,
                body,
                vec![],
            ),
            (
                vec![condition(pointer("/status"), equals("DOWN"))],
                None,
                body,
                vec![r#"/status is "UP", expected "DOWN""#],
            ),
            (
                vec![condition(
                    pointer("/status"),
                    Test::OneOf(vec!["UP".into(), "DEGRADED".into()]),
                )],
                None,
                body,
                vec![],
            ),
            (
                vec![condition(
                    pointer("/status"),
                    Test::OneOf(vec!["OK".into(), "READY".into()]),
                )],
                None,
                body,
                vec![r#"/status is "UP", expected one of "OK", "READY""#],
            ),
            // Non-strings compare as their JSON text.
            (
                vec![
                    condition(pointer("/checks/0/up"), equals("true")),
                    condition(pointer("/replicas"), equals("3")),
                    condition(pointer("/note"), equals("null")),
                ],
                None,
                body,
                vec![],
            ),
            (
                vec![condition(pointer("/missing"), equals("x"))],
                None,
                body,
                vec!["/missing is not in the body"],
            ),
            (
                vec![condition(pointer("/status"), equals("UP"))],
                None,
                "<html>",
                vec!["/status: body is not JSON (expected value at line 1 column 1)"],
            ),
            (
                vec![
                    condition(header("content-type"), matches("^application/json")),
                    condition(header("x-version"), matches(r"^2\.")),
                ],
                None,
                body,
                vec![],
            ),
            (
                vec![
                    condition(header("content-type"), equals("text/plain")),
                    condition(header("x-missing"), equals("1")),
                    condition(header("x-version"), matches(r"^3\.")),
                ],
                None,
                "",
                vec![
                    r#"header content-type is "application/json", expected "text/plain""#,
                    "header x-missing is missing",
                    r#"header x-version is "2.4.1", expected to match "^3\\.""#,
                ],
            ),
            (vec![], Some(r#""status":"(UP|OK)""#), body, vec![]),
            (
                vec![],
                Some("healthy"),
                body,
                vec![r#"body does not match "healthy""#],
            ),
        ];
        for (conditions, body_matches, body, expected) in cases {
            let pattern = body_matches.map(|p| Pattern::new(p).unwrap());
            assert_eq!(
                failures(&conditions, pattern.as_ref(), &headers, body),
                expected,
                "{conditions:?}"
            );
        }
    }

    #[test]
    fn patterns_compare_by_text_and_bad_ones_are_refused() {
        assert_eq!(Pattern::new("a+").unwrap(), Pattern::new("a+").unwrap());
        assert_ne!(Pattern::new("a+").unwrap(), Pattern::new("a*").unwrap());
        assert!(
            Pattern::new("(unclosed")
                .unwrap_err()
                .starts_with("not a valid regular expression")
        );
        assert!(
            Pattern::new("a{1000}{1000}").is_err(),
            "over the size limit"
        );
    }
}
