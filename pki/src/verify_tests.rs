use super::*;
use crate::testing::{mint, now_minus, now_plus, root, workload, zone_ca, DAY, HOUR};
use crate::{fingerprint, CertificateAuthority, KeyAndCsr, SYSTEM_TRUST_DOMAIN};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use std::time::Duration;

/// A mesh with one zone: root, zone CA, its intermediate PEM, and a bundle trusting the root.
struct Mesh {
    root: CertificateAuthority,
    zone: CertificateAuthority,
    intermediate: String,
    bundle: TrustBundle,
}

fn mesh(name: &str) -> Mesh {
    let root = root(name);
    let (zone, intermediate) = zone_ca(&root, "east");
    let bundle = TrustBundle::new(vec![root.cert_pem().to_string()]);
    Mesh { root, zone, intermediate, bundle }
}

#[test]
fn accepts_leaf_and_intermediate_and_returns_the_spiffe_id() {
    let m = mesh("default");
    let leaf = workload(&m.zone, "spiffe://default/web", DAY);
    let id = m.bundle.verify(&leaf, std::slice::from_ref(&m.intermediate), SystemTime::now()).expect("verify");
    assert_eq!(id.as_str(), "spiffe://default/web");
    assert_eq!((id.trust_domain(), id.path()), ("default", "web"));
}

/// One rejected chain: what the peer presents, when, and the error expected.
struct Case {
    name: &'static str,
    bundle: TrustBundle,
    leaf: String,
    intermediates: Vec<String>,
    now: SystemTime,
    expected: fn(&VerifyError) -> bool,
}

#[test]
fn rejects_bad_chains_with_a_named_reason() {
    let m = mesh("default");
    let same_name = mesh("default");
    let other = mesh("other");
    let leaf = workload(&m.zone, "spiffe://default/web", DAY);
    let inters = vec![m.intermediate.clone()];
    let now = SystemTime::now();

    let short_lived = workload(&m.zone, "spiffe://default/web", Duration::from_secs(1));
    let mut revoked = m.bundle.clone();
    revoked.revoked.insert(fingerprint(&m.intermediate).expect("fingerprint"));

    // The zone intermediate (path length 0) signs another CA, which signs a leaf.
    let mut sub_ca = CertificateParams::default();
    sub_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    sub_ca.subject_alt_names = vec![uri("spiffe://default/zone/sub")];
    let (sub_pem, sub_key) = mint(&m.zone, sub_ca);
    let sub = CertificateAuthority::from_pem(&sub_pem, &sub_key).expect("sub CA loads");
    let too_deep = workload(&sub, "spiffe://default/web", DAY);

    let mut no_id = CertificateParams::new(vec!["web.default".to_string()]).expect("params");
    no_id.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (no_id_leaf, _) = mint(&m.zone, no_id);

    let cases = vec![
        Case {
            name: "leaf from another mesh's root",
            bundle: m.bundle.clone(),
            leaf: workload(&other.zone, "spiffe://other/web", DAY),
            intermediates: vec![other.intermediate.clone()],
            now,
            expected: |e| matches!(e, VerifyError::UnknownIssuer),
        },
        Case {
            name: "leaf from another root with the same names",
            bundle: m.bundle.clone(),
            leaf: workload(&same_name.zone, "spiffe://default/web", DAY),
            intermediates: vec![same_name.intermediate.clone()],
            now,
            expected: |e| matches!(e, VerifyError::UnknownIssuer),
        },
        Case {
            name: "missing intermediate",
            bundle: m.bundle.clone(),
            leaf: leaf.clone(),
            intermediates: vec![],
            now,
            expected: |e| matches!(e, VerifyError::UnknownIssuer),
        },
        Case {
            name: "expired leaf",
            bundle: m.bundle.clone(),
            leaf: short_lived,
            intermediates: inters.clone(),
            now: now_plus(HOUR),
            expected: |e| matches!(e, VerifyError::Expired { .. }),
        },
        Case {
            name: "leaf not valid yet",
            bundle: m.bundle.clone(),
            leaf: leaf.clone(),
            intermediates: inters.clone(),
            now: now_minus(HOUR),
            expected: |e| matches!(e, VerifyError::NotYetValid { .. }),
        },
        Case {
            name: "revoked intermediate",
            bundle: revoked,
            leaf: leaf.clone(),
            intermediates: inters.clone(),
            now,
            expected: |e| matches!(e, VerifyError::RevokedIntermediate { .. }),
        },
        Case {
            name: "CA below a path-length-0 intermediate",
            bundle: m.bundle.clone(),
            leaf: too_deep,
            intermediates: vec![sub_pem.clone(), m.intermediate.clone()],
            now,
            expected: |e| matches!(e, VerifyError::InvalidChain { reason } if reason.contains("path length")),
        },
        Case {
            name: "leaf without a SPIFFE ID",
            bundle: m.bundle.clone(),
            leaf: no_id_leaf,
            intermediates: inters.clone(),
            now,
            expected: |e| matches!(e, VerifyError::NoSpiffeId { found: 0 }),
        },
        Case {
            name: "intermediate presented as a leaf",
            bundle: m.bundle.clone(),
            leaf: m.intermediate.clone(),
            intermediates: vec![],
            now,
            expected: |e| matches!(e, VerifyError::InvalidChain { reason } if reason.contains("is a CA")),
        },
        Case {
            name: "empty trust bundle",
            bundle: TrustBundle::default(),
            leaf: leaf.clone(),
            intermediates: inters.clone(),
            now,
            expected: |e| matches!(e, VerifyError::EmptyTrustBundle),
        },
        Case {
            name: "garbage leaf",
            bundle: m.bundle.clone(),
            leaf: "not a certificate".into(),
            intermediates: inters.clone(),
            now,
            expected: |e| matches!(e, VerifyError::BadCertificate { what: "leaf certificate", .. }),
        },
    ];
    for case in cases {
        match case.bundle.verify(&case.leaf, &case.intermediates, case.now) {
            Err(e) => assert!((case.expected)(&e), "{}: unexpected error: {e}", case.name),
            Ok(id) => panic!("{}: accepted as {id}", case.name),
        }
    }
}

#[test]
fn revoked_intermediate_error_names_its_fingerprint() {
    let m = mesh("default");
    let leaf = workload(&m.zone, "spiffe://default/web", DAY);
    let fp = fingerprint(&m.intermediate).expect("fingerprint");
    let mut bundle = m.bundle.clone();
    bundle.revoked.insert(fp.clone());
    let err = bundle.verify(&leaf, std::slice::from_ref(&m.intermediate), SystemTime::now()).expect_err("revoked");
    assert_eq!(err, VerifyError::RevokedIntermediate { fingerprint: fp.clone() });
    assert!(err.to_string().contains(&fp));

    // Revoking something else does not affect this chain.
    let mut unrelated = m.bundle.clone();
    unrelated.revoked.insert("00".repeat(32));
    assert!(unrelated.verify(&leaf, &[m.intermediate], SystemTime::now()).is_ok());
}

#[test]
fn a_reissued_intermediate_replaces_a_revoked_one() {
    let m = mesh("default");
    let leaf = workload(&m.zone, "spiffe://default/web", DAY);
    // The root re-signs the zone's key: same subject and key, new serial, new fingerprint.
    let zone_key = m.zone.key_pem();
    let mut params = CertificateParams::from_ca_cert_pem(&m.intermediate).expect("params");
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42; 16]));
    let root_key = KeyPair::from_pem(&m.root.key_pem()).expect("root key");
    let root_cert = CertificateParams::from_ca_cert_pem(m.root.cert_pem()).expect("root params").self_signed(&root_key).expect("root");
    let zone_kp = KeyPair::from_pem(&zone_key).expect("zone key");
    let reissued = params.signed_by(&zone_kp, &root_cert, &root_key).expect("reissue").pem();

    let mut bundle = m.bundle.clone();
    bundle.revoked.insert(fingerprint(&m.intermediate).expect("fingerprint"));
    let id = bundle.verify(&leaf, &[m.intermediate.clone(), reissued], SystemTime::now()).expect("the re-issued intermediate is used");
    assert_eq!(id.as_str(), "spiffe://default/web");
}

#[test]
fn a_client_only_leaf_is_accepted() {
    let m = mesh("default");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri("spiffe://default/cli")];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (leaf, _) = mint(&m.zone, params);
    let id = m.bundle.verify(&leaf, std::slice::from_ref(&m.intermediate), SystemTime::now()).expect("client-auth leaf");
    assert_eq!(id.as_str(), "spiffe://default/cli");
}

#[test]
fn a_workload_that_asked_for_another_san_verifies_as_the_ca_chosen_id() {
    let m = mesh("default");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri("spiffe://default/admin")];
    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
    let leaf = m.zone.sign_workload(&csr, "spiffe://default/web", DAY).expect("sign");
    let id = m.bundle.verify(&leaf, std::slice::from_ref(&m.intermediate), SystemTime::now()).expect("verify");
    assert_eq!(id.as_str(), "spiffe://default/web");
}

#[test]
fn zone_identities_verify_only_against_the_system_ca() {
    let system = root(SYSTEM_TRUST_DOMAIN);
    let kc = KeyAndCsr::generate("east gateway").expect("csr");
    let leaf = system.sign_zone_identity(&kc.csr_pem, "east", DAY).expect("zone identity");
    let tunnel = TrustBundle::new(vec![system.cert_pem().to_string()]);
    let id = tunnel.verify(&leaf, &[], SystemTime::now()).expect("verify");
    assert_eq!(id.as_str(), "spiffe://strait.system/zone/east");

    // A mesh bundle does not trust zone identities, nor the tunnel bundle workloads.
    let m = mesh("default");
    assert_eq!(m.bundle.verify(&leaf, &[], SystemTime::now()), Err(VerifyError::UnknownIssuer));
    let workload_leaf = workload(&m.zone, "spiffe://default/web", DAY);
    assert_eq!(tunnel.verify(&workload_leaf, &[m.intermediate], SystemTime::now()), Err(VerifyError::UnknownIssuer));
}

#[test]
fn an_expired_intermediate_breaks_the_chain() {
    let root = root("default");
    let kc = KeyAndCsr::generate("east").expect("csr");
    let intermediate = root.sign_intermediate(&kc.csr_pem, "east", HOUR).expect("sign");
    let zone = CertificateAuthority::from_pem(&intermediate, &kc.key_pem).expect("load");
    // A leaf that outlives its issuer (the CA API would cap it; rcgen does not).
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri("spiffe://default/web")];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (leaf, _) = mint(&zone, params);
    let bundle = TrustBundle::new(vec![root.cert_pem().to_string()]);
    assert!(bundle.verify(&leaf, std::slice::from_ref(&intermediate), SystemTime::now()).is_ok());
    let err = bundle.verify(&leaf, &[intermediate], now_plus(2 * HOUR)).expect_err("expired intermediate");
    assert!(matches!(&err, VerifyError::InvalidChain { reason } if reason.contains("expired")), "{err}");
}

#[test]
fn trust_bundle_serializes_roots_and_revocations() {
    let m = mesh("default");
    let mut bundle = m.bundle.clone();
    bundle.revoked.insert("ab".repeat(32));
    let json = serde_json::to_value(&bundle).expect("serialize");
    assert!(json["roots"][0].as_str().is_some_and(|r| r.contains("BEGIN CERTIFICATE")));
    assert_eq!(json["revoked"][0], "ab".repeat(32));
    let back: TrustBundle = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, bundle);
    // `revoked` may be omitted.
    let minimal: TrustBundle = serde_json::from_str(r#"{"roots":[]}"#).expect("deserialize minimal");
    assert!(minimal.revoked.is_empty());
}

fn uri(id: &str) -> SanType {
    SanType::URI(id.try_into().expect("ia5"))
}
