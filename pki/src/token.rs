//! Signed, expiring tokens for zones and dataplanes (JWT, EdDSA over Ed25519).
//!
//! In: claims to sign (on the global control plane, which holds a [`TokenSigner`]), or a
//! presented token with the verification keys a zone received (on zones and the global). Out:
//! the token string, or the verified [`TokenClaims`] / a [`TokenError`] naming what failed.
//!
//! A token looks like header `{"alg":"EdDSA","typ":"JWT","kid":"<key id>"}` and payload
//! `{"kind":"zone","zone":"east","iat":..,"exp":..,"jti":".."}` or
//! `{"kind":"dataplane","mesh":"default","service":"web","iat":..,"exp":..,"jti":".."}` or
//! `{"kind":"zone_proxy","zone":"east","iat":..,"exp":..,"jti":".."}`.
//! The key id is the RFC 7638 JWK thumbprint of the public key, so it is stable across restarts
//! and the same for everyone who holds the key.
//!
//! Revocation is the caller's job: keep a list of revoked `jti`s (or revoked subjects, e.g. a
//! deleted zone) and check the claims returned by [`verify`] against it. Key rotation: publish
//! the new [`TokenVerifierKey`] next to the old one, sign with the new key, drop the old
//! verification key once the old tokens have expired.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use rcgen::{KeyPair, PKCS_ED25519};
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};

use crate::pem::sha256;
use crate::PkiError;

/// How far in the future a token's `iat` may be (clock skew between the issuer and the verifier).
pub const ISSUED_AT_LEEWAY_SECS: u64 = 60;

/// Who a token is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenSubject {
    /// A zone control plane connecting to the global (`straitctl zone register`).
    Zone {
        /// The zone's name (claim `zone`).
        #[serde(rename = "zone")]
        name: String,
    },
    /// A dataplane (sidecar) of `service` in `mesh` connecting to its zone.
    Dataplane {
        /// The mesh (claim `mesh`).
        mesh: String,
        /// The service (claim `service`).
        service: String,
    },
    /// A gateway of `zone` registering with its zone control plane (`straitctl zone register`
    /// writes it next to the zone token). It opens nothing on the global.
    ZoneProxy {
        /// The zone (claim `zone`).
        zone: String,
    },
}

/// The claims of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Who the token is for (claims `kind` plus `zone`, or `mesh` and `service`).
    #[serde(flatten)]
    pub subject: TokenSubject,
    /// Issue time, seconds since the Unix epoch (claim `iat`).
    #[serde(rename = "iat")]
    pub issued_at: u64,
    /// Expiry, seconds since the Unix epoch (claim `exp`); the token is invalid from this second on.
    #[serde(rename = "exp")]
    pub expires_at: u64,
    /// Unique token id for revocation (claim `jti`).
    #[serde(rename = "jti")]
    pub id: String,
}

impl TokenClaims {
    /// Claims for `subject` valid from `now_unix` for `ttl_secs`, with a random 128-bit `jti`.
    pub fn new(subject: TokenSubject, now_unix: u64, ttl_secs: u64) -> Self {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        TokenClaims { subject, issued_at: now_unix, expires_at: now_unix.saturating_add(ttl_secs), id: hex::encode(id) }
    }
}

/// A public key that verifies tokens; safe to send to zones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenVerifierKey {
    /// The key id, matched against the token header's `kid`.
    pub key_id: String,
    /// The raw Ed25519 public key, base64url without padding (a JWK's `x`).
    pub public_key: String,
}

/// Why a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed Strait token (bad encoding, wrong algorithm, missing or bad claims).
    #[error("malformed token: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The token's `kid` is not among the verification keys.
    #[error("token signed by unknown key {key_id:?}")]
    UnknownKey {
        /// The `kid` in the token header.
        key_id: String,
    },
    /// A verification key is unusable (configuration problem, not the token's fault).
    #[error("verification key {key_id:?} is invalid: {reason}")]
    InvalidVerifierKey {
        /// The key's id.
        key_id: String,
        /// What was wrong.
        reason: String,
    },
    /// The signature does not match the header and payload under the named key.
    #[error("token signature does not verify")]
    BadSignature,
    /// The token expired.
    #[error("token expired at {at} (unix seconds)")]
    Expired {
        /// The token's `exp`.
        at: u64,
    },
    /// The token's `iat` is in the future (beyond the clock skew allowance).
    #[error("token not valid until {at} (unix seconds)")]
    NotYetValid {
        /// The token's `iat`.
        at: u64,
    },
}

/// An Ed25519 signing key for tokens. `Debug` never shows the key.
pub struct TokenSigner {
    pkcs8: Vec<u8>,
    encoding: EncodingKey,
    verifier: TokenVerifierKey,
}

impl TokenSigner {
    /// Generates a new Ed25519 key (ring's `Ed25519KeyPair::generate_pkcs8`, through rcgen).
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| PkiError::Signing { reason: e.to_string() })?;
        Ok(Self::from_key_pair(&key))
    }

    /// Loads a key saved with [`TokenSigner::to_pkcs8_der`].
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &PKCS_ED25519)
            .map_err(|e| PkiError::BadKey { reason: format!("not an Ed25519 PKCS#8 key: {e}") })?;
        Ok(Self::from_key_pair(&key))
    }

    fn from_key_pair(key: &KeyPair) -> Self {
        let pkcs8 = key.serialize_der();
        let public_key = URL_SAFE_NO_PAD.encode(key.public_key_raw());
        TokenSigner {
            encoding: EncodingKey::from_ed_der(&pkcs8),
            pkcs8,
            verifier: TokenVerifierKey { key_id: jwk_thumbprint(&public_key), public_key },
        }
    }

    /// The private key, PKCS#8 DER. Secret: store it encrypted, never log it.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.pkcs8.clone()
    }

    /// The key id (RFC 7638 thumbprint of the public key), written to each token's `kid`.
    pub fn key_id(&self) -> &str {
        &self.verifier.key_id
    }

    /// The verification key to hand to zones.
    pub fn public_key(&self) -> TokenVerifierKey {
        self.verifier.clone()
    }

    /// Signs `claims` into a compact JWT.
    pub fn issue(&self, claims: &TokenClaims) -> Result<String, PkiError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.verifier.key_id.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| PkiError::Signing { reason: e.to_string() })
    }
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner").field("key_id", &self.verifier.key_id).field("key", &"<redacted>").finish()
    }
}

/// Whether `token` is shaped like a Strait token (a JWT signed with EdDSA), as opposed to a
/// credential of another issuer, such as a Kubernetes service-account token (RS256 or ES256).
/// Says nothing about validity: [`verify`] decides that.
pub fn is_strait_token(token: &str) -> bool {
    jsonwebtoken::decode_header(token).is_ok_and(|h| h.alg == Algorithm::EdDSA)
}

/// The `exp` claim (unix seconds) of any JWT, read WITHOUT verifying it: only for a token
/// that its issuer has already verified (a Kubernetes token after a TokenReview), to know
/// when to stop trusting it.
pub fn unverified_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

/// Verifies `token` against `keys` at `now_unix` and returns its claims.
///
/// Checks, in order: encoding and algorithm (EdDSA only), `kid` among `keys`, signature,
/// claims shape, `exp` (`now_unix >= exp` is expired), `iat` (no more than
/// [`ISSUED_AT_LEEWAY_SECS`] in the future). Revocation is left to the caller.
pub fn verify(token: &str, keys: &[TokenVerifierKey], now_unix: u64) -> Result<TokenClaims, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed { reason: format!("bad header: {e}") })?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Malformed { reason: format!("algorithm {:?} is not accepted, expected EdDSA", header.alg) });
    }
    let key_id = header.kid.ok_or_else(|| TokenError::Malformed { reason: "the header has no kid".into() })?;
    let key = keys.iter().find(|k| k.key_id == key_id).ok_or_else(|| TokenError::UnknownKey { key_id: key_id.clone() })?;
    let decoding = decoding_key(key)?;
    let claims = jsonwebtoken::decode::<TokenClaims>(token, &decoding, &validation())
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidKeyFormat => TokenError::InvalidVerifierKey { key_id: key_id.clone(), reason: e.to_string() },
            _ => TokenError::Malformed { reason: e.to_string() },
        })?
        .claims;
    if now_unix >= claims.expires_at {
        return Err(TokenError::Expired { at: claims.expires_at });
    }
    if claims.issued_at > now_unix.saturating_add(ISSUED_AT_LEEWAY_SECS) {
        return Err(TokenError::NotYetValid { at: claims.issued_at });
    }
    Ok(claims)
}

/// The key as jsonwebtoken wants it, after checking it is 32 bytes: ring would otherwise
/// report a bad key as a bad signature.
fn decoding_key(key: &TokenVerifierKey) -> Result<DecodingKey, TokenError> {
    let invalid = |reason: String| TokenError::InvalidVerifierKey { key_id: key.key_id.clone(), reason };
    let raw = URL_SAFE_NO_PAD.decode(&key.public_key).map_err(|e| invalid(format!("public_key is not base64url: {e}")))?;
    if raw.len() != 32 {
        return Err(invalid(format!("an Ed25519 public key has 32 bytes, this one has {}", raw.len())));
    }
    Ok(DecodingKey::from_ed_der(&raw))
}

/// Signature only: times are checked by [`verify`] against the caller's clock.
fn validation() -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation
}

/// RFC 7638 thumbprint of an Ed25519 JWK: base64url(SHA-256 of the canonical JWK JSON).
fn jwk_thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes()))
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
