//! TLS identity of the zone's DPS endpoint: a CA of the zone's own (created on first start,
//! kept in its store, its certificate written to `<data-dir>/dps-ca.pem` for sidecars to trust)
//! and a server certificate for "strait-zone" and any extra names, renewed at each start.
//!
//! In: the zone's store and data directory. Out: PEM certificate and key for tonic.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use strait_pki::{CertificateAuthority, KeyAndCsr};
use strait_store::{Key, Precondition, Store};

/// Name the DPS certificate carries; sidecars verify it (`strait-dp --cp-server-name`).
pub const DPS_SERVER_NAME: &str = "strait-zone";

/// Certificate and key of the DPS endpoint, in PEM.
pub struct DpsIdentity {
    /// Leaf certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
    /// The CA sidecars trust.
    pub ca_pem: String,
}

/// Loads (or creates) the zone's DPS CA and issues a fresh server certificate.
pub async fn identity(store: &dyn Store, data_dir: &Path, extra_names: &[String]) -> anyhow::Result<DpsIdentity> {
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
    let mut names = vec![DPS_SERVER_NAME.to_string()];
    names.extend(extra_names.iter().cloned());
    let (cert_pem, key_pem) = tokio::task::spawn_blocking(move || -> anyhow::Result<(String, String)> {
        let ca = CertificateAuthority::from_pem(&ca_cert, &ca_key)?;
        let kc = KeyAndCsr::generate(DPS_SERVER_NAME)?;
        let cert = ca.sign_server(&kc.csr_pem, &names, Duration::from_secs(365 * 24 * 3600))?;
        Ok((cert, kc.key_pem))
    })
    .await??;
    let ca_pem = field("cert")?;
    std::fs::write(data_dir.join("dps-ca.pem"), &ca_pem)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", data_dir.join("dps-ca.pem").display()))?;
    Ok(DpsIdentity { cert_pem, key_pem, ca_pem })
}
