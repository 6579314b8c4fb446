//! `type: tls`: a TLS handshake. The chain is verified by rustls (webpki) against the system
//! roots or the block's CA bundle, the certificate must name the host, and the days until it
//! expires decide ok, degraded or down. Nothing is sent after the handshake.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::guard::TargetGuard;
use super::tcp::{connect_checked, split_host_port};
use super::{CaField, CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::TlsCheck;
use crate::health::{Outcome, Reason};
use crate::policy::duration;
use crate::policy::validate::{Errors, check_address};

/// The defaults: two weeks of warning, down once expired.
const DEFAULT_DEGRADED_BEFORE: Duration = Duration::from_secs(14 * DAY);
const DEFAULT_DOWN_BEFORE: Duration = Duration::ZERO;
/// Ten years: longer than any certificate a public CA issues, so a larger window is a typo.
const MAX_WINDOW: Duration = Duration::from_secs(3650 * DAY);
const DAY: u64 = 86_400;

/// CA certificates (DER) to trust instead of the system roots. Part of the target, so a
/// rotated bundle restarts the check with the new roots.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CaBundle(Arc<[Vec<u8>]>);

impl CaBundle {
    /// Messages never quote the text: it may come from a Secret.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let certificates: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| "a PEM block is malformed".to_string())?;
        if certificates.is_empty() {
            return Err("no PEM CERTIFICATE block found".into());
        }
        let (_, unusable) =
            RootCertStore::empty().add_parsable_certificates(certificates.iter().cloned());
        if unusable > 0 {
            return Err(format!(
                "{unusable} of {} certificates cannot be used as a trust anchor",
                certificates.len()
            ));
        }
        Ok(Self(certificates.iter().map(|c| c.to_vec()).collect()))
    }

    pub(super) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(self.0.iter().map(|c| CertificateDer::from(c.clone())));
        roots
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsTarget {
    pub address: String,
    pub ca: Option<CaBundle>,
    pub degraded_before: Duration,
    pub down_before: Duration,
}

impl CheckBlock for TlsCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        None
    }

    fn ca_from(&self) -> Option<CaField<'_>> {
        let from = self.ca_from.as_ref()?;
        Some(CaField { from, at: "caFrom" })
    }

    fn target(&self, resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target> {
        let path = format!("{block}.address");
        check_address(&self.address, &path, errors);
        if let Some((host, _)) = split_host_port(&self.address)
            && server_name(host).is_none()
        {
            errors.push(
                path,
                format!("host {host:?} is not a DNS name or an IP address"),
            );
        }
        let mut window = |name: &str, text: Option<&str>, default: Duration| match text {
            None => default,
            Some(text) => parse_window(text).unwrap_or_else(|e| {
                errors.push(format!("{block}.{name}"), e);
                default
            }),
        };
        let degraded_before = window(
            "degradedBefore",
            self.degraded_before.as_deref(),
            DEFAULT_DEGRADED_BEFORE,
        );
        let down_before = window(
            "downBefore",
            self.down_before.as_deref(),
            DEFAULT_DOWN_BEFORE,
        );
        if down_before >= degraded_before {
            let field = if self.down_before.is_some() {
                "downBefore"
            } else {
                "degradedBefore"
            };
            errors.push(
                format!("{block}.{field}"),
                format!(
                    "downBefore {} must be less than degradedBefore {}",
                    format_window(down_before),
                    format_window(degraded_before)
                ),
            );
        }
        Some(Target::Tls(TlsTarget {
            address: self.address.clone(),
            ca: resolved.ca,
            degraded_before,
            down_before,
        }))
    }
}

/// `14d` or any policy duration (`36h`, `0s`).
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let window = match text.strip_suffix('d') {
        Some(days) if !days.is_empty() && days.bytes().all(|b| b.is_ascii_digit()) => days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(DAY))
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?}: too large"))?,
        _ => duration::parse(text).map_err(|e| format!("{e}, or whole days such as 14d"))?,
    };
    if window > MAX_WINDOW {
        return Err(format!(
            "{text} must be at most {}d",
            MAX_WINDOW.as_secs() / DAY
        ));
    }
    Ok(window)
}

fn format_window(window: Duration) -> String {
    let secs = window.as_secs();
    if secs > 0 && secs.is_multiple_of(DAY) && window.subsec_nanos() == 0 {
        format!("{}d", secs / DAY)
    } else {
        duration::format(window)
    }
}

fn server_name(host: &str) -> Option<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).ok()
}

/// The state a certificate's expiry gives, `now` and `not_after` in Unix seconds. Pure, so the
/// boundaries are tested without certificates.
pub fn judge_expiry(not_after: i64, now: i64, target: &TlsTarget) -> Observation {
    let remaining = not_after.saturating_sub(now);
    let days = remaining.div_euclid(DAY as i64);
    let when = DateTime::<Utc>::from_timestamp(not_after, 0)
        .map_or_else(|| not_after.to_string(), |t| t.to_rfc3339());
    let detail = if remaining < 0 {
        format!(
            "certificate expired {} days ago (notAfter {when})",
            -days - 1
        )
    } else {
        format!("certificate expires in {days} days (notAfter {when})")
    };
    let sooner_than = |window: Duration| i128::from(remaining) < window.as_secs() as i128;
    let (outcome, reason, error) = if sooner_than(target.down_before) {
        (Outcome::Down, Reason::CertExpiry, Some(detail.clone()))
    } else if sooner_than(target.degraded_before) {
        (Outcome::Degraded, Reason::CertExpiry, None)
    } else {
        (Outcome::Ok, Reason::Ok, None)
    };
    Observation {
        outcome,
        reason,
        detail: Some(detail),
        error,
        queue_depth: None,
        cert_not_after: Some(not_after),
    }
}

pub struct TlsProbe {
    target: TlsTarget,
    verifier: Result<Arc<WebPkiServerVerifier>, String>,
    guard: Option<Arc<TargetGuard>>,
}

impl TlsProbe {
    pub fn new(target: TlsTarget, guard: Option<Arc<TargetGuard>>) -> Self {
        let roots = match &target.ca {
            Some(ca) => Arc::new(ca.roots()),
            None => system_roots(),
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| format!("no usable CA certificates: {e}"));
        Self {
            target,
            verifier,
            guard,
        }
    }

    pub async fn run(&self) -> Observation {
        let address = &self.target.address;
        let verifier = match &self.verifier {
            Ok(verifier) => verifier.clone(),
            Err(e) => return Observation::down(Reason::Config, e.clone()),
        };
        let Some(name) = split_host_port(address).and_then(|(host, _)| server_name(host)) else {
            return Observation::down(Reason::Config, format!("{address:?} is not host:port"));
        };
        let connected = match &self.guard {
            None => TcpStream::connect(address).await,
            // Resolved once, judged, and connected to exactly what was judged; the name is
            // still the one sent as SNI and verified.
            Some(guard) => match connect_checked(guard, address).await {
                Ok(connected) => connected,
                Err(observation) => return observation,
            },
        };
        let stream = match connected {
            Ok(stream) => stream,
            Err(e) => return Observation::down(Reason::Connect, e.to_string()),
        };
        let peer = stream.peer_addr().ok();
        let recorder = Arc::new(Recorder {
            inner: verifier,
            leaf: Mutex::new(None),
        });
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let handshake = connector.connect(name, stream).await;
        let now = Utc::now().timestamp();
        match handshake {
            Ok(mut tls) => {
                let (_, session) = tls.get_ref();
                // rustls spells it `TLSv1_3`; people write TLSv1.3.
                let version = session
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("TLS")
                    .replace('_', ".");
                let leaf = session.peer_certificates().and_then(|c| c.first());
                let observation = match leaf.map(|c| super::x509::not_after(c)) {
                    Some(Ok(not_after)) => judge_expiry(not_after, now, &self.target),
                    Some(Err(e)) => Observation::down(Reason::Error, e.to_string()),
                    None => Observation::down(Reason::Tls, "the server sent no certificate"),
                };
                let _ = tls.shutdown().await;
                with_context(observation, &version, peer)
            }
            Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                // Expiry is judged by the windows, with the date; everything else is `tls`.
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                )) => match recorder.leaf().map(|c| super::x509::not_after(&c)) {
                    Some(Ok(not_after)) => judge_expiry(not_after, now, &self.target),
                    _ => Observation::down(Reason::CertExpiry, e.to_string()),
                },
                Some(tls) => Observation::down(Reason::Tls, format!("handshake failed: {tls}")),
                None => Observation::down(Reason::Connect, format!("handshake failed: {e}")),
            },
        }
    }
}

/// Prefixes the detail with the protocol and peer, so /ready shows what was actually reached.
fn with_context(
    mut observation: Observation,
    version: &str,
    peer: Option<SocketAddr>,
) -> Observation {
    if let (Some(detail), Some(peer)) = (&observation.detail, peer) {
        observation.detail = Some(format!("{version} with {peer}: {detail}"));
    }
    observation
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read once: the system store does not change under a running process in any way we honour.
pub(super) fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            Arc::new(roots)
        })
        .clone()
}

/// The rustls verifier, unchanged, plus a copy of the certificate it was shown: when it
/// refuses an expired certificate the date still has to be read for the report.
#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    leaf: Mutex<Option<Vec<u8>>>,
}

impl Recorder {
    fn leaf(&self) -> Option<Vec<u8>> {
        self.leaf.lock().expect("recorder lock").clone()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.leaf.lock().expect("recorder lock") = Some(end_entity.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(degraded_days: u64, down_days: u64) -> TlsTarget {
        TlsTarget {
            address: "example.test:443".into(),
            ca: None,
            degraded_before: Duration::from_secs(degraded_days * DAY),
            down_before: Duration::from_secs(down_days * DAY),
        }
    }

    #[test]
    fn expiry_decides_the_state() {
        let now = 1_800_000_000;
        let day = DAY as i64;
        let cases: &[(i64, u64, u64, Outcome, Reason, &str)] = &[
            (
                90 * day,
                14,
                0,
                Outcome::Ok,
                Reason::Ok,
                "expires in 90 days",
            ),
            (
                14 * day,
                14,
                0,
                Outcome::Ok,
                Reason::Ok,
                "expires in 14 days",
            ),
            (
                14 * day - 1,
                14,
                0,
                Outcome::Degraded,
                Reason::CertExpiry,
                "expires in 13 days",
            ),
            (
                3 * day,
                14,
                0,
                Outcome::Degraded,
                Reason::CertExpiry,
                "expires in 3 days",
            ),
            (
                0,
                14,
                0,
                Outcome::Degraded,
                Reason::CertExpiry,
                "expires in 0 days",
            ),
            (
                -1,
                14,
                0,
                Outcome::Down,
                Reason::CertExpiry,
                "expired 0 days ago",
            ),
            (
                -2 * day - 5,
                14,
                0,
                Outcome::Down,
                Reason::CertExpiry,
                "expired 2 days ago",
            ),
            (
                3 * day,
                14,
                7,
                Outcome::Down,
                Reason::CertExpiry,
                "expires in 3 days",
            ),
            (
                7 * day,
                14,
                7,
                Outcome::Degraded,
                Reason::CertExpiry,
                "expires in 7 days",
            ),
        ];
        for (remaining, degraded, down, outcome, reason, text) in cases {
            let observed = judge_expiry(now + remaining, now, &target(*degraded, *down));
            assert_eq!(
                (observed.outcome, observed.reason),
                (*outcome, *reason),
                "{remaining}s left, windows {degraded}d/{down}d"
            );
            let detail = observed.detail.unwrap();
            assert!(
                detail.starts_with(&format!("certificate {text} (notAfter ")),
                "{detail}"
            );
            assert_eq!(observed.error.is_some(), *outcome == Outcome::Down);
            assert_eq!(observed.cert_not_after, Some(now + remaining));
        }
    }

    #[test]
    fn windows_parse_days_and_durations() {
        let ok = [
            ("14d", 14 * DAY * 1000),
            ("0s", 0),
            ("36h", 36 * 3600 * 1000),
            ("1h30m", 5400 * 1000),
            ("3650d", 3650 * DAY * 1000),
        ];
        for (text, millis) in ok {
            assert_eq!(
                parse_window(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        for text in [
            "",
            "d",
            "14",
            "-1d",
            "1d12h",
            "3651d",
            "99999999999999999999d",
        ] {
            assert!(parse_window(text).is_err(), "{text} must be rejected");
        }
    }

    #[test]
    fn ca_bundles_are_checked_without_quoting_them() {
        let ca = include_str!("../policy/validate/testdata/ca.pem");
        assert!(CaBundle::from_pem(ca).is_ok());
        // A key beside the certificate is skipped, not an error.
        let with_key =
            format!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{ca}");
        assert!(CaBundle::from_pem(&with_key).is_ok());
        assert_eq!(
            CaBundle::from_pem("hunter2"),
            Err("no PEM CERTIFICATE block found".into())
        );
        let broken = "-----BEGIN CERTIFICATE-----\nhunter2!!\n-----END CERTIFICATE-----\n";
        let error = CaBundle::from_pem(broken).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
