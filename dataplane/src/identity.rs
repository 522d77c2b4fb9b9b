//! The sidecar's workload certificate, kept current by the process's certificate manager
//! (`strait_runtime::certs`): the key is made here, off the async workers, and never leaves
//! the process; the CSR goes to the zone over whichever DPS stream is open, and the answer
//! comes back on it. The certificate's life is read from the certificate (the zone caps it at
//! its intermediate's), renewal comes at ~70% of it, and a reconnection to the zone mints
//! nothing: the manager does not depend on the stream, only borrows it to be signed.
//!
//! In: the DPS session's stream (attached while open) and the zone's answers. Out: the
//! current [`WorkloadIdentity`] in [`ProxyState`], the certificate readiness guard released
//! on the first one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use strait_api::dps::{dataplane_message, CertificateRequest, DataplaneMessage};
use strait_api::proxy_config::MeshTrust;
use strait_pki::{Issued, RotationPolicy};
use strait_proxy_core::readiness::BlockReady;
use strait_runtime::certs::{CertManager, Current, Issuer, Managed};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dps_client::ProxyState;

/// How long a CSR may wait for a stream to the zone, and then for its answer.
const SIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// A workload certificate and its key.
#[derive(Debug, Clone)]
pub struct WorkloadIdentity {
    /// Leaf first, then the zone's intermediate.
    pub cert_chain_pem: String,
    /// The private key; it never leaves this process.
    pub key_pem: String,
    /// When it was received.
    pub issued_at: SystemTime,
    /// Its life from then, read from the certificate.
    pub lifetime: Duration,
}

/// The way to the zone's CA: the open DPS stream, and the answer awaited on it.
#[derive(Default)]
pub struct Signer {
    stream: watch::Sender<Option<mpsc::Sender<DataplaneMessage>>>,
    answer: Mutex<Option<oneshot::Sender<Result<String, String>>>>,
}

/// Detaches the stream from the signer when the session that attached it ends.
pub struct Attached<'a>(&'a Signer);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.stream.send_replace(None);
        // A CSR in flight on the closed stream will not be answered: fail it now.
        self.0.answer.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Signer {
    /// Lends `tx` (an open DPS stream) for signing until the returned guard drops.
    pub fn attach(&self, tx: mpsc::Sender<DataplaneMessage>) -> Attached<'_> {
        self.stream.send_replace(Some(tx));
        Attached(self)
    }

    /// Hands the zone's answer (a chain, or why it refused) to the CSR awaiting it.
    pub fn answer(&self, result: Result<String, String>) {
        match self.answer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(waiting) => {
                let _ = waiting.send(result);
            }
            None => tracing::warn!("a certificate arrived for no request in flight; ignoring it"),
        }
    }

    async fn sign(&self, csr_pem: String) -> Result<String, String> {
        let mut stream = self.stream.subscribe();
        let tx = tokio::time::timeout(SIGN_TIMEOUT, stream.wait_for(Option::is_some))
            .await
            .map_err(|_| format!("no stream to the zone control plane in {SIGN_TIMEOUT:?}"))?
            .map_err(|_| "the sidecar is stopping".to_string())?
            .clone()
            .ok_or("no stream to the zone control plane")?;
        let (answer_tx, answer_rx) = oneshot::channel();
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer_tx);
        let request = dataplane_message::Message::CertificateRequest(CertificateRequest { csr_pem });
        tx.send(DataplaneMessage { message: Some(request) }).await.map_err(|_| "the stream to the zone closed".to_string())?;
        // Bound first, so the receiver is gone (and its slot seen closed) in the arms below.
        let answered = tokio::time::timeout(SIGN_TIMEOUT, answer_rx).await;
        match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the stream to the zone closed before the answer".into()),
            Err(_) => {
                // Given up on: a late answer must find no one waiting, not the next request.
                let mut slot = self.answer.lock().unwrap_or_else(|p| p.into_inner());
                if slot.as_ref().is_some_and(|s| s.is_closed()) {
                    slot.take();
                }
                Err(format!("no answer from the zone in {SIGN_TIMEOUT:?}"))
            }
        }
    }
}

struct WorkloadIssuer {
    signer: Arc<Signer>,
    common_name: String,
}

impl Issuer for WorkloadIssuer {
    fn name(&self) -> &str {
        "workload"
    }

    async fn issue(&self) -> Result<Issued, String> {
        let cn = self.common_name.clone();
        let kc = tokio::task::spawn_blocking(move || strait_pki::KeyAndCsr::generate(&cn))
            .await
            .map_err(|e| format!("key generation task: {e}"))?
            .map_err(|e| e.to_string())?;
        let chain = self.signer.sign(kc.csr_pem).await?;
        Issued::check(chain, kc.key_pem, SystemTime::now()).map_err(|e| e.to_string())
    }
}

/// The sidecar's workload certificate under management.
pub struct Workload {
    /// Where CSRs go; the DPS session lends it its stream.
    pub signer: Arc<Signer>,
    managed: Managed,
}

impl Workload {
    /// Renews at once when `trust` revokes the intermediate the certificate in force chains
    /// through (its zone was revoked and got a new one): peers refuse such a certificate.
    pub fn follow_trust(&self, trust: &MeshTrust, state: &ProxyState) {
        let Some(identity) = state.identity.load_full() else { return };
        let intermediates = identity.cert_chain_pem.split_inclusive("-----END CERTIFICATE-----").skip(1);
        let revoked = intermediates.filter_map(|pem| strait_pki::fingerprint(pem).ok()).find(|f| trust.revoked.contains(f));
        if let Some(revoked) = revoked {
            tracing::debug!(intermediate = %revoked, "the workload certificate chains through a revoked intermediate");
            self.managed.renew_revoked(&revoked);
        }
    }
}

/// Starts keeping the workload certificate of `dataplane` current; the DPS session lends its
/// stream to the returned [`Workload`]'s signer. The first certificate releases `guard`.
pub fn start(dataplane: &str, state: Arc<ProxyState>, guard: BlockReady, cancel: CancellationToken, tasks: &TaskTracker) -> Arc<Workload> {
    let signer = Arc::new(Signer::default());
    let manager = CertManager::new(RotationPolicy::default(), cancel.clone(), tasks.clone());
    let issuer = WorkloadIssuer { signer: signer.clone(), common_name: dataplane.to_string() };
    let managed = manager.manage_until(issuer, None, cancel.clone());
    tasks.spawn(install(managed.current.clone(), state, guard, cancel));
    Arc::new(Workload { signer, managed })
}

/// Puts each new certificate in use.
async fn install(mut current: Current, state: Arc<ProxyState>, guard: BlockReady, cancel: CancellationToken) {
    let mut guard = Some(guard);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            changed = current.changed() => if changed.is_err() { return },
        }
        let Some(cert) = current.borrow_and_update().clone() else { continue };
        let identity = WorkloadIdentity {
            cert_chain_pem: cert.chain_pem.clone(),
            key_pem: cert.key_pem.clone(),
            issued_at: cert.received_at,
            lifetime: cert.lifetime(),
        };
        state.identity.store(Some(Arc::new(identity)));
        state.changed.send_modify(|n| *n += 1);
        guard.take();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Counts renewals; every certificate it issues is a fresh one from `ca`.
    struct Counting {
        ca: Arc<strait_pki::CertificateAuthority>,
        calls: Arc<AtomicU32>,
    }

    impl Issuer for Counting {
        fn name(&self) -> &str {
            "test"
        }

        async fn issue(&self) -> Result<Issued, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let kc = strait_pki::KeyAndCsr::generate("w").map_err(|e| e.to_string())?;
            let leaf = self.ca.sign_workload(&kc.csr_pem, "spiffe://default/web", Duration::from_secs(3600)).map_err(|e| e.to_string())?;
            Issued::check(leaf, kc.key_pem, SystemTime::now()).map_err(|e| e.to_string())
        }
    }

    #[tokio::test]
    async fn a_revoked_intermediate_renews_the_certificate_once() {
        let root = strait_pki::CertificateAuthority::new_root("default", "root", Duration::from_secs(7200)).unwrap();
        let kc = strait_pki::KeyAndCsr::generate("zone").unwrap();
        let intermediate_pem = root.sign_intermediate(&kc.csr_pem, "zone-1", Duration::from_secs(3600)).unwrap();
        let intermediate = Arc::new(strait_pki::CertificateAuthority::from_pem(&intermediate_pem, &kc.key_pem).unwrap());
        let calls = Arc::new(AtomicU32::new(0));
        let manager = CertManager::new(RotationPolicy::default(), CancellationToken::new(), TaskTracker::new());
        let issuer = Counting { ca: intermediate.clone(), calls: calls.clone() };
        let held = issuer.issue().await.unwrap();
        let managed = manager.manage_until(issuer, Some(held.clone()), CancellationToken::new());
        let workload = Workload { signer: Arc::default(), managed };
        let state = ProxyState::default();
        state.identity.store(Some(Arc::new(WorkloadIdentity {
            cert_chain_pem: format!("{}{intermediate_pem}", held.chain_pem),
            key_pem: held.key_pem.clone(),
            issued_at: held.received_at,
            lifetime: held.lifetime(),
        })));

        workload.follow_trust(&MeshTrust::default(), &state);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "nothing revoked: nothing renewed");

        let revoked = MeshTrust { roots: vec![], revoked: [strait_pki::fingerprint(&intermediate_pem).unwrap()].into() };
        let mut current = workload.managed.current.clone();
        workload.follow_trust(&revoked, &state);
        tokio::time::timeout(Duration::from_secs(5), current.changed()).await.expect("renewed at once").unwrap();
        workload.follow_trust(&revoked, &state);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one renewal per revoked intermediate");
    }
}
