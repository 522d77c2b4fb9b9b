//! Strait's public-key infrastructure: certificate authorities, SPIFFE identities, chain
//! verification and signed tokens.
//!
//! In: CA certificates and keys (PEM) loaded by the control planes, certificate signing
//! requests (PEM) from zones, sidecars and gateways, trust bundles received over KDS/DPS, and
//! tokens presented by zones and dataplanes. Out: the rotation policy every certificate
//! manager follows ([`RotationPolicy`], with new certificates checked as [`Issued`]); a root CA per mesh and a system CA on the
//! global control plane ([`CertificateAuthority`]), zone intermediate CAs, short-lived SPIFFE
//! workload and zone certificates (PEM), the verified [`Identity`] of a peer chain
//! ([`TrustBundle::verify`]), and signed, expiring tokens ([`TokenSigner`], [`verify_token`]).
//!
//! Everything here is synchronous and does no I/O. Key generation and signing cost
//! milliseconds of CPU: async callers run them on `spawn_blocking`.
//!
//! Identity layout (see [`identity`]): workloads are `spiffe://<mesh>/<service>`, a zone's
//! intermediate CA in a mesh is `spiffe://<mesh>/zone/<zone>`, a mesh root CA is
//! `spiffe://<mesh>`, and zones (gateways) are `spiffe://strait.system/zone/<zone>` under the
//! system CA.
#![forbid(unsafe_code)]

pub mod api_client;
pub mod ca;
pub mod csr;
pub mod identity;
pub mod pem;
pub mod rotation;
#[cfg(test)]
mod testing;
pub mod token;
pub mod verify;

pub use ca::{cert_validity, fingerprint, CertificateAuthority};
pub use csr::KeyAndCsr;
pub use identity::{Identity, SYSTEM_TRUST_DOMAIN};
pub use pem::fingerprint_der;
pub use rotation::{Issued, RotationPolicy};
pub use token::{verify as verify_token, TokenClaims, TokenError, TokenSigner, TokenSubject, TokenVerifierKey};
pub use verify::{TrustBundle, VerifyError};

/// The SPIFFE ID of a service in a mesh: `spiffe://<mesh>/<service>`.
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// Errors from creating CAs, signing certificates and issuing tokens.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Input that should hold PEM (or DER) did not.
    #[error("{what}: bad PEM: {reason}")]
    BadPem {
        /// What the input was ("CA certificate", "leaf certificate", ...).
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// A private key could not be parsed or used.
    #[error("bad private key: {reason}")]
    BadKey {
        /// What was wrong with it.
        reason: String,
    },
    /// A certificate signing request was malformed, badly signed or used an unsupported key.
    #[error("bad certificate signing request: {reason}")]
    BadCsr {
        /// What was wrong with it.
        reason: String,
    },
    /// The private key given with a CA certificate is not the certificate's key.
    #[error("the CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    /// A certificate given as a CA is not a CA (no basicConstraints CA:TRUE).
    #[error("the certificate is not a CA certificate (basicConstraints CA:TRUE is missing)")]
    NotACa,
    /// The CA's path length constraint forbids it from signing another CA.
    #[error("this CA has path length 0 and cannot sign another CA")]
    CannotSignCa,
    /// The CA certificate carries no `spiffe://<trust-domain>` URI SAN to take its trust domain from.
    #[error("the CA certificate has no spiffe:// URI SAN naming its trust domain")]
    NoTrustDomain,
    /// A SPIFFE ID (or a zone or service name inside one) is not valid.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending ID.
        id: String,
        /// Which rule it broke.
        reason: String,
    },
    /// The requested identity is outside the trust domain of the signing CA.
    #[error("{id} is outside this CA's trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        /// The identity that was asked for.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A requested certificate lifetime is zero or too large.
    #[error("invalid certificate lifetime: {reason}")]
    InvalidLifetime {
        /// Why.
        reason: String,
    },
    /// The signing CA's own certificate has expired: rotate the CA.
    #[error("the CA certificate expired at {not_after} (unix seconds)")]
    CaExpired {
        /// The CA's notAfter, in seconds since the Unix epoch.
        not_after: i64,
    },
    /// Key generation or signing failed inside the crypto library.
    #[error("signing failed: {reason}")]
    Signing {
        /// The library's message.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn spiffe_id_names_mesh_and_service() {
        assert_eq!(super::spiffe_id("default", "web"), "spiffe://default/web");
    }
}
