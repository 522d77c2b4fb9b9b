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

/// Loads (or creates) the zone's DPS CA, or takes `provided` (certificate and key PEM), writes
/// its certificate for sidecars, and returns the issuer of server certificates of `lifetime`.
pub async fn identity(
    store: &dyn Store,
    data_dir: &Path,
    extra_names: &[String],
    lifetime: Duration,
    provided: Option<(String, String)>,
) -> anyhow::Result<DpsIdentity> {
    let key = Key::new(strait_cp_core::kinds::ZONE_SECRET, "", "dps-ca");
    let stored = match provided {
        Some((cert, key)) => {
            // Checked here so that a wrong file is named, not found later by a sidecar.
            let (c, k) = (cert.clone(), key.clone());
            tokio::task::spawn_blocking(move || CertificateAuthority::from_pem_for_servers(&c, &k, strait_pki::SYSTEM_TRUST_DOMAIN))
                .await?
                .map_err(|e| anyhow::anyhow!("the CA of --dps-ca-cert-file and --dps-ca-key-file is not usable: {e}"))?;
            json!({"cert": cert, "key": key})
        }
        None => match store.get(&key).await? {
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
        },
    };
    let field = |f: &str| {
        stored
            .get(f)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("the stored DPS CA is damaged ({f} missing)"))
    };
    let (ca_cert, ca_key) = (field("cert")?, field("key")?);
    let ca =
        tokio::task::spawn_blocking(move || CertificateAuthority::from_pem_for_servers(&ca_cert, &ca_key, strait_pki::SYSTEM_TRUST_DOMAIN))
            .await??;
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

#[cfg(test)]
mod tests {
    use super::*;
    use strait_runtime::certs::Issuer as _;

    #[tokio::test]
    async fn a_provided_ca_signs_the_dps_certificate_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = strait_store::SledStore::open_with(&dir.path().join("store"), strait_cp_core::kinds::store_options()).unwrap();
        let ca = CertificateAuthority::new_root(strait_pki::SYSTEM_TRUST_DOMAIN, "install-time CA", Duration::from_secs(3600)).unwrap();
        let provided = Some((ca.cert_pem().to_string(), ca.key_pem()));
        let made = identity(&store, dir.path(), &[], Duration::from_secs(600), provided).await.unwrap();
        assert_eq!(made.ca_pem, ca.cert_pem());
        assert_eq!(std::fs::read_to_string(dir.path().join("dps-ca.pem")).unwrap(), ca.cert_pem());
        let issued = made.issuer.issue().await.unwrap();
        assert!(issued.chain_pem.contains("BEGIN CERTIFICATE"));
        assert!(store.get(&Key::new(strait_cp_core::kinds::ZONE_SECRET, "", "dps-ca")).await.unwrap().is_none(), "nothing created");

        let mismatched = Some((ca.cert_pem().to_string(), "not a key".to_string()));
        let error = identity(&store, dir.path(), &[], Duration::from_secs(600), mismatched).await.err().unwrap().to_string();
        assert!(error.contains("--dps-ca-cert-file"), "{error}");
    }
}
