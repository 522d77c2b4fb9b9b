//! What the global sends to zones, and how stored objects become KDS messages.
//!
//! In: store objects and events. Out: KDS `Resource`s and `ResourceKey`s. Only meshes,
//! policies, trust bundles (of meshes and of the system), revoked tokens and the zones' inventories travel; Dataplanes stay in their zone, and secrets
//! (CA keys, token signing keys, zone token records) never leave the global.

use strait_api::kds;
use strait_api::ResourceType;
use strait_store::{Key, Object};

use crate::kinds::{REVOKED_TOKEN, SYSTEM_TRUST, TOKEN_KEYS, TRUST_BUNDLE, ZONE_INVENTORY};
use crate::resources::Resources;

/// Store kinds synced as their raw data rather than as resources of the model.
const RAW_SYNCED: [&str; 5] = [ZONE_INVENTORY, TRUST_BUNDLE, TOKEN_KEYS, SYSTEM_TRUST, REVOKED_TOKEN];

/// Store kinds synced as their raw data rather than as resources of the model.
pub fn is_raw(kind: &str) -> bool {
    RAW_SYNCED.contains(&kind)
}

/// Whether objects of this store kind are synced to zones.
pub fn is_synced(kind: &str) -> bool {
    is_raw(kind) || ResourceType::ALL.iter().any(|t| t.name() == kind && (*t == ResourceType::Mesh || t.is_policy()))
}

/// Every synced store kind.
pub fn synced_kinds() -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> =
        ResourceType::ALL.iter().filter(|t| **t == ResourceType::Mesh || t.is_policy()).map(|t| t.name()).collect();
    kinds.extend(RAW_SYNCED);
    kinds
}

/// The KDS key of a store key.
pub fn key_to_proto(key: &Key) -> kds::ResourceKey {
    kds::ResourceKey { r#type: key.kind.clone(), mesh: key.mesh.clone(), name: key.name.clone() }
}

/// The KDS form of a stored object: its REST JSON (inventories: their raw data).
pub fn object_to_proto(obj: &Object) -> Result<kds::Resource, String> {
    let json = if is_raw(&obj.key.kind) {
        serde_json::to_vec(&obj.data)
    } else {
        let resource = Resources::from_object(obj).map_err(|e| e.to_string())?;
        serde_json::to_vec(&resource)
    }
    .map_err(|e| format!("encoding {}: {e}", obj.key))?;
    Ok(kds::Resource { key: Some(key_to_proto(&obj.key)), version: obj.version, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_meshes_policies_and_inventories_are_synced() {
        assert!(is_synced("Mesh"));
        assert!(is_synced("MeshTrafficPermission"));
        for synced in RAW_SYNCED {
            assert!(is_synced(synced), "{synced}");
        }
        use crate::kinds::*;
        for private in ["Dataplane", "Zone", ZONE_TOKEN, DATAPLANE_BINDING, SYSTEM_SECRET, MESH_CA, ZONE_INTERMEDIATE, ZONE_IDENTITY_ISSUED]
        {
            assert!(!is_synced(private), "{private} must not leave the global");
        }
        assert_eq!(
            synced_kinds().len(),
            ResourceType::ALL.len() + 3,
            "all but Zone and Dataplane, plus inventories, trust bundles, token keys, system trust, revoked tokens"
        );
    }
}
