//! The zone's identity `spiffe://strait.system/zone/<zone>` under the global's system CA, which
//! its gateways present to other zones' gateways. Its key is generated here and never leaves
//! the zone's control plane and gateways; the global signs it from a CSR sent over zone sync.
//!
//! In: the `SystemTrust` bundle synced from the global, and certificates answered to CSRs.
//! Out: a `ZoneIdentity` record in the zone's store (key and certificate), and whether a new one
//! is needed (none yet, revoked with the zone, or a third of its life left).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use strait_api::gateway_config::{SystemTrust, ZoneIdentity};
use strait_cp_core::kinds::{SYSTEM_TRUST, ZONE_IDENTITY};
use strait_pki::RotationPolicy;
use strait_store::{Key, Precondition, Store, StoreError};

fn key() -> Key {
    Key::new(ZONE_IDENTITY, "", "default")
}

fn renew_time(data: &Value) -> Option<SystemTime> {
    let cert = data.get("cert").and_then(Value::as_str)?;
    let received = data.get("received").and_then(Value::as_u64).map(|s| UNIX_EPOCH + Duration::from_secs(s));
    RotationPolicy::default().renew_time_of(cert, received)
}

/// How long until the zone identity is due for renewal (`None`: the zone has none).
pub async fn next_due(store: &dyn Store) -> Result<Option<Duration>, StoreError> {
    let now = SystemTime::now();
    Ok(store.get(&key()).await?.map(|o| renew_time(&o.data).and_then(|t| t.duration_since(now).ok()).unwrap_or_default()))
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
    let received = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    store
        .put(key(), json!({"cert": identity.cert_pem, "key": identity.key_pem, "received": received}), Precondition::None)
        .await
        .map(|_| ())
}

/// The system trust bundle synced from the global (empty before the first sync).
pub async fn system_trust(store: &dyn Store) -> Result<SystemTrust, StoreError> {
    Ok(store.get(&Key::new(SYSTEM_TRUST, "", "default")).await?.and_then(|o| serde_json::from_value(o.data).ok()).unwrap_or_default())
}

/// Whether the zone must ask for a new identity: it has none, the one it has was revoked, or it
/// is due for renewal (~70% of its life, the [`RotationPolicy`]). Nothing is asked before the global's system trust has arrived.
pub async fn needed(store: &dyn Store) -> Result<bool, StoreError> {
    let trust = system_trust(store).await?;
    if trust.roots.is_empty() {
        return Ok(false);
    }
    let Some(stored) = store.get(&key()).await? else { return Ok(true) };
    let cert = stored.data.get("cert").and_then(Value::as_str).unwrap_or_default();
    let Ok(fingerprint) = strait_pki::fingerprint(cert) else { return Ok(true) };
    if trust.revoked.contains(&fingerprint) {
        return Ok(true);
    }
    Ok(renew_time(&stored.data).is_none_or(|t| t <= SystemTime::now()))
}
