//! Dataplane tokens: what a sidecar presents to its zone control plane to register as a
//! service of a mesh. Signed by the global; zones verify them with the public key synced to
//! them (`TokenKeys`), so no zone can mint one.
//!
//! In: a mesh, a service and a validity from the REST API, or what to revoke. Out: a signed,
//! expiring token bound to that mesh and service, or the revocation records zones enforce.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strait_api::ResourceType;
use strait_pki::token::{TokenClaims, TokenSigner, TokenSubject};
use strait_store::StoreError;

use strait_cp_core::resources::{Resources, ServiceError};

/// A newly issued dataplane token.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneToken {
    /// The mesh.
    pub mesh: String,
    /// The service the token may register.
    pub service: String,
    /// The token; pass it to `strait-dp run --dataplane-token-file`.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
    /// The token's id (claim `jti`), to revoke it alone.
    pub id: String,
}

/// What a revocation revoked.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    /// The mesh.
    pub mesh: String,
    /// The revoked token's id, when one token was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The service whose tokens were revoked, when a whole service was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Tokens of the service issued at or before this moment (seconds since the epoch) are revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_until: Option<u64>,
}

/// Issues dataplane tokens.
#[derive(Clone)]
pub struct DataplaneTokens {
    resources: Resources,
    signer: Arc<TokenSigner>,
}

impl DataplaneTokens {
    /// Issues with `signer`, checking meshes in `resources`.
    pub fn new(resources: Resources, signer: Arc<TokenSigner>) -> Self {
        DataplaneTokens { resources, signer }
    }

    /// A token for `service` in `mesh`, valid for `validity`.
    pub async fn issue(&self, mesh: &str, service: &str, validity: Duration) -> Result<DataplaneToken, ServiceError> {
        self.mesh_exists(mesh).await?;
        let mut now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        // Tokens of a service revoked this very second are revoked by `iat`; a new one issued
        // right after the revocation starts one second later so that it holds (the verifier
        // allows `iat` a minute ahead).
        let store = self.resources.store();
        if let Some(revoked) = store.get(&strait_cp_core::revocations::service_key(mesh, service)).await? {
            if let Some(before) = revoked.data.get("before").and_then(serde_json::Value::as_u64) {
                now = now.max(before + 1);
            }
        }
        let claims =
            TokenClaims::new(TokenSubject::Dataplane { mesh: mesh.to_string(), service: service.to_string() }, now, validity.as_secs());
        let token = self.signer.issue(&claims).map_err(|e| StoreError::Backend(format!("signing the dataplane token: {e}")))?;
        tracing::info!(mesh, service, id = claims.id, expires_at = claims.expires_at, "issued a dataplane token");
        Ok(DataplaneToken { mesh: mesh.to_string(), service: service.to_string(), token, expires_at: claims.expires_at, id: claims.id })
    }

    /// Revokes one token of `mesh` by its id. Zones refuse it from their next sync on and close
    /// the stream of a sidecar that uses it.
    pub async fn revoke_id(&self, mesh: &str, id: &str) -> Result<Revoked, ServiceError> {
        self.mesh_exists(mesh).await?;
        strait_cp_core::revocations::revoke_id(self.resources.store().as_ref(), id, None).await?;
        tracing::warn!(mesh, id, "revoked a dataplane token");
        Ok(Revoked { mesh: mesh.to_string(), id: Some(id.to_string()), service: None, issued_until: None })
    }

    /// Revokes every token of `service` in `mesh` issued up to now; tokens issued later work.
    pub async fn revoke_service(&self, mesh: &str, service: &str) -> Result<Revoked, ServiceError> {
        self.mesh_exists(mesh).await?;
        let before = strait_cp_core::revocations::revoke_service(self.resources.store().as_ref(), mesh, service).await?;
        tracing::warn!(mesh, service, issued_until = before, "revoked the dataplane tokens of a service");
        Ok(Revoked { mesh: mesh.to_string(), id: None, service: Some(service.to_string()), issued_until: Some(before) })
    }

    async fn mesh_exists(&self, mesh: &str) -> Result<(), ServiceError> {
        match self.resources.get(ResourceType::Mesh, None, mesh).await? {
            Some(_) => Ok(()),
            None => Err(ServiceError::MeshNotFound(mesh.to_string())),
        }
    }
}
