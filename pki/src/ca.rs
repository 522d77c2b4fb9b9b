//! Certificate authorities: mesh roots, zone intermediates and the system CA.
//!
//! In: a trust domain and lifetime (new root), or a CA certificate and key (PEM) loaded from the
//! store; CSRs (PEM) from zones, sidecars and gateways. Out: signed certificates (PEM) whose
//! identity the CA chose, never the requester:
//!
//! | method | issued certificate | URI SAN |
//! |---|---|---|
//! | [`CertificateAuthority::new_root`] | self-signed, CA, path length 1 | `spiffe://<td>` |
//! | [`CertificateAuthority::sign_intermediate`] | CA, path length 0 | `spiffe://<td>/zone/<zone>` |
//! | [`CertificateAuthority::sign_workload`] | CA:FALSE, serverAuth + clientAuth | the workload's SPIFFE ID |
//! | [`CertificateAuthority::sign_zone_identity`] | CA:FALSE, serverAuth + clientAuth | `spiffe://strait.system/zone/<zone>` |
//!
//! Every issued certificate gets a random 128-bit serial, a notBefore one minute in the past
//! (so peers with a slightly slow clock accept it at once) and a notAfter capped at the CA's own
//! notAfter. Keys are ECDSA P-256; CSRs with ECDSA P-384 or Ed25519 keys are accepted too.

use std::fmt;
use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use time::OffsetDateTime;

use crate::identity::Identity;
use crate::pem::{cert_from_pem, cert_to_pem, fingerprint_der, parse_cert, spiffe_uris};
use crate::PkiError;

/// How far in the past issued certificates start, to tolerate clock skew between hosts.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Hex SHA-256 of the DER of the first certificate in `cert_pem`; the id used for revocation.
pub fn fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let der = cert_from_pem(cert_pem, "certificate")?;
    Ok(fingerprint_der(&der))
}

/// The validity (notBefore, notAfter, in seconds since the Unix epoch) of the first
/// certificate in `cert_pem`.
pub fn cert_validity(cert_pem: &str) -> Result<(i64, i64), PkiError> {
    let der = cert_from_pem(cert_pem, "certificate")?;
    let cert = crate::pem::parse_cert(&der, "certificate")?;
    Ok((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// A CA certificate with its private key, able to sign CSRs. `Debug` never shows the key.
pub struct CertificateAuthority {
    cert_pem: String,
    key: KeyPair,
    /// The CA's parameters as rcgen needs them to sign (subject, key identifier).
    issuer: Certificate,
    trust_domain: String,
    can_sign_ca: bool,
    not_after: OffsetDateTime,
    fingerprint: String,
}

impl CertificateAuthority {
    /// Creates a self-signed root CA for `trust_domain` (a mesh name, or [`crate::SYSTEM_TRUST_DOMAIN`]).
    ///
    /// The root may sign intermediates (path length 1), which may sign only leaves.
    pub fn new_root(trust_domain: &str, common_name: &str, lifetime: Duration) -> Result<Self, PkiError> {
        let id = Identity::from_parts(trust_domain, &[])?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = new_params(common_name, lifetime, None)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = ca_key_usages();
        params.subject_alt_names = vec![uri_san(&id)?];
        let cert = params.self_signed(&key).map_err(signing)?;
        // Going through from_pem makes a new root behave exactly like one loaded later.
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and private key (PEM; the first certificate is the CA's).
    ///
    /// The certificate must be a CA, match the key, and carry a `spiffe://` URI SAN naming its
    /// trust domain (every CA made by this crate does).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        Self::load(cert_pem, key_pem, None)
    }

    /// Loads a CA that signs only server certificates (by DNS name), such as one made at
    /// install time by a Helm chart: one without a `spiffe://` URI SAN belongs to
    /// `trust_domain`.
    pub fn from_pem_for_servers(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, PkiError> {
        Self::load(cert_pem, key_pem, Some(trust_domain))
    }

    fn load(cert_pem: &str, key_pem: &str, fallback_domain: Option<&str>) -> Result<Self, PkiError> {
        const WHAT: &str = "CA certificate";
        let der = cert_from_pem(cert_pem, WHAT)?;
        let x509 = parse_cert(&der, WHAT)?;
        let constraints = x509
            .basic_constraints()
            .map_err(|e| PkiError::BadPem { what: WHAT, reason: format!("bad basicConstraints: {e}") })?
            .map(|ext| ext.value.clone());
        let can_sign_ca = match constraints {
            Some(bc) if bc.ca => bc.path_len_constraint.is_none_or(|len| len >= 1),
            _ => return Err(PkiError::NotACa),
        };
        let trust_domain = match (spiffe_uris(&x509).first(), fallback_domain) {
            (Some(uri), _) => Identity::parse(uri)?.trust_domain().to_string(),
            (None, Some(domain)) => Identity::from_parts(domain, &[])?.trust_domain().to_string(),
            (None, None) => return Err(PkiError::NoTrustDomain),
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey { reason: e.to_string() })?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch);
        }
        let params = CertificateParams::from_ca_cert_der(&der).map_err(|e| PkiError::BadPem { what: WHAT, reason: e.to_string() })?;
        let not_after = params.not_after;
        // rcgen signs with an issuer `Certificate`; this one is never published, only its
        // subject and key identifier (kept from the original) end up in issued certificates.
        let issuer = params.self_signed(&key).map_err(signing)?;
        Ok(CertificateAuthority {
            cert_pem: cert_to_pem(&der),
            key,
            issuer,
            trust_domain,
            can_sign_ca,
            not_after,
            fingerprint: fingerprint_der(&der),
        })
    }

    /// The CA certificate, PEM (one certificate).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Secret: store it encrypted, never log it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The trust domain this CA issues identities in (the mesh name, or `strait.system`).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Hex SHA-256 of this CA's certificate (what a [`crate::TrustBundle`] revokes).
    pub fn cert_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Signs a zone's intermediate CA from the zone's CSR: CA, path length 0,
    /// URI SAN `spiffe://<trust-domain>/zone/<zone>`, subject `CN=<zone> zone CA (<trust-domain>)`.
    pub fn sign_intermediate(&self, csr_pem: &str, zone: &str, lifetime: Duration) -> Result<String, PkiError> {
        if !self.can_sign_ca {
            return Err(PkiError::CannotSignCa);
        }
        let id = Identity::zone_ca(&self.trust_domain, zone)?;
        let common_name = format!("{zone} zone CA ({})", self.trust_domain);
        let mut params = new_params(&common_name, lifetime, Some(self.not_after))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = ca_key_usages();
        params.subject_alt_names = vec![uri_san(&id)?];
        self.sign_csr(csr_pem, params)
    }

    /// Signs a workload certificate whose only SAN is `spiffe_id` (which must be in this CA's
    /// trust domain). Whatever the CSR asks for (SANs, key usages, subject) is ignored.
    pub fn sign_workload(&self, csr_pem: &str, spiffe_id: &str, lifetime: Duration) -> Result<String, PkiError> {
        let id = Identity::parse(spiffe_id)?;
        if id.path().is_empty() {
            return Err(PkiError::InvalidSpiffeId {
                id: spiffe_id.to_string(),
                reason: "a workload identity needs a path (the service name)".into(),
            });
        }
        self.sign_leaf(csr_pem, &id, lifetime)
    }

    /// Signs a zone (gateway) identity `spiffe://strait.system/zone/<zone>`; only the system CA may.
    pub fn sign_zone_identity(&self, csr_pem: &str, zone: &str, lifetime: Duration) -> Result<String, PkiError> {
        let id = Identity::zone(zone)?;
        self.sign_leaf(csr_pem, &id, lifetime)
    }

    /// Signs a server certificate for control-plane endpoints (such as zone sync) with DNS
    /// names as SANs; only the system CA may, so no mesh CA can impersonate a control plane.
    pub fn sign_server(&self, csr_pem: &str, dns_names: &[String], lifetime: Duration) -> Result<String, PkiError> {
        if self.trust_domain != crate::SYSTEM_TRUST_DOMAIN {
            return Err(PkiError::ForeignTrustDomain {
                id: format!("dns:{}", dns_names.join(",")),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let first =
            dns_names.first().ok_or_else(|| PkiError::BadCsr { reason: "a server certificate needs at least one DNS name".into() })?;
        let mut params = new_params(first, lifetime, Some(self.not_after))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                // An address is an IP SAN, so clients that connect by address can verify it.
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e: rcgen::Error| PkiError::BadCsr { reason: format!("DNS name {n:?}: {e}") }),
            })
            .collect::<Result<_, _>>()?;
        self.sign_csr(csr_pem, params)
    }

    fn sign_leaf(&self, csr_pem: &str, id: &Identity, lifetime: Duration) -> Result<String, PkiError> {
        if id.trust_domain() != self.trust_domain {
            return Err(PkiError::ForeignTrustDomain { id: id.to_string(), trust_domain: self.trust_domain.clone() });
        }
        let mut params = new_params(id.as_str(), lifetime, Some(self.not_after))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = vec![uri_san(id)?];
        self.sign_csr(csr_pem, params)
    }

    /// Signs `params` for the CSR's public key. Only the key is taken from the CSR, after
    /// rcgen has checked the CSR's signature (proof that the requester holds the key).
    fn sign_csr(&self, csr_pem: &str, mut params: CertificateParams) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadCsr { reason: e.to_string() })?;
        let alg = csr.public_key.algorithm();
        if ![&PKCS_ECDSA_P256_SHA256, &PKCS_ECDSA_P384_SHA384, &PKCS_ED25519].contains(&alg) {
            return Err(PkiError::BadCsr { reason: format!("unsupported key algorithm {alg:?}; use ECDSA P-256") });
        }
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer, &self.key).map_err(signing)?;
        // rcgen derives the key's algorithm from the CSR's signature algorithm; make sure the
        // certificate carries exactly the key the CSR holds (e.g. not a P-384 key labelled P-256).
        let csr_der = pem_csr_der(csr_pem)?;
        let issued = parse_cert(cert.der(), "issued certificate")?;
        if issued.public_key().raw != csr_spki(&csr_der)? {
            return Err(PkiError::BadCsr { reason: "the CSR's key does not match its signature algorithm".into() });
        }
        Ok(cert.pem())
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint)
            .field("can_sign_ca", &self.can_sign_ca)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Parameters shared by every certificate: subject CN, random serial, validity.
fn new_params(common_name: &str, lifetime: Duration, issuer_not_after: Option<OffsetDateTime>) -> Result<CertificateParams, PkiError> {
    let (not_before, not_after) = validity(lifetime, issuer_not_after)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// notBefore = now - [`CLOCK_SKEW_ALLOWANCE`]; notAfter = now + lifetime, capped at the issuer's.
fn validity(lifetime: Duration, issuer_not_after: Option<OffsetDateTime>) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let invalid = |reason: &str| PkiError::InvalidLifetime { reason: reason.to_string() };
    if lifetime.is_zero() {
        return Err(invalid("must be greater than zero"));
    }
    let now = OffsetDateTime::now_utc();
    let mut not_after = time::Duration::try_from(lifetime)
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| invalid("ends after the year 9999"))?;
    if let Some(cap) = issuer_not_after {
        if cap <= now {
            return Err(PkiError::CaExpired { not_after: cap.unix_timestamp() });
        }
        not_after = not_after.min(cap);
    }
    let not_before = now - time::Duration::seconds(CLOCK_SKEW_ALLOWANCE.as_secs() as i64);
    Ok((not_before, not_after))
}

/// A positive, non-zero 128-bit random serial (RFC 5280 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature]
}

fn uri_san(id: &Identity) -> Result<SanType, PkiError> {
    let uri = id.as_str().try_into().map_err(|e: rcgen::Error| PkiError::InvalidSpiffeId { id: id.to_string(), reason: e.to_string() })?;
    Ok(SanType::URI(uri))
}

fn pem_csr_der(csr_pem: &str) -> Result<Vec<u8>, PkiError> {
    let bad = |reason: String| PkiError::BadCsr { reason };
    match rustls_pemfile::csr(&mut csr_pem.as_bytes()) {
        Ok(Some(csr)) => Ok(csr.as_ref().to_vec()),
        Ok(None) => Err(bad("no CERTIFICATE REQUEST block found".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn csr_spki(csr_der: &[u8]) -> Result<&[u8], PkiError> {
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| PkiError::BadCsr { reason: e.to_string() })?;
    Ok(csr.certification_request_info.subject_pki.raw)
}

fn signing(e: rcgen::Error) -> PkiError {
    PkiError::Signing { reason: e.to_string() }
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
