//! The target guard: which addresses a check may connect to. A HealthPolicy author must not be
//! able to point healthgate at cloud metadata, the API server or another tenant's services and
//! read the answer back through /ready, status and Events.
//!
//! The guard judges resolved socket addresses, never names, so every probe resolves first, asks
//! [`TargetGuard::check`] about each address and connects only to addresses it passed: a name
//! that resolves somewhere else later is judged again on that connection.
//!
//! Precedence, first match wins:
//! 1. the API server's own address (IP and port) is denied;
//! 2. link-local (169.254.0.0/16, fe80::/10) is denied;
//! 3. `--deny-cidr` is denied;
//! 4. with `--allow-cidr`, an address in it is allowed and every other one denied (loopback too);
//! 5. without it, loopback (and the unspecified address, which Linux connects to loopback) is
//!    allowed only when the guard says so (`--policy-name`, the sidecar: loopback is its own pod;
//!    standalone mode); everything else is allowed.
//!
//! Deny always wins over allow. IPv4-mapped IPv6 addresses (`::ffff:169.254.169.254`) are judged
//! as the IPv4 address they reach.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use super::Observation;
use crate::health::Reason;

/// Link-local ranges: cloud metadata services (169.254.169.254, fd00:ec2::254 aside) and
/// node-local agents live here, and no dependency a policy should reach does.
const LINK_LOCAL: [&str; 2] = ["169.254.0.0/16", "fe80::/10"];

/// An address range from `--allow-cidr` or `--deny-cidr`: `10.0.0.0/8`, `fd00::/8`, or a bare
/// address meaning just that address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Cidr(IpNet::from(normalise(ip))));
        }
        let net: IpNet = text.parse().map_err(|_| {
            format!("{text:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8) or an IP address")
        })?;
        // 10.0.0.1/8 is more likely a typo than a wish to deny all of 10/8: say so.
        if net.addr() != net.network() {
            return Err(format!(
                "{text:?} has host bits set; did you mean {}/{}?",
                net.network(),
                net.prefix_len()
            ));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

/// Why an address was refused: shown on /ready, status and Events as the check's error. It names
/// the address and the rule, and nothing of the URL it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{address} {rule}; blocked by the target guard")]
pub struct Blocked {
    address: String,
    rule: String,
}

impl Blocked {
    /// Finds a guard refusal anywhere in an error's source chain: HTTP and gRPC clients wrap
    /// their connector's error in their own.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(blocked) = e.downcast_ref::<Blocked>() {
                return Some(blocked);
            }
            // `io::Error::source` skips the error it wraps and returns that error's source.
            if let Some(inner) = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Blocked>())
            {
                return Some(inner);
            }
            current = e.source();
        }
        None
    }
}

/// The operator's rules for where checks may connect. Built once at start from the flags.
#[derive(Clone, Debug, Default)]
pub struct TargetGuard {
    api_server: Vec<SocketAddr>,
    deny: Vec<Cidr>,
    allow: Vec<Cidr>,
    loopback_allowed: bool,
}

impl TargetGuard {
    /// `loopback_allowed` applies only without an allow list, which otherwise decides alone.
    pub fn new(
        api_server: Vec<SocketAddr>,
        deny: Vec<Cidr>,
        allow: Vec<Cidr>,
        loopback_allowed: bool,
    ) -> Self {
        Self {
            api_server: api_server
                .into_iter()
                .map(|a| SocketAddr::new(normalise(a.ip()), a.port()))
                .collect(),
            deny,
            allow,
            loopback_allowed,
        }
    }

    pub fn check(&self, address: SocketAddr) -> Result<(), Blocked> {
        let ip = normalise(address.ip());
        let blocked = |rule: String| {
            Err(Blocked {
                address: ip.to_string(),
                rule,
            })
        };
        if self
            .api_server
            .iter()
            .any(|a| a.ip() == ip && a.port() == address.port())
        {
            return Err(Blocked {
                address: SocketAddr::new(ip, address.port()).to_string(),
                rule: "is the API server".into(),
            });
        }
        if LINK_LOCAL.iter().any(|net| {
            net.parse::<IpNet>()
                .expect("a valid constant")
                .contains(&ip)
        }) {
            return blocked("is link-local (denied by default)".into());
        }
        if let Some(cidr) = self.deny.iter().find(|c| c.contains(ip)) {
            return blocked(format!("is in --deny-cidr {cidr}"));
        }
        if !self.allow.is_empty() {
            if self.allow.iter().any(|c| c.contains(ip)) {
                return Ok(());
            }
            return blocked(format!("is not in --allow-cidr {}", join(&self.allow)));
        }
        if (ip.is_loopback() || ip.is_unspecified()) && !self.loopback_allowed {
            return blocked(
                "is loopback (allowed only with --policy-name or a matching --allow-cidr)".into(),
            );
        }
        Ok(())
    }

    /// Checks every address; the first refusal wins. A name that resolves to one denied
    /// address among allowed ones is refused whole: which one a client picks is not ours to know.
    pub fn check_all(&self, addresses: &[SocketAddr]) -> Result<(), Blocked> {
        addresses.iter().try_for_each(|a| self.check(*a))
    }
}

/// Resolves `host:port` and checks every address; what comes back is what to connect to.
pub async fn resolve(
    guard: &TargetGuard,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ResolveError> {
    // `[::1]` in a URL is `::1` to the resolver.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| ResolveError::Lookup(format!("resolving {host}: {e}")))?
        .collect();
    if addresses.is_empty() {
        return Err(ResolveError::Lookup(format!("{host} has no addresses")));
    }
    guard.check_all(&addresses)?;
    Ok(addresses)
}

/// A driver's host and port, judged before every probe of a client that resolves names itself
/// (sqlx, redis). See [`ClientSource`] for how the client is then tied to what was judged.
#[derive(Clone, Debug)]
pub struct PreCheck {
    guard: Arc<TargetGuard>,
    host: String,
    port: u16,
}

impl PreCheck {
    pub fn new(guard: Arc<TargetGuard>, host: String, port: u16) -> Self {
        Self { guard, host, port }
    }

    /// The judged addresses; `Err` is the observation to report instead of probing.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, Observation> {
        match resolve(&self.guard, &self.host, self.port).await {
            Ok(addresses) => Ok(addresses),
            Err(ResolveError::Blocked(b)) => Err(Observation::blocked(&b)),
            Err(ResolveError::Lookup(message)) => Err(Observation::down(Reason::Connect, message)),
        }
    }
}

type Build<C> = Box<dyn Fn(SocketAddr) -> Result<C, String> + Send + Sync>;

/// Where a postgres or redis probe gets its pooled client.
pub enum ClientSource<C> {
    /// No guard: the client shared by every check of the URL.
    Shared(Result<C, String>),
    /// Guarded, and connected to the judged address itself: the name is resolved and judged
    /// before every probe, and the client is rebuilt for a new address when the name stops
    /// resolving to the one it connects to, so the driver never resolves the name itself.
    Pinned(Pinned<C>),
    /// Guarded where the driver needs the name to connect (TLS hostname verification): judged
    /// before every probe, but the driver resolves again when it connects (README: "Remaining
    /// windows").
    Checked(Result<C, String>, PreCheck),
}

pub struct Pinned<C> {
    check: PreCheck,
    build: Build<C>,
    current: Mutex<Option<(SocketAddr, C)>>,
}

impl<C: Clone> ClientSource<C> {
    pub fn pinned(
        check: PreCheck,
        build: impl Fn(SocketAddr) -> Result<C, String> + Send + Sync + 'static,
    ) -> Self {
        ClientSource::Pinned(Pinned {
            check,
            build: Box::new(build),
            current: Mutex::new(None),
        })
    }

    /// The client to probe with; `Err` is the observation to report instead (blocked, a failed
    /// lookup, an unusable URL). Nothing has connected when it returns.
    pub async fn get(&self) -> Result<C, Observation> {
        let config = |e: &String| Observation::down(Reason::Config, e.clone());
        match self {
            ClientSource::Shared(client) => client.clone().map_err(|e| config(&e)),
            ClientSource::Checked(client, check) => {
                let client = client.clone().map_err(|e| config(&e))?;
                check.resolve().await?;
                Ok(client)
            }
            ClientSource::Pinned(pinned) => {
                let addresses = pinned.check.resolve().await?;
                let mut current = pinned.current.lock().expect("pinned client lock");
                if let Some((address, client)) = current.as_ref()
                    && addresses.contains(address)
                {
                    return Ok(client.clone());
                }
                // Dropping the client for the old address closes its connections.
                let address = addresses[0];
                let client = (pinned.build)(address).map_err(|e| config(&e))?;
                *current = Some((address, client.clone()));
                Ok(client)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error("{0}")]
    Lookup(String),
}

fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn join(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn rules_and_precedence() {
        let api = vec![addr("10.96.0.1:443"), addr("127.0.0.1:6443")];
        let kube = TargetGuard::new(api.clone(), cidrs(&["10.0.0.0/8"]), vec![], false);
        let sidecar = TargetGuard::new(api.clone(), vec![], vec![], true);
        let allow = TargetGuard::new(
            api.clone(),
            cidrs(&["10.1.2.3"]),
            cidrs(&["10.0.0.0/8", "127.0.0.1/32"]),
            false,
        );
        let standalone = TargetGuard::new(vec![], cidrs(&["192.168.0.0/16"]), vec![], true);
        let cases: &[(&TargetGuard, &str, Option<&str>)] = &[
            (
                &kube,
                "169.254.169.254:80",
                Some("169.254.169.254 is link-local (denied by default)"),
            ),
            (
                &kube,
                "[::ffff:169.254.169.254]:80",
                Some("169.254.169.254 is link-local (denied by default)"),
            ),
            (
                &kube,
                "[fe80::1]:80",
                Some("fe80::1 is link-local (denied by default)"),
            ),
            (
                &kube,
                "10.96.0.1:443",
                Some("10.96.0.1:443 is the API server"),
            ),
            // The API server's host may serve other things; only its own port is its address.
            (
                &kube,
                "10.96.0.1:80",
                Some("10.96.0.1 is in --deny-cidr 10.0.0.0/8"),
            ),
            (&sidecar, "10.96.0.1:80", None),
            (
                &kube,
                "10.2.3.4:5432",
                Some("10.2.3.4 is in --deny-cidr 10.0.0.0/8"),
            ),
            (&kube, "192.168.1.1:5432", None),
            (&kube, "[2001:db8::1]:80", None),
            (
                &kube,
                "127.0.0.1:5432",
                Some(
                    "127.0.0.1 is loopback (allowed only with --policy-name or a matching --allow-cidr)",
                ),
            ),
            (
                &kube,
                "[::1]:5432",
                Some(
                    "::1 is loopback (allowed only with --policy-name or a matching --allow-cidr)",
                ),
            ),
            // Linux connects 0.0.0.0 to the local host.
            (
                &kube,
                "0.0.0.0:5432",
                Some(
                    "0.0.0.0 is loopback (allowed only with --policy-name or a matching --allow-cidr)",
                ),
            ),
            (&sidecar, "127.0.0.1:5432", None),
            (&sidecar, "[::1]:5432", None),
            (
                &sidecar,
                "127.0.0.1:6443",
                Some("127.0.0.1:6443 is the API server"),
            ),
            (
                &sidecar,
                "169.254.169.254:80",
                Some("169.254.169.254 is link-local (denied by default)"),
            ),
            (&allow, "10.9.9.9:80", None),
            (&allow, "127.0.0.1:5432", None),
            // Deny wins over allow.
            (
                &allow,
                "10.1.2.3:80",
                Some("10.1.2.3 is in --deny-cidr 10.1.2.3/32"),
            ),
            (
                &allow,
                "10.96.0.1:443",
                Some("10.96.0.1:443 is the API server"),
            ),
            (
                &allow,
                "169.254.1.1:80",
                Some("169.254.1.1 is link-local (denied by default)"),
            ),
            (
                &allow,
                "192.168.1.1:80",
                Some("192.168.1.1 is not in --allow-cidr 10.0.0.0/8,127.0.0.1/32"),
            ),
            (
                &allow,
                "[::1]:80",
                Some("::1 is not in --allow-cidr 10.0.0.0/8,127.0.0.1/32"),
            ),
            (&standalone, "127.0.0.1:5432", None),
            (
                &standalone,
                "192.168.5.5:80",
                Some("192.168.5.5 is in --deny-cidr 192.168.0.0/16"),
            ),
        ];
        for (guard, address, expected) in cases {
            let got = guard.check(addr(address)).err().map(|b| b.to_string());
            let expected = expected.map(|e| format!("{e}; blocked by the target guard"));
            assert_eq!(got, expected, "{address} with {guard:?}");
        }
    }

    #[test]
    fn one_denied_address_blocks_the_name() {
        let guard = TargetGuard::new(vec![], vec![], vec![], false);
        assert!(guard.check_all(&[addr("10.0.0.1:80")]).is_ok());
        let err = guard
            .check_all(&[addr("10.0.0.1:80"), addr("169.254.169.254:80")])
            .unwrap_err();
        assert!(err.to_string().starts_with("169.254.169.254 "), "{err}");
    }

    #[test]
    fn cidr_parsing() {
        let ok = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            (" 10.0.0.0/8 ", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("fd00::/8", "fd00::/8"),
            ("::1", "::1/128"),
            ("::ffff:10.1.2.3", "10.1.2.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ];
        for (text, shown) in ok {
            assert_eq!(text.parse::<Cidr>().unwrap().to_string(), shown, "{text}");
        }
        let bad = [
            (
                "10.0.0.1/8",
                "\"10.0.0.1/8\" has host bits set; did you mean 10.0.0.0/8?",
            ),
            (
                "10.0.0.0/33",
                "\"10.0.0.0/33\" is not a CIDR (like 10.0.0.0/8 or fd00::/8) or an IP address",
            ),
            (
                "example.com",
                "\"example.com\" is not a CIDR (like 10.0.0.0/8 or fd00::/8) or an IP address",
            ),
            (
                "",
                "\"\" is not a CIDR (like 10.0.0.0/8 or fd00::/8) or an IP address",
            ),
        ];
        for (text, message) in bad {
            assert_eq!(text.parse::<Cidr>().unwrap_err(), message, "{text}");
        }
    }

    #[tokio::test]
    async fn a_pinned_client_is_built_for_the_judged_address_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let guard = Arc::new(TargetGuard::new(
            vec![],
            cidrs(&["127.0.0.2"]),
            vec![],
            true,
        ));
        let builds = Arc::new(AtomicUsize::new(0));
        let source = |host: &str| {
            let builds = builds.clone();
            ClientSource::pinned(
                PreCheck::new(guard.clone(), host.to_string(), 5432),
                move |address| {
                    builds.fetch_add(1, Ordering::SeqCst);
                    Ok(address)
                },
            )
        };
        let allowed = source("127.0.0.1");
        assert_eq!(allowed.get().await.unwrap(), addr("127.0.0.1:5432"));
        assert_eq!(allowed.get().await.unwrap(), addr("127.0.0.1:5432"));
        assert_eq!(builds.load(Ordering::SeqCst), 1, "one client per address");

        let denied = source("127.0.0.2").get().await.unwrap_err();
        assert_eq!(denied.reason, Reason::Blocked);
        assert_eq!(
            denied.error.as_deref(),
            Some("127.0.0.2 is in --deny-cidr 127.0.0.2/32; blocked by the target guard")
        );
        assert_eq!(
            builds.load(Ordering::SeqCst),
            1,
            "no client for a denied address"
        );
    }

    #[test]
    fn blocked_is_found_through_wrapping_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Wrapper(#[source] Box<dyn std::error::Error + Send + Sync>);
        let guard = TargetGuard::default();
        let blocked = guard.check(addr("169.254.169.254:80")).unwrap_err();
        let wrapped = Wrapper(Box::new(blocked.clone()));
        assert_eq!(Blocked::find(&wrapped), Some(&blocked));
        let other = Wrapper("refused".into());
        assert_eq!(Blocked::find(&other), None);
    }
}
