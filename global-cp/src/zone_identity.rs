//! Zone identities: the certificates `spiffe://strait.system/zone/<zone>` under the system CA
//! that a zone's gateways present to each other, and the system trust bundle that lets every
//! zone refuse the identities of revoked zones.
//!
//! In: zones' CSRs (over KDS, bound to the zone of the stream's token), zone revocation. Out: a
//! signed zone identity, a `ZoneIdentityIssued` record per zone (fingerprints, global only), and
//! the `SystemTrust` bundle (system CA and revoked fingerprints), synced to every zone.

use std::sync::Arc;
use std::time::Duration;

use strait_api::gateway_config::SystemTrust;
use strait_cp_core::kinds::{SYSTEM_TRUST, ZONE_IDENTITY_ISSUED};
use strait_pki::CertificateAuthority;
use strait_store::{Key, Precondition, Store, StoreError};

use crate::mesh_ca::CaError;

/// Lifetime of a zone identity; zones renew it when a third of it remains.
pub const ZONE_IDENTITY_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

fn trust_key() -> Key {
    Key::new(SYSTEM_TRUST, "", "default")
}

/// Makes sure the system trust bundle holds `ca_pem`, keeping the revocations it has.
pub async fn publish_trust(store: &dyn Store, ca_pem: &str) -> Result<(), StoreError> {
    // Replicas starting together on one database publish the same root: the first wins, the
    // others find it there.
    update_trust(store, "publishing the system CA", |trust| {
        if trust.roots.iter().any(|r| r == ca_pem) {
            return 0;
        }
        trust.roots = vec![ca_pem.to_string()];
        1
    })
    .await
    .map(drop)
}

/// Signs `zone`'s identity from its CSR (off the async workers) and records its fingerprint;
/// returns the certificate.
pub async fn issue(store: &dyn Store, ca: &Arc<CertificateAuthority>, zone: &str, csr_pem: &str) -> Result<String, CaError> {
    let (ca, csr, name) = (ca.clone(), csr_pem.to_string(), zone.to_string());
    let cert = tokio::task::spawn_blocking(move || ca.sign_zone_identity(&csr, &name, ZONE_IDENTITY_LIFETIME))
        .await
        .map_err(|e| CaError::Pki(strait_pki::PkiError::Signing { reason: format!("signing task: {e}") }))??;
    let fingerprint = strait_pki::fingerprint(&cert)?;
    let key = Key::new(ZONE_IDENTITY_ISSUED, "", zone);
    let current = store.get(&key).await?;
    let mut fingerprints: Vec<String> =
        current.as_ref().and_then(|o| serde_json::from_value(o.data["fingerprints"].clone()).ok()).unwrap_or_default();
    fingerprints.push(fingerprint.clone());
    store.put(key, serde_json::json!({"fingerprints": fingerprints}), Precondition::None).await?;
    tracing::info!(zone, fingerprint, "issued a zone identity");
    Ok(cert)
}

/// Applies `change` to the system trust bundle, retrying when another writer got there first;
/// `change` says how many entries it changed, and nothing is written when it changed none.
async fn update_trust(store: &dyn Store, what: &str, change: impl Fn(&mut SystemTrust) -> usize) -> Result<usize, StoreError> {
    for _ in 0..5 {
        let current = store.get(&trust_key()).await?;
        let mut trust: SystemTrust = current.as_ref().and_then(|o| serde_json::from_value(o.data.clone()).ok()).unwrap_or_default();
        let changed = change(&mut trust);
        if changed == 0 {
            return Ok(0);
        }
        let precondition = current.map_or(Precondition::MustNotExist, |o| Precondition::Version(o.version));
        match store.put(trust_key(), serde_json::to_value(&trust).unwrap_or_default(), precondition).await {
            Ok(_) => return Ok(changed),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend(format!("the system trust bundle kept changing while {what}")))
}

/// Adds `zone` to (or removes it from) the disabled zones of the system trust bundle; whether
/// that changed anything.
pub async fn set_disabled(store: &dyn Store, zone: &str, disabled: bool) -> Result<bool, StoreError> {
    let changed = update_trust(store, "disabling a zone", |trust| {
        usize::from(if disabled { trust.disabled_zones.insert(zone.to_string()) } else { trust.disabled_zones.remove(zone) })
    })
    .await?;
    Ok(changed > 0)
}

/// Adds every identity ever issued to `zone` to the revoked list of the system trust bundle.
pub async fn revoke(store: &dyn Store, zone: &str) -> Result<usize, CaError> {
    let Some(issued) = store.get(&Key::new(ZONE_IDENTITY_ISSUED, "", zone)).await? else { return Ok(0) };
    let fingerprints: Vec<String> = serde_json::from_value(issued.data["fingerprints"].clone()).unwrap_or_default();
    let added = update_trust(store, "revoking", |trust| fingerprints.iter().filter(|f| trust.revoked.insert((*f).clone())).count()).await?;
    if added > 0 {
        tracing::info!(zone, revoked = added, "revoked the zone's identities");
    }
    Ok(added)
}
