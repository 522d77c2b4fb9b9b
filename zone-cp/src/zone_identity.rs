//! The zone's identity `spiffe://strait.system/zone/<zone>` under the global's system CA, which
//! its gateways present to other zones' gateways. Its key is generated here and never leaves
//! the zone's control plane and gateways; the global signs it from a CSR sent over zone sync
//! ([`crate::certs`] keeps it current, and renews it at once if it was revoked with the zone).
//!
//! In: the `SystemTrust` bundle synced from the global, and certificates the global signed.
//! Out: a `ZoneIdentity` record in the zone's store (key, certificate, when it was received).

use std::time::UNIX_EPOCH;

use serde_json::{json, Value};
use strait_api::gateway_config::{SystemTrust, ZoneIdentity};
use strait_cp_core::kinds::{SYSTEM_TRUST, ZONE_IDENTITY};
use strait_pki::Issued;
use strait_store::{Key, Precondition, Store, StoreError};

fn key() -> Key {
    Key::new(ZONE_IDENTITY, "", "default")
}

/// The zone's identity, if issued.
pub async fn get(store: &dyn Store) -> Result<Option<ZoneIdentity>, StoreError> {
    Ok(store.get(&key()).await?.map(|o| {
        let f = |name: &str| o.data.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        ZoneIdentity { cert_pem: f("cert"), key_pem: f("key") }
    }))
}

/// The stored identity, if any and still usable (it fits its key).
pub async fn stored(store: &dyn Store) -> Result<Option<Issued>, StoreError> {
    Ok(store.get(&key()).await?.and_then(|o| crate::certs::from_record(&o.data)))
}

/// Stores a new identity; the one it replaces was in force until now.
pub async fn put(store: &dyn Store, identity: &Issued) -> Result<(), StoreError> {
    let received = identity.received_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let data = json!({"cert": identity.chain_pem, "key": identity.key_pem, "received": received});
    store.put(key(), data, Precondition::None).await?;
    tracing::info!("stored the zone identity");
    Ok(())
}

/// The system trust bundle synced from the global (empty before the first sync).
pub async fn system_trust(store: &dyn Store) -> Result<SystemTrust, StoreError> {
    Ok(store.get(&Key::new(SYSTEM_TRUST, "", "default")).await?.and_then(|o| serde_json::from_value(o.data).ok()).unwrap_or_default())
}
