//! The zone's intermediate CA of each mesh: its key is generated here and never leaves the
//! zone; the global signs it from a CSR sent over zone sync.
//!
//! In: the meshes synced from the global, and certificates answered to CSRs. Out: `ZoneCA`
//! records in the zone's store (key, certificate, root, when it was received), from which
//! workload certificates are issued. Each intermediate is renewed at ~70% of its own life
//! (the [`RotationPolicy`]); the one in use stays until its successor is stored, and a refused
//! CSR is retried with back-off per mesh. Workload certificates already issued under the old
//! intermediate stay valid: they chain to the same root.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use serde_json::{json, Value};
use strait_api::gateway_config::ZoneIdentity;
use strait_api::kds;
use strait_cp_core::kinds::{TRUST_BUNDLE, ZONE_CA};
use strait_pki::{KeyAndCsr, RotationPolicy};
use strait_store::{Key, Precondition, Store, StoreError};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// When the stored intermediate of `data` is due for renewal (`None`: now).
fn renew_time(data: &Value) -> Option<SystemTime> {
    let cert = data.get("cert").and_then(Value::as_str)?;
    let received = data.get("received").and_then(Value::as_u64).map(|s| UNIX_EPOCH + Duration::from_secs(s));
    RotationPolicy::default().renew_time_of(cert, received)
}

/// Meshes the zone needs a (new) intermediate CA for: none yet, the one it has was revoked in
/// the mesh's trust bundle (the zone was revoked and registered again), or it is due for
/// renewal.
pub async fn due(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for mesh in store.list(strait_api::ResourceType::Mesh.name(), None).await? {
        let name = mesh.key.name;
        let needs = match store.get(&Key::new(ZONE_CA, "", &name)).await? {
            None => true,
            Some(obj) => {
                renew_time(&obj.data).is_none_or(|t| t <= now)
                    || is_revoked(store, &name, obj.data.get("cert").and_then(Value::as_str).unwrap_or_default()).await?
            }
        };
        if needs {
            out.push(name);
        }
    }
    Ok(out)
}

/// How long until the next intermediate is due (`None`: none is held).
pub async fn next_due(store: &dyn Store) -> Result<Option<Duration>, StoreError> {
    let now = SystemTime::now();
    Ok(store
        .list(ZONE_CA, Some(""))
        .await?
        .iter()
        .map(|o| renew_time(&o.data).and_then(|t| t.duration_since(now).ok()).unwrap_or_default())
        .min())
}

async fn is_revoked(store: &dyn Store, mesh: &str, cert_pem: &str) -> Result<bool, StoreError> {
    let Some(bundle) = store.get(&Key::new(TRUST_BUNDLE, mesh, "default")).await? else { return Ok(false) };
    let Ok(fingerprint) = strait_pki::fingerprint(cert_pem) else { return Ok(true) };
    Ok(bundle.data.get("revoked").and_then(Value::as_array).is_some_and(|r| r.iter().any(|f| f.as_str() == Some(fingerprint.as_str()))))
}

/// Fingerprints of the zone's current intermediate CAs, by mesh.
pub async fn fingerprints(store: &dyn Store) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    for obj in store.list(ZONE_CA, Some("")).await? {
        let cert = obj.data.get("cert").and_then(Value::as_str).unwrap_or_default();
        out.push((obj.key.name.clone(), strait_pki::fingerprint(cert).unwrap_or_default()));
    }
    Ok(out)
}

/// CSRs in flight on the current stream, by mesh, with the key each was made from, and the
/// back-off of meshes whose last CSR was refused.
#[derive(Default)]
pub struct Pending {
    keys: HashMap<String, String>,
    /// Refusals in a row, and when to ask again, by mesh.
    refused: HashMap<String, (u32, Instant)>,
    /// Key of the zone identity CSR in flight.
    identity: Option<String>,
}

impl Pending {
    /// A CSR for `mesh`, unless one is already in flight.
    pub async fn request(&mut self, zone: &str, mesh: &str) -> Option<kds::CertificateRequest> {
        if self.keys.contains_key(mesh) || self.refused.get(mesh).is_some_and(|(_, until)| Instant::now() < *until) {
            return None;
        }
        let cn = format!("{zone} zone CA ({mesh})");
        // Key generation is CPU work: keep it off the async workers.
        let generated = tokio::task::spawn_blocking(move || KeyAndCsr::generate(&cn)).await;
        match generated {
            Ok(Ok(kc)) => {
                self.keys.insert(mesh.to_string(), kc.key_pem.clone());
                Some(kds::CertificateRequest { mesh: mesh.to_string(), csr_pem: kc.csr_pem, zone_identity: false })
            }
            Ok(Err(e)) => {
                tracing::error!(mesh, error = %e, "could not make a CSR for the zone's intermediate CA");
                None
            }
            Err(e) => {
                tracing::error!(mesh, error = %e, "CSR task failed");
                None
            }
        }
    }

    /// A CSR for the zone's identity, unless one is already in flight.
    pub async fn request_identity(&mut self, zone: &str) -> Option<kds::CertificateRequest> {
        if self.identity.is_some() {
            return None;
        }
        let cn = format!("{zone} zone");
        match tokio::task::spawn_blocking(move || KeyAndCsr::generate(&cn)).await {
            Ok(Ok(kc)) => {
                self.identity = Some(kc.key_pem);
                Some(kds::CertificateRequest { csr_pem: kc.csr_pem, zone_identity: true, ..Default::default() })
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not make a CSR for the zone identity");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "CSR task failed");
                None
            }
        }
    }

    /// Stores the certificate answered for `cert.mesh` (or the zone identity) with the key of
    /// its CSR.
    pub async fn complete(&mut self, store: &dyn Store, cert: kds::Certificate) -> Result<(), StoreError> {
        if cert.zone_identity {
            let Some(key_pem) = self.identity.take() else {
                tracing::warn!("zone identity for a CSR this stream did not send; ignoring");
                return Ok(());
            };
            if !cert.error.is_empty() {
                tracing::warn!(error = %cert.error, "the global refused the zone identity");
                return Ok(());
            }
            crate::zone_identity::put(store, &ZoneIdentity { cert_pem: cert.cert_pem, key_pem }).await?;
            tracing::info!("stored the zone identity");
            return Ok(());
        }
        let Some(key_pem) = self.keys.remove(&cert.mesh) else {
            tracing::warn!(mesh = %cert.mesh, "certificate for a CSR this stream did not send; ignoring");
            return Ok(());
        };
        if !cert.error.is_empty() {
            let failures = self.refused.get(&cert.mesh).map_or(1, |(n, _)| n + 1);
            let retry_in = RotationPolicy::default().backoff(failures);
            tracing::warn!(mesh = %cert.mesh, error = %cert.error, ?retry_in, "the global refused the zone's intermediate CA");
            self.refused.insert(cert.mesh, (failures, Instant::now() + retry_in));
            return Ok(());
        }
        self.refused.remove(&cert.mesh);
        let received = SystemTime::now();
        if let Err(e) = strait_pki::Issued::check(cert.cert_pem.clone(), key_pem.clone(), received) {
            tracing::error!(mesh = %cert.mesh, error = %e, "the intermediate CA answered does not fit its key; keeping the current one");
            return Ok(());
        }
        let data = json!({"key": key_pem, "cert": cert.cert_pem, "root": cert.root_pem, "received": unix(received)});
        store.put(Key::new(ZONE_CA, "", &cert.mesh), data, Precondition::None).await?;
        let renew_in =
            RotationPolicy::default().renew_time_of(&cert.cert_pem, Some(received)).and_then(|t| t.duration_since(received).ok());
        tracing::info!(mesh = %cert.mesh, ?renew_in, "stored the zone's intermediate CA");
        Ok(())
    }
}

/// The zone's intermediate CA of `mesh` (certificate, key, root), if issued.
pub async fn get(store: &dyn Store, mesh: &str) -> Result<Option<(String, String, String)>, StoreError> {
    Ok(store.get(&Key::new(ZONE_CA, "", mesh)).await?.map(|o| {
        let f = |name: &str| o.data.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        (f("cert"), f("key"), f("root"))
    }))
}
