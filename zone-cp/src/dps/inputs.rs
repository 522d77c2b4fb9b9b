//! What every sidecar of a mesh computes its configuration from, read once per store revision
//! and shared by every session: the mesh's view (its policies, each converted once, and every
//! service's endpoints, this zone's and the other zones'), its trust bundle and certificate
//! lifetime. Without it, each session read and parsed the whole mesh on its own at every
//! change: with N sidecars, N reads of N Dataplanes per change, and N copies in memory at once
//! during a registration storm; and each sidecar's build went over every Dataplane again.
//!
//! In: the store and the revision a session computes at. Out: [`MeshInputs`], behind an `Arc`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strait_api::proxy_config::{MeshTrust, MeshView};
use strait_api::{Resource, ResourceType, Spec};
use strait_cp_core::resources::Resources;
use strait_store::Key;
use tonic::Status;

/// A mesh's inputs at (or after) one store revision.
pub struct MeshInputs {
    /// The store revision read before the inputs: they are at least this recent.
    pub revision: u64,
    /// The mesh's policies and endpoints, prepared for building each sidecar's configuration.
    pub view: MeshView,
    /// The mesh's trust bundle.
    pub bundle: MeshTrust,
    /// The lifetime of the mesh's workload certificates.
    pub certificate_lifetime: Duration,
}

/// The latest inputs of each mesh; cheap to clone.
#[derive(Clone, Default)]
pub struct InputCache {
    // An async lock held while reading: sessions woken by one change wait for one read.
    meshes: Arc<tokio::sync::Mutex<HashMap<String, Arc<MeshInputs>>>>,
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("zone store: {e}"))
}

impl InputCache {
    /// The inputs of `mesh` at least as recent as `revision`: shared when another session
    /// already read them, else read now.
    pub async fn get(&self, resources: &Resources, zone: &str, mesh: &str, revision: u64) -> Result<Arc<MeshInputs>, Status> {
        let mut meshes = self.meshes.lock().await;
        if let Some(inputs) = meshes.get(mesh).filter(|i| i.revision >= revision) {
            return Ok(inputs.clone());
        }
        let read_at = resources.store().revision().max(revision);
        let inputs = Arc::new(read(resources, zone, mesh, read_at).await?);
        meshes.insert(mesh.to_string(), inputs.clone());
        Ok(inputs)
    }
}

async fn read(resources: &Resources, zone: &str, mesh: &str, revision: u64) -> Result<MeshInputs, Status> {
    let mut all = Vec::new();
    for kind in ResourceType::ALL.iter().copied().filter(|k| k.is_mesh_scoped()) {
        all.extend(resources.list(kind, Some(mesh)).await.map_err(unavailable)?);
    }
    let bundle = resources
        .store()
        .get(&Key::new(strait_cp_core::kinds::TRUST_BUNDLE, mesh, "default"))
        .await
        .map_err(unavailable)?
        .map(|o| serde_json::from_value::<MeshTrust>(o.data))
        .transpose()
        .map_err(|e| Status::internal(format!("the mesh's stored trust bundle does not parse: {e}")))?
        .unwrap_or_default();
    let certificate_lifetime = match resources.get(ResourceType::Mesh, None, mesh).await.map_err(unavailable)? {
        Some(Resource { spec: Spec::Mesh(m), .. }) => m.certificate_lifetime().get(),
        _ => return Err(Status::failed_precondition(format!("mesh {mesh:?} is gone from this zone"))),
    };
    let remote = crate::gateways::remote(resources.store().as_ref()).await.map_err(unavailable)?;
    // Building the view goes over every Dataplane and policy once: off the async threads.
    let (zone, mesh) = (zone.to_string(), mesh.to_string());
    let view = tokio::task::spawn_blocking(move || MeshView::new(&mesh, &zone, &all, &remote))
        .await
        .map_err(|e| Status::internal(format!("building the mesh's view failed: {e}")))?;
    Ok(MeshInputs { revision, view, bundle, certificate_lifetime })
}
