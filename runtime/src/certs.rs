//! The certificate manager: one per process, with a loop per certificate it keeps current
//! (a server certificate, a workload certificate). Each loop follows the
//! [`RotationPolicy`]: renew at ~70% of the certificate's own life, back off with jitter after a
//! failure while the current certificate stays in use, and publish a new certificate only once
//! it is checked against its key ([`Issued::check`]). How a certificate is obtained (signed
//! locally, or over a control-plane stream) is the [`Issuer`]'s business; key generation and
//! signing belong on `spawn_blocking`, off the async workers.
//!
//! In: issuers, and optionally a certificate already held (so a restart or a reconnect does not
//! mint a new one). Out: a `watch` channel per certificate that always holds the current one.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use strait_pki::{Issued, RotationPolicy};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Obtains a new certificate (and key) for one identity.
pub trait Issuer: Send + Sync + 'static {
    /// What the certificate is for, in logs (`"KDS server"`, `"workload"`).
    fn name(&self) -> &str;
    /// Makes a key, has a certificate signed for it, and checks the result.
    fn issue(&self) -> impl Future<Output = Result<Issued, String>> + Send;
}

/// The current certificate of one identity (`None` until the first one is issued).
pub type Current = watch::Receiver<Option<Arc<Issued>>>;

/// One managed certificate: its current value, and a way to renew it before it is due (when
/// its issuer revoked it).
pub struct Managed {
    /// The certificate in force.
    pub current: Current,
    renew: Arc<Notify>,
    /// The revoked certificate (fingerprint) a renewal was last asked for.
    renewing_for: std::sync::Mutex<Option<String>>,
}

impl Managed {
    /// Renews now rather than when due, because the certificate `fingerprint` (the one in
    /// force, or one its chain goes through) was revoked. Asked again for the same fingerprint,
    /// it does nothing: a renewal in flight or backing off is not hurried by every caller.
    pub fn renew_revoked(&self, fingerprint: &str) {
        let mut last = self.renewing_for.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(fingerprint) {
            *last = Some(fingerprint.to_string());
            self.renew.notify_one();
        }
    }
}

/// The process's certificate manager.
#[derive(Clone)]
pub struct CertManager {
    policy: RotationPolicy,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl CertManager {
    /// A manager whose loops stop on `cancel` and are tracked by `tasks`.
    pub fn new(policy: RotationPolicy, cancel: CancellationToken, tasks: TaskTracker) -> Self {
        CertManager { policy, cancel, tasks }
    }

    /// Keeps `issuer`'s certificate current from now on, starting from `initial` when it is
    /// still valid (it is then renewed only when due), else issuing one at once.
    pub fn manage<I: Issuer>(&self, issuer: I, initial: Option<Issued>) -> Current {
        self.manage_until(issuer, initial, self.cancel.clone()).current
    }

    /// As [`CertManager::manage`], until `stop` (a certificate no longer needed, such as the
    /// intermediate CA of a deleted mesh) or the manager's own cancellation.
    pub fn manage_until<I: Issuer>(&self, issuer: I, initial: Option<Issued>, stop: CancellationToken) -> Managed {
        let initial = initial.filter(|c| c.is_valid_at(SystemTime::now())).map(Arc::new);
        let (tx, rx) = watch::channel(initial);
        let renew = Arc::new(Notify::new());
        let (cancel, renewal) = (self.cancel.clone(), renew.clone());
        let policy = self.policy;
        self.tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = keep_current(issuer, policy, tx, renewal, cancel) => {}
            }
        });
        Managed { current: rx, renew, renewing_for: Default::default() }
    }

    /// Issues the first certificate now (an error if that fails: a server cannot start without
    /// one), then keeps it current.
    pub async fn manage_now<I: Issuer>(&self, issuer: I) -> Result<Current, String> {
        let first = issuer.issue().await.map_err(|e| format!("{} certificate: {e}", issuer.name()))?;
        log_installed(issuer.name(), &first, &self.policy);
        Ok(self.manage(issuer, Some(first)))
    }
}

fn log_installed(name: &str, cert: &Issued, policy: &RotationPolicy) {
    tracing::info!(
        certificate = name,
        fingerprint = %&cert.fingerprint[..16.min(cert.fingerprint.len())],
        lifetime = ?cert.lifetime(),
        renew_in = ?policy.wait(Some(cert), SystemTime::now()),
        "certificate installed"
    );
}

async fn keep_current<I: Issuer>(
    issuer: I,
    policy: RotationPolicy,
    tx: watch::Sender<Option<Arc<Issued>>>,
    renew: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let wait = if failures > 0 { policy.backoff(failures) } else { policy.wait(tx.borrow().as_deref(), SystemTime::now()) };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = renew.notified() => tracing::info!(certificate = issuer.name(), "renewing now: the certificate in force was revoked"),
            () = tokio::time::sleep(wait) => {}
        }
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            result = issuer.issue() => result,
        };
        match result {
            Ok(cert) => {
                failures = 0;
                log_installed(issuer.name(), &cert, &policy);
                tx.send_replace(Some(Arc::new(cert)));
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let retry_in = policy.backoff(failures);
                match tx.borrow().as_deref() {
                    Some(current) if current.is_valid_at(SystemTime::now()) => tracing::warn!(
                        certificate = issuer.name(), %error, failures, ?retry_in,
                        "certificate renewal failed; the current certificate stays in use"
                    ),
                    _ => {
                        tracing::error!(certificate = issuer.name(), %error, failures, ?retry_in, "no valid certificate and renewal failed")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use strait_pki::{CertificateAuthority, KeyAndCsr};

    struct Local {
        ca: Arc<CertificateAuthority>,
        lifetime: Duration,
        calls: Arc<AtomicU32>,
        fail_calls: std::ops::Range<u32>,
    }

    impl Issuer for Local {
        fn name(&self) -> &str {
            "test"
        }

        async fn issue(&self) -> Result<Issued, String> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail_calls.contains(&n) {
                return Err("the CA is away".into());
            }
            let kc = KeyAndCsr::generate("t").map_err(|e| e.to_string())?;
            let chain = self.ca.sign_server(&kc.csr_pem, &["t".into()], self.lifetime).map_err(|e| e.to_string())?;
            Issued::check(chain, kc.key_pem, SystemTime::now()).map_err(|e| e.to_string())
        }
    }

    fn manager() -> CertManager {
        let policy =
            RotationPolicy { renew_fraction: 0.7, min_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(200) };
        CertManager::new(policy, CancellationToken::new(), TaskTracker::new())
    }

    fn ca() -> Arc<CertificateAuthority> {
        Arc::new(CertificateAuthority::new_root("strait.system", "test", Duration::from_secs(3600)).unwrap())
    }

    #[tokio::test]
    async fn renews_at_seventy_percent_of_the_certificate_s_own_life() {
        let calls = Arc::new(AtomicU32::new(0));
        let issuer = Local { ca: ca(), lifetime: Duration::from_secs(4), calls: calls.clone(), fail_calls: 0..0 };
        let mut current = manager().manage_now(issuer).await.unwrap();
        let first = current.borrow_and_update().clone().unwrap();
        // Certificates carry whole seconds: the life is read from the certificate, not taken
        // as the 4 s asked for.
        let due = first.not_after.duration_since(first.received_at).unwrap().mul_f64(0.7);
        let expected = (first.received_at + due).duration_since(SystemTime::now()).unwrap_or_default();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), current.changed()).await.expect("renewed").unwrap();
        let renewed_after = started.elapsed();
        assert!(renewed_after + Duration::from_millis(50) >= expected, "renewed after {renewed_after:?}, due after {expected:?}");
        assert!(renewed_after < expected + Duration::from_millis(800), "renewed after {renewed_after:?}, due after {expected:?}");
        let second = current.borrow().clone().unwrap();
        assert_ne!(first.fingerprint, second.fingerprint);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_valid_certificate_held_is_kept_until_due() {
        let calls = Arc::new(AtomicU32::new(0));
        let ca = ca();
        let issuer = Local { ca: ca.clone(), lifetime: Duration::from_secs(60), calls: calls.clone(), fail_calls: 0..0 };
        let held = issuer.issue().await.unwrap();
        let current = manager().manage(issuer, Some(held.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "nothing minted for a certificate still good");
        assert_eq!(current.borrow().as_ref().unwrap().fingerprint, held.fingerprint);
    }

    #[tokio::test]
    async fn failures_back_off_and_keep_the_current_certificate() {
        let calls = Arc::new(AtomicU32::new(0));
        // The first issue succeeds, the next three fail, the fifth succeeds. Certificates end on
        // a whole second: asked for 3 s, one is valid for 2-3 s, so a slow machine still gets a
        // certificate that is valid when checked (asked for 1 s, one may have 0.1 s left).
        let issuer = Local { ca: ca(), lifetime: Duration::from_secs(3), calls: calls.clone(), fail_calls: 1..4 };
        let mut current = manager().manage_now(issuer).await.unwrap();
        let first = current.borrow_and_update().clone().unwrap();
        tokio::time::timeout(Duration::from_secs(10), current.changed()).await.expect("renewed after the failures").unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_ne!(current.borrow().as_ref().unwrap().fingerprint, first.fingerprint);
    }
}
