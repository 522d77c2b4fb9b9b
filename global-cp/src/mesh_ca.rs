//! Each mesh's root CA and trust bundle on the global, and the zone intermediates it issues.
//!
//! In: mesh creation and deletion, zones' CSRs (over KDS), zone revocation. Out: a root CA per
//! mesh (kind `MeshCA`, never synced: the root key never leaves the global), a `TrustBundle`
//! per mesh (synced to every zone: the root certificate and the fingerprints of revoked
//! intermediates), and a `ZoneIntermediate` record per zone and mesh.

use std::time::Duration;

use serde_json::{json, Value};
use strait_cp_core::kinds::{MESH_CA, TRUST_BUNDLE, ZONE_INTERMEDIATE};
use strait_pki::{CertificateAuthority, TrustBundle};
use strait_store::{Key, Op, Precondition, Store, StoreError};

const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Certificate work failed.
    #[error("{0}")]
    Pki(#[from] strait_pki::PkiError),
    /// The mesh does not exist.
    #[error("mesh {0:?} does not exist")]
    NoMesh(String),
    /// A stored CA is damaged.
    #[error("stored CA of mesh {0:?} is damaged")]
    Damaged(String),
}

fn ca_key(mesh: &str) -> Key {
    Key::new(MESH_CA, "", mesh)
}

/// The key of a mesh's trust bundle.
pub fn bundle_key(mesh: &str) -> Key {
    Key::new(TRUST_BUNDLE, mesh, "default")
}

/// Store ops that create a new mesh's root CA and trust bundle (CPU work: a key generation).
pub fn new_mesh_ops(mesh: &str) -> Result<Vec<Op>, CaError> {
    let ca = CertificateAuthority::new_root(mesh, &format!("{mesh} root CA"), ROOT_LIFETIME)?;
    let bundle = TrustBundle::new(vec![ca.cert_pem().to_string()]);
    Ok(vec![
        Op::Put { key: ca_key(mesh), data: json!({"cert": ca.cert_pem(), "key": ca.key_pem()}), precondition: Precondition::None },
        Op::Put { key: bundle_key(mesh), data: serde_json::to_value(&bundle).unwrap_or(Value::Null), precondition: Precondition::None },
    ])
}

/// Ops that remove a mesh's root CA (its bundle and intermediates go with the mesh's resources).
pub fn delete_mesh_ops(mesh: &str) -> Vec<Op> {
    vec![Op::Delete { key: ca_key(mesh), precondition: Precondition::None }]
}

/// The mesh's root CA, created (with its bundle) if the mesh predates CAs.
async fn root(store: &dyn Store, mesh: &str) -> Result<CertificateAuthority, CaError> {
    if store.get(&Key::new(strait_api::ResourceType::Mesh.name(), "", mesh)).await?.is_none() {
        return Err(CaError::NoMesh(mesh.to_string()));
    }
    if store.get(&ca_key(mesh)).await?.is_none() {
        let mut ops = new_mesh_ops(mesh)?;
        if let Some(Op::Put { precondition, .. }) = ops.first_mut() {
            *precondition = Precondition::MustNotExist;
        }
        match store.apply(ops).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let obj = store.get(&ca_key(mesh)).await?.ok_or_else(|| CaError::Damaged(mesh.to_string()))?;
    let field = |f: &str| obj.data.get(f).and_then(Value::as_str).map(str::to_string).ok_or_else(|| CaError::Damaged(mesh.to_string()));
    Ok(CertificateAuthority::from_pem(&field("cert")?, &field("key")?)?)
}

/// Signs the zone's intermediate CA of `mesh` from its CSR and records it. Returns the
/// certificate and the root certificate.
/// Signing runs off the async workers.
pub async fn issue_intermediate(
    store: &dyn Store,
    mesh: &str,
    zone: &str,
    csr_pem: &str,
    lifetime: Duration,
) -> Result<(String, String), CaError> {
    let ca = root(store, mesh).await?;
    let (csr, zone_name) = (csr_pem.to_string(), zone.to_string());
    let (ca, cert) = tokio::task::spawn_blocking(move || {
        let cert = ca.sign_intermediate(&csr, &zone_name, lifetime);
        (ca, cert)
    })
    .await
    .map_err(|e| CaError::Pki(strait_pki::PkiError::Signing { reason: format!("signing task: {e}") }))?;
    let cert = cert?;
    let fingerprint = strait_pki::fingerprint(&cert)?;
    let key = Key::new(ZONE_INTERMEDIATE, mesh, zone);
    let mut fingerprints: Vec<Value> =
        store.get(&key).await?.and_then(|o| o.data.get("fingerprints").cloned()).and_then(|v| v.as_array().cloned()).unwrap_or_default();
    fingerprints.push(Value::String(fingerprint.clone()));
    store.put(key, json!({"fingerprints": fingerprints, "cert": cert}), Precondition::None).await?;
    tracing::info!(mesh, zone, fingerprint, "issued a zone intermediate CA");
    Ok((cert, ca.cert_pem().to_string()))
}

/// Adds every intermediate ever issued to `zone` to the revoked list of each mesh's bundle, so
/// every zone stops trusting certificates issued under them.
pub async fn revoke_zone(store: &dyn Store, zone: &str) -> Result<usize, CaError> {
    let mut revoked = 0;
    for obj in store.list(ZONE_INTERMEDIATE, None).await?.into_iter().filter(|o| o.key.name == zone) {
        let mesh = obj.key.mesh.clone();
        let Some(current) = store.get(&bundle_key(&mesh)).await? else { continue };
        let mut bundle: TrustBundle = serde_json::from_value(current.data.clone()).map_err(|_| CaError::Damaged(mesh.clone()))?;
        for f in obj.data.get("fingerprints").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if bundle.revoked.insert(f.to_string()) {
                revoked += 1;
            }
        }
        let data = serde_json::to_value(&bundle).map_err(|_| CaError::Damaged(mesh.clone()))?;
        store.put(bundle_key(&mesh), data, Precondition::Version(current.version)).await?;
        tracing::info!(mesh, zone, "revoked the zone's intermediate CAs");
    }
    Ok(revoked)
}
