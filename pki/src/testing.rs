//! Test helpers shared by the unit tests: a mesh of CAs, raw rcgen minting for certificates the
//! public API refuses to make, and an X.509 summary to assert on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{CertificateAuthority, KeyAndCsr};

pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86_400);
pub const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// A root CA for `trust_domain`, valid ten years.
pub fn root(trust_domain: &str) -> CertificateAuthority {
    CertificateAuthority::new_root(trust_domain, &format!("{trust_domain} root CA"), 10 * YEAR).expect("new root")
}

/// A zone intermediate signed by `root` from the zone's own CSR: (loaded CA, certificate PEM).
pub fn zone_ca(root: &CertificateAuthority, zone: &str) -> (CertificateAuthority, String) {
    let kc = KeyAndCsr::generate(zone).expect("zone CSR");
    let pem = root.sign_intermediate(&kc.csr_pem, zone, YEAR).expect("sign intermediate");
    let ca = CertificateAuthority::from_pem(&pem, &kc.key_pem).expect("load intermediate");
    (ca, pem)
}

/// A workload certificate for `spiffe_id` from `ca`.
pub fn workload(ca: &CertificateAuthority, spiffe_id: &str, lifetime: Duration) -> String {
    let kc = KeyAndCsr::generate("workload").expect("workload CSR");
    ca.sign_workload(&kc.csr_pem, spiffe_id, lifetime).expect("sign workload")
}

/// Signs `params` for a fresh key with `issuer`, bypassing the CA's rules: (cert PEM, key PEM).
pub fn mint(issuer: &CertificateAuthority, params: CertificateParams) -> (String, String) {
    let issuer_key = KeyPair::from_pem(&issuer.key_pem()).expect("issuer key");
    let issuer_cert =
        CertificateParams::from_ca_cert_pem(issuer.cert_pem()).expect("issuer params").self_signed(&issuer_key).expect("issuer cert");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = params.signed_by(&key, &issuer_cert, &issuer_key).expect("mint");
    (cert.pem(), key.serialize_pem())
}

/// Current time plus (or minus) an offset.
pub fn now_plus(offset: Duration) -> SystemTime {
    SystemTime::now() + offset
}

/// Current time minus an offset.
pub fn now_minus(offset: Duration) -> SystemTime {
    SystemTime::now() - offset
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// What the tests check in a certificate.
#[derive(Debug)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    pub ca: Option<bool>,
    pub path_len: Option<u32>,
    pub sans: Vec<String>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub key_cert_sign: bool,
    pub spki: Vec<u8>,
}

/// Decodes the first certificate of `pem`.
pub fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes()).next().expect("a certificate").expect("valid PEM").as_ref().to_vec()
}

/// Summarises the first certificate of `pem`.
pub fn info(pem: &str) -> CertInfo {
    let der = der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse certificate");
    let bc = cert.basic_constraints().expect("bc").map(|e| e.value.clone());
    let eku = cert.extended_key_usage().expect("eku").map(|e| e.value.clone());
    let ku = cert.key_usage().expect("ku").map(|e| e.value.key_cert_sign());
    let sans = match cert.subject_alternative_name().expect("san") {
        Some(san) => san
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(uri) => format!("URI:{uri}"),
                GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                    Ok(v4) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
                    Err(_) => format!("IP:{b:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect(),
        None => Vec::new(),
    };
    CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial().to_vec(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        ca: bc.as_ref().map(|bc| bc.ca),
        path_len: bc.and_then(|bc| bc.path_len_constraint),
        sans,
        server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
        client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
        key_cert_sign: ku.unwrap_or(false),
        spki: cert.public_key().raw.to_vec(),
    }
}

/// The SubjectPublicKeyInfo (DER) of a PEM CSR.
pub fn csr_spki(csr_pem: &str) -> Vec<u8> {
    let der = rustls_pemfile::csr(&mut csr_pem.as_bytes()).expect("CSR PEM").expect("a CSR");
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref()).expect("parse CSR");
    csr.certification_request_info.subject_pki.raw.to_vec()
}
