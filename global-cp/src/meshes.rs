//! What a Mesh brings with it on the global: a root CA and trust bundle, and the default
//! policies (unless its spec opts out, as in Kuma), written in the same atomic batch as the
//! Mesh; and the CA removed with it.
//!
//! In: a Mesh being created or deleted by [`strait_cp_core::Resources`]. Out: the extra store
//! operations.

use serde_json::{json, Value};
use strait_api::Resource;
use strait_cp_core::resources::{put_op, MeshLifecycle};
use strait_store::Op;

/// The global's rules for new and deleted meshes.
pub struct GlobalMeshes;

/// The policies every new Mesh starts with, unless its spec opts out.
fn default_policies(mesh: &str) -> Vec<Resource> {
    let allow_all = json!({
        "type": "MeshTrafficPermission", "name": "allow-all", "mesh": mesh,
        "labels": {"strait.io/origin": "default"},
        "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}
    });
    Resource::from_value(allow_all).into_iter().collect()
}

impl MeshLifecycle for GlobalMeshes {
    fn on_create(&self, mesh: &Resource) -> Result<Vec<Op>, String> {
        let mut ops = crate::mesh_ca::new_mesh_ops(&mesh.name).map_err(|e| format!("creating the mesh's root CA: {e}"))?;
        let skip = mesh.spec_value().get("skipDefaultPolicies").and_then(Value::as_bool).unwrap_or(false);
        if !skip {
            ops.extend(default_policies(&mesh.name).iter().map(put_op));
        }
        Ok(ops)
    }

    fn on_delete(&self, mesh: &str) -> Vec<Op> {
        crate::mesh_ca::delete_mesh_ops(mesh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policies_validate() {
        assert_eq!(default_policies("m").len(), 1, "allow-all must pass validation");
    }
}
