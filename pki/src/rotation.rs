//! When a certificate is renewed, and what makes a new one fit to use: the rotation policy
//! every certificate manager of Strait follows.
//!
//! In: a certificate chain and its key (PEM), as a CA answered them. Out: an [`Issued`]
//! certificate whose leaf matches its key and is valid now, with its validity read from the
//! certificate itself (never from configuration), and the [`RotationPolicy`]: renew at ~70% of
//! that life, back off exponentially with jitter after failures, and keep using the current
//! certificate while it is valid.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pem::{cert_from_pem, parse_cert};
use crate::PkiError;

/// How far ahead of our clock a new certificate's `notBefore` may be.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A certificate chain and its private key, checked to belong together and to be valid.
#[derive(Clone)]
pub struct Issued {
    /// Leaf first, then any intermediates, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PEM. Never printed by `Debug`.
    pub key_pem: String,
    /// Start of the leaf's validity.
    pub not_before: SystemTime,
    /// End of the leaf's validity.
    pub not_after: SystemTime,
    /// Hex SHA-256 of the leaf.
    pub fingerprint: String,
    /// When it was received and checked.
    pub received_at: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("fingerprint", &self.fingerprint)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn at(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

impl Issued {
    /// Checks that the leaf of `chain_pem` is for `key_pem` and valid at `now`.
    pub fn check(chain_pem: String, key_pem: String, now: SystemTime) -> Result<Issued, PkiError> {
        let der = cert_from_pem(&chain_pem, "issued certificate")?;
        let cert = parse_cert(&der, "issued certificate")?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadKey { reason: e.to_string() })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::BadKey { reason: "the issued certificate is not for this key".into() });
        }
        let not_before = at(cert.validity().not_before.timestamp());
        let not_after = at(cert.validity().not_after.timestamp());
        // A signer whose clock runs ahead of ours (beyond the CA's own backdating) must not keep
        // us without a certificate: peers check validity against their own clocks.
        if now + CLOCK_SKEW < not_before || now >= not_after {
            return Err(PkiError::InvalidLifetime { reason: "the issued certificate is not valid now".into() });
        }
        Ok(Issued { fingerprint: crate::fingerprint_der(&der), chain_pem, key_pem, not_before, not_after, received_at: now })
    }

    /// The life the holder gets out of the leaf: from when it was received (CAs backdate
    /// `notBefore` to absorb clock skew, which is no use to the holder) to `notAfter`.
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before.max(self.received_at)).unwrap_or_default()
    }

    /// Whether the leaf is still valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now >= self.not_before && now < self.not_after
    }
}

/// When to renew and how to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotationPolicy {
    /// Share of a certificate's life after which it is renewed.
    pub renew_fraction: f64,
    /// First wait after a failed renewal.
    pub min_backoff: Duration,
    /// Longest wait between failed renewals.
    pub max_backoff: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy { renew_fraction: 0.7, min_backoff: Duration::from_millis(500), max_backoff: Duration::from_secs(60) }
    }
}

impl RotationPolicy {
    /// When `cert` is due for renewal: `renew_fraction` of its life after it started.
    pub fn renew_at(&self, cert: &Issued) -> SystemTime {
        self.renew_time(cert.not_before, cert.not_after, cert.received_at)
    }

    /// When a certificate valid from `not_before` to `not_after`, received at `received_at`,
    /// is due for renewal.
    pub fn renew_time(&self, not_before: SystemTime, not_after: SystemTime, received_at: SystemTime) -> SystemTime {
        let start = not_before.max(received_at);
        start + not_after.duration_since(start).unwrap_or_default().mul_f64(self.renew_fraction.clamp(0.0, 1.0))
    }

    /// When the certificate in `cert_pem` is due, received at `received_at` (now, when it is
    /// not known); `None` when it does not parse (renew it at once).
    pub fn renew_time_of(&self, cert_pem: &str, received_at: Option<SystemTime>) -> Option<SystemTime> {
        let (not_before, not_after) = crate::cert_validity(cert_pem).ok()?;
        Some(self.renew_time(at(not_before), at(not_after), received_at.unwrap_or(at(not_before))))
    }

    /// How long to wait from `now` before renewing `cert` (zero when due or absent).
    pub fn wait(&self, cert: Option<&Issued>, now: SystemTime) -> Duration {
        cert.map(|c| self.renew_at(c).duration_since(now).unwrap_or_default()).unwrap_or_default()
    }

    /// The wait after `failures` failed attempts in a row (1 = the first failure): doubling
    /// from `min_backoff` up to `max_backoff`, with jitter in its upper half so that many
    /// identities failing together do not retry together.
    pub fn backoff(&self, failures: u32) -> Duration {
        let cap = self.min_backoff.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(self.max_backoff);
        cap.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn issued(lifetime: Duration) -> (Issued, String) {
        let root = testing::root("mesh");
        let kc = crate::KeyAndCsr::generate("w").unwrap();
        let chain = root.sign_workload(&kc.csr_pem, "spiffe://mesh/web", lifetime).unwrap();
        (Issued::check(chain.clone(), kc.key_pem, SystemTime::now()).unwrap(), chain)
    }

    #[test]
    fn validity_comes_from_the_certificate() {
        let (cert, _) = issued(Duration::from_secs(100));
        let life = cert.lifetime().as_secs();
        assert!((98..=100).contains(&life), "the backdated start is not counted: {life}");
        let policy = RotationPolicy::default();
        let due = policy.renew_at(&cert).duration_since(cert.received_at).unwrap().as_secs_f64();
        assert!((due - life as f64 * 0.7).abs() < 1.0, "{due}");
        assert!(policy.wait(Some(&cert), SystemTime::now()) > Duration::from_secs(50));
        assert_eq!(policy.wait(Some(&cert), cert.not_after), Duration::ZERO);
        assert_eq!(policy.wait(None, SystemTime::now()), Duration::ZERO);
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let (_, chain) = issued(Duration::from_secs(100));
        let other = crate::KeyAndCsr::generate("x").unwrap();
        let err = Issued::check(chain, other.key_pem, SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("not for this key"), "{err}");
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let (cert, _) = issued(Duration::from_secs(100));
        let later = cert.not_after + Duration::from_secs(1);
        assert!(Issued::check(cert.chain_pem.clone(), cert.key_pem.clone(), later).is_err());
        assert!(!cert.is_valid_at(later));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let p = RotationPolicy { renew_fraction: 0.7, min_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(8) };
        for (failures, cap) in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 8), (u32::MAX, 8)] {
            let b = p.backoff(failures);
            let cap = Duration::from_secs(cap);
            assert!(b <= cap && b >= cap / 2, "failures {failures}: {b:?} not in [{:?}, {cap:?}]", cap / 2);
        }
    }
}
