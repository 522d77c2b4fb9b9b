//! TLS identity of the zone's DPS endpoint: a CA of the zone's own (created on first start,
//! kept in its store, its certificate written to `<data-dir>/dps-ca.pem` for sidecars to trust)
//! and a server certificate for "strait-zone" and any extra names (the REST API, served with
//! it, adds its loopback and own addresses), which the zone's
//! certificate manager renews at ~70% of its life.
//!
//! In: the zone's store and data directory. Out: the CA certificate, and the issuer of the
//! server certificate.

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use serde_json::{json, Value};
use strait_cp_core::tls::LocalServerIssuer;
use strait_pki::CertificateAuthority;
use strait_store::{Key, Precondition, Store};

/// Name the DPS certificate carries; sidecars verify it (`strait-dp --cp-server-name`).
pub const DPS_SERVER_NAME: &str = "strait-zone";

/// The DPS endpoint's CA, and what issues its server certificate.
pub struct DpsIdentity {
    /// Issues the server certificate (the certificate manager renews it with this).
    pub issuer: LocalServerIssuer,
    /// The CA sidecars trust.
    pub ca_pem: String,
}

/// Loads (or creates) the zone's DPS CA, writes its certificate for sidecars, and returns the
/// issuer of server certificates of `lifetime`.
pub async fn identity(store: &dyn Store, data_dir: &Path, extra_names: &[String], lifetime: Duration) -> anyhow::Result<DpsIdentity> {
    let key = Key::new(strait_cp_core::kinds::ZONE_SECRET, "", "dps-ca");
    let stored = match store.get(&key).await? {
        Some(obj) => obj.data,
        None => {
            let ca = tokio::task::spawn_blocking(|| {
                CertificateAuthority::new_root(
                    strait_pki::SYSTEM_TRUST_DOMAIN,
                    "Strait zone DPS CA",
                    Duration::from_secs(10 * 365 * 24 * 3600),
                )
            })
            .await??;
            let data = json!({"cert": ca.cert_pem(), "key": ca.key_pem()});
            store.put(key, data.clone(), Precondition::MustNotExist).await?;
            data
        }
    };
    let field = |f: &str| {
        stored
            .get(f)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("the stored DPS CA is damaged ({f} missing)"))
    };
    let (ca_cert, ca_key) = (field("cert")?, field("key")?);
    let ca = tokio::task::spawn_blocking(move || CertificateAuthority::from_pem(&ca_cert, &ca_key)).await??;
    let ca_pem = ca.cert_pem().to_string();
    std::fs::write(data_dir.join("dps-ca.pem"), &ca_pem)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", data_dir.join("dps-ca.pem").display()))?;
    let mut dns_names = vec![DPS_SERVER_NAME.to_string()];
    for name in extra_names {
        if !dns_names.contains(name) {
            dns_names.push(name.clone());
        }
    }
    let issuer = LocalServerIssuer { name: "DPS server", ca: Arc::new(ca), dns_names, lifetime };
    Ok(DpsIdentity { issuer, ca_pem })
}
