//! The `tls` settings of the http and grpc kinds: which CA certificates to trust, or (opt-in)
//! none at all. The client config built here is used instead of the client's own only when a
//! check sets them, so checks without them keep their shared clients.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::tls::{CaBundle, provider};
use crate::api::ClientTlsSettings;
use crate::policy::validate::Errors;

/// Validated `tls` settings of an http or grpc check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientTls {
    pub ca: Option<CaBundle>,
    pub insecure_skip_verify: bool,
}

impl ClientTls {
    /// `ca` is the resolved `caFrom`; problems go to `errors` under `path` (the `tls` block).
    pub fn validate(
        settings: &ClientTlsSettings,
        ca: Option<CaBundle>,
        path: &str,
        errors: &mut Errors,
    ) -> Self {
        if settings.insecure_skip_verify && settings.ca_from.is_some() {
            errors.push(
                path,
                "set caFrom or insecureSkipVerify, not both: nothing is verified with insecureSkipVerify",
            );
        }
        Self {
            ca,
            insecure_skip_verify: settings.insecure_skip_verify,
        }
    }

    /// A rustls client config with these settings, offering `alpn` (`h2` for gRPC).
    pub fn config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
                .with_no_client_auth()
        } else {
            let roots = match &self.ca {
                Some(ca) => Arc::new(ca.roots()),
                None => super::tls::system_roots(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// True when a TLS failure (untrusted chain, wrong name, no common protocol) is anywhere in an
/// error's source chain, so http and grpc report it as `tls` rather than `connect`.
pub fn is_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps, and TLS streams wrap theirs in one.
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// `insecureSkipVerify`: any certificate for any name is accepted. The handshake signature is
/// still checked against the presented certificate, so the connection is at least encrypted to
/// the holder of its key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn tls_failures_are_found_through_wrapping_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error")]
        struct Wrapper(#[source] Box<dyn std::error::Error + Send + Sync>);
        let tls = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let in_io = || io::Error::new(io::ErrorKind::InvalidData, tls());
        let cases: Vec<(Box<dyn std::error::Error>, bool)> = vec![
            (Box::new(tls()), true),
            (Box::new(in_io()), true),
            (Box::new(Wrapper(Box::new(in_io()))), true),
            (Box::new(io::Error::other(in_io())), true),
            (
                Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
                false,
            ),
            (Box::new(Wrapper("refused".into())), false),
        ];
        for (error, expected) in cases {
            assert_eq!(is_tls_error(error.as_ref()), expected, "{error:?}");
        }
    }
}
