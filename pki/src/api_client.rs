//! The client side of TLS to a global's REST API, shared by `straitctl` and the global's
//! replicas (which forward to each other).
//!
//! In: the PEM of the CA certificates to trust. Out: a rustls client configuration.

use std::sync::Arc;

/// The name strait-global's own API certificate always carries.
pub const GLOBAL_SERVER_NAME: &str = "strait-global";

/// rustls settings for a client of a global's REST API (`straitctl`, another replica) that
/// trust only the CA certificates in `ca_pem`. The server's chain is verified for the URL's
/// host, or else for [`GLOBAL_SERVER_NAME`]: the CA is the global's own system CA (or one the
/// operator chose), so a certificate it issued for the global is the global's wherever it is
/// reached.
pub fn global_api_client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in it".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(GlobalApiVerifier { inner }))
        .with_no_client_auth())
}

/// See [`global_api_client_config`].
#[derive(Debug)]
struct GlobalApiVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for GlobalApiVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => {
                let ours =
                    rustls::pki_types::ServerName::try_from(GLOBAL_SERVER_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
                self.inner.verify_server_cert(end_entity, intermediates, &ours, ocsp_response, now)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
