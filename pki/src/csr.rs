//! Key pairs and certificate signing requests made by whoever will hold the key.
//!
//! In: a common name. Out: [`KeyAndCsr`], a fresh ECDSA P-256 private key (PEM, PKCS#8) that
//! stays with the caller and a CSR (PEM) that is the only thing sent to a CA. Zones use it for
//! their intermediate, sidecars for workload certificates, gateways for zone identities. The
//! CA decides the identity: SANs are not requested here and would be ignored if they were.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::PkiError;

/// A private key and a CSR for it. The key is secret: it is never printed by `Debug`.
#[derive(Clone)]
pub struct KeyAndCsr {
    /// The private key, PKCS#8 PEM. Keep it; never send it.
    pub key_pem: String,
    /// The certificate signing request, PEM. Send it to the CA.
    pub csr_pem: String,
}

impl KeyAndCsr {
    /// Generates an ECDSA P-256 key and a CSR with subject `CN=<common_name>`, signed by that key.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).map_err(signing)?;
        Ok(KeyAndCsr { key_pem: key.serialize_pem(), csr_pem: csr.pem().map_err(signing)? })
    }
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr").field("key_pem", &"<redacted>").field("csr_pem", &self.csr_pem).finish()
    }
}

fn signing(e: rcgen::Error) -> PkiError {
    PkiError::Signing { reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn generate_makes_a_self_consistent_p256_csr() {
        let kc = KeyAndCsr::generate("east").expect("generate");
        assert!(kc.key_pem.contains("BEGIN PRIVATE KEY"));
        let der = pem_body(&kc.csr_pem);
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der).expect("parse CSR");
        csr.verify_signature().expect("CSR is signed by its own key");
        let subject = csr.certification_request_info.subject.to_string();
        assert_eq!(subject, "CN=east");
        // The CSR carries the public half of the returned key.
        let key = KeyPair::from_pem(&kc.key_pem).expect("key parses");
        assert_eq!(csr.certification_request_info.subject_pki.subject_public_key.data.as_ref(), key.public_key_raw());
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn debug_hides_the_key() {
        let kc = KeyAndCsr::generate("web").expect("generate");
        let debug = format!("{kc:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        let key_line = kc.key_pem.lines().nth(1).expect("PEM has a body");
        assert!(!debug.contains(key_line), "{debug}");
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        let mut reader = pem.as_bytes();
        rustls_pemfile::csr(&mut reader).expect("read CSR PEM").map(|csr| csr.as_ref().to_vec()).expect("a CSR block")
    }
}
