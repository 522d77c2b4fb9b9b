//! The zone's identity `spiffe://strait.system/zone/<zone>` under the global's system CA, which
//! its gateways present to other zones' gateways. Its key is generated here and never leaves
//! the zone's control plane and gateways; the global signs it from a CSR sent over zone sync.
//!
//! In: the `SystemTrust` bundle synced from the global, and certificates answered to CSRs.
//! Out: a `ZoneIdentity` record in the zone's store (key and certificate), and whether a new one
//! is needed (none yet, revoked with the zone, or a third of its life left).

use serde_json::{json, Value};
use strait_api::gateway_config::{SystemTrust, ZoneIdentity};
use strait_cp_core::kinds::{SYSTEM_TRUST, ZONE_IDENTITY};
use strait_store::{Key, Precondition, Store, StoreError};

fn key() -> Key {
    Key::new(ZONE_IDENTITY, "", "default")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// The zone's identity, if issued.
pub async fn get(store: &dyn Store) -> Result<Option<ZoneIdentity>, StoreError> {
    Ok(store.get(&key()).await?.map(|o| {
        let f = |name: &str| o.data.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        ZoneIdentity { cert_pem: f("cert"), key_pem: f("key") }
    }))
}

/// Stores a new identity.
pub async fn put(store: &dyn Store, identity: &ZoneIdentity) -> Result<(), StoreError> {
    store.put(key(), json!({"cert": identity.cert_pem, "key": identity.key_pem}), Precondition::None).await.map(|_| ())
}

/// The system trust bundle synced from the global (empty before the first sync).
pub async fn system_trust(store: &dyn Store) -> Result<SystemTrust, StoreError> {
    Ok(store.get(&Key::new(SYSTEM_TRUST, "", "default")).await?.and_then(|o| serde_json::from_value(o.data).ok()).unwrap_or_default())
}

/// Whether the zone must ask for a new identity: it has none, the one it has was revoked, or a
/// third of its life remains. Nothing is asked before the global's system trust has arrived.
pub async fn needed(store: &dyn Store) -> Result<bool, StoreError> {
    let trust = system_trust(store).await?;
    if trust.roots.is_empty() {
        return Ok(false);
    }
    let Some(identity) = get(store).await? else { return Ok(true) };
    let Ok(fingerprint) = strait_pki::fingerprint(&identity.cert_pem) else { return Ok(true) };
    if trust.revoked.contains(&fingerprint) {
        return Ok(true);
    }
    let Ok((not_before, not_after)) = strait_pki::cert_validity(&identity.cert_pem) else { return Ok(true) };
    Ok(not_after - unix_now() < (not_after - not_before) / 3)
}
