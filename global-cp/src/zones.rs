//! Zones on the global: registration tokens, revocation, and the status shown by the REST API.
//!
//! In: `register`/`revoke` requests from the REST API and bearer tokens from KDS connections.
//! Out: signed zone tokens (bound to the zone name, expiring, revocable: only the latest token
//! of a zone is valid, and revoking or deleting the zone invalidates it and closes its stream),
//! and each Zone resource decorated with its live status and inventory summary.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use strait_api::{Resource, ResourceType};
use strait_pki::token::{TokenClaims, TokenSigner, TokenSubject, TokenVerifierKey};
use strait_store::{Key, Precondition, StoreError};
use tonic::Status;

use crate::kds::registry::Registry;
use crate::kds::ZoneAuthenticator;
use crate::secrets::Secrets;
use strait_cp_core::kinds::{ZONE_INVENTORY, ZONE_TOKEN};
use strait_cp_core::resources::{Resources, ServiceError};

/// A freshly issued zone token.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    /// The zone.
    pub zone: String,
    /// The token; pass it to `strait-zone --zone-token-file`.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
    /// PEM bundle the zone uses to verify the global's sync endpoint.
    pub ca_bundle: String,
}

/// Token issuing and checking, and zone status.
#[derive(Clone)]
pub struct Zones {
    resources: Resources,
    registry: Registry,
    signer: Arc<TokenSigner>,
    ca_bundle: Arc<String>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn token_key(zone: &str) -> Key {
    Key::new(ZONE_TOKEN, "", zone)
}

impl Zones {
    /// Builds the zone service from the global's secrets.
    pub fn new(resources: Resources, registry: Registry, secrets: &Secrets) -> Self {
        Zones { resources, registry, signer: secrets.token_signer.clone(), ca_bundle: Arc::new(secrets.system_ca_pem.clone()) }
    }

    /// The live registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates the Zone if missing and issues a new token for it; earlier tokens stop working.
    pub async fn register(&self, zone: &str, validity: Duration) -> Result<IssuedToken, ServiceError> {
        if self.resources.get(ResourceType::Zone, None, zone).await?.is_none() {
            let resource = Resource::from_value(json!({"type": "Zone", "name": zone}))
                .map_err(|errors| ServiceError::Corrupt { key: format!("Zone/{zone}"), errors })?;
            self.resources.put(&resource).await?;
        }
        let claims = TokenClaims::new(TokenSubject::Zone { name: zone.to_string() }, unix_now(), validity.as_secs());
        let token = self.signer.issue(&claims).map_err(|e| StoreError::Backend(format!("signing the zone token: {e}")))?;
        let record = json!({"id": claims.id, "expiresAt": claims.expires_at});
        self.resources.store().put(token_key(zone), record, Precondition::None).await?;
        // A stream opened with the previous token must not outlive it.
        self.registry.kick(zone);
        tracing::info!(zone, expires_at = claims.expires_at, "issued a zone token");
        Ok(IssuedToken { zone: zone.to_string(), token, expires_at: claims.expires_at, ca_bundle: (*self.ca_bundle).clone() })
    }

    /// Invalidates the zone's token and closes its stream, revokes its intermediate CAs and
    /// zone identities, and withdraws its services from the other zones (they come back with
    /// the zone's inventory once it is registered and connects again).
    pub async fn revoke(&self, zone: &str) -> Result<bool, ServiceError> {
        let existed = match self.resources.store().delete(token_key(zone), Precondition::None).await {
            Ok(_) => true,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        self.registry.kick(zone);
        let intermediates = crate::mesh_ca::revoke_zone(self.resources.store().as_ref(), zone)
            .await
            .map_err(|e| StoreError::Backend(format!("revoking the zone's intermediate CAs: {e}")))?;
        let identities = crate::zone_identity::revoke(self.resources.store().as_ref(), zone)
            .await
            .map_err(|e| StoreError::Backend(format!("revoking the zone's identities: {e}")))?;
        match self.resources.store().delete(Key::new(ZONE_INVENTORY, "", zone), Precondition::None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            zone,
            intermediates,
            identities,
            "revoked the zone's token, intermediate CAs and zone identities; its services are withdrawn"
        );
        Ok(existed)
    }

    /// Removes what the global keeps about a deleted zone: token, inventory, status.
    pub async fn forget(&self, zone: &str) -> Result<(), ServiceError> {
        self.revoke(zone).await?;
        self.registry.remove(zone);
        Ok(())
    }

    /// Adds `status` (connection, revisions, NACK errors, inventory summary) to a Zone.
    pub async fn decorate(&self, mut zone: Resource) -> Resource {
        let status = self.registry.status(&zone.name);
        let mut value = serde_json::to_value(&status).unwrap_or(Value::Null);
        if let Ok(Some(inv)) = self.resources.store().get(&Key::new(ZONE_INVENTORY, "", &zone.name)).await {
            let services = inv.data.get("services").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            value["inventory"] = json!({
                "services": services,
                "ingressAddresses": inv.data.get("ingressAddresses").cloned().unwrap_or(Value::Null),
            });
        }
        zone.status = Some(value);
        zone
    }

    fn verifier_keys(&self) -> Vec<TokenVerifierKey> {
        vec![self.signer.public_key()]
    }
}

#[tonic::async_trait]
impl ZoneAuthenticator for Zones {
    async fn authenticate(&self, token: &str) -> Result<String, Status> {
        let claims = strait_pki::token::verify(token, &self.verifier_keys(), unix_now())
            .map_err(|e| Status::unauthenticated(format!("zone token refused: {e}")))?;
        let TokenSubject::Zone { name } = claims.subject else {
            return Err(Status::unauthenticated("this is not a zone token"));
        };
        let record = self.resources.store().get(&token_key(&name)).await.map_err(|e| Status::unavailable(e.to_string()))?;
        if record.as_ref().and_then(|r| r.data.get("id")).and_then(Value::as_str) != Some(claims.id.as_str()) {
            return Err(Status::unauthenticated(format!("the token of zone {name:?} was revoked or replaced by a newer one")));
        }
        match self.resources.get(ResourceType::Zone, None, &name).await {
            Ok(Some(zone)) => match zone.spec {
                strait_api::Spec::Zone(spec) if !spec.enabled => Err(Status::permission_denied(format!("zone {name:?} is disabled"))),
                _ => Ok(name),
            },
            Ok(None) => Err(Status::permission_denied(format!("zone {name:?} is not registered"))),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
