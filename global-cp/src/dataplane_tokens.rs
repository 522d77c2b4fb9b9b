//! Dataplane tokens: what a sidecar presents to its zone control plane to register as a
//! service of a mesh. Signed by the global; zones verify them with the public key synced to
//! them (`TokenKeys`), so no zone can mint one.
//!
//! In: a mesh, a service and a validity from the REST API. Out: a signed, expiring token bound
//! to that mesh and service.

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
        if self.resources.get(ResourceType::Mesh, None, mesh).await?.is_none() {
            return Err(ServiceError::MeshNotFound(mesh.to_string()));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let claims =
            TokenClaims::new(TokenSubject::Dataplane { mesh: mesh.to_string(), service: service.to_string() }, now, validity.as_secs());
        let token = self.signer.issue(&claims).map_err(|e| StoreError::Backend(format!("signing the dataplane token: {e}")))?;
        tracing::info!(mesh, service, expires_at = claims.expires_at, "issued a dataplane token");
        Ok(DataplaneToken { mesh: mesh.to_string(), service: service.to_string(), token, expires_at: claims.expires_at })
    }
}
