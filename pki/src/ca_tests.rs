use super::*;
use crate::testing::{self, info, mint, root, workload, zone_ca, DAY, HOUR, YEAR};
use crate::{KeyAndCsr, TrustBundle, SYSTEM_TRUST_DOMAIN};
use rcgen::{CertificateParams, KeyPair};
use std::time::SystemTime;

#[test]
fn new_root_is_a_self_signed_ca_naming_its_trust_domain() {
    let ca = root("default");
    let cert = info(ca.cert_pem());
    assert_eq!(cert.subject, "CN=default root CA");
    assert_eq!(cert.issuer, cert.subject);
    assert_eq!(cert.ca, Some(true));
    assert_eq!(cert.path_len, Some(1));
    assert!(cert.key_cert_sign);
    assert_eq!(cert.sans, ["URI:spiffe://default"]);
    assert_eq!(ca.trust_domain(), "default");
    assert!(ca.key_pem().contains("BEGIN PRIVATE KEY"));
}

#[test]
fn sign_intermediate_certifies_the_zone_csr_key_and_names_the_zone() {
    let root = root("default");
    // The zone makes its key; only the CSR goes to the root.
    let zone = KeyAndCsr::generate("east").expect("zone CSR");
    let pem = root.sign_intermediate(&zone.csr_pem, "east", YEAR).expect("sign intermediate");
    let cert = info(&pem);
    assert_eq!(cert.spki, testing::csr_spki(&zone.csr_pem));
    assert_ne!(cert.spki, info(root.cert_pem()).spki);
    assert_eq!(cert.ca, Some(true));
    assert_eq!(cert.path_len, Some(0));
    assert!(cert.key_cert_sign);
    assert_eq!(cert.sans, ["URI:spiffe://default/zone/east"]);
    assert_eq!(cert.subject, "CN=east zone CA (default)");
    assert_eq!(cert.issuer, "CN=default root CA");
    // The zone can load it with the key it kept.
    let zone_ca = CertificateAuthority::from_pem(&pem, &zone.key_pem).expect("load");
    assert_eq!(zone_ca.trust_domain(), "default");
}

#[test]
fn sign_workload_sets_the_ca_chosen_identity_and_ignores_requested_sans() {
    let (zone, _) = zone_ca(&root("default"), "east");
    // A workload asks for someone else's identity and a DNS name.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
    params.subject_alt_names.push(SanType::URI("spiffe://default/admin".try_into().expect("ia5")));
    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");

    let pem = zone.sign_workload(&csr, "spiffe://default/web", DAY).expect("sign workload");
    let cert = info(&pem);
    assert_eq!(cert.sans, ["URI:spiffe://default/web"]);
    assert_eq!(cert.ca, Some(false));
    assert!(cert.server_auth && cert.client_auth);
    assert!(!cert.key_cert_sign);
    assert_eq!(cert.spki, testing::csr_spki(&csr));
}

#[test]
fn signed_certificates_get_random_serials_and_a_backdated_not_before() {
    let root = root("default");
    let kc = KeyAndCsr::generate("east").expect("csr");
    let first = info(&root.sign_intermediate(&kc.csr_pem, "east", DAY).expect("sign"));
    let second = info(&root.sign_intermediate(&kc.csr_pem, "east", DAY).expect("sign"));
    assert_ne!(first.serial, second.serial);
    for cert in [&first, &second] {
        assert_eq!(cert.serial.len(), 16, "{:?}", cert.serial);
        assert!(cert.serial[0] & 0x80 == 0, "serial must be positive");
    }
    let now = testing::unix_now() as i64;
    let skew = CLOCK_SKEW_ALLOWANCE.as_secs() as i64;
    assert!((first.not_before - (now - skew)).abs() <= 5, "{first:?}");
    assert!((first.not_after - (now + DAY.as_secs() as i64)).abs() <= 5, "{first:?}");
}

#[test]
fn lifetimes_are_validated_and_capped_at_the_issuer() {
    let short_root = CertificateAuthority::new_root("default", "short", HOUR).expect("root");
    let kc = KeyAndCsr::generate("east").expect("csr");
    let pem = short_root.sign_intermediate(&kc.csr_pem, "east", YEAR).expect("sign");
    assert_eq!(info(&pem).not_after, info(short_root.cert_pem()).not_after);

    let cases = [("zero", Duration::ZERO, "greater than zero"), ("beyond year 9999", Duration::MAX, "9999")];
    for (name, lifetime, reason) in cases {
        match short_root.sign_intermediate(&kc.csr_pem, "east", lifetime) {
            Err(PkiError::InvalidLifetime { reason: got }) => {
                assert!(got.contains(reason), "{name}: {got}")
            }
            other => panic!("{name}: expected InvalidLifetime, got {other:?}"),
        }
    }
}

#[test]
fn sign_workload_rejects_identities_the_ca_may_not_issue() {
    let (zone, _) = zone_ca(&root("default"), "east");
    let kc = KeyAndCsr::generate("w").expect("csr");
    let cases = [
        ("spiffe://other/web", "outside this CA's trust domain"),
        ("spiffe://default", "needs a path"),
        ("https://default/web", "scheme"),
        ("spiffe://default/web/../admin", "not allowed"),
        ("spiffe://strait.system/zone/east", "outside this CA's trust domain"),
    ];
    for (id, message) in cases {
        match zone.sign_workload(&kc.csr_pem, id, DAY) {
            Err(e @ (PkiError::ForeignTrustDomain { .. } | PkiError::InvalidSpiffeId { .. })) => {
                assert!(e.to_string().contains(message), "{id}: {e}")
            }
            other => panic!("{id}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn zone_identities_come_only_from_the_system_ca() {
    let system = root(SYSTEM_TRUST_DOMAIN);
    let kc = KeyAndCsr::generate("east gateway").expect("csr");
    let pem = system.sign_zone_identity(&kc.csr_pem, "east", DAY).expect("zone identity");
    let cert = info(&pem);
    assert_eq!(cert.sans, ["URI:spiffe://strait.system/zone/east"]);
    assert_eq!(cert.ca, Some(false));
    assert!(cert.server_auth && cert.client_auth);

    let mesh = root("default");
    assert!(matches!(mesh.sign_zone_identity(&kc.csr_pem, "east", DAY), Err(PkiError::ForeignTrustDomain { .. })));
    assert!(matches!(system.sign_zone_identity(&kc.csr_pem, "east/admin", DAY), Err(PkiError::InvalidSpiffeId { .. })));
}

#[test]
fn an_intermediate_refuses_to_sign_another_ca() {
    let root = root("default");
    let (zone, _) = zone_ca(&root, "east");
    let kc = KeyAndCsr::generate("sub").expect("csr");
    assert!(matches!(zone.sign_intermediate(&kc.csr_pem, "sub", DAY), Err(PkiError::CannotSignCa)));
    assert!(root.sign_intermediate(&kc.csr_pem, "sub", DAY).is_ok());
}

#[test]
fn from_pem_round_trips_and_the_reloaded_ca_signs_verifiable_chains() {
    let original = root("default");
    let reloaded = CertificateAuthority::from_pem(original.cert_pem(), &original.key_pem()).expect("reload");
    assert_eq!(reloaded.cert_pem(), original.cert_pem());
    assert_eq!(reloaded.key_pem(), original.key_pem());
    assert_eq!(reloaded.trust_domain(), "default");
    assert_eq!(reloaded.cert_fingerprint(), original.cert_fingerprint());

    // Certificates from the reloaded CA chain to the original root certificate.
    let (zone, intermediate) = zone_ca(&reloaded, "east");
    let leaf = workload(&zone, "spiffe://default/web", DAY);
    let bundle = TrustBundle::new(vec![original.cert_pem().to_string()]);
    let id = bundle.verify(&leaf, &[intermediate], SystemTime::now()).expect("verify");
    assert_eq!(id.as_str(), "spiffe://default/web");
}

#[test]
fn from_pem_rejects_what_is_not_a_usable_ca() {
    let ca = root("default");
    let other = root("default");
    let (zone, intermediate) = zone_ca(&ca, "east");
    let kc = KeyAndCsr::generate("w").expect("csr");
    let leaf = zone.sign_workload(&kc.csr_pem, "spiffe://default/web", DAY).expect("leaf");
    let mut no_san = CertificateParams::default();
    no_san.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let (no_san_pem, no_san_key) = mint(&ca, no_san);

    type Case = (&'static str, String, String, fn(&PkiError) -> bool);
    let cases: Vec<Case> = vec![
        ("garbage certificate", "hello".into(), ca.key_pem(), |e| matches!(e, PkiError::BadPem { .. })),
        ("garbage key", ca.cert_pem().into(), "hello".into(), |e| matches!(e, PkiError::BadKey { .. })),
        ("another CA's key", ca.cert_pem().into(), other.key_pem(), |e| matches!(e, PkiError::KeyMismatch)),
        ("a leaf certificate", leaf, kc.key_pem.clone(), |e| matches!(e, PkiError::NotACa)),
        ("a CA without a SPIFFE SAN", no_san_pem, no_san_key, |e| matches!(e, PkiError::NoTrustDomain)),
    ];
    for (name, cert, key, expected) in cases {
        match CertificateAuthority::from_pem(&cert, &key) {
            Err(e) => assert!(expected(&e), "{name}: unexpected error {e}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }
    // The zone intermediate itself loads, and remembers it cannot sign CAs.
    assert!(!zone.can_sign_ca);
    assert!(CertificateAuthority::from_pem(&intermediate, &zone.key_pem()).is_ok());
}

#[test]
fn bad_csrs_are_rejected() {
    let ca = root("default");
    let kc = KeyAndCsr::generate("w").expect("csr");
    // Flip a bit in the last byte (inside the signature) and re-encode.
    let mut der = rustls_pemfile::csr(&mut kc.csr_pem.as_bytes()).expect("pem").expect("csr").as_ref().to_vec();
    if let Some(last) = der.last_mut() {
        *last ^= 0x01;
    }
    use base64::Engine as _;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let cases = [("garbage", "hello".to_string()), ("bad signature", tampered)];
    for (name, csr) in cases {
        assert!(matches!(ca.sign_workload(&csr, "spiffe://default/web", DAY), Err(PkiError::BadCsr { .. })), "{name}");
    }
    assert!(ca.sign_workload(&kc.csr_pem, "spiffe://default/web", DAY).is_ok());
}

#[test]
fn debug_never_prints_the_key() {
    let ca = root("default");
    let debug = format!("{ca:?}");
    let key_pem = ca.key_pem();
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!debug.contains(line), "{debug}");
    }
    assert!(debug.contains("default") && debug.contains("<redacted>"), "{debug}");
}

#[test]
fn fingerprint_is_the_sha256_of_the_der() {
    let a = root("default");
    let b = root("default");
    let fp = fingerprint(a.cert_pem()).expect("fingerprint");
    assert_eq!(fp, hex::encode(crate::pem::sha256(&testing::der(a.cert_pem()))));
    assert_eq!(fp.len(), 64);
    assert_eq!(fp, a.cert_fingerprint());
    assert_ne!(fp, fingerprint(b.cert_pem()).expect("fingerprint"));
    assert!(matches!(fingerprint("nope"), Err(PkiError::BadPem { .. })));
}

#[test]
fn ca_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CertificateAuthority>();
}

#[test]
fn server_certificates_name_dns_hosts_and_come_only_from_the_system_ca() {
    let system = root(SYSTEM_TRUST_DOMAIN);
    let kc = KeyAndCsr::generate("strait-global").expect("csr");
    let names = ["strait-global".into(), "cp.example".into(), "192.0.2.7".into(), "::1".into()];
    let pem = system.sign_server(&kc.csr_pem, &names, DAY).expect("server cert");
    let cert = info(&pem);
    assert_eq!(cert.sans[..2], ["DNS:strait-global", "DNS:cp.example"]);
    assert_eq!(cert.sans.len(), 4, "addresses are IP SANs: {:?}", cert.sans);
    assert!(cert.sans[2].starts_with("IP") && cert.sans[2].contains("192.0.2.7"), "{:?}", cert.sans);
    assert_eq!(cert.ca, Some(false));
    assert!(matches!(root("default").sign_server(&kc.csr_pem, &["strait-global".into()], DAY), Err(PkiError::ForeignTrustDomain { .. })));
    assert!(system.sign_server(&kc.csr_pem, &[], DAY).is_err(), "at least one name");
}

#[test]
fn validity_reads_the_lifetime_back() {
    let system = root(crate::SYSTEM_TRUST_DOMAIN);
    let kc = crate::KeyAndCsr::generate("zone-1").expect("csr");
    let cert = system.sign_zone_identity(&kc.csr_pem, "zone-1", Duration::from_secs(3600)).expect("sign");
    let (not_before, not_after) = crate::cert_validity(&cert).expect("validity");
    let now = testing::unix_now() as i64;
    assert!(not_before <= now && not_before >= now - 120, "backdated by the skew allowance only: {not_before} vs {now}");
    assert!((not_after - now - 3600).abs() <= 5, "{not_after} vs {now}");
    assert!(matches!(crate::cert_validity("nope"), Err(PkiError::BadPem { .. })));
}

#[test]
fn a_ca_made_elsewhere_without_a_trust_domain_signs_servers_only_when_asked_to() {
    // As a Helm chart's genCAWithKey makes one: Ed25519, CA:true, no SAN at all.
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    assert!(matches!(CertificateAuthority::from_pem(&cert_pem, &key_pem), Err(PkiError::NoTrustDomain)));
    let ca = CertificateAuthority::from_pem_for_servers(&cert_pem, &key_pem, SYSTEM_TRUST_DOMAIN).unwrap();
    assert_eq!(ca.trust_domain(), SYSTEM_TRUST_DOMAIN);
    let server = KeyAndCsr::generate("strait-zone").unwrap();
    let chain = ca.sign_server(&server.csr_pem, &["strait-zone".to_string()], HOUR).unwrap();
    assert_eq!(info(&chain).sans, ["DNS:strait-zone"]);
}
