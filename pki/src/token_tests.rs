use super::*;
use crate::testing::unix_now;

fn zone_claims(now: u64) -> TokenClaims {
    TokenClaims::new(TokenSubject::Zone { name: "east".into() }, now, 3600)
}

fn new_signer() -> TokenSigner {
    TokenSigner::generate().expect("generate")
}

/// Decodes one base64url JWT segment as JSON.
fn segment(token: &str, index: usize) -> serde_json::Value {
    let part = token.split('.').nth(index).expect("segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
}

#[test]
fn issue_and_verify_round_trip() {
    let signer = new_signer();
    let now = unix_now();
    let subjects = [
        TokenSubject::Zone { name: "east".into() },
        TokenSubject::Dataplane { mesh: "default".into(), service: "web".into() },
        TokenSubject::ZoneProxy { zone: "east".into() },
    ];
    for subject in subjects {
        let claims = TokenClaims::new(subject, now, 600);
        let token = signer.issue(&claims).expect("issue");
        let verified = verify(&token, &[signer.public_key()], now).expect("verify");
        assert_eq!(verified, claims);
    }
}

#[test]
fn tokens_use_documented_claim_names() {
    let signer = new_signer();
    let now = unix_now();
    let zone = signer.issue(&zone_claims(now)).expect("issue");
    let header = segment(&zone, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], signer.key_id());
    let payload = segment(&zone, 1);
    assert_eq!(payload["kind"], "zone");
    assert_eq!(payload["zone"], "east");
    assert_eq!(payload["iat"], now);
    assert_eq!(payload["exp"], now + 3600);
    assert!(payload["jti"].as_str().is_some_and(|j| j.len() == 32));

    let dp = TokenClaims::new(TokenSubject::Dataplane { mesh: "default".into(), service: "web".into() }, now, 60);
    let payload = segment(&signer.issue(&dp).expect("issue"), 1);
    assert_eq!(payload["kind"], "dataplane");
    assert_eq!(payload["mesh"], "default");
    assert_eq!(payload["service"], "web");

    let proxy = TokenClaims::new(TokenSubject::ZoneProxy { zone: "east".into() }, now, 60);
    let payload = segment(&signer.issue(&proxy).expect("issue"), 1);
    assert_eq!(payload["kind"], "zone_proxy");
    assert_eq!(payload["zone"], "east");
}

/// Re-signs `claims` with `key`, writing `kid` in the header: a forger who knows the real kid.
fn forge(key: &TokenSigner, kid: &str, claims: &TokenClaims) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    let encoding = EncodingKey::from_ed_der(&key.to_pkcs8_der());
    jsonwebtoken::encode(&header, claims, &encoding).expect("forge")
}

/// Replaces the payload segment, keeping the original header and signature.
fn tamper(token: &str, payload: &serde_json::Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).expect("json"));
    format!("{}.{}.{}", parts[0], body, parts[2])
}

#[test]
fn verify_rejects_bad_tokens_with_a_named_reason() {
    let signer = new_signer();
    let other = new_signer();
    let now = unix_now();
    let claims = zone_claims(now);
    let token = signer.issue(&claims).expect("issue");
    let keys = vec![signer.public_key()];

    let mut payload = segment(&token, 1);
    payload["zone"] = "west".into();
    let tampered = tamper(&token, &payload);

    let mut future = claims.clone();
    future.issued_at = now + 3600;
    future.expires_at = now + 7200;

    let hs256 =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(signer.public_key().public_key.as_bytes()))
            .expect("hs256");

    let short_key = vec![TokenVerifierKey { key_id: signer.key_id().to_string(), public_key: URL_SAFE_NO_PAD.encode([1u8; 16]) }];

    type Check = fn(&TokenError, &TokenClaims) -> bool;
    let cases: Vec<(&str, String, Vec<TokenVerifierKey>, u64, Check)> = vec![
        ("expired at exp", token.clone(), keys.clone(), claims.expires_at, |e, c| *e == TokenError::Expired { at: c.expires_at }),
        ("issued in the future", signer.issue(&future).expect("issue"), keys.clone(), now, |e, c| {
            *e == TokenError::NotYetValid { at: c.issued_at + 3600 }
        }),
        ("tampered payload", tampered, keys.clone(), now, |e, _| *e == TokenError::BadSignature),
        ("unknown key", token.clone(), vec![other.public_key()], now, |e, _| matches!(e, TokenError::UnknownKey { .. })),
        ("same claims, another key, forged kid", forge(&other, signer.key_id(), &claims), keys.clone(), now, |e, _| {
            *e == TokenError::BadSignature
        }),
        ("not a JWT", "hello".into(), keys.clone(), now, |e, _| matches!(e, TokenError::Malformed { .. })),
        (
            "HS256 with the public key as secret",
            hs256,
            keys.clone(),
            now,
            |e, _| matches!(e, TokenError::Malformed { reason } if reason.contains("HS256")),
        ),
        ("unusable verification key", token.clone(), short_key, now, |e, _| matches!(e, TokenError::InvalidVerifierKey { .. })),
    ];
    for (name, token, keys, now, expected) in cases {
        match verify(&token, &keys, now) {
            Err(e) => assert!(expected(&e, &claims), "{name}: unexpected error: {e}"),
            Ok(c) => panic!("{name}: accepted {c:?}"),
        }
    }
    // Control: the untouched token verifies until its last second, and with a small iat skew.
    assert!(verify(&token, &keys, claims.expires_at - 1).is_ok());
    let mut skewed = claims.clone();
    skewed.issued_at = now + ISSUED_AT_LEEWAY_SECS;
    assert!(verify(&signer.issue(&skewed).expect("issue"), &keys, now).is_ok());
}

#[test]
fn errors_have_clear_messages() {
    assert_eq!(TokenError::Expired { at: 42 }.to_string(), "token expired at 42 (unix seconds)");
    assert_eq!(TokenError::UnknownKey { key_id: "abc".into() }.to_string(), "token signed by unknown key \"abc\"");
}

#[test]
fn key_id_is_stable_across_pkcs8_round_trips() {
    let original = new_signer();
    let restored = TokenSigner::from_pkcs8_der(&original.to_pkcs8_der()).expect("restore");
    assert_eq!(restored.key_id(), original.key_id());
    assert_eq!(restored.public_key(), original.public_key());
    assert_ne!(new_signer().key_id(), original.key_id());

    // Tokens from either verify with the other's public key.
    let now = unix_now();
    let token = restored.issue(&zone_claims(now)).expect("issue");
    assert!(verify(&token, &[original.public_key()], now).is_ok());
}

#[test]
fn key_id_is_the_rfc7638_thumbprint() {
    // RFC 8037 appendix A.3: thumbprint of the Ed25519 key from appendix A.2.
    assert_eq!(jwk_thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
}

#[test]
fn from_pkcs8_der_rejects_other_keys() {
    let ecdsa = KeyPair::generate().expect("ecdsa").serialize_der();
    for (name, der) in [("garbage", b"hello".to_vec()), ("ECDSA key", ecdsa)] {
        assert!(matches!(TokenSigner::from_pkcs8_der(&der), Err(PkiError::BadKey { .. })), "{name}");
    }
}

#[test]
fn debug_never_prints_the_key() {
    let signer = new_signer();
    let der = signer.to_pkcs8_der();
    let debug = format!("{signer:?}");
    for secret in [
        hex::encode(&der),
        URL_SAFE_NO_PAD.encode(&der),
        base64::engine::general_purpose::STANDARD.encode(&der),
        format!("{der:?}"),
        // The 32-byte seed sits at the end of a PKCS#8 v1 prefix; look for it alone too.
        hex::encode(&der[16..48]),
    ] {
        assert!(!debug.contains(&secret), "{debug}");
    }
    assert!(debug.contains(signer.key_id()) && debug.contains("<redacted>"), "{debug}");
}

#[test]
fn verifier_keys_serialize_without_secrets() {
    let signer = new_signer();
    let key = signer.public_key();
    let json = serde_json::to_value(&key).expect("serialize");
    assert_eq!(json["key_id"], signer.key_id());
    assert_eq!(URL_SAFE_NO_PAD.decode(json["public_key"].as_str().expect("string")).expect("base64url").len(), 32);
    let back: TokenVerifierKey = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, key);
}

#[test]
fn claims_get_unique_ids() {
    let a = zone_claims(1);
    let b = zone_claims(1);
    assert_ne!(a.id, b.id);
    assert_eq!((a.issued_at, a.expires_at), (1, 3601));
}

#[test]
fn a_kubernetes_token_is_told_apart_and_its_expiry_read() {
    let signer = new_signer();
    let now = unix_now();
    let ours = signer.issue(&zone_claims(now)).expect("issue");
    assert!(is_strait_token(&ours));
    assert_eq!(unverified_expiry(&ours), Some(now + 3600));
    // A projected service-account token: RS256, issued by the cluster (signature irrelevant here).
    let encode = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
    let kubernetes = format!(
        "{}.{}.c2lnbmF0dXJl",
        encode(serde_json::json!({"alg": "RS256", "kid": "k8s-key"})),
        encode(serde_json::json!({"aud": ["strait-zone"], "exp": 1_900_000_000u64, "iss": "https://kubernetes.default.svc.cluster.local",
            "kubernetes.io": {"namespace": "shop", "pod": {"name": "web-1", "uid": "u1"}}, "sub": "system:serviceaccount:shop:web"}))
    );
    assert!(!is_strait_token(&kubernetes));
    assert_eq!(unverified_expiry(&kubernetes), Some(1_900_000_000));
    assert!(!is_strait_token("not a token"));
    assert_eq!(unverified_expiry("not a token"), None);
}
