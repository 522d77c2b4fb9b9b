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
use strait_pki::{Issued, RotationPolicy};
use strait_proxy_core::readiness::BlockReady;
use strait_runtime::certs::{CertManager, Current, Issuer};
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
        match tokio::time::timeout(SIGN_TIMEOUT, answer_rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the stream to the zone closed before the answer".into()),
            Err(_) => Err(format!("no answer from the zone in {SIGN_TIMEOUT:?}")),
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

/// Starts keeping the workload certificate of `dataplane` current; returns the signer the DPS
/// session lends its stream to. The first certificate releases `guard`.
pub fn start(dataplane: &str, state: Arc<ProxyState>, guard: BlockReady, cancel: CancellationToken, tasks: &TaskTracker) -> Arc<Signer> {
    let signer = Arc::new(Signer::default());
    let manager = CertManager::new(RotationPolicy::default(), cancel.clone(), tasks.clone());
    let current = manager.manage(WorkloadIssuer { signer: signer.clone(), common_name: dataplane.to_string() }, None);
    tasks.spawn(install(current, state, guard, cancel));
    signer
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
