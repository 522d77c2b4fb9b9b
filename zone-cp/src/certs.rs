//! The zone's certificates, kept current by the process's one certificate manager
//! (`strait_runtime::certs`): the DPS server certificate (signed here, by the zone's DPS CA),
//! and the intermediate CA of each mesh and the zone identity, signed by the global from CSRs
//! sent over the zone sync stream, which they only borrow while it is open: a reconnection
//! mints nothing. Each renews at ~70% of its own life with back-off per identity; an
//! intermediate or identity the global revoked is renewed at once. Keys are made off the async
//! workers and never leave the zone.
//!
//! In: the zone's store (meshes, trust bundles, the system trust), the open sync stream and the
//! global's answers. Out: `ZoneCA` and `ZoneIdentity` records in the store, which workload
//! certificates and the gateways' configuration are built from.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use strait_api::kds::{self, zone_message, ZoneMessage};
use strait_pki::{Issued, KeyAndCsr};
use strait_runtime::certs::{CertManager, Issuer, Managed};
use strait_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How long a CSR may wait for a sync stream, and then for the global's answer.
const SIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a CSR asks the global for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Wanted {
    Intermediate(String),
    Identity,
}

/// A signed certificate and the root it chains to.
struct Signed {
    cert_pem: String,
    root_pem: String,
}

/// The way to the global's CAs: the open sync stream, and the answers awaited on it.
#[derive(Default)]
pub struct KdsSigner {
    stream: watch::Sender<Option<mpsc::Sender<ZoneMessage>>>,
    waiting: Mutex<HashMap<Wanted, oneshot::Sender<Result<Signed, String>>>>,
}

/// Takes the stream back from the signer when the session that lent it ends.
pub struct Attached<'a>(&'a KdsSigner);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.stream.send_replace(None);
        // CSRs in flight on the closed stream will not be answered: fail them now.
        self.0.waiting.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl KdsSigner {
    /// Lends `tx` (an open sync stream) for CSRs until the returned guard drops.
    pub fn attach(&self, tx: mpsc::Sender<ZoneMessage>) -> Attached<'_> {
        self.stream.send_replace(Some(tx));
        Attached(self)
    }

    /// Hands the global's answer to the CSR awaiting it.
    pub fn answer(&self, cert: kds::Certificate) {
        let wanted = if cert.zone_identity { Wanted::Identity } else { Wanted::Intermediate(cert.mesh.clone()) };
        let Some(waiting) = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&wanted) else {
            tracing::warn!(?wanted, "a certificate arrived for no request in flight; ignoring it");
            return;
        };
        let answer = if cert.error.is_empty() {
            Ok(Signed { cert_pem: cert.cert_pem, root_pem: cert.root_pem })
        } else {
            Err(format!("the global refused the CSR: {}", cert.error))
        };
        let _ = waiting.send(answer);
    }

    async fn sign(&self, wanted: Wanted, request: kds::CertificateRequest) -> Result<Signed, String> {
        let mut stream = self.stream.subscribe();
        let tx = tokio::time::timeout(SIGN_TIMEOUT, stream.wait_for(Option::is_some))
            .await
            .map_err(|_| format!("no stream to the global in {SIGN_TIMEOUT:?}"))?
            .map_err(|_| "the zone is stopping".to_string())?
            .clone()
            .ok_or("no stream to the global")?;
        let (answer_tx, answer_rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(wanted.clone(), answer_tx);
        let message = ZoneMessage { message: Some(zone_message::Message::CertificateRequest(request)) };
        tx.send(message).await.map_err(|_| "the stream to the global closed".to_string())?;
        let key = wanted.clone();
        // Bound first, so the receiver is gone (and its slot seen closed) in the arms below.
        let answered = tokio::time::timeout(SIGN_TIMEOUT, answer_rx).await;
        match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the stream to the global closed before the answer".into()),
            Err(_) => {
                // Given up on: a late answer must find no one waiting, not the next request.
                let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                if waiting.get(&key).is_some_and(|s| s.is_closed()) {
                    waiting.remove(&key);
                }
                Err(format!("no answer from the global in {SIGN_TIMEOUT:?}"))
            }
        }
    }
}

/// The certificate of a stored `ZoneCA` or `ZoneIdentity` record, if it still fits its key.
/// Records written before `received` was kept count from the certificate's start, so a
/// restart never pushes a renewal back.
pub fn from_record(data: &serde_json::Value) -> Option<Issued> {
    let field = |name: &str| data.get(name).and_then(serde_json::Value::as_str).map(str::to_string);
    let (cert, key) = (field("cert")?, field("key")?);
    let since_start = || strait_pki::cert_validity(&cert).ok().map(|(not_before, _)| not_before.max(0).unsigned_abs());
    let received = data.get("received").and_then(serde_json::Value::as_u64).or_else(since_start)?;
    Issued::check(cert.clone(), key, std::time::UNIX_EPOCH + Duration::from_secs(received)).ok()
}

async fn key_and_csr(common_name: String) -> Result<KeyAndCsr, String> {
    tokio::task::spawn_blocking(move || KeyAndCsr::generate(&common_name))
        .await
        .map_err(|e| format!("key generation task: {e}"))?
        .map_err(|e| e.to_string())
}

/// Issues (and stores) the zone's intermediate CA of one mesh.
struct IntermediateIssuer {
    name: String,
    signer: Arc<KdsSigner>,
    store: Arc<dyn Store>,
    zone: String,
    mesh: String,
}

impl Issuer for IntermediateIssuer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn issue(&self) -> Result<Issued, String> {
        let kc = key_and_csr(format!("{} zone CA ({})", self.zone, self.mesh)).await?;
        let request = kds::CertificateRequest { mesh: self.mesh.clone(), csr_pem: kc.csr_pem, zone_identity: false };
        let signed = self.signer.sign(Wanted::Intermediate(self.mesh.clone()), request).await?;
        let issued = Issued::check(signed.cert_pem, kc.key_pem, SystemTime::now()).map_err(|e| e.to_string())?;
        crate::zone_ca::put(self.store.as_ref(), &self.mesh, &issued, &signed.root_pem).await.map_err(|e| format!("storing it: {e}"))?;
        Ok(issued)
    }
}

/// Issues (and stores) the zone identity.
struct IdentityIssuer {
    signer: Arc<KdsSigner>,
    store: Arc<dyn Store>,
    zone: String,
}

impl Issuer for IdentityIssuer {
    fn name(&self) -> &str {
        "zone identity"
    }

    async fn issue(&self) -> Result<Issued, String> {
        let kc = key_and_csr(format!("{} zone", self.zone)).await?;
        let request = kds::CertificateRequest { csr_pem: kc.csr_pem, zone_identity: true, ..Default::default() };
        let signed = self.signer.sign(Wanted::Identity, request).await?;
        let issued = Issued::check(signed.cert_pem, kc.key_pem, SystemTime::now()).map_err(|e| e.to_string())?;
        crate::zone_identity::put(self.store.as_ref(), &issued).await.map_err(|e| format!("storing it: {e}"))?;
        Ok(issued)
    }
}

/// The certificates the global signs for this zone, each managed while it is needed.
pub struct ZoneCerts {
    manager: CertManager,
    signer: Arc<KdsSigner>,
    store: Arc<dyn Store>,
    zone: String,
    cancel: CancellationToken,
    intermediates: Mutex<HashMap<String, (Managed, CancellationToken)>>,
    identity: Mutex<Option<Managed>>,
}

impl ZoneCerts {
    /// Certificates of `zone` in `store`, managed by `manager`, signed through `signer`.
    pub fn new(manager: CertManager, signer: Arc<KdsSigner>, store: Arc<dyn Store>, zone: String, cancel: CancellationToken) -> Self {
        ZoneCerts { manager, signer, store, zone, cancel, intermediates: Mutex::default(), identity: Mutex::default() }
    }

    /// Brings what is managed in line with the store: an intermediate for every mesh (renewed
    /// at once if the mesh's bundle revoked it; no longer renewed once the mesh is gone), and
    /// the zone identity once the system trust has arrived (renewed at once if revoked).
    /// Called at start and after every applied batch.
    pub async fn reconcile(&self) -> Result<(), StoreError> {
        let meshes: Vec<String> =
            self.store.list(strait_api::ResourceType::Mesh.name(), None).await?.into_iter().map(|o| o.key.name).collect();
        // Each mesh's stored intermediate, and whether its bundle revoked it.
        let mut held: HashMap<String, (Issued, bool)> = HashMap::new();
        for mesh in &meshes {
            if let Some(cert) = crate::zone_ca::stored(self.store.as_ref(), mesh).await? {
                let revoked = crate::zone_ca::is_revoked(self.store.as_ref(), mesh, &cert.chain_pem).await?;
                held.insert(mesh.clone(), (cert, revoked));
            }
        }
        let mut new = Vec::new();
        {
            let mut managed = self.intermediates.lock().unwrap_or_else(|p| p.into_inner());
            managed.retain(|mesh, (_, stop)| {
                let keep = meshes.contains(mesh);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for mesh in &meshes {
                match (managed.get(mesh), held.get(mesh)) {
                    (Some((m, _)), Some((cert, true))) => m.renew_revoked(&cert.fingerprint),
                    (Some(_), _) => {}
                    (None, _) => new.push(mesh.clone()),
                }
            }
        }
        for mesh in new {
            // A revoked intermediate is not a starting point: a new one is asked for at once.
            let start = held.remove(&mesh).filter(|(_, revoked)| !revoked).map(|(cert, _)| cert);
            let issuer = IntermediateIssuer {
                name: format!("intermediate CA of mesh {mesh}"),
                signer: self.signer.clone(),
                store: self.store.clone(),
                zone: self.zone.clone(),
                mesh: mesh.clone(),
            };
            let stop = self.cancel.child_token();
            let m = self.manager.manage_until(issuer, start, stop.clone());
            self.intermediates.lock().unwrap_or_else(|p| p.into_inner()).insert(mesh, (m, stop));
        }
        self.reconcile_identity().await
    }

    async fn reconcile_identity(&self) -> Result<(), StoreError> {
        let trust = crate::zone_identity::system_trust(self.store.as_ref()).await?;
        if trust.roots.is_empty() {
            return Ok(());
        }
        let held = crate::zone_identity::stored(self.store.as_ref()).await?;
        let revoked = held.as_ref().filter(|c| trust.revoked.contains(&c.fingerprint)).map(|c| c.fingerprint.clone());
        let mut identity = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        match (identity.as_ref(), revoked.as_deref()) {
            (Some(m), Some(fingerprint)) => m.renew_revoked(fingerprint),
            (Some(_), None) => {}
            (None, _) => {
                let issuer = IdentityIssuer { signer: self.signer.clone(), store: self.store.clone(), zone: self.zone.clone() };
                *identity = Some(self.manager.manage_until(issuer, held.filter(|_| revoked.is_none()), self.cancel.child_token()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_its_received_time_counts_from_the_certificate_s_start() {
        let ca = strait_pki::CertificateAuthority::new_root("default", "root", Duration::from_secs(7200)).unwrap();
        let kc = KeyAndCsr::generate("zone").unwrap();
        let cert = ca.sign_intermediate(&kc.csr_pem, "zone-1", Duration::from_secs(3600)).unwrap();
        let (not_before, _) = strait_pki::cert_validity(&cert).unwrap();
        let old = serde_json::json!({"cert": cert, "key": kc.key_pem});
        let issued = from_record(&old).expect("usable");
        let start = std::time::UNIX_EPOCH + Duration::from_secs(not_before.unsigned_abs());
        assert_eq!(issued.received_at, start, "not the time of the restart");
        let mut new = old.clone();
        new["received"] = serde_json::json!(not_before + 100);
        assert_eq!(from_record(&new).unwrap().received_at, start + Duration::from_secs(100));
        let mut foreign = old;
        foreign["key"] = serde_json::json!(KeyAndCsr::generate("x").unwrap().key_pem);
        assert!(from_record(&foreign).is_none(), "a certificate that does not fit its key is not used");
    }
}
