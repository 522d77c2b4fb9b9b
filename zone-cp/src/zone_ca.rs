//! The zone's intermediate CA of each mesh: its key is generated here and never leaves the
//! zone; the global signs it from a CSR sent over zone sync ([`crate::certs`] keeps it current).
//!
//! In: certificates the global signed, the meshes' trust bundles. Out: `ZoneCA` records in the
//! zone's store (key, certificate, root, when it was received), from which workload
//! certificates are issued. Workload certificates issued under an intermediate that was since
//! renewed stay valid: they chain to the same root.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use strait_cp_core::kinds::{TRUST_BUNDLE, ZONE_CA};
use strait_pki::Issued;
use strait_store::{Key, Precondition, Store, StoreError};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Whether the mesh's trust bundle revoked the intermediate `cert_pem`.
pub async fn is_revoked(store: &dyn Store, mesh: &str, cert_pem: &str) -> Result<bool, StoreError> {
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

/// Stores a new intermediate of `mesh` (and the root it chains to); the one it replaces was in
/// force until now.
pub async fn put(store: &dyn Store, mesh: &str, cert: &Issued, root_pem: &str) -> Result<(), StoreError> {
    let data = json!({"key": cert.key_pem, "cert": cert.chain_pem, "root": root_pem, "received": unix(cert.received_at)});
    store.put(Key::new(ZONE_CA, "", mesh), data, Precondition::None).await?;
    tracing::info!(mesh, fingerprint = %&cert.fingerprint[..16.min(cert.fingerprint.len())], "stored the zone's intermediate CA");
    Ok(())
}

/// The stored intermediate of `mesh`, if any and still usable (it fits its key).
pub async fn stored(store: &dyn Store, mesh: &str) -> Result<Option<Issued>, StoreError> {
    Ok(store.get(&Key::new(ZONE_CA, "", mesh)).await?.and_then(|o| crate::certs::from_record(&o.data)))
}

/// The zone's intermediate CA of `mesh` (certificate, key, root), if issued.
pub async fn get(store: &dyn Store, mesh: &str) -> Result<Option<(String, String, String)>, StoreError> {
    Ok(store.get(&Key::new(ZONE_CA, "", mesh)).await?.map(|o| {
        let f = |name: &str| o.data.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        (f("cert"), f("key"), f("root"))
    }))
}
