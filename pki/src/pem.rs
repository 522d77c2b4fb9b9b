//! PEM decoding, certificate fingerprints and the bits of X.509 the rest of the crate reads.
//!
//! In: PEM text from callers, stores and peers. Out: DER certificates, hex SHA-256
//! fingerprints, and the few fields (public key, SPIFFE URI SAN, validity) that signing and
//! verification need, read with `x509-parser`.

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::PkiError;

/// ring's SHA-256, reached through rustls' ring provider because `ring` is not a direct
/// dependency of the workspace. Resolved at compile time: a rustls without this suite fails the
/// build instead of panicking at run time.
static SHA256: &dyn rustls::crypto::hash::Hash = match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() {
    Some(suite) => suite.common.hash_provider,
    None => panic!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    SHA256.hash(bytes).as_ref().to_vec()
}

/// Hex SHA-256 of a DER-encoded certificate (lowercase, no separators).
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(sha256(der))
}

/// Encodes a DER certificate as PEM (64-column base64).
pub(crate) fn cert_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Every certificate in `pem`, in order; `what` names the input in errors ("leaf certificate").
pub(crate) fn certs_from_pem(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(PkiError::BadPem { what, reason: "no CERTIFICATE block found".into() });
    }
    Ok(certs)
}

/// The first certificate in `pem`.
pub(crate) fn cert_from_pem(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = certs_from_pem(pem, what)?;
    Ok(certs.swap_remove(0))
}

/// Parses a DER certificate with x509-parser.
pub(crate) fn parse_cert<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::BadPem { what, reason: format!("not a valid X.509 certificate: {e}") })
}

/// The URI SANs of a certificate that use the `spiffe` scheme.
pub(crate) fn spiffe_uris<'a>(cert: &X509Certificate<'a>) -> Vec<&'a str> {
    match cert.subject_alternative_name() {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(hex::encode(sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn certs_from_pem_rejects_non_certificates() {
        let cases = [
            ("", "no CERTIFICATE block"),
            ("hello", "no CERTIFICATE block"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no CERTIFICATE block"),
        ];
        for (pem, reason) in cases {
            match certs_from_pem(pem, "test input") {
                Err(PkiError::BadPem { what, reason: got }) => {
                    assert_eq!(what, "test input");
                    assert!(got.contains(reason), "{pem:?}: {got}");
                }
                other => panic!("{pem:?}: expected BadPem, got {other:?}"),
            }
        }
    }
}
