//! The store kinds that are not resource types of the model: one place names them all, so a
//! kind is spelled once and a reader sees at a glance what travels between the control planes
//! and what never leaves one of them.
//!
//! In: nothing. Out: constants used as `Key::kind`. Resource types (`Mesh`, policies,
//! `Dataplane`, `Zone`) are named by `strait_api::ResourceType` instead.

/// A mesh's trust bundle (root certificate, revoked intermediates); synced global → zones.
pub const TRUST_BUNDLE: &str = "TrustBundle";
/// The public keys zones verify dataplane tokens with; synced global → zones.
pub const TOKEN_KEYS: &str = "TokenKeys";
/// The system CA and the revoked zone identities; synced global → zones.
pub const SYSTEM_TRUST: &str = "SystemTrust";
/// A revoked dataplane or zone-proxy token, or the revoked earlier tokens of a service (see
/// `revocations`); synced global → zones, which enforce them.
pub const REVOKED_TOKEN: &str = "RevokedToken";
/// A zone's reported inventory (services, ingress addresses), one per zone; reported zone →
/// global, then synced to every zone.
pub const ZONE_INVENTORY: &str = "ZoneInventory";

/// A mesh's root CA (certificate and key); global only, the root key never leaves it.
pub const MESH_CA: &str = "MeshCA";
/// An intermediate CA issued to a zone for a mesh; global only.
pub const ZONE_INTERMEDIATE: &str = "ZoneIntermediate";
/// The global's own secrets (store identity, system CA, token signing keys); global only.
pub const SYSTEM_SECRET: &str = "SystemSecret";
/// A zone token's record (its id, for revocation); global only.
pub const ZONE_TOKEN: &str = "ZoneToken";
/// A zone's connection status, written by the replica holding its stream so every replica of
/// the global answers the same; global only.
pub const ZONE_STATUS: &str = "ZoneStatus";
/// The fingerprints of the zone identities issued to a zone; global only.
pub const ZONE_IDENTITY_ISSUED: &str = "ZoneIdentityIssued";

/// Where a zone's sync stream stands (global id, versions), to resume from; zone only.
pub const KDS_STATE: &str = "KdsState";
/// The zone's intermediate CA for a mesh (certificate and key); zone only.
pub const ZONE_CA: &str = "ZoneCA";
/// The zone's identity under the system CA (certificate and key); zone only.
pub const ZONE_IDENTITY: &str = "ZoneIdentity";
/// A gateway registered with the zone; zone only.
pub const ZONE_GATEWAY: &str = "ZoneGateway";
/// A sidecar's refusal (NACK) of its latest configuration, kept while it lasts and reported
/// in the zone's inventory; zone only.
pub const DATAPLANE_NACK: &str = "DataplaneNack";
/// Which service holds a Dataplane name, until the token it registered with expires; zone only.
pub const DATAPLANE_BINDING: &str = "DataplaneBinding";
/// The zone's own secrets (the CA of its DPS endpoint); zone only.
pub const ZONE_SECRET: &str = "ZoneSecret";

/// The kinds that hold private keys: their data never enters the store's event log (watchers
/// only learn that they changed), so a deleted or replaced key leaves no copy behind.
pub const PRIVATE_KEY_KINDS: [&str; 5] = [MESH_CA, SYSTEM_SECRET, ZONE_CA, ZONE_IDENTITY, ZONE_SECRET];

/// Store options for a control plane: private keys stay out of the event log.
pub fn store_options() -> strait_store::SledOptions {
    strait_store::SledOptions { unlogged_kinds: PRIVATE_KEY_KINDS.iter().map(|k| k.to_string()).collect(), ..Default::default() }
}
