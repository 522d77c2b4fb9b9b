//! The global's own secrets, created on first start and kept in the store (never synced): the
//! store identity, the system CA (zone identities, the sync endpoint's certificate) and the
//! zone- and dataplane-token signing keys (the public half of the latter is synced to zones).
//!
//! In: the store. Out: [`Secrets`], plus a fresh TLS identity for the sync endpoint.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use strait_cp_core::kinds::{SYSTEM_SECRET, TOKEN_KEYS};
use strait_pki::token::TokenSigner;
use strait_pki::CertificateAuthority;
use strait_store::{Key, Precondition, Store, StoreError};

/// Name the sync endpoint's certificate carries; zones verify it (`--global-server-name`).
pub const KDS_SERVER_NAME: &str = "strait-global";

const SYSTEM_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The global's secrets.
pub struct Secrets {
    /// Identity of this global's store; zones resume only against the same one.
    pub global_id: String,
    /// The system CA.
    pub system_ca: Arc<CertificateAuthority>,
    /// Its certificate, which zones trust for the sync endpoint.
    pub system_ca_pem: String,
    /// Signs zone tokens.
    pub token_signer: Arc<TokenSigner>,
    /// Signs dataplane tokens; zones verify them with its public key, synced as `TokenKeys`.
    pub dataplane_token_signer: Arc<TokenSigner>,
}

/// Why secrets could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored secret is damaged or a new one could not be made.
    #[error("secret {name}: {message}")]
    Bad {
        /// Which secret.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn bad(name: &'static str) -> impl Fn(String) -> SecretError {
    move |message| SecretError::Bad { name, message }
}

/// Reads secret `name`, or creates it with `make` (first writer wins when several race).
async fn load_or_create(store: &dyn Store, name: &'static str, make: impl FnOnce() -> Result<Value, String>) -> Result<Value, SecretError> {
    let key = Key::new(SYSTEM_SECRET, "", name);
    if let Some(obj) = store.get(&key).await? {
        return Ok(obj.data);
    }
    let value = make().map_err(bad(name))?;
    match store.put(key.clone(), value.clone(), Precondition::MustNotExist).await {
        Ok(_) => {
            tracing::info!(secret = name, "created");
            Ok(value)
        }
        Err(StoreError::Conflict { .. }) => {
            store.get(&key).await?.map(|o| o.data).ok_or_else(|| bad(name)("vanished while being created".into()))
        }
        Err(e) => Err(e.into()),
    }
}

fn field(v: &Value, name: &'static str, field: &str) -> Result<String, SecretError> {
    v.get(field).and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad(name)(format!("missing {field}")))
}

impl Secrets {
    /// Loads every secret, creating what is missing. CPU-heavy: call from `spawn_blocking`-safe code paths only at start.
    pub async fn load(store: &dyn Store) -> Result<Secrets, SecretError> {
        let id = load_or_create(store, "global-id", || Ok(json!({"id": hex::encode(rand::random::<[u8; 16]>())}))).await?;
        let ca = load_or_create(store, "system-ca", || {
            let ca = CertificateAuthority::new_root(strait_pki::SYSTEM_TRUST_DOMAIN, "Strait system CA", SYSTEM_CA_LIFETIME)
                .map_err(|e| e.to_string())?;
            Ok(json!({"cert": ca.cert_pem(), "key": ca.key_pem()}))
        })
        .await?;
        let signer = load_or_create(store, "token-signer", || {
            let signer = TokenSigner::generate().map_err(|e| e.to_string())?;
            Ok(json!({"pkcs8": hex::encode(signer.to_pkcs8_der())}))
        })
        .await?;
        let dp_signer = load_or_create(store, "dataplane-token-signer", || {
            let signer = TokenSigner::generate().map_err(|e| e.to_string())?;
            Ok(json!({"pkcs8": hex::encode(signer.to_pkcs8_der())}))
        })
        .await?;
        let dp_der =
            hex::decode(field(&dp_signer, "dataplane-token-signer", "pkcs8")?).map_err(|e| bad("dataplane-token-signer")(e.to_string()))?;
        let dataplane_token_signer = TokenSigner::from_pkcs8_der(&dp_der).map_err(|e| bad("dataplane-token-signer")(e.to_string()))?;
        // Zones learn the public half only, through zone sync.
        let keys = json!({"keys": [dataplane_token_signer.public_key()]});
        store.put(Key::new(TOKEN_KEYS, "", "dataplane"), keys, Precondition::None).await?;
        let system_ca = CertificateAuthority::from_pem(&field(&ca, "system-ca", "cert")?, &field(&ca, "system-ca", "key")?)
            .map_err(|e| bad("system-ca")(e.to_string()))?;
        let der = hex::decode(field(&signer, "token-signer", "pkcs8")?).map_err(|e| bad("token-signer")(e.to_string()))?;
        let token_signer = TokenSigner::from_pkcs8_der(&der).map_err(|e| bad("token-signer")(e.to_string()))?;
        Ok(Secrets {
            global_id: field(&id, "global-id", "id")?,
            system_ca_pem: system_ca.cert_pem().to_string(),
            system_ca: Arc::new(system_ca),
            token_signer: Arc::new(token_signer),
            dataplane_token_signer: Arc::new(dataplane_token_signer),
        })
    }

    /// What issues the sync endpoint's certificate, for [`KDS_SERVER_NAME`] and `extra_names`.
    pub fn kds_server_issuer(&self, extra_names: &[String], lifetime: Duration) -> strait_cp_core::tls::LocalServerIssuer {
        let mut dns_names = vec![KDS_SERVER_NAME.to_string()];
        dns_names.extend(extra_names.iter().cloned());
        strait_cp_core::tls::LocalServerIssuer { name: "zone sync (KDS) server", ca: self.system_ca.clone(), dns_names, lifetime }
    }
}
