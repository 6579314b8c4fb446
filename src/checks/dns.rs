//! `type: dns`: one lookup of a name, compared with the expected answers when they are given.
//! The resolver keeps no cache: every check asks the nameserver again.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{RData, RecordType};

use super::guard::TargetGuard;
use super::{CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::{DnsCheck, DnsRecordType};
use crate::health::Reason;
use crate::policy::validate::Errors;

const DNS_PORT: u16 = 53;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsTarget {
    pub name: String,
    pub record_type: DnsRecordType,
    /// The expected answers, written the way [`answer_text`] writes what came back.
    pub expect: Option<BTreeSet<String>>,
    pub nameserver: Option<SocketAddr>,
}

impl DnsTarget {
    pub fn describe(&self) -> String {
        let kind = type_name(self.record_type);
        match self.nameserver {
            Some(ns) => format!("{kind} {} @{ns}", self.name),
            None => format!("{kind} {}", self.name),
        }
    }
}

impl CheckBlock for DnsCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        None
    }

    fn target(&self, _resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target> {
        if let Err(e) = normalise_name(&self.name) {
            errors.push(format!("{block}.name"), e);
        }
        let record_type = self.record_type.unwrap_or_default();
        let expect = self.expect.as_ref().map(|answers| {
            let mut set = BTreeSet::new();
            for (index, answer) in answers.iter().enumerate() {
                match normalise_answer(record_type, answer) {
                    Ok(answer) => {
                        set.insert(answer);
                    }
                    Err(e) => errors.push(format!("{block}.expect[{index}]"), e),
                }
            }
            set
        });
        let nameserver = self.nameserver.as_deref().and_then(|text| {
            parse_nameserver(text)
                .map_err(|e| errors.push(format!("{block}.nameserver"), e))
                .ok()
        });
        Some(Target::Dns(DnsTarget {
            name: self.name.clone(),
            record_type,
            expect,
            nameserver,
        }))
    }
}

/// `IP` (port 53), `IP:port` or `[IPv6]:port`. An IP, never a name: resolving the resolver's
/// name would need a resolver.
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| format!("{text:?} is not an IP address or IP:port"))
}

/// Lower case and no trailing dot: the form names are compared in.
fn normalise_name(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!("{name:?} is not a DNS name"));
    }
    Ok(name)
}

/// An expected answer in the form [`answer_text`] gives.
pub fn normalise_answer(kind: DnsRecordType, text: &str) -> Result<String, String> {
    let text = text.trim();
    match kind {
        DnsRecordType::A => text
            .parse::<Ipv4Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| format!("{text:?} is not an IPv4 address")),
        DnsRecordType::Aaaa => text
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| format!("{text:?} is not an IPv6 address")),
        DnsRecordType::Cname => normalise_name(text),
        DnsRecordType::Srv => {
            let fields: Vec<&str> = text.split_whitespace().collect();
            let numbers: Option<Vec<u16>> = fields
                .get(..3)
                .and_then(|n| n.iter().map(|f| f.parse().ok()).collect());
            match (numbers, fields.get(3), fields.len()) {
                (Some(n), Some(target), 4) => Ok(format!(
                    "{} {} {} {}",
                    n[0],
                    n[1],
                    n[2],
                    normalise_name(target)?
                )),
                _ => Err(format!(
                    "{text:?} is not \"priority weight port target\" (e.g. \"10 5 5432 db.example.com\")"
                )),
            }
        }
    }
}

/// One record of the asked type as text; other records (the CNAMEs an A lookup follows) are
/// `None`.
fn answer_text(kind: DnsRecordType, data: &RData) -> Option<String> {
    let name = |n: &hickory_resolver::proto::rr::Name| {
        let text = n.to_ascii().to_ascii_lowercase();
        text.strip_suffix('.').unwrap_or(&text).to_string()
    };
    match (kind, data) {
        (DnsRecordType::A, RData::A(a)) => Some(a.0.to_string()),
        (DnsRecordType::Aaaa, RData::AAAA(a)) => Some(a.0.to_string()),
        (DnsRecordType::Cname, RData::CNAME(c)) => Some(name(&c.0)),
        (DnsRecordType::Srv, RData::SRV(s)) => Some(format!(
            "{} {} {} {}",
            s.priority,
            s.weight,
            s.port,
            name(&s.target)
        )),
        _ => None,
    }
}

fn type_name(kind: DnsRecordType) -> &'static str {
    match kind {
        DnsRecordType::A => "A",
        DnsRecordType::Aaaa => "AAAA",
        DnsRecordType::Srv => "SRV",
        DnsRecordType::Cname => "CNAME",
    }
}

fn record_type(kind: DnsRecordType) -> RecordType {
    match kind {
        DnsRecordType::A => RecordType::A,
        DnsRecordType::Aaaa => RecordType::AAAA,
        DnsRecordType::Srv => RecordType::SRV,
        DnsRecordType::Cname => RecordType::CNAME,
    }
}

/// What the answers mean for the check. Pure, so matching is tested without a nameserver.
pub fn judge_answers(target: &DnsTarget, answers: &BTreeSet<String>) -> Observation {
    let kind = type_name(target.record_type);
    let name = &target.name;
    if answers.is_empty() {
        return Observation::down(Reason::Dns, format!("no {kind} records for {name}"));
    }
    let list = |set: &mut dyn Iterator<Item = &String>| {
        set.map(String::as_str).collect::<Vec<_>>().join(", ")
    };
    if let Some(expect) = &target.expect
        && expect != answers
    {
        let mut problems = Vec::new();
        let mut missing = expect.difference(answers).peekable();
        if missing.peek().is_some() {
            problems.push(format!("missing {}", list(&mut missing)));
        }
        let mut extra = answers.difference(expect).peekable();
        if extra.peek().is_some() {
            problems.push(format!("unexpected {}", list(&mut extra)));
        }
        return Observation::down(
            Reason::UnexpectedAnswer,
            format!("{kind} {name}: {}", problems.join("; ")),
        );
    }
    Observation::ok(format!("{kind} {name}: {}", list(&mut answers.iter())))
}

fn classify(error: &NetError, target: &DnsTarget) -> (Reason, String) {
    let (kind, name) = (type_name(target.record_type), &target.name);
    match error {
        e if e.is_nx_domain() => (Reason::Dns, format!("NXDOMAIN: {name} does not exist")),
        e if e.is_no_records_found() => (Reason::Dns, format!("no {kind} records for {name}")),
        NetError::Dns(DnsError::ResponseCode(code)) => (
            Reason::Dns,
            format!("{kind} {name}: the nameserver answered {code}"),
        ),
        NetError::Timeout => (Reason::Timeout, format!("no answer for {kind} {name}")),
        e if e.is_connection_closed() || matches!(e, NetError::Io(_) | NetError::NoConnections) => {
            (Reason::Connect, e.to_string())
        }
        e => (Reason::Error, e.to_string()),
    }
}

pub struct DnsProbe {
    target: DnsTarget,
    resolver: Result<TokioResolver, String>,
    guard: Option<Arc<TargetGuard>>,
}

impl DnsProbe {
    pub fn new(target: DnsTarget, timeout: Duration, guard: Option<Arc<TargetGuard>>) -> Self {
        let resolver = resolver(target.nameserver, timeout);
        Self {
            target,
            resolver,
            guard,
        }
    }

    pub async fn run(&self) -> Observation {
        let resolver = match &self.resolver {
            Ok(resolver) => resolver,
            Err(e) => return Observation::down(Reason::Config, e.clone()),
        };
        // A nameserver the policy names is a target like any address; the system's are not
        // judged, as they are not for any other kind's lookups.
        if let (Some(guard), Some(nameserver)) = (&self.guard, self.target.nameserver)
            && let Err(blocked) = guard.check(nameserver)
        {
            return Observation::blocked(&blocked);
        }
        let kind = self.target.record_type;
        match resolver
            .lookup(self.target.name.as_str(), record_type(kind))
            .await
        {
            Ok(lookup) => {
                let answers = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| answer_text(kind, &record.data))
                    .collect();
                judge_answers(&self.target, &answers)
            }
            Err(e) => {
                let (reason, message) = classify(&e, &self.target);
                Observation::down(reason, message)
            }
        }
    }
}

fn resolver(nameserver: Option<SocketAddr>, timeout: Duration) -> Result<TokioResolver, String> {
    let mut builder = match nameserver {
        Some(address) => {
            let mut server = NameServerConfig::udp_and_tcp(address.ip());
            for connection in &mut server.connections {
                connection.port = address.port();
            }
            let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system resolver configuration: {e}"))?,
    };
    let options = builder.options_mut();
    // A cached answer would report the nameserver healthy while it is down.
    options.cache_size = 0;
    // The check is about DNS: /etc/hosts would answer for it.
    options.use_hosts_file = ResolveHosts::Never;
    // One try within the check's timeout; failureThreshold is the retry policy.
    options.timeout = timeout;
    options.attempts = 1;
    builder
        .build()
        .map_err(|e| format!("building the resolver: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Outcome;

    fn target(kind: DnsRecordType, expect: Option<&[&str]>) -> DnsTarget {
        DnsTarget {
            name: "db.example.test".into(),
            record_type: kind,
            expect: expect.map(|e| {
                e.iter()
                    .map(|a| normalise_answer(kind, a).unwrap())
                    .collect()
            }),
            nameserver: None,
        }
    }

    fn set(answers: &[&str]) -> BTreeSet<String> {
        answers.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn answers_are_compared_as_sets() {
        use DnsRecordType::*;
        // (type, expect, answers, outcome, error or detail)
        type Case<'a> = (
            DnsRecordType,
            Option<&'a [&'a str]>,
            &'a [&'a str],
            Outcome,
            &'a str,
        );
        let cases: &[Case] = &[
            (
                A,
                None,
                &["10.0.0.5"],
                Outcome::Ok,
                "A db.example.test: 10.0.0.5",
            ),
            (
                A,
                Some(&["10.0.0.6", "10.0.0.5"]),
                &["10.0.0.5", "10.0.0.6"],
                Outcome::Ok,
                "A db.example.test: 10.0.0.5, 10.0.0.6",
            ),
            (
                A,
                Some(&["10.0.0.5"]),
                &["10.0.0.5", "10.0.0.6"],
                Outcome::Down,
                "A db.example.test: unexpected 10.0.0.6",
            ),
            (
                A,
                Some(&["10.0.0.5", "10.0.0.7"]),
                &["10.0.0.5"],
                Outcome::Down,
                "A db.example.test: missing 10.0.0.7",
            ),
            (
                A,
                Some(&["10.0.0.7"]),
                &["10.0.0.5"],
                Outcome::Down,
                "A db.example.test: missing 10.0.0.7; unexpected 10.0.0.5",
            ),
            (
                A,
                None,
                &[],
                Outcome::Down,
                "no A records for db.example.test",
            ),
            (
                Aaaa,
                Some(&["FD00:0::5"]),
                &["fd00::5"],
                Outcome::Ok,
                "AAAA db.example.test: fd00::5",
            ),
            (
                Cname,
                Some(&["Real.Example.Test."]),
                &["real.example.test"],
                Outcome::Ok,
                "CNAME db.example.test: real.example.test",
            ),
            (
                Srv,
                Some(&["10  5 5432 DB1.example.test."]),
                &["10 5 5432 db1.example.test"],
                Outcome::Ok,
                "SRV db.example.test: 10 5 5432 db1.example.test",
            ),
            (
                Srv,
                Some(&["10 5 5432 db1.example.test"]),
                &["10 5 5433 db1.example.test"],
                Outcome::Down,
                "SRV db.example.test: missing 10 5 5432 db1.example.test; unexpected 10 5 5433 db1.example.test",
            ),
        ];
        for (kind, expect, answers, outcome, text) in cases {
            let observed = judge_answers(&target(*kind, *expect), &set(answers));
            assert_eq!(
                observed.outcome, *outcome,
                "{kind:?} {expect:?} {answers:?}"
            );
            let shown = observed.error.or(observed.detail).unwrap_or_default();
            assert_eq!(shown, *text);
            if *outcome == Outcome::Down && !answers.is_empty() {
                assert_eq!(observed.reason, Reason::UnexpectedAnswer);
            }
        }
    }

    #[test]
    fn expected_answers_and_nameservers_are_checked() {
        use DnsRecordType::*;
        let bad = [
            (A, "10.0.0.256", "\"10.0.0.256\" is not an IPv4 address"),
            (A, "fd00::1", "\"fd00::1\" is not an IPv4 address"),
            (Aaaa, "10.0.0.1", "\"10.0.0.1\" is not an IPv6 address"),
            (Cname, "bad name", "\"bad name\" is not a DNS name"),
            (Cname, "a..b", "\"a..b\" is not a DNS name"),
            (
                Srv,
                "10 5 db",
                "\"10 5 db\" is not \"priority weight port target\" (e.g. \"10 5 5432 db.example.com\")",
            ),
            (
                Srv,
                "10 5 70000 db",
                "\"10 5 70000 db\" is not \"priority weight port target\" (e.g. \"10 5 5432 db.example.com\")",
            ),
        ];
        for (kind, text, message) in bad {
            assert_eq!(
                normalise_answer(kind, text),
                Err(message.to_string()),
                "{text}"
            );
        }
        let nameservers = [
            ("127.0.0.1", Ok("127.0.0.1:53")),
            ("127.0.0.1:5353", Ok("127.0.0.1:5353")),
            ("::1", Ok("[::1]:53")),
            ("[::1]", Ok("[::1]:53")),
            ("[::1]:5353", Ok("[::1]:5353")),
            (
                "ns1.example.test",
                Err("\"ns1.example.test\" is not an IP address or IP:port"),
            ),
            (
                "127.0.0.1:99999",
                Err("\"127.0.0.1:99999\" is not an IP address or IP:port"),
            ),
        ];
        for (text, expected) in nameservers {
            let got = parse_nameserver(text).map(|a| a.to_string());
            assert_eq!(
                got,
                expected.map(String::from).map_err(String::from),
                "{text}"
            );
        }
    }

    #[test]
    fn lookup_errors_name_what_failed() {
        use hickory_resolver::net::NoRecords;
        use hickory_resolver::proto::op::{Query, ResponseCode};
        let target = target(DnsRecordType::A, None);
        let cases = [
            (
                NetError::Timeout,
                Reason::Timeout,
                "no answer for A db.example.test",
            ),
            (
                NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)),
                Reason::Dns,
                "A db.example.test: the nameserver answered Query Refused",
            ),
            (
                NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
                    Query::default(),
                    ResponseCode::NXDomain,
                ))),
                Reason::Dns,
                "NXDOMAIN: db.example.test does not exist",
            ),
            (
                NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
                    Query::default(),
                    ResponseCode::NoError,
                ))),
                Reason::Dns,
                "no A records for db.example.test",
            ),
            (
                NetError::NoConnections,
                Reason::Connect,
                "no connections available",
            ),
        ];
        for (error, reason, message) in cases {
            assert_eq!(classify(&error, &target), (reason, message.to_string()));
        }
    }
}
