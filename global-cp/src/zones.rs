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
    /// The token; pass it to `strait-zone --zone-token-file`. It opens the zone's sync stream.
    pub token: String,
    /// The zone-proxy token; pass it to `strait-gateway --zone-proxy-token-file`. It only
    /// registers gateways of this zone with their zone control plane; the global refuses it.
    pub proxy_token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
    /// PEM bundle the zone uses to verify the global's sync endpoint.
    pub ca_bundle: String,
}

/// A freshly issued zone-proxy token.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyToken {
    /// The zone.
    pub zone: String,
    /// The token; pass it to `strait-gateway --zone-proxy-token-file`.
    pub proxy_token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

/// Token issuing and checking, and zone status.
#[derive(Clone)]
pub struct Zones {
    resources: Resources,
    registry: Registry,
    board: crate::kds::board::StatusBoard,
    signer: Arc<TokenSigner>,
    /// Signs zone-proxy tokens: the key zones verify dataplane tokens with, so a zone can check
    /// its gateways' tokens and the global's sync endpoint never accepts one.
    proxy_signer: Arc<TokenSigner>,
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
    pub fn new(resources: Resources, registry: Registry, board: crate::kds::board::StatusBoard, secrets: &Secrets) -> Self {
        Zones {
            resources,
            registry,
            board,
            signer: secrets.token_signer.clone(),
            proxy_signer: secrets.dataplane_token_signer.clone(),
            ca_bundle: Arc::new(secrets.system_ca_pem.clone()),
        }
    }

    /// This replica's sessions.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Zone status as every replica sees it.
    pub fn board(&self) -> &crate::kds::board::StatusBoard {
        &self.board
    }

    /// Creates the Zone if missing and issues a new zone token and zone-proxy token for it;
    /// earlier ones of the zone stop working.
    pub async fn register(&self, zone: &str, validity: Duration) -> Result<IssuedToken, ServiceError> {
        if self.resources.get(ResourceType::Zone, None, zone).await?.is_none() {
            let resource = Resource::from_value(json!({"type": "Zone", "name": zone}))
                .map_err(|errors| ServiceError::Corrupt { key: format!("Zone/{zone}"), errors })?;
            self.resources.put(&resource).await?;
        }
        let claims = TokenClaims::new(TokenSubject::Zone { name: zone.to_string() }, unix_now(), validity.as_secs());
        let token = self.signer.issue(&claims).map_err(|e| StoreError::Backend(format!("signing the zone token: {e}")))?;
        let (proxy, proxy_token) = self.sign_proxy_token(zone, validity)?;
        self.revoke_proxy_token(zone).await?;
        let record = json!({"id": claims.id, "expiresAt": claims.expires_at, "proxyId": proxy.id, "proxyExpiresAt": proxy.expires_at});
        self.resources.store().put(token_key(zone), record, Precondition::None).await?;
        // A stream opened with the previous token must not outlive it.
        self.registry.kick(zone);
        tracing::info!(zone, expires_at = claims.expires_at, "issued a zone token");
        Ok(IssuedToken { zone: zone.to_string(), token, proxy_token, expires_at: claims.expires_at, ca_bundle: (*self.ca_bundle).clone() })
    }

    /// Issues a new zone-proxy token for a registered zone and revokes the previous one; the
    /// zone token is untouched, so the zone stays connected and closes the streams of gateways
    /// still using the old one as soon as the revocation reaches it.
    /// `None` when the zone has no token (never registered, or revoked).
    pub async fn rotate_proxy_token(&self, zone: &str, validity: Duration) -> Result<Option<ProxyToken>, ServiceError> {
        let store = self.resources.store();
        let Some(mut record) = store.get(&token_key(zone)).await? else { return Ok(None) };
        let (proxy, token) = self.sign_proxy_token(zone, validity)?;
        let previous = (record.data.get("proxyId").cloned(), record.data.get("proxyExpiresAt").and_then(Value::as_u64));
        record.data["proxyId"] = json!(proxy.id);
        record.data["proxyExpiresAt"] = json!(proxy.expires_at);
        // Record the new token first: if this loses a race, the old one still works.
        store.put(token_key(zone), record.data, Precondition::Version(record.version)).await?;
        if let (Some(Value::String(id)), expires_at) = previous {
            strait_cp_core::revocations::revoke_id(store.as_ref(), &id, expires_at).await?;
        }
        tracing::info!(zone, expires_at = proxy.expires_at, "issued a new zone-proxy token; the previous one is revoked");
        Ok(Some(ProxyToken { zone: zone.to_string(), proxy_token: token, expires_at: proxy.expires_at }))
    }

    fn sign_proxy_token(&self, zone: &str, validity: Duration) -> Result<(TokenClaims, String), StoreError> {
        let claims = TokenClaims::new(TokenSubject::ZoneProxy { zone: zone.to_string() }, unix_now(), validity.as_secs());
        let token = self.proxy_signer.issue(&claims).map_err(|e| StoreError::Backend(format!("signing the zone-proxy token: {e}")))?;
        Ok((claims, token))
    }

    /// Revokes the zone's current zone-proxy token, if it has one: zones refuse it from the
    /// next sync on and close the streams of gateways that use it.
    async fn revoke_proxy_token(&self, zone: &str) -> Result<(), StoreError> {
        let Some(record) = self.resources.store().get(&token_key(zone)).await? else { return Ok(()) };
        if let Some(id) = record.data.get("proxyId").and_then(Value::as_str) {
            let expires_at = record.data.get("proxyExpiresAt").and_then(Value::as_u64);
            strait_cp_core::revocations::revoke_id(self.resources.store().as_ref(), id, expires_at).await?;
        }
        Ok(())
    }

    /// Invalidates the zone's token and closes its stream, revokes its intermediate CAs and
    /// zone identities, and withdraws its services from the other zones (they come back with
    /// the zone's inventory once it is registered and connects again).
    pub async fn revoke(&self, zone: &str) -> Result<bool, ServiceError> {
        self.revoke_proxy_token(zone).await?;
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

    /// Follows a Zone's `enabled`: a disabled zone's stream is closed, its services leave the
    /// other zones at once, and every zone's gateways refuse its identity and close their
    /// tunnels to and from it; enabled again, it may reconnect (its token still holds).
    pub async fn apply_enabled(&self, zone: &str, enabled: bool) -> Result<(), ServiceError> {
        let store = self.resources.store();
        let changed = crate::zone_identity::set_disabled(store.as_ref(), zone, !enabled).await?;
        if enabled {
            if changed {
                tracing::info!(zone, "zone enabled again; it may reconnect");
            }
            return Ok(());
        }
        self.registry.kick(zone);
        match store.delete(Key::new(ZONE_INVENTORY, "", zone), Precondition::None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if changed {
            tracing::warn!(zone, "zone disabled: its stream is closed, its services are withdrawn, every tunnel to and from it is closed");
        }
        Ok(())
    }

    /// Removes what the global keeps about a deleted zone: token, inventory, status.
    pub async fn forget(&self, zone: &str) -> Result<(), ServiceError> {
        self.revoke(zone).await?;
        crate::zone_identity::set_disabled(self.resources.store().as_ref(), zone, false).await?;
        self.registry.remove(zone);
        self.board.forget(zone).await?;
        Ok(())
    }

    /// Adds `status` (connection, revisions, NACK errors, inventory summary with each service's
    /// endpoints and healthy endpoints) to a Zone.
    pub async fn decorate(&self, mut zone: Resource) -> Resource {
        let status = self.board.status(&zone.name).await;
        let mut value = serde_json::to_value(&status).unwrap_or(Value::Null);
        if let Ok(Some(inv)) = self.resources.store().get(&Key::new(ZONE_INVENTORY, "", &zone.name)).await {
            let listed = inv.data.get("services").and_then(Value::as_array).cloned().unwrap_or_default();
            // Per service: its endpoints, and how many of them pass their sidecar's probe.
            let endpoints: Vec<Value> = listed
                .iter()
                .map(|s| json!({"mesh": s["mesh"], "service": s["name"], "endpoints": s["endpoints"], "healthy": s["healthy"]}))
                .collect();
            value["inventory"] = json!({
                "services": listed.len(),
                "endpoints": endpoints,
                "ingressAddresses": inv.data.get("ingressAddresses").cloned().unwrap_or(Value::Null),
            });
        }
        zone.status = Some(value);
        zone
    }

    /// The zone token key, and the zone-proxy one only to tell a misplaced token apart.
    fn verifier_keys(&self) -> Vec<TokenVerifierKey> {
        vec![self.signer.public_key(), self.proxy_signer.public_key()]
    }
}

#[tonic::async_trait]
impl ZoneAuthenticator for Zones {
    async fn authenticate(&self, token: &str) -> Result<String, Status> {
        let claims = strait_pki::token::verify(token, &self.verifier_keys(), unix_now())
            .map_err(|e| Status::unauthenticated(format!("zone token refused: {e}")))?;
        let name = match claims.subject {
            TokenSubject::Zone { name } => name,
            TokenSubject::ZoneProxy { zone } => {
                return Err(Status::permission_denied(format!(
                    "this is the zone-proxy token of zone {zone:?}: it registers gateways with their zone control plane and never opens zone sync; a zone connects with its zone token"
                )))
            }
            TokenSubject::Dataplane { .. } => return Err(Status::unauthenticated("this is a dataplane token, not a zone token")),
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
