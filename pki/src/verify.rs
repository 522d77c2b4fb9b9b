//! Trust bundles and chain verification: who is this peer?
//!
//! In: a [`TrustBundle`] (root certificates plus fingerprints of revoked intermediates, sent by
//! the global control plane to zones and by zones to sidecars), a peer's leaf certificate and
//! the intermediates it presented, and the current time. Out: the peer's [`Identity`] (the
//! leaf's SPIFFE URI SAN), or a [`VerifyError`] naming what failed.
//!
//! Path building and signature checks are rustls-webpki's; this module adds revocation of
//! intermediates by fingerprint and SPIFFE ID extraction. The leaf is accepted for either
//! server or client authentication, so the same bundle serves both ends of an mTLS session.
//! A bundle trusts whatever its roots issued; callers that expect one mesh compare
//! [`Identity::trust_domain`] with it (CAs made by this crate only issue in their own domain).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};
use webpki::{EndEntityCert, KeyUsage};

use crate::identity::Identity;
use crate::pem::{certs_from_pem, fingerprint_der, parse_cert, spiffe_uris};
use crate::PkiError;

/// The roots a zone or sidecar trusts, and the intermediates it must no longer accept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    /// Trusted root certificates, PEM (each entry may hold several).
    pub roots: Vec<String>,
    /// Hex SHA-256 fingerprints (see [`crate::fingerprint`]) of revoked intermediate CAs.
    #[serde(default)]
    pub revoked: BTreeSet<String>,
}

/// Why a certificate chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A certificate (or a root in the bundle) could not be decoded.
    #[error("{what}: {reason}")]
    BadCertificate {
        /// Which input ("leaf certificate", "intermediate certificate", "trust bundle root").
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The trust bundle holds no usable root.
    #[error("the trust bundle has no root certificates")]
    EmptyTrustBundle,
    /// The leaf certificate's notAfter is in the past.
    #[error("the leaf certificate expired at {not_after} (unix seconds)")]
    Expired {
        /// The leaf's notAfter, seconds since the Unix epoch.
        not_after: i64,
    },
    /// The leaf certificate's notBefore is in the future.
    #[error("the leaf certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid {
        /// The leaf's notBefore, seconds since the Unix epoch.
        not_before: i64,
    },
    /// No chain from the leaf to a root of the bundle (another mesh's CA, a regenerated root, a
    /// missing intermediate, or a certificate whose signature does not verify).
    #[error("unknown issuer: the chain does not lead to a root of the trust bundle")]
    UnknownIssuer,
    /// The only chain to a root goes through a revoked intermediate.
    #[error("the chain goes through revoked intermediate {fingerprint}")]
    RevokedIntermediate {
        /// The revoked intermediate's fingerprint.
        fingerprint: String,
    },
    /// A chain was found but is not acceptable (expired intermediate, path length, key usage, ...).
    #[error("invalid certificate chain: {reason}")]
    InvalidChain {
        /// webpki's reason.
        reason: String,
    },
    /// The leaf has no `spiffe://` URI SAN, or more than one.
    #[error("the leaf certificate has no SPIFFE ID (expected exactly one spiffe:// URI SAN, found {found})")]
    NoSpiffeId {
        /// How many spiffe:// URI SANs the leaf has.
        found: usize,
    },
    /// The leaf's SPIFFE ID is malformed.
    #[error("the leaf certificate's SPIFFE ID is invalid: {reason}")]
    InvalidSpiffeId {
        /// Why.
        reason: String,
    },
    /// `now` is before the Unix epoch.
    #[error("the verification time is before the Unix epoch")]
    BadTime,
}

impl TrustBundle {
    /// A bundle trusting `roots` (PEM), with nothing revoked.
    pub fn new(roots: Vec<String>) -> Self {
        TrustBundle { roots, revoked: BTreeSet::new() }
    }

    /// Verifies `leaf_pem` (with the `intermediates` the peer presented) at `now` and returns
    /// its SPIFFE ID.
    pub fn verify(&self, leaf_pem: &str, intermediates: &[String], now: SystemTime) -> Result<Identity, VerifyError> {
        let leaf =
            certs(leaf_pem, "leaf certificate")?.into_iter().next().ok_or_else(|| bad("leaf certificate", "no certificate".into()))?;
        let mut presented = Vec::new();
        for pem in intermediates {
            presented.extend(certs(pem, "intermediate certificate")?);
        }
        let root_ders = self.roots.iter().map(|pem| certs(pem, "trust bundle root")).collect::<Result<Vec<_>, _>>()?.concat();
        let anchors = root_ders
            .iter()
            .map(|der| webpki::anchor_from_trusted_cert(der).map_err(|e| bad("trust bundle root", format!("{e:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if anchors.is_empty() {
            return Err(VerifyError::EmptyTrustBundle);
        }
        let since_epoch = now.duration_since(UNIX_EPOCH).map_err(|_| VerifyError::BadTime)?;

        let parsed = parse_cert(&leaf, "leaf certificate").map_err(from_pki)?;
        check_leaf_validity(&parsed, since_epoch.as_secs())?;

        let (revoked, usable): (Vec<_>, Vec<_>) = presented.into_iter().partition(|der| self.revoked.contains(&fingerprint_der(der)));
        let end_entity = EndEntityCert::try_from(&leaf).map_err(|e| bad("leaf certificate", format!("{e:?}")))?;
        let time = UnixTime::since_unix_epoch(since_epoch);
        if let Err(error) = build_chain(&end_entity, &anchors, &usable, time) {
            return Err(self.explain(&end_entity, &anchors, usable, revoked, time, error));
        }
        leaf_identity(&parsed)
    }

    /// Turns a failed verification into an error; if a chain exists only through a revoked
    /// intermediate, names that intermediate rather than reporting an unknown issuer.
    fn explain(
        &self,
        end_entity: &EndEntityCert<'_>,
        anchors: &[TrustAnchor<'_>],
        mut usable: Vec<CertificateDer<'static>>,
        revoked: Vec<CertificateDer<'static>>,
        time: UnixTime,
        error: webpki::Error,
    ) -> VerifyError {
        if !revoked.is_empty() {
            usable.extend(revoked);
            if let Ok(path) = build_chain(end_entity, anchors, &usable, time) {
                let revoked_in_path =
                    path.intermediate_certificates().map(|cert| fingerprint_der(&cert.der())).find(|fp| self.revoked.contains(fp));
                if let Some(fingerprint) = revoked_in_path {
                    return VerifyError::RevokedIntermediate { fingerprint };
                }
            }
        }
        match error {
            // A CA with the right name that did not sign the certificate is, for the caller,
            // the same as no CA: typically another mesh's root or a regenerated one.
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => VerifyError::UnknownIssuer,
            other => VerifyError::InvalidChain { reason: describe(other) },
        }
    }
}

/// Signature algorithms accepted in chains: what Strait issues (ECDSA, Ed25519) plus RSA for
/// operator-provided roots.
static SIG_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Builds a path for server auth, or for client auth if the leaf is a client-only certificate.
fn build_chain<'p>(
    end_entity: &'p EndEntityCert<'p>,
    anchors: &'p [TrustAnchor<'p>],
    intermediates: &'p [CertificateDer<'p>],
    time: UnixTime,
) -> Result<webpki::VerifiedPath<'p>, webpki::Error> {
    let attempt = |usage| end_entity.verify_for_usage(SIG_ALGS, anchors, intermediates, time, usage, None, None);
    match attempt(KeyUsage::server_auth()) {
        Err(webpki::Error::RequiredEkuNotFound) => attempt(KeyUsage::client_auth()),
        result => result,
    }
}

fn check_leaf_validity(leaf: &x509_parser::certificate::X509Certificate<'_>, now: u64) -> Result<(), VerifyError> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let validity = leaf.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(VerifyError::NotYetValid { not_before });
    }
    if now > not_after {
        return Err(VerifyError::Expired { not_after });
    }
    Ok(())
}

fn leaf_identity(leaf: &x509_parser::certificate::X509Certificate<'_>) -> Result<Identity, VerifyError> {
    match spiffe_uris(leaf).as_slice() {
        [uri] => Identity::parse(uri).map_err(|e| VerifyError::InvalidSpiffeId { reason: e.to_string() }),
        uris => Err(VerifyError::NoSpiffeId { found: uris.len() }),
    }
}

fn describe(error: webpki::Error) -> String {
    match error {
        webpki::Error::CertExpired => "a certificate in the chain has expired".into(),
        webpki::Error::CertNotValidYet => "a certificate in the chain is not valid yet".into(),
        webpki::Error::PathLenConstraintViolated => "an intermediate CA signed another CA beyond its path length".into(),
        webpki::Error::CaUsedAsEndEntity => "the leaf certificate is a CA".into(),
        webpki::Error::EndEntityUsedAsCa => "a leaf certificate was used as a CA".into(),
        webpki::Error::RequiredEkuNotFound => "the leaf allows neither serverAuth nor clientAuth".into(),
        other => format!("{other:?}"),
    }
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, VerifyError> {
    certs_from_pem(pem, what).map_err(from_pki)
}

fn bad(what: &'static str, reason: String) -> VerifyError {
    VerifyError::BadCertificate { what, reason }
}

fn from_pki(e: PkiError) -> VerifyError {
    match e {
        PkiError::BadPem { what, reason } => bad(what, reason),
        other => bad("certificate", other.to_string()),
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
