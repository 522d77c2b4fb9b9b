//! The zone's identity `spiffe://strait.system/zone/<zone>` under the global's system CA, which
//! its gateways present to other zones' gateways. Its key is generated here and never leaves
//! the zone's control plane and gateways; the global signs it from a CSR sent over zone sync
//! ([`crate::certs`] keeps it current, and renews it at once if it was revoked with the zone).
//!
//! In: the `SystemTrust` bundle synced from the global, and certificates the global signed.
//! Out: a `ZoneIdentity` record in the zone's store (key, certificate, when it was received).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let Some(obj) = store.get(&key()).await? else { return Ok(None) };
    let f = |name: &str| obj.data.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    // Records written before `received` was kept count from the certificate's start, so a
    // restart never pushes a renewal back.
    let since_start = || strait_pki::cert_validity(&f("cert")).ok().map(|(not_before, _)| not_before.max(0).unsigned_abs());
    let received = obj
        .data
        .get("received")
        .and_then(Value::as_u64)
        .or_else(since_start)
        .map_or(SystemTime::now(), |s| UNIX_EPOCH + Duration::from_secs(s));
    Ok(Issued::check(f("cert"), f("key"), received).ok())
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
