//! mTLS between workloads: the one place where the crypto provider (ring), the TLS version
//! (1.3 only) and certificate verification are chosen.
//!
//! In: a workload certificate chain and private key (PEM, see [`WorkloadCert`]) and the mesh
//! [`TrustBundle`] (roots plus revoked intermediates). Out: a rustls [`ServerConfig`] that
//! requires a client certificate chaining to the bundle and exposes the peer's SPIFFE ID after
//! the handshake ([`peer_identity`]), and [`ClientConfig`]s that present our certificate and
//! accept a server only if its SPIFFE ID equals the one expected for the destination.
//!
//! Peers are identified by SPIFFE URI SANs, never by DNS names: the SNI a client sends is a
//! routing label for gateways, not something the server certificate is checked against. Chain
//! building and signature checks are rustls-webpki's, with the ring provider's algorithms; this
//! module adds the revoked-intermediate set (a chain is only accepted if it reaches a root
//! without a revoked intermediate) and the identity check. The roots are parsed once per
//! bundle, not per handshake. TLS 1.3 session resumption is left on; its cache lives in the
//! config, so a new certificate or bundle (a revocation) starts from an empty one.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig, SignatureScheme,
};
use strait_pki::{fingerprint_der, Identity, TrustBundle, VerifyError};
use webpki::{EndEntityCert, KeyUsage};

/// ALPN for raw TCP carried over the mTLS tunnel between sidecars.
pub const ALPN_TCP: &[u8] = b"strait/tcp";
/// ALPN for HTTP/2 (and gRPC) between sidecars.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1 between sidecars: an application's HTTP/1.1 requests, one at a time per
/// connection, without HTTP/2's framing when nothing needs multiplexing.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of the tunnel between two zones' gateways (QUIC, and its TCP+TLS fallback).
pub const ALPN_ZONE_TUNNEL: &[u8] = b"strait/zone-tunnel";

/// The TLS versions Strait speaks between workloads: TLS 1.3 only.
static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The crypto provider every Strait TLS config is built with (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors building TLS configs or reading a peer's identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain PEM held no certificate or could not be decoded.
    #[error("workload certificate chain: {reason}")]
    BadCertificate {
        /// What was wrong.
        reason: String,
    },
    /// The private key PEM held no key or could not be loaded.
    #[error("workload private key: {reason}")]
    BadKey {
        /// What was wrong.
        reason: String,
    },
    /// The trust bundle holds no usable root.
    #[error("trust bundle: {0}")]
    Bundle(VerifyError),
    /// Our own certificate does not verify against the trust bundle (wrong CA, revoked
    /// intermediate, expired, no SPIFFE ID): refusing to use it.
    #[error("the workload certificate does not verify against the trust bundle: {0}")]
    OwnChain(VerifyError),
    /// rustls refused the configuration (for instance a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The TLS session has no verified peer certificate with a SPIFFE ID.
    #[error("the peer presented no certificate with a SPIFFE ID: {0}")]
    NoPeerIdentity(VerifyError),
}

/// A server presented a valid certificate for another identity than the expected one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server is {presented}, expected {expected}")]
pub struct IdentityMismatch {
    /// The SPIFFE ID the client wanted to reach.
    pub expected: Identity,
    /// The SPIFFE ID in the server's certificate.
    pub presented: Identity,
}

/// A workload's certificate chain and key, parsed once, with the identity and expiry of its leaf.
#[derive(Clone)]
pub struct WorkloadCert {
    key: Arc<CertifiedKey>,
    identity: Identity,
    not_after: SystemTime,
}

impl WorkloadCert {
    /// Parses a chain (leaf first, then intermediates) and its private key, both PEM, and
    /// checks that the key belongs to the leaf.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let bad_cert = |reason: String| TlsError::BadCertificate { reason };
        let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| bad_cert(e.to_string()))?;
        let leaf = chain.first().ok_or_else(|| bad_cert("no CERTIFICATE block found".into()))?;
        let identity = spiffe_id_of(leaf).map_err(|e| bad_cert(e.to_string()))?;
        let not_after = not_after_of(leaf).map_err(|e| bad_cert(e.to_string()))?;
        let key = match rustls_pemfile::private_key(&mut key_pem.as_bytes()) {
            Ok(Some(key)) => key,
            Ok(None) => return Err(TlsError::BadKey { reason: "no PRIVATE KEY block found".into() }),
            Err(e) => return Err(TlsError::BadKey { reason: e.to_string() }),
        };
        let key = CertifiedKey::from_der(chain, key, &crypto_provider())?;
        Ok(WorkloadCert { key: Arc::new(key), identity, not_after })
    }

    /// The SPIFFE ID of the leaf.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The leaf's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The chain, leaf first (DER).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert").field("identity", &self.identity).field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// Verifies peer chains against a trust bundle's roots, refusing revoked intermediates, and
/// returns the peer's SPIFFE ID. Built once per bundle.
pub struct PeerVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    revoked: BTreeSet<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    /// Parses the bundle's roots.
    pub fn new(bundle: &TrustBundle) -> Result<Self, TlsError> {
        let bad = |reason: String| TlsError::Bundle(VerifyError::BadCertificate { what: "trust bundle root", reason });
        let mut anchors = Vec::new();
        for pem in &bundle.roots {
            for der in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let der = der.map_err(|e| bad(e.to_string()))?;
                let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| bad(format!("{e:?}")))?;
                anchors.push(anchor.to_owned());
            }
        }
        if anchors.is_empty() {
            return Err(TlsError::Bundle(VerifyError::EmptyTrustBundle));
        }
        let algorithms = crypto_provider().signature_verification_algorithms;
        Ok(PeerVerifier { anchors, revoked: bundle.revoked.clone(), algorithms })
    }

    /// Verifies `leaf` with the `intermediates` the peer sent, at `now`, for `usage`.
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<Identity, VerifyError> {
        let end_entity = EndEntityCert::try_from(leaf)
            .map_err(|e| VerifyError::BadCertificate { what: "leaf certificate", reason: format!("{e:?}") })?;
        // Revoked intermediates are left out of path building, so no accepted path uses one.
        let (usable, revoked): (Vec<_>, Vec<_>) = if self.revoked.is_empty() {
            (intermediates.iter().map(borrow).collect(), Vec::new())
        } else {
            intermediates.iter().map(borrow).partition(|der| !self.revoked.contains(&fingerprint_der(der)))
        };
        let verified = end_entity.verify_for_usage(self.algorithms.all, &self.anchors, &usable, now, usage, None, None).map(|_| ());
        if let Err(error) = verified {
            return Err(self.explain(&end_entity, usable, revoked, now, usage, error));
        }
        spiffe_id_of(leaf)
    }

    /// Names a revoked intermediate when the only path to a root went through it.
    fn explain<'c>(
        &self,
        end_entity: &EndEntityCert<'_>,
        mut usable: Vec<CertificateDer<'c>>,
        revoked: Vec<CertificateDer<'c>>,
        now: UnixTime,
        usage: KeyUsage,
        error: webpki::Error,
    ) -> VerifyError {
        if !revoked.is_empty() {
            usable.extend(revoked);
            if let Ok(path) = end_entity.verify_for_usage(self.algorithms.all, &self.anchors, &usable, now, usage, None, None) {
                let fingerprint = path.intermediate_certificates().map(|c| fingerprint_der(&c.der())).find(|fp| self.revoked.contains(fp));
                if let Some(fingerprint) = fingerprint {
                    return VerifyError::RevokedIntermediate { fingerprint };
                }
            }
        }
        match error {
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => VerifyError::UnknownIssuer,
            other => VerifyError::InvalidChain { reason: format!("{other:?}") },
        }
    }
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier").field("roots", &self.anchors.len()).field("revoked", &self.revoked).finish()
    }
}

/// Builds the server side: TLS 1.3, a mandatory client certificate verified by `verifier`,
/// our certificate, and the ALPN protocols we accept (in order of preference).
pub fn server_config(cert: &WorkloadCert, verifier: Arc<PeerVerifier>, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(Arc::new(ClientVerifier(verifier)))
        .with_cert_resolver(Arc::new(ServerCert(cert.key.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A template for client configs sharing one certificate and verifier; each config built from
/// it differs only in the expected server identity and ALPN. Cheap to clone.
#[derive(Clone)]
pub struct ClientConfigBuilder {
    builder: rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>,
    cert: Arc<CertifiedKey>,
    verifier: Arc<PeerVerifier>,
}

impl ClientConfigBuilder {
    /// Prepares client configs that present `cert` and verify servers with `verifier`.
    pub fn new(cert: &WorkloadCert, verifier: Arc<PeerVerifier>) -> Result<Self, TlsError> {
        let builder = ClientConfig::builder_with_provider(crypto_provider()).with_protocol_versions(PROTOCOL_VERSIONS)?;
        Ok(ClientConfigBuilder { builder, cert: cert.key.clone(), verifier })
    }

    /// A client config that accepts only a server whose SPIFFE ID is `expected` and offers `alpn`.
    pub fn build(&self, expected: &Identity, alpn: &[&[u8]]) -> ClientConfig {
        let verifier = ServerVerifier { peers: self.verifier.clone(), expected: expected.clone() };
        let mut config = self
            .builder
            .clone()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(ClientCert(self.cert.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// The SPIFFE ID of the verified peer of a finished handshake.
pub fn peer_identity(conn: &CommonState) -> Result<Identity, TlsError> {
    match conn.peer_certificates().and_then(|certs| certs.first()) {
        Some(leaf) => spiffe_id_of(leaf).map_err(TlsError::NoPeerIdentity),
        None => Err(TlsError::NoPeerIdentity(VerifyError::NoSpiffeId { found: 0 })),
    }
}

/// The zone whose CA issued the verified peer's certificate of a finished handshake: the
/// `spiffe://<trust-domain>/zone/<zone>` ID of the intermediate it presented after its leaf.
/// `None` when it presented no intermediate, or one that names no zone.
pub fn peer_zone(conn: &CommonState) -> Option<String> {
    let intermediate = conn.peer_certificates()?.get(1)?;
    let id = spiffe_id_of(intermediate).ok()?;
    id.path().strip_prefix("zone/").filter(|z| !z.is_empty() && !z.contains('/')).map(str::to_string)
}

/// Server side: requires a client certificate and verifies it with the bundle.
#[derive(Debug)]
struct ClientVerifier(Arc<PeerVerifier>);

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Workloads hold exactly one certificate: hints would only leak the CA names.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify(end_entity, intermediates, now, KeyUsage::client_auth()).map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// Client side: verifies the server's chain with the bundle and its SPIFFE ID against the
/// expected one; the SNI (`server_name`) is deliberately not checked.
#[derive(Debug)]
struct ServerVerifier {
    peers: Arc<PeerVerifier>,
    expected: Identity,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = self.peers.verify(end_entity, intermediates, now, KeyUsage::server_auth()).map_err(to_rustls)?;
        if presented != self.expected {
            let mismatch = IdentityMismatch { expected: self.expected.clone(), presented };
            return Err(CertificateError::Other(OtherError(Arc::new(mismatch))).into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.peers.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.peers.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.peers.algorithms.supported_schemes()
    }
}

/// Presents our certificate whatever CA names the server hints at.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Presents our certificate whatever SNI the client sent.
#[derive(Debug)]
struct ServerCert(Arc<CertifiedKey>);

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _client_hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Keeps a typed verification error reachable from the rustls error (and the alert sent).
fn to_rustls(error: VerifyError) -> rustls::Error {
    let cert_error = match error {
        VerifyError::UnknownIssuer => CertificateError::UnknownIssuer,
        VerifyError::RevokedIntermediate { .. } => CertificateError::Revoked,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

fn borrow<'a>(der: &'a CertificateDer<'_>) -> CertificateDer<'a> {
    CertificateDer::from(der.as_ref())
}

/// The one `spiffe://` URI SAN of a certificate.
pub fn spiffe_id_of(der: &[u8]) -> Result<Identity, VerifyError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| VerifyError::BadCertificate { what: "leaf certificate", reason: e.to_string() })?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    match uris.as_slice() {
        [uri] => Identity::parse(uri).map_err(|e| VerifyError::InvalidSpiffeId { reason: e.to_string() }),
        uris => Err(VerifyError::NoSpiffeId { found: uris.len() }),
    }
}

fn not_after_of(der: &[u8]) -> Result<SystemTime, VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| VerifyError::BadCertificate { what: "leaf certificate", reason: e.to_string() })?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}
